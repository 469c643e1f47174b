"""Scale benchmark of `embedlake cluster` and `embedlake dedup` on synthetic unit vectors.

    python -m benchmarks.cluster_dedup --rows 100000,1000000 --dim 256 --k 1000

For each size it writes a LanceDB table of clustered unit vectors with planted near-duplicates (cosine
0.992-0.999 to their source) and exact copies (same text_hash and vector), then runs the two commands as
subprocesses, exactly as a user would, and records:
- wall time of each command and its own stage timings (fit, assign, pairwise) from its JSON;
- peak memory: the command's process tree (driver, Ray's services and workers) sampled every 0.25 s, as the
  sum of PSS (proportional set size: shared pages such as Ray's object store counted once) and the driver's
  RSS alone;
- dedup recall and precision on the planted pairs, and the clustering's NMI against the generating topics.
Prints a Markdown table with the growth from the smallest to the largest size, and writes all figures as
JSON (--out). Timings on a shared machine vary; the load average at the start of each run is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from operators.schema import DENSE, DUPLICATE_OF, ID, MODEL, TEXT_HASH
from operators.vectors import normalize_rows, to_vector_array

TABLE = "bench"
TOPIC = "topic"
CHUNK_ROWS = 100_000
# Hierarchical topics, like real embeddings: topic centres at cosine 0.6-0.8 to one of SUPER_TOPICS broad
# directions, rows at cosine 0.5-0.8 to their topic centre (MiniLM rows on the sample corpus sit at ~0.5-0.6
# to their k-means centroid).
SUPER_TOPICS = 32
TOPIC_COSINE = (0.6, 0.8)
ROW_COSINE = (0.5, 0.8)
NEAR_COSINE = (0.992, 0.999)
SAMPLE_SECONDS = 0.25


@dataclass
class Planted:
    near: dict[str, str] = field(default_factory=dict)  # copy id -> source id
    exact: dict[str, str] = field(default_factory=dict)


def perturb(x: np.ndarray, cosine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at exactly the given cosine to each row of x (x unit length)."""
    noise = rng.normal(size=x.shape).astype(np.float32)
    noise -= (noise * x).sum(axis=1, keepdims=True) * x  # orthogonal to x
    noise = normalize_rows(noise)
    cosine = cosine[:, None].astype(np.float32)
    return normalize_rows(cosine * x + np.sqrt(1 - cosine**2) * noise)


def synthetic_batches(
    rows: int, dim: int, topics: int, near_fraction: float, exact_fraction: float, seed: int, planted: Planted
):
    """Chunks of (id, text_hash, model, dense, topic); the last rows of each chunk are planted copies of
    earlier rows of the same chunk."""
    rng = np.random.default_rng(seed)
    supers = normalize_rows(rng.normal(size=(SUPER_TOPICS, dim)).astype(np.float32))
    centres = perturb(supers[rng.integers(0, SUPER_TOPICS, topics)], rng.uniform(*TOPIC_COSINE, topics), rng)
    for start in range(0, rows, CHUNK_ROWS):
        n = min(CHUNK_ROWS, rows - start)
        n_near, n_exact = int(n * near_fraction), int(n * exact_fraction)
        n_base = n - n_near - n_exact
        topic = rng.integers(0, topics, n_base)
        base = perturb(centres[topic], rng.uniform(*ROW_COSINE, n_base), rng)
        near_src = rng.choice(n_base, n_near, replace=False)
        exact_src = rng.choice(n_base, n_exact, replace=False)
        near = perturb(base[near_src], rng.uniform(*NEAR_COSINE, n_near), rng)
        vectors = np.vstack([base, near, base[exact_src]])
        ids = [f"r{start + i:08d}" for i in range(n)]
        hashes = [f"h{start + i:08d}" for i in range(n)]
        for j, src in enumerate(near_src):
            planted.near[ids[n_base + j]] = ids[src]
        for j, src in enumerate(exact_src):
            planted.exact[ids[n_base + n_near + j]] = ids[src]
            hashes[n_base + n_near + j] = hashes[src]
        topics_all = np.concatenate([topic, topic[near_src], topic[exact_src]])
        yield pa.table(
            {
                ID: ids,
                TEXT_HASH: hashes,
                MODEL: ["synthetic"] * n,
                DENSE: to_vector_array(vectors),
                TOPIC: pa.array(topics_all.astype(np.int32)).cast(pa.string()),
            }
        )


def write_synthetic(uri: str, rows: int, dim: int, topics: int, args) -> Planted:
    import lancedb

    planted = Planted()
    batches = synthetic_batches(
        rows, dim, topics, args.near_fraction, args.exact_fraction, args.seed, planted
    )
    first = next(batches)
    table = lancedb.connect(uri).create_table(TABLE, first, mode="overwrite")
    for batch in batches:
        table.add(batch)
    return planted


class TreeMemory:
    """Peak memory of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.peak_pss = 0
        self.peak_driver_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                processes = [self.root, *self.root.children(recursive=True)]
                self.peak_driver_rss = max(self.peak_driver_rss, self.root.memory_info().rss)
            except psutil.Error:
                break
            total = 0
            for process in processes:
                try:
                    total += process.memory_full_info().pss
                except psutil.Error:
                    continue
            self.peak_pss = max(self.peak_pss, total)
            self._stop.wait(SAMPLE_SECONDS)


def command_record(argv: list[str], keys: tuple[str, ...]) -> dict:
    """Run one command; its wall seconds, per-stage seconds, memory peaks and the result's `keys`."""
    result, seconds, memory = run_command(argv)
    return {
        "seconds": seconds,
        "stages": result["seconds"],
        "peak_tree_pss_mb": memory.peak_pss / 2**20,
        "peak_driver_rss_mb": memory.peak_driver_rss / 2**20,
        **{key: result[key] for key in keys},
    }


