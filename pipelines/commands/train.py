"""`embedlake train INPUT MODEL_OUT --anchor-column A --positive-column P`: Matryoshka fine-tuning on
Ray Train into a sentence-transformers folder that `embed --model MODEL_OUT` and `search` load as it is."""

from __future__ import annotations

import argparse

from pipelines.commands.options import add_address_option, float_list, int_list, job_from_args
from pipelines.storage_cli import add_storage_option


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", job="pipelines.train:TrainJob",
        help="Matryoshka fine-tuning of a sentence-transformers model on (anchor, positive) pairs",
        description="MatryoshkaLoss over MultipleNegativesRankingLoss with sentence-transformers' trainer, on "
                    "Ray Train data-parallel workers; a checkpoint per epoch in MODEL_OUT, resumed after a kill by "
                    "re-running the command; a report of base vs trained quality at every nested size.")
    parser.add_argument("input", help="Parquet file, folder, glob or fsspec URI (s3://, gs://, file://)")
    parser.add_argument("model_out", help="folder or object-store URI the trained model is written to")
    parser.add_argument("--anchor-column", required=True, help="query-side text (encoded with the query prompt)")
    parser.add_argument("--positive-column", required=True, help="its relevant document text")
    parser.add_argument("--negative-column", help="a hard negative document per pair (optional)")
    mining = parser.add_argument_group(
        "hard negatives mined from an embedlake table",
        "Anchors are encoded by the table's own model (its query prompt) and searched on its dense column at its "
        "serving version; the first hits that are not one of the anchor's positives (compared by text) and pass "
        "the margin become its negatives (sentence-transformers' mine_hard_negatives rules). Not with "
        "--negative-column.")
    mining.add_argument("--mine-negatives", metavar="TABLE",
                        help="LanceDB OUTPUT holding the table (see --mine-table), or a table folder OUTPUT/NAME.lance")
    mining.add_argument("--mine-table", metavar="NAME", help="the table in OUTPUT (default: docs)")
    mining.add_argument("--mine-count", type=int, metavar="N", help="negatives per anchor, one training row each")
    mining.add_argument("--mine-skip", type=int, metavar="N",
                        help="candidates passed over before taking negatives (sentence-transformers' range_min)")
    mining.add_argument("--mine-depth", type=int, metavar="N",
                        help="hits considered per anchor besides its positives (range_max; default: skip + 10 x count)")
    mining.add_argument("--mine-margin", type=margin, metavar="M",
                        help="drop candidates scoring above positive - |positive| x M as likely false negatives "
                             "(relative_margin; 'off' to keep them)")
    mining.add_argument("--mine-text-column", metavar="NAME",
                        help="the table's column of document texts (embed --keep-text writes 'text')")
    parser.add_argument("--base", help="'minilm' (packaged all-MiniLM-L6-v2) or a model folder")
    parser.add_argument("--dims", type=int_list,
                        help="nested sizes trained, incl. the full size (default: full, then 1024..64 below it)")
    parser.add_argument("--dim-weights", type=float_list, help="loss weight per size (default 1 each)")
    parser.add_argument("--epochs", type=int, help="passes over the training pairs")
    parser.add_argument("--batch-size", type=int,
                        help="global batch: split over the workers, in-batch negatives gathered across them")
    parser.add_argument("--max-length", type=int, help="tokens per text (default: the base model's)")
    parser.add_argument("--query-prompt", help="prefix for anchors/queries (default: the base's)")
    parser.add_argument("--document-prompt", help="prefix for documents (default: the base's)")
    parser.add_argument("--learning-rate", type=float, help="peak learning rate")
    parser.add_argument("--warmup-ratio", type=float, help="share of the steps the learning rate warms up over")
    parser.add_argument("--seed", type=int, help="training seed (initialisation and data order)")
    parser.add_argument("--holdout", type=float,
                        help="fraction of anchors held out of training for the report (by anchor hash)")
    parser.add_argument("--workers", type=int, help="Ray Train workers (one GPU each on GPU clusters)")
    parser.add_argument("--cpus-per-worker", type=int,
                        help="default: the cluster's CPUs shared out over the workers (1 with GPUs)")
    add_address_option(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace a run of other settings in MODEL_OUT")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    add_storage_option(parser)
    return parser


def margin(value: str) -> float | None:
    """A relative margin, or 'off'."""
    if value.strip().lower() in ("off", "none"):
        return None
    try:
        return float(value)
    except ValueError:
        msg = f"expected a number in [0, 1) or 'off', got {value!r}"
        raise argparse.ArgumentTypeError(msg) from None


def run(args: argparse.Namespace) -> dict:
    from pipelines.train import TrainJob, run_train  # torch, ray and sentence-transformers load only here

    return run_train(job_from_args(TrainJob, args, command=["embedlake", *args.argv]))
