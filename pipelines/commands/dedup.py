"""`embedlake dedup OUTPUT --table T [--eps 0.01]`: exact copies by text hash, then SemDeDup (or MinHash).

--eps: rows whose cosine to an earlier-ranked row of their cluster is >= 1 - eps are duplicates. The default
0.01 (SemDeDup's and NeMo Curator's) catches copies, case changes and most single small edits; with MiniLM on
the sample corpus 0.03 catches 99.8% of single small edits (a punctuation mark, a swapped word pair) and no
two unrelated texts reach it (measurements in docs/cluster_and_dedup.md).
"""

from __future__ import annotations

import argparse

from operators.dedup import Keep, Ranking
from pipelines.commands.options import add_reader_options, job_from_args
from pipelines.dedup import Method


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "dedup",
        job="pipelines.dedup:DedupJob",
        help="find exact and near duplicates; writes T_duplicates",
        description="Exact duplicates by text_hash, then SemDeDup: k-means clusters, members ranked inside "
        "each cluster, a member is a duplicate when its cosine to an earlier-ranked member is >= 1 - eps. "
        "Writes T_duplicates (id, duplicate_of, similarity): one row per duplicate, pointing at the kept "
        "member of its group.",
    )
    add_reader_options(parser, table_required=True, ray=True)
    parser.add_argument("--eps", type=float,
                        help="duplicates have cosine >= 1 - eps (0.03 catches small edits too, with MiniLM)")
    parser.add_argument("--column", help="vector column: dense or any dense_<d>")
    parser.add_argument("--method", choices=list(Method),
                        help="semantic (SemDeDup on the vectors) or minhash (on the texts)")
    parser.add_argument("--k", type=int, help="clusters (default: one per ~1000 rows)")
    parser.add_argument("--rank", choices=list(Ranking),
                        help="order inside a cluster: hard = farthest from the centroid first (SemDeDup)")
    parser.add_argument("--keep", choices=list(Keep),
                        help="which member of a group stays: first-ranked (SemDeDup), smallest id, or longest text")
    parser.add_argument("--text-column", help="texts for --keep longest and --method minhash")
    parser.add_argument("--block", type=int, help="columns per similarity block")
    parser.add_argument("--seed", type=int, help="seed of the sample, k-means, random ranking, MinHash")
    parser.add_argument("--threshold", type=float, help="MinHash: Jaccard threshold")
    parser.add_argument("--num-perm", type=int, help="MinHash: permutations")
    parser.add_argument("--ngram", type=int, help="MinHash: character n-gram size")
    parser.add_argument("--work-dir", help="scratch folder every Ray node can read (default: OUTPUT/.embedlake_work "
                                           "locally)")
    return parser


def run(args: argparse.Namespace) -> dict:
    from pipelines.dedup import DedupJob, run_dedup

    return run_dedup(job_from_args(DedupJob, args))
