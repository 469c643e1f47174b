"""Matryoshka funnel (adaptive) retrieval vs exact full-size search, at scale.

    python -m benchmarks.funnel --rows 1000000 --dim 384 --small 64 [--engine numpy|faiss] [--lancedb DIR]

Data: MRL-like synthetic vectors. Real MRL models put most of the signal in the leading dimensions; we
model that with clustered Gaussian data whose per-dimension variance decays as 1/(j+1) (the first 64 of
384 dims hold ~70% of the variance), `rows/1000` clusters, within-cluster spread `--spread` times the
between-cluster spread. Queries are fresh draws from the same mixture, not corpus rows.
`dense` = unit(x), `dense_<small>` = unit(x[:small]), exactly how the encoders write nested columns.

Measured: exact top-k by full-size dot product (the reference) vs the funnel: exact top-`shortlist` on
`dense_<small>`, re-rank those with `dense`. Recall = |funnel top-k ∩ exact top-k| / k, averaged over
queries (the fraction of exact full-size top-k that the funnel keeps). Two timing regimes: `batch` (all
queries in one matrix product, per-query time, best of `--repeats` interleaved runs: the machine is shared
and the best run is the least disturbed) and `single_query` (one query at a time, median latency).
Both paths use the same engine (numpy BLAS matmul + argpartition, or faiss IndexFlatIP).
`--lancedb DIR` also writes the table to LanceDB and times the deployed path (`embedlake search`'s
Retriever: exact scan of `dense` vs funnel through `dense_<small>`), one query at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from operators.search.dense import exact_topn, funnel_topn
from operators.vectors import normalize_rows

GEN_BLOCK = 100_000


def spectrum(dim: int, decay: float) -> np.ndarray:
    """Per-dimension standard deviation: variance ~ 1/(j+1)^decay."""
    return (np.arange(1, dim + 1, dtype=np.float64) ** (-decay / 2)).astype(np.float32)


def generate(rows: int, dim: int, small: int, clusters: int, spread: float, decay: float, seed: int,
             queries: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(full, small, query_full, query_small), all unit-length float32."""
    rng = np.random.default_rng(seed)
    scale = spectrum(dim, decay)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32) * scale
    full = np.empty((rows, dim), dtype=np.float32)
    short = np.empty((rows, small), dtype=np.float32)
    for start in range(0, rows, GEN_BLOCK):
        count = min(GEN_BLOCK, rows - start)
        block = centres[rng.integers(0, clusters, count)]
        block += rng.standard_normal((count, dim), dtype=np.float32) * (scale * spread)
        full[start:start + count] = normalize_rows(block)
        short[start:start + count] = normalize_rows(block[:, :small])
    raw = centres[rng.integers(0, clusters, queries)] + rng.standard_normal((queries, dim),
                                                                            dtype=np.float32) * (scale * spread)
    return full, short, normalize_rows(raw).astype(np.float32), normalize_rows(raw[:, :small]).astype(np.float32)


