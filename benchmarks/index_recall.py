"""ANN index build time, recall@10 against exact search and latency, on the funnel benchmark's MRL-like data.

    python -m benchmarks.index_recall --rows 100000 --dim 384 --small 64 [--index-type auto|IVF_PQ|IVF_HNSW_SQ]

Writes a LanceDB table (`dense`, `dense_<small>`) and runs what `embedlake index` runs (operators/search/ann.py):
parameters from the table size, leave-one-out recall@k of the index against exact search on sampled rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import lancedb
import pyarrow as pa

from benchmarks.funnel import generate
from operators.schema import DENSE, ID, dense_column
from operators.search.index_plan import IndexType
from pipelines.index import IndexJob, run_index


def write_table(uri: str, rows: int, dim: int, small: int, spread: float, decay: float, seed: int) -> None:
    full, short, _q, _qs = generate(rows, dim, small, max(1, rows // 1000), spread, decay, seed, queries=1)
    table = pa.table({
        ID: pa.array([f"d{i}" for i in range(rows)]),
        DENSE: pa.FixedSizeListArray.from_arrays(pa.array(full.reshape(-1)), dim),
        dense_column(small): pa.FixedSizeListArray.from_arrays(pa.array(short.reshape(-1)), small),
    })
    lancedb.connect(uri).create_table("bench", table, mode="overwrite")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--small", type=int, default=64)
    parser.add_argument("--index-type", choices=list(IndexType), default=IndexType.AUTO)
    parser.add_argument("--sample", type=int, default=100)
    parser.add_argument("--spread", type=float, default=0.5)
    parser.add_argument("--decay", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--uri", help="LanceDB folder (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        uri = args.uri or scratch
        started = time.perf_counter()
        write_table(uri, args.rows, args.dim, args.small, args.spread, args.decay, args.seed)
        written = time.perf_counter() - started
        result = run_index(IndexJob(uri, "bench", index_type=args.index_type, min_rows=1, sample=args.sample))
        result["write_seconds"] = round(written, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
