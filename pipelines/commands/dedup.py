"""`embedlake dedup OUTPUT --table T [--eps 0.01]`: exact copies by text hash, then SemDeDup (or MinHash).

--eps: rows whose cosine to an earlier-ranked row of their cluster is >= 1 - eps are duplicates. The default
0.01 (SemDeDup's and NeMo Curator's) catches copies, case changes and most single small edits; with MiniLM on
the sample corpus 0.03 catches 99.8% of single small edits (a punctuation mark, a swapped word pair) and no
two unrelated texts reach it (measurements in docs/cluster_and_dedup.md).
"""

from __future__ import annotations

import argparse

from operators.dedup import (
    DEFAULT_BLOCK,
    DEFAULT_EPS,
    DEFAULT_SEED,
    KEEP_FIRST,
    KEEP_POLICIES,
    RANK_HARD,
    RANKINGS,
)
from operators.minhash import DEFAULT_NGRAM, DEFAULT_NUM_PERM, DEFAULT_THRESHOLD
from operators.schema import DENSE
from operators.storage import redacted_errors
from pipelines.storage_cli import add_storage_option, storage_from_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "dedup",
        help="find exact and near duplicates; writes T_duplicates",
        description="Exact duplicates by text_hash, then SemDeDup: k-means clusters, members ranked inside "
        "each cluster, a member is a duplicate when its cosine to an earlier-ranked member is >= 1 - eps. "
        "Writes T_duplicates (id, duplicate_of, similarity): one row per duplicate, pointing at the kept "
        "member of its group.",
    )
    parser.add_argument("output", help="LanceDB URI: a local folder or s3://bucket/path")
    parser.add_argument("--table", required=True)
    parser.add_argument(
        "--eps",
        type=float,
        default=DEFAULT_EPS,
        help="duplicates have cosine >= 1 - eps (default 0.01; 0.03 catches small edits too, with MiniLM)",
    )
    parser.add_argument("--column", default=DENSE, help="vector column: dense or any dense_<d> (default dense)")
    parser.add_argument("--method", choices=("semantic", "minhash"), default="semantic")
    parser.add_argument("--k", type=int, default=None, help="clusters (default: one per ~1000 rows)")
    parser.add_argument(
        "--rank",
        choices=RANKINGS,
        default=RANK_HARD,
        help="order inside a cluster: hard = farthest from the centroid first (SemDeDup)",
    )
    parser.add_argument(
        "--keep",
        choices=KEEP_POLICIES,
        default=KEEP_FIRST,
        help="which member of a group stays: first-ranked (SemDeDup), smallest id, or longest text",
    )
    parser.add_argument("--text-column", default="text", help="texts for --keep longest and --method minhash")
    parser.add_argument("--block", type=int, default=DEFAULT_BLOCK, help="columns per similarity block")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="MinHash: Jaccard threshold")
    parser.add_argument("--num-perm", type=int, default=DEFAULT_NUM_PERM, help="MinHash: permutations")
    parser.add_argument("--ngram", type=int, default=DEFAULT_NGRAM, help="MinHash: character n-gram size")
    parser.add_argument(
        "--work-dir",
        default=None,
        help="scratch folder every Ray node can read (default: OUTPUT/.embedlake_work locally)",
    )
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local Ray)")
    add_storage_option(parser)
    return parser


def run(args: argparse.Namespace) -> dict:
    from pipelines.dedup import DedupJob, run_dedup

    job = DedupJob(
        uri=args.output,
        table=args.table,
        eps=args.eps,
        column=args.column,
        method=args.method,
        k=args.k,
        rank=args.rank,
        keep=args.keep,
        text_column=args.text_column,
        block=args.block,
        seed=args.seed,
        work_dir=args.work_dir,
        threshold=args.threshold,
        num_perm=args.num_perm,
        ngram=args.ngram,
        address=args.address,
        storage=storage_from_args(args),
    )
    with redacted_errors(job.storage):
        return run_dedup(job)