def run_command(argv: list[str]) -> tuple[dict, float, TreeMemory]:
    """One `embedlake` command in a fresh process: its JSON result, wall seconds, and memory peaks."""
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *argv, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    with TreeMemory(process.pid) as memory:
        out, err = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        msg = f"{' '.join(argv[:1])} failed ({process.returncode}): {err.strip().splitlines()[-1:]}"
        raise RuntimeError(msg)
    return json.loads(out.strip().splitlines()[-1]), seconds, memory


def score_dedup(uri: str, planted: Planted) -> dict:
    """Recall: planted pairs whose copy and source end in one group. Precision: flagged rows that belong to
    a planted family (a source and its copies) and point inside it."""
    import lancedb

    duplicates = lancedb.connect(uri).open_table(f"{TABLE}_duplicates").to_arrow()
    keeper = dict(
        zip(duplicates.column(ID).to_pylist(), duplicates.column(DUPLICATE_OF).to_pylist(), strict=True)
    )
    family = {copy: source for pairs in (planted.near, planted.exact) for copy, source in pairs.items()}

    def group(row: str) -> str:
        return keeper.get(row, row)

    def found(pairs: dict[str, str]) -> float:
        return sum(group(c) == group(s) for c, s in pairs.items()) / max(len(pairs), 1)

    correct = sum(family.get(row, row) == family.get(kept, kept) for row, kept in keeper.items())
    return {
        "recall_near": found(planted.near),
        "recall_exact": found(planted.exact),
        "precision": correct / max(len(keeper), 1),
        "planted_near": len(planted.near),
        "planted_exact": len(planted.exact),
    }


def bench_size(rows: int, args, root: str) -> dict:
    uri = os.path.join(root, f"lake_{rows}")
    started = time.perf_counter()
    planted = write_synthetic(uri, rows, args.dim, args.topics or args.k, args)
    record: dict = {
        "rows": rows,
        "dim": args.dim,
        "k": args.k,
        "generate_seconds": time.perf_counter() - started,
    }
    record["load_average"] = os.getloadavg()[0]
    record["cluster"] = command_record(
        ["cluster", uri, "--table", TABLE, "--k", str(args.k), "--labels-column", TOPIC],
        ("nmi", "silhouette", "davies_bouldin", "empty_clusters"),
    )
    record["dedup"] = command_record(["dedup", uri, "--table", TABLE, "--eps", str(args.eps)],
                                     ("k", "duplicates", "removed_fraction"))
    record["dedup"].update(score_dedup(uri, planted))
    if not args.keep_tables:
        shutil.rmtree(uri, ignore_errors=True)
    return record


def markdown(records: list[dict]) -> str:
    lines = [
        "| rows | job | wall s | stages (s) | peak tree PSS MB | peak driver RSS MB | quality |",
        "|---:|---|---:|---|---:|---:|---|",
    ]
    for r in records:
        c, d = r["cluster"], r["dedup"]
        c_stages = ", ".join(f"{key} {value:.1f}" for key, value in c["stages"].items())
        d_stages = ", ".join(f"{key} {value:.1f}" for key, value in d["stages"].items())
        c_quality = f"NMI {c['nmi']:.3f}, silhouette {c['silhouette']:.3f}, DB {c['davies_bouldin']:.2f}"
        d_quality = (
            f"k {d['k']}, recall near {d['recall_near']:.4f} / exact {d['recall_exact']:.4f}, "
            f"precision {d['precision']:.4f}"
        )
        lines.append(
            f"| {r['rows']:,} | cluster k={r['k']} | {c['seconds']:.1f} | {c_stages} | "
            f"{c['peak_tree_pss_mb']:.0f} | {c['peak_driver_rss_mb']:.0f} | {c_quality} |"
        )
        lines.append(
            f"| {r['rows']:,} | dedup | {d['seconds']:.1f} | {d_stages} | "
            f"{d['peak_tree_pss_mb']:.0f} | {d['peak_driver_rss_mb']:.0f} | {d_quality} |"
        )
    if len(records) > 1:
        small, large = records[0], records[-1]
        factor = large["rows"] / small["rows"]
        for job in ("cluster", "dedup"):
            time_growth = large[job]["seconds"] / small[job]["seconds"]
            memory_growth = large[job]["peak_tree_pss_mb"] / small[job]["peak_tree_pss_mb"]
            lines.append(
                f"\n{job}: {factor:g}x rows -> {time_growth:.1f}x wall time, {memory_growth:.1f}x peak memory"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,1000000", help="comma-separated table sizes")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=1000, help="clusters for `embedlake cluster`")
    parser.add_argument("--topics", type=int, default=None, help="generating topics (default: k)")
    parser.add_argument("--eps", type=float, default=0.01)
    parser.add_argument("--near-fraction", type=float, default=0.02, help="planted near-duplicates per row")
    parser.add_argument("--exact-fraction", type=float, default=0.005, help="planted exact copies per row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="where the tables go (default: a temporary folder)")
    parser.add_argument("--keep-tables", action="store_true")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    root = args.workdir or tempfile.mkdtemp(prefix="embedlake-bench-")
    records = []
    try:
        for rows in (int(part) for part in args.rows.split(",")):
            print(f"benchmarking {rows:,} rows x {args.dim}-d ...", file=sys.stderr, flush=True)
            records.append(bench_size(rows, args, root))
            print(json.dumps(records[-1]), file=sys.stderr, flush=True)
    finally:
        if not args.workdir and not args.keep_tables:
            shutil.rmtree(root, ignore_errors=True)
    print(markdown(records))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(records, handle, indent=1)
    return records


if __name__ == "__main__":
    main()
