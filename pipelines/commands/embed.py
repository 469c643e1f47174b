"""`embedlake embed INPUT OUTPUT`: embed Parquet shards into a LanceDB table."""

from __future__ import annotations

import argparse

from operators.storage import redacted_errors
from pipelines.storage_cli import add_storage_option, storage_from_args


def int_list(value: str) -> list[int]:
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError as error:
        msg = f"expected comma-separated integers, got {value!r}"
        raise argparse.ArgumentTypeError(msg) from error


def name_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def resource_amounts(value: str) -> dict[str, float]:
    """`encoder=1,accelerator_type:A10G=0.01` into {name: amount}."""
    amounts = {}
    for part in name_list(value):
        name, sep, amount = part.rpartition("=")
        msg = f"expected NAME=AMOUNT pairs, got {part!r}"
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(msg)
        try:
            amounts[name.strip()] = float(amount)
        except ValueError as error:
            raise argparse.ArgumentTypeError(msg) from error
    return amounts


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("embed", help="embed Parquet shards into a LanceDB table")
    parser.add_argument("input", help="Parquet file, folder, glob or fsspec URI (s3://, gs://, file://)")
    parser.add_argument("output", help="LanceDB URI: a local folder or s3://bucket/path")
    parser.add_argument("--table", default="docs")
    parser.add_argument("--model", default="minilm", help="'minilm' (packaged all-MiniLM-L6-v2) or a model folder")
    parser.add_argument("--id-column", default="id")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--dims", type=int_list, default=[], help="nested Matryoshka sizes, e.g. 256,128,64")
    parser.add_argument("--outputs", type=name_list, default=[], help="BGE-M3 outputs: dense,sparse,colbert")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per text (longer texts are cut)")
    parser.add_argument("--keep-columns", type=name_list, default=[], help="input columns copied to the table")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local Ray)")
    parser.add_argument("--object-store-memory", type=object_store_size, default=None, metavar="SIZE",
                        help="object store of the local Ray this run starts, e.g. 2GB (default: Ray's, 30%% of RAM); "
                             "it bounds the memory that blocks in flight take (benchmarks/RESULTS.md)")
    parser.add_argument("--overwrite", action="store_true", help="replace the table instead of updating it")
    parser.add_argument("--sync-deletes", action="store_true", help="delete table rows whose id left the input")
    parser.add_argument("--rescan", action="store_true",
                        help="read every shard and compare every row's text hash, ignoring the file manifest "
                             "(<T>_files) that lets a run skip shards unchanged since the last one")
    parser.add_argument("--skip-bad-files", action="store_true",
                        help="quarantine unreadable shards whole and go on (default: fail naming the file)")
    parser.add_argument("--actors", type=int, default=None, help="encoder actors (default: one per GPU, else per CPU)")
    parser.add_argument("--threads-per-actor", type=int, default=None)
    parser.add_argument("--rows-per-batch", type=int, default=None,
                        help="rows handed to an encoder actor at a time, sorted and cut by token budget inside "
                             "(default: 4096 on GPUs, 256 on CPUs)")
    parser.add_argument("--rows-per-write", type=int, default=None,
                        help="rows per upsert commit (default: a few commits per encoder actor, at most 4096)")
    parser.add_argument("--max-tokens-per-batch", type=int, default=None,
                        help="padded tokens per forward pass (default: 65536 on GPUs, 2048 on CPUs)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                        help="auto = bf16 on GPUs, fp32 on CPUs; bf16 and int8 are faster CPU paths whose vectors "
                             "stay within cosine 0.99 of fp32 (benchmarks/RESULTS.md)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--actor-resources", type=resource_amounts, default={}, metavar="NAME=AMOUNT,...",
                        help="custom Ray resources each encoder actor needs, to place actors on node groups")
    add_storage_option(parser)
    return parser


SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def object_store_size(value: str) -> int:
    """An object store size: '2GB', '512MiB' or a number of bytes, at least Ray's minimum of 64 MiB."""
    text = value.strip().upper()
    number = text.rstrip("KMGIB")
    unit = text[len(number):]
    try:
        size = int(float(number) * SIZE_UNITS[unit])
    except (KeyError, ValueError):
        msg = f"not a size: {value!r} (use e.g. 2GB, 512MiB or a number of bytes)"
        raise argparse.ArgumentTypeError(msg) from None
    if size < 2**26:
        msg = f"object store of {value!r} is too small for Ray (at least 64MiB)"
        raise argparse.ArgumentTypeError(msg)
    return size


def run(args: argparse.Namespace) -> dict:
    from pipelines.embed import EmbedJob, run_embed  # torch and ray load only for this command

    job = EmbedJob(
        input=args.input,
        output=args.output,
        table=args.table,
        model=args.model,
        id_column=args.id_column,
        text_column=args.text_column,
        dims=args.dims,
        outputs=args.outputs,
        max_length=args.max_length,
        keep_columns=args.keep_columns,
        address=args.address,
        object_store_memory=args.object_store_memory,
        overwrite=args.overwrite,
        sync_deletes=args.sync_deletes,
        rescan=args.rescan,
        skip_bad_files=args.skip_bad_files,
        rows_per_write=args.rows_per_write,
        command=["embedlake", *getattr(args, "argv", [])],
        actors=args.actors,
        threads_per_actor=args.threads_per_actor,
        rows_per_batch=args.rows_per_batch,
        max_tokens_per_batch=args.max_tokens_per_batch,
        precision=args.precision,
        progress=args.progress,
        storage=storage_from_args(args),
        actor_resources=args.actor_resources,
    )
    with redacted_errors(job.storage):
        return run_embed(job)
