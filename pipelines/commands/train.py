"""`embedlake train INPUT MODEL_OUT --anchor-column A --positive-column P`: Matryoshka fine-tuning on
Ray Train into a sentence-transformers folder that `embed --model MODEL_OUT` and `search` load as it is."""

from __future__ import annotations

import argparse
from dataclasses import fields

from operators.storage import redacted_errors
from operators.training.matryoshka import TrainingOptions
from pipelines.commands.embed import int_list
from pipelines.storage_cli import add_storage_option, storage_from_args


def float_list(value: str) -> list[float]:
    try:
        return [float(part) for part in value.split(",") if part.strip()]
    except ValueError as error:
        msg = f"expected comma-separated numbers, got {value!r}"
        raise argparse.ArgumentTypeError(msg) from error


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="Matryoshka fine-tuning of a sentence-transformers model on (anchor, positive) pairs",
        description="MatryoshkaLoss over MultipleNegativesRankingLoss with sentence-transformers' trainer, on "
                    "Ray Train data-parallel workers; a checkpoint per epoch in MODEL_OUT, resumed after a kill by "
                    "re-running the command; a report of base vs trained quality at every nested size.")
    parser.add_argument("input", help="Parquet file, folder, glob or fsspec URI (s3://, gs://, file://)")
    parser.add_argument("model_out", help="folder or object-store URI the trained model is written to")
    parser.add_argument("--anchor-column", required=True, help="query-side text (encoded with the query prompt)")
    parser.add_argument("--positive-column", required=True, help="its relevant document text")
    parser.add_argument("--negative-column", default=None, help="a hard negative document per pair (optional)")
    parser.add_argument("--base", default="minilm", help="'minilm' (packaged all-MiniLM-L6-v2) or a model folder")
    parser.add_argument("--dims", type=int_list, default=[],
                        help="nested sizes trained, incl. the full size (default: full, then 1024..64 below it)")
    parser.add_argument("--dim-weights", type=float_list, default=[], help="loss weight per size (default 1 each)")
    defaults = TrainingOptions()
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="global batch: split over the workers, in-batch negatives gathered across them")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per text (default: the base model's)")
    parser.add_argument("--query-prompt", default=None, help="prefix for anchors/queries (default: the base's)")
    parser.add_argument("--document-prompt", default=None, help="prefix for documents (default: the base's)")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--warmup-ratio", type=float, default=defaults.warmup_ratio)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--holdout", type=float, default=0.1,
                        help="fraction of anchors held out of training for the report (by anchor hash)")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (one GPU each on GPU clusters)")
    parser.add_argument("--cpus-per-worker", type=int, default=None,
                        help="default: the cluster's CPUs shared out over the workers (1 with GPUs)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local Ray)")
    parser.add_argument("--overwrite", action="store_true", help="replace a run of other settings in MODEL_OUT")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    add_storage_option(parser)
    return parser


def run(args: argparse.Namespace) -> dict:
    from pipelines.train import TrainJob, run_train  # torch, ray and sentence-transformers load only here

    # Every job field has the option of the same name (`command` and storage are the CLI's own).
    given = {f.name: getattr(args, f.name) for f in fields(TrainJob)
             if f.name not in ("command", "storage") and hasattr(args, f.name)}
    job = TrainJob(**given, storage=storage_from_args(args), command=["embedlake", *getattr(args, "argv", [])])
    with redacted_errors(job.storage):
        return run_train(job)
