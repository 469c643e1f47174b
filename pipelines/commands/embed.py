"""`embedlake embed INPUT OUTPUT`: embed Parquet shards into a LanceDB table."""

from __future__ import annotations

import argparse

from operators.encoders.precision import Precision
from pipelines.commands.options import (
    add_address_option,
    age,
    at_least,
    int_list,
    job_from_args,
    name_list,
    object_store_size,
    positive_int,
    precision_list,
    resource_amounts,
)
from pipelines.storage_cli import add_storage_option


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("embed", job="pipelines.embed:EmbedJob",
                                   help="embed Parquet shards into a LanceDB table")
    parser.add_argument("input", help="Parquet file, folder, glob or fsspec URI (s3://, gs://, file://)")
    parser.add_argument("output", help="LanceDB URI: a local folder or s3://bucket/path")
    parser.add_argument("--table", help="table to write")
    parser.add_argument("--model", help="'minilm' (packaged all-MiniLM-L6-v2) or a model folder")
    parser.add_argument("--id-column", help="input column of unique row ids")
    parser.add_argument("--text-column", help="input column of the texts to embed")
    parser.add_argument("--dims", type=int_list, help="nested Matryoshka sizes, e.g. 256,128,64")
    parser.add_argument("--outputs", type=name_list, help="BGE-M3 outputs: dense,sparse,colbert")
    parser.add_argument("--max-length", type=int, help="tokens per text (longer texts are cut)")
    parser.add_argument("--keep-columns", type=name_list, help="input columns copied to the table")
    parser.add_argument("--keep-text", action="store_true",
                        help="store the text as embedded in column 'text' (with --chunk-tokens: each passage's own)")
    parser.add_argument("--chunk-tokens", type=int, metavar="N",
                        help="embed passages of at most N tokens of the model's tokenizer instead of whole texts "
                             "(cut at paragraph and sentence ends where possible): one row per passage, id "
                             "'<doc_id>#<chunk>', with doc_id, chunk, char_start, char_end (docs/chunking.md)")
    parser.add_argument("--chunk-overlap", type=int, metavar="M",
                        help="tokens consecutive passages share (with --chunk-tokens)")
    parser.add_argument("--chunking", choices=["split", "late"],
                        help="split: each passage encoded alone; late: the whole document encoded once (windows "
                             "beyond the model's length) and each passage pooled from its own tokens' states")
    add_address_option(parser)
    parser.add_argument("--object-store-memory", type=object_store_size, metavar="SIZE",
                        help="object store of the local Ray this run starts, e.g. 2GB (default: Ray's, 30%% of RAM); "
                             "it bounds the memory that blocks in flight take (benchmarks/RESULTS.md)")
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild the table from empty instead of updating it (readers keep the serving version "
                             "until the run ends; earlier runs' versions stay for rollback)")
    parser.add_argument("--sync-deletes", action="store_true", help="delete table rows whose id left the input")
    parser.add_argument("--rescan", action="store_true",
                        help="read every shard and compare every row's text hash, ignoring the file manifest "
                             "(<T>_files) that lets a run skip shards unchanged since the last one")
    parser.add_argument("--skip-bad-files", action="store_true",
                        help="quarantine unreadable shards whole and go on (default: fail naming the file)")
    parser.add_argument("--actors", type=int, help="encoder actors (default: one per GPU, else per CPU)")
    parser.add_argument("--threads-per-actor", type=int, help="torch threads of each encoder actor")
    parser.add_argument("--rows-per-batch", type=int,
                        help="rows handed to an encoder actor at a time, sorted and cut by token budget inside "
                             "(default: 4096 on GPUs, 256 on CPUs)")
    parser.add_argument("--rows-per-write", type=int,
                        help="rows per upsert commit (default: a few commits per encoder actor, at most 4096)")
    parser.add_argument("--max-tokens-per-batch", type=int,
                        help="padded tokens per forward pass (default: 65536 on GPUs, 2048 on CPUs)")
    parser.add_argument("--precision", choices=list(Precision),
                        help="auto = bf16 on GPUs, fp32 on CPUs; bf16 (fast with AVX512-BF16/AMX) and int8 are "
                             "faster CPU paths whose vectors stay within cosine 0.99 of fp32 (benchmarks/RESULTS.md); "
                             "int8 runs torch._int_mm with VNNI/AMX, fbgemm with AVX2 (the model id then says "
                             "kernel=fbgemm), fp32 with a warning on other CPUs")
    parser.add_argument("--quantize", type=precision_list, metavar="int8,binary",
                        help="also store <col>_int8 (int8 codes, per-dimension ranges calibrated once for the table) "
                             "and/or <col>_bin (sign bits) for dense and each dense_<d> (docs/quantization.md)")
    parser.add_argument("--recalibrate", action="store_true",
                        help="calibrate new int8 ranges from a sample of the table and re-quantise every stored row")
    parser.add_argument("--calibration-rows", type=at_least(1), help="rows the int8 ranges are calibrated from")
    parser.add_argument("--colbert-precision", choices=["float16", "int8", "binary"],
                        help="ColBERT storage: float16 (the default), int8 (a scale per token, ~2x smaller) or binary "
                             "(sign bits, 16x smaller); a table keeps what it was first written with")
    parser.add_argument("--colbert-pool-factor", type=at_least(1, float),
                        help="keep ~1/F of each document's ColBERT vectors (hierarchical token pooling; default 1)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress line (rows encoded and committed, rate, ETA) on stderr")
    parser.add_argument("--actor-resources", type=resource_amounts, metavar="NAME=AMOUNT,...",
                        help="custom Ray resources each encoder actor needs, to place actors on node groups")
    parser.add_argument("--no-maintain", dest="maintain", action="store_false",
                        help="after publishing, skip compaction and the removal of versions no retained run needs "
                             "(embedlake maintain does both later)")
    parser.add_argument("--keep-runs", type=positive_int,
                        help="maintain: runs whose versions are kept, this one included")
    parser.add_argument("--older-than", type=age, metavar="AGE",
                        help="maintain: remove only versions older than this, e.g. 7d (0: any age)")
    add_storage_option(parser)
    return parser


def run(args: argparse.Namespace) -> dict:
    from pipelines.embed import EmbedJob, run_embed  # torch and ray load only for this command

    return run_embed(job_from_args(EmbedJob, args, command=["embedlake", *args.argv]))


def describe(summary: dict, args: argparse.Namespace) -> str:
    """One sentence a person reads at the end of a run; the full summary is `--json` / `--verbose`."""
    where = f"table '{summary['table']}' in {summary['uri']}"
    changed = summary["rows_written"]
    kept = summary["rows_unchanged"] + summary["rows_skipped"]
    text = (f"Embedded {changed} rows in {summary['seconds']:.1f} s ({summary['docs_per_s']:.1f} docs/s) "
            f"into {where}")
    if "passages_written" in summary:  # a passage table: rows count documents
        text = (f"Embedded {changed} documents as {summary['passages_written']} passages in {summary['seconds']:.1f} s "
                f"({summary['docs_per_s']:.1f} docs/s, {summary['passages_per_s']:.1f} passages/s) into {where}")
    if kept:
        text += f"; {kept} rows were already up to date"
    quarantined = summary["rows_quarantined"] + summary["files_quarantined"]
    if quarantined:
        text += (f"; {summary['rows_quarantined']} rows and {summary['files_quarantined']} files quarantined, "
                 f"with the reason of each in table '{summary['quarantine_table']}' (columns id, source, reason)")
    else:
        text += "; nothing quarantined"
    return text + ". Full summary: --json or --verbose."