def best_time(function, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


class NumpyEngine:
    name = "numpy"

    def exact(self, matrix, queries, n):
        return exact_topn(matrix, queries, n)[0]

    def funnel(self, small, full, q_small, q_full, k, shortlist):
        return funnel_topn(small, full, q_small, q_full, k, shortlist)[0]


class FaissEngine:
    name = "faiss"

    def __init__(self, full: np.ndarray, small: np.ndarray) -> None:
        import faiss

        self.full = faiss.IndexFlatIP(full.shape[1])
        self.full.add(full)
        self.small = faiss.IndexFlatIP(small.shape[1])
        self.small.add(small)
        self.full_vectors = full

    def exact(self, matrix, queries, n):
        return self.full.search(queries, n)[1]

    def funnel(self, small, full, q_small, q_full, k, shortlist):
        candidates = self.small.search(q_small, shortlist)[1]
        rescored = np.einsum("qd,qsd->qs", q_full, self.full_vectors[candidates])
        keep = np.argpartition(-rescored, k - 1, axis=1)[:, :k]
        return np.take_along_axis(candidates, keep, axis=1)


def overlap(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a[:k].tolist()) & set(b.tolist())) / k for a, b in zip(found, truth,
                                                                                        strict=True)]))


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    full, small, q_full, q_small = generate(args.rows, args.dim, args.small, max(1, args.rows // 1000),
                                            args.spread, args.decay, args.seed, args.queries)
    generated = time.perf_counter() - started
    engine = FaissEngine(full, small) if args.engine == "faiss" else NumpyEngine()
    spectrum_ = spectrum(args.dim, args.decay)
    result = {
        "rows": args.rows, "dim": args.dim, "small": args.small, "k": args.k, "queries": args.queries,
        "engine": engine.name,
        "variance_in_prefix": float((spectrum_[:args.small] ** 2).sum() / (spectrum_ ** 2).sum()),
        "generate_seconds": round(generated, 1),
    }
    # Batch: all queries scored together. Repeats interleave exact and funnel runs, so load from other
    # processes on a shared machine hits both alike; each configuration keeps its best time.
    exact = lambda: engine.exact(full, q_full, args.k)  # noqa: E731
    funnels = {s: (lambda s=s: engine.funnel(small, full, q_small, q_full, args.k, s)) for s in args.shortlists}
    times = {"exact": float("inf"), **{s: float("inf") for s in args.shortlists}}
    outputs = {}
    for _ in range(args.repeats):
        for name, function in (("exact", exact), *funnels.items()):
            seconds, outputs[name] = best_time(function, 1)
            times[name] = min(times[name], seconds)
    truth = outputs["exact"]
    small_only = engine.exact(small, q_small, args.k) if args.engine == "numpy" else \
        engine.small.search(q_small, args.k)[1]
    result["batch"] = {
        "exact_ms_per_query": 1000 * times["exact"] / args.queries,
        f"recall@{args.k}_small_alone": overlap(small_only, truth),
        "funnel": [{"shortlist": s, f"recall@{args.k}_vs_exact": overlap(outputs[s], truth),
                    "ms_per_query": 1000 * times[s] / args.queries, "speedup": times["exact"] / times[s]}
                   for s in args.shortlists],
    }
    result["single_query"] = single_query_latency(args, engine, full, small, q_full, q_small)
    passing = [entry for entry in result["batch"]["funnel"] if entry[f"recall@{args.k}_vs_exact"] >= args.target]
    result["best_batch"] = max(passing, key=lambda entry: entry["speedup"]) if passing else None
    if args.lancedb:
        result["lancedb"] = run_lancedb(args, full, small, q_full, q_small)
    return result


def single_query_latency(args: argparse.Namespace, engine, full, small, q_full, q_small) -> dict:
    """One query at a time (a search service's regime, where scanning is memory-bound): median latency
    of exact and of the funnel, measured alternately query by query."""
    count = min(args.single_queries, q_full.shape[0])
    exact_ms: list[float] = []
    funnel_ms: dict[int, list[float]] = {s: [] for s in args.shortlists}
    for i in range(count):
        one_full, one_small = q_full[i:i + 1], q_small[i:i + 1]
        started = time.perf_counter()
        engine.exact(full, one_full, args.k)
        exact_ms.append(1000 * (time.perf_counter() - started))
        for shortlist in args.shortlists:
            started = time.perf_counter()
            engine.funnel(small, full, one_small, one_full, args.k, shortlist)
            funnel_ms[shortlist].append(1000 * (time.perf_counter() - started))
    exact_median = float(np.median(exact_ms))
    return {
        "queries": count,
        "exact_ms_median": exact_median,
        "funnel": [{"shortlist": s, "ms_median": float(np.median(v)), "speedup": exact_median / float(np.median(v))}
                   for s, v in funnel_ms.items()],
    }


def run_lancedb(args: argparse.Namespace, full, small, q_full, q_small) -> dict:
    """The deployed path: Retriever over a LanceDB table, exact `dense` scan vs funnel, one query at a time."""
    import lancedb
    import pyarrow as pa

    from operators.schema import DENSE, ID, dense_column
    from operators.scoring import QueryVectors
    from operators.search.retriever import Retriever

    small_name = dense_column(args.small)
    db = lancedb.connect(args.lancedb)
    started = time.perf_counter()
    table = None
    for first in range(0, full.shape[0], 200_000):
        part = slice(first, first + 200_000)
        batch = pa.table({
            ID: pa.array([f"d{i}" for i in range(first, min(first + 200_000, full.shape[0]))]),
            DENSE: pa.FixedSizeListArray.from_arrays(pa.array(full[part].reshape(-1)), args.dim),
            small_name: pa.FixedSizeListArray.from_arrays(pa.array(small[part].reshape(-1)), args.small),
        })
        if table is None:
            table = db.create_table("bench", batch, mode="overwrite")
        else:
            table.add(batch)
    write_seconds = time.perf_counter() - started
    count = min(args.lancedb_queries, q_full.shape[0])
    queries = [QueryVectors(dense={DENSE: q_full[i], small_name: q_small[i]}) for i in range(count)]
    exact = Retriever(args.lancedb, "bench", exact=True)
    timings = {}
    started = time.perf_counter()
    truth = [[hit["id"] for hit in exact.search(query, k=args.k)] for query in queries]
    timings["exact_ms_per_query"] = 1000 * (time.perf_counter() - started) / count
    funnel_runs = []
    for shortlist in args.lancedb_shortlists:
        retriever = Retriever(args.lancedb, "bench", exact=True, funnel_shortlist=shortlist)
        started = time.perf_counter()
        found = [[hit["id"] for hit in retriever.search(query, k=args.k, funnel=small_name)] for query in queries]
        seconds = time.perf_counter() - started
        recall = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(found, truth, strict=True)]))
        funnel_runs.append({"shortlist": shortlist, f"recall@{args.k}_vs_exact": recall,
                            "ms_per_query": 1000 * seconds / count,
                            "speedup": timings["exact_ms_per_query"] / (1000 * seconds / count)})
    return {"write_seconds": round(write_seconds, 1), "queries": count, **timings, "funnel": funnel_runs}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--small", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--shortlists", type=lambda s: [int(x) for x in s.split(",")], default=[100, 200, 400, 800])
    parser.add_argument("--engine", choices=("numpy", "faiss"), default="numpy")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single-queries", type=int, default=20, help="queries timed one at a time")
    parser.add_argument("--spread", type=float, default=0.5, help="within-cluster / between-cluster spread")
    parser.add_argument("--decay", type=float, default=1.0, help="variance of dim j ~ 1/(j+1)^decay")
    parser.add_argument("--target", type=float, default=0.99, help="recall the funnel must keep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lancedb", help="also time the LanceDB path, writing the table in this folder")
    parser.add_argument("--lancedb-queries", type=int, default=20)
    parser.add_argument("--lancedb-shortlists", type=lambda s: [int(x) for x in s.split(",")], default=[400])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    result = run(parse_args(argv))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
