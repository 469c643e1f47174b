"""Issue 16's figures: classification on the sample's 18 sections, STS-style correlations per nested size, and
the k-NN graph's time and recall at scale.

    python -m benchmarks.uses --out benchmarks/results/uses.json [--skip-sample] [--neighbor-rows 100000,1000000]
    python -m benchmarks.uses --skip-sample --neighbor-rows 1000000 --out ...   # one step: neighbors at 1M (ANN)
    python -m benchmarks.uses --skip-sample --neighbor-rows '' --ann-probe 100000 --out ...   # ANN costs, no Ray

Everything runs as a user runs it: `embedlake` subprocesses (benchmarks/cluster_dedup.py run_command, which also
samples the process tree's memory), JSON results read from their last line.

- Sample: `embed` the 2,714 sample documents with MiniLM (`--dims 256,128,64 --keep-columns section,text`), then
  `classify --labels-column section` (5 folds, TF-IDF baseline), `evaluate --pairs` on graded pairs built from the
  sample (below), `neighbors` exact and (forced) ANN on the 2,714 rows.
- Pairs: there is no human-scored STS set on this machine, so the pairs are a proxy graded by Debian's own
  metadata: (a package's synopsis, its own description) = 2, (synopsis, the description of another package of the
  same section) = 1, (synopsis, a description from another section) = 0; 200 synopses, 600 pairs, fixed seed.
- Scale: synthetic clustered unit vectors (benchmarks/cluster_dedup.py's hierarchical topics, no planted copies)
  at each size of --neighbor-rows in --dim dimensions; `neighbors --method exact` up to --exact-up-to rows (the
  peer, same run) and the other --neighbor-methods (ivf by default; ann) with recall@10 on 1,000 sampled rows,
  wall seconds per stage, rows/s and `uptime` before and after each; the graph's recall is also re-checked here
  with a numpy brute force on its own 1,000-row sample.
- ANN probe (`--ann-probe ROWS`, no Ray, no subprocess): each index type's build and 1,000 queries searched as
  `neighbors` searches them, in CPU seconds of this process (Lance's threads included), recall@10 against numpy,
  and the search CPU a whole graph of ROWS rows would take at that rate: the figures a loaded machine distorts
  least, for sizes the full run cannot reach in the time there is.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from benchmarks.cluster_dedup import Planted, run_command, synthetic_batches
from operators.schema import DENSE, ID
from operators.vectors import as_matrix

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "sample")
TABLE = "docs"


def graded_pairs(path: str, synopses: int = 200, seed: int = 16) -> int:
    """The proxy STS pairs described in the module docstring; returns how many."""
    table = ds.dataset(SAMPLE_DIR).to_table(columns=[ID, "title", "text", "section"])
    rng = np.random.default_rng(seed)
    sections = np.asarray(table.column("section").to_pylist(), dtype=object)
    titles, texts = table.column("title").to_pylist(), table.column("text").to_pylist()
    rows = {"text_a": [], "text_b": [], "score": []}
    for i in rng.choice(len(titles), synopses, replace=False):
        same = np.flatnonzero((sections == sections[i]) & (np.arange(len(titles)) != i))
        other = np.flatnonzero(sections != sections[i])
        for j, score in ((i, 2.0), (rng.choice(same), 1.0), (rng.choice(other), 0.0)):
            rows["text_a"].append(titles[i])
            rows["text_b"].append(texts[j])
            rows["score"].append(score)
    pq.write_table(pa.table(rows), path)
    return len(rows["score"])


def bench_sample(root: str) -> dict:
    lake = os.path.join(root, "sample_lake")
    embed, embed_seconds, _ = run_command(["embed", SAMPLE_DIR, lake, "--table", TABLE, "--dims", "256,128,64",
                                           "--keep-columns", "section,text", "--no-progress"])
    record: dict = {"embed": {"rows_written": embed.get("rows_written"), "seconds": round(embed_seconds, 1)}}
    classify, seconds, memory = run_command(["classify", lake, "--table", TABLE, "--labels-column", "section",
                                             "--folds", "5", "--report", os.path.join(root, "classify.json")])
    record["classify"] = {**classify, "wall_seconds": round(seconds, 1), "peak_pss_mib": memory.peak_pss >> 20}
    pairs = os.path.join(root, "pairs.parquet")
    graded_pairs(pairs)
    sts, seconds, _ = run_command(["evaluate", lake, "--table", TABLE, "--pairs", pairs, "--report",
                                   os.path.join(root, "sts.json")])
    record["sts"] = {**sts["sts"], "wall_seconds": round(seconds, 1)}
    for method in ("exact", "ann"):
        try:
            result, seconds, memory = run_command(["neighbors", lake, "--table", TABLE, "--k", "10", "--method",
                                                   method, "--index-type", "IVF_HNSW_SQ"])
        except RuntimeError as error:  # e.g. Ray not starting on a saturated machine: keep the figures so far
            record[f"neighbors_{method}"] = {"error": str(error)}
            continue
        record[f"neighbors_{method}"] = {**result, "wall_seconds": round(seconds, 1),
                                         "peak_pss_mib": memory.peak_pss >> 20}
    return record


def write_vectors(uri: str, rows: int, dim: int, seed: int) -> None:
    """The synthetic table, served as embed leaves a table: readers read the `serving` tag (so `neighbors`
    builds its index for the serving version and publishes it, docs/lifecycle.md)."""
    import lance
    import lancedb

    from operators.tables import SERVING

    options = SimpleNamespace(near_fraction=0.0, exact_fraction=0.0, seed=seed)
    batches = synthetic_batches(rows, dim, max(10, rows // 1000), options.near_fraction, options.exact_fraction,
                                options.seed, Planted())
    table = None
    for batch in batches:
        batch = batch.select([ID, DENSE])
        if table is None:
            table = lancedb.connect(uri).create_table(TABLE, batch, mode="overwrite")
        else:
            table.add(batch)
    dataset = lance.dataset(os.path.join(uri, f"{TABLE}.lance"))
    dataset.tags.create(SERVING, dataset.version)


def brute_recall(uri: str, sample: int, k: int, seed: int) -> float:
    """Recall@k of the written graph on `sample` rows against a numpy brute force over the whole column."""
    import lance

    data = lance.dataset(os.path.join(uri, f"{TABLE}.lance")).to_table(columns=[ID, DENSE])
    ids = np.asarray(data.column(ID).to_pylist(), dtype=object)
    matrix = as_matrix(data.column(DENSE))
    picked = np.random.default_rng(seed + 1).choice(len(ids), sample, replace=False)
    graph = lance.dataset(os.path.join(uri, f"{TABLE}_neighbors.lance"))
    quoted = ", ".join(f"'{ids[i]}'" for i in picked)
    edges = graph.to_table(columns=[ID, "neighbor"], filter=f"{ID} IN ({quoted})")
    found: dict[str, set] = {}
    for doc, neighbor in zip(edges.column(ID).to_pylist(), edges.column("neighbor").to_pylist(), strict=True):
        found.setdefault(doc, set()).add(neighbor)
    values = []
    for start in range(0, sample, 100):
        block = picked[start:start + 100]
        scores = matrix[block] @ matrix.T
        scores[np.arange(len(block)), block] = -np.inf
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        values.extend(len(found.get(ids[i], set()) & set(ids[row].tolist())) / k
                      for i, row in zip(block, top, strict=True))
    return float(np.mean(values))


def uptime() -> str:
    """`uptime`'s line: the machine's load when a figure was taken."""
    import subprocess

    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def bench_neighbors(root: str, rows: int, dim: int, exact_up_to: int, seed: int,
                    methods: tuple[str, ...] = ("exact", "ivf"), probes: int | None = None) -> dict:
    uri = os.path.join(root, f"vectors_{rows}")
    write_vectors(uri, rows, dim, seed)
    record: dict = {"rows": rows, "dim": dim, "load_average": [round(x, 2) for x in os.getloadavg()],
                    "uptime": uptime()}
    for method in [m for m in methods if m != "exact" or rows <= exact_up_to]:
        record[f"{method}_uptime_before"] = uptime()
        try:
            extra = ["--probes", str(probes)] if probes and method == "ivf" else []
            result, seconds, memory = run_command(["neighbors", uri, "--table", TABLE, "--k", "10", "--method",
                                                   method, "--recall-sample", "1000", "--seed", str(seed), *extra])
        except RuntimeError as error:  # keep the figures so far
            record[method] = {"error": str(error)}
            continue
        record[method] = {**result, "wall_seconds": round(seconds, 1), "rows_per_second": round(rows / seconds, 1),
                          "peak_pss_mib": memory.peak_pss >> 20}
        record[f"{method}_uptime_after"] = uptime()
        if method != "exact":
            record[method]["numpy_recall@10"] = brute_recall(uri, 1000, 10, seed)
    record["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    record["uptime_end"] = uptime()
    shutil.rmtree(uri, ignore_errors=True)
    return record


def process_cpu_seconds() -> float:
    """User + system CPU of this process, all its threads (Lance builds and searches on a thread pool)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def probe_ann(root: str, rows: int, dim: int, seed: int, queries: int = 1000, k: int = 10) -> dict:
    """The ANN path's costs without Ray, in CPU seconds (what a loaded machine distorts least): for each index
    type, the build, then `queries` rows searched as `neighbors` searches them (AnnNeighbors, the plan's nprobes
    and refine factor) with recall@k against a numpy brute force, and the CPU a whole graph of `rows` rows would
    take at that rate."""
    import lancedb

    from operators.neighbors import AnnNeighbors
    from operators.search.ann import create_index
    from operators.search.index_plan import INDEX_METRIC, IndexType, plan_index

    uri = os.path.join(root, f"probe_{rows}")
    write_vectors(uri, rows, dim, seed)
    table = lancedb.connect(uri).open_table(TABLE)
    data = table.to_arrow().select([ID, DENSE])
    ids = np.asarray(data.column(ID).to_pylist(), dtype=object)
    matrix = as_matrix(data.column(DENSE))
    picked = np.random.default_rng(seed).choice(rows, queries, replace=False)
    scores = matrix[picked] @ matrix.T
    scores[np.arange(queries), picked] = -np.inf
    truth = {ids[i]: set(ids[np.argpartition(-row, k)[:k]].tolist()) for i, row in zip(picked, scores, strict=True)}
    record: dict = {"rows": rows, "dim": dim, "queries": queries,
                    "load_average": [round(x, 2) for x in os.getloadavg()]}
    for index_type in (IndexType.IVF_HNSW_SQ, IndexType.IVF_PQ):
        plan = plan_index(DENSE, rows, dim, index_type)
        started = process_cpu_seconds()
        wall = create_index(table, plan)
        build_cpu = process_cpu_seconds() - started
        searcher = AnnNeighbors(lancedb.connect(uri).open_table(TABLE), DENSE, k, INDEX_METRIC, nprobes=plan.nprobes,
                                refine_factor=plan.refine_factor)
        started = process_cpu_seconds()
        found_edges = searcher(data.take(pa.array(picked)))
        search_cpu = process_cpu_seconds() - started
        found: dict[str, set] = {}
        for doc, neighbor in zip(found_edges.column(ID).to_pylist(), found_edges.column("neighbor").to_pylist(),
                                 strict=True):
            found.setdefault(doc, set()).add(neighbor)
        recall = float(np.mean([len(found.get(doc, set()) & exact) / k for doc, exact in truth.items()]))
        record[str(index_type)] = {
            "num_partitions": plan.num_partitions, "num_sub_vectors": plan.num_sub_vectors, "nprobes": plan.nprobes,
            "refine_factor": plan.refine_factor, "build_wall_seconds": round(wall, 1),
            "build_cpu_seconds": round(build_cpu, 1), f"recall@{k}": recall,
            "search_cpu_ms_per_query": round(1000 * search_cpu / queries, 3),
            "graph_search_cpu_seconds_projected": round(search_cpu / queries * rows, 1)}
    record["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    shutil.rmtree(uri, ignore_errors=True)
    return record


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON file for every figure")
    parser.add_argument("--skip-sample", action="store_true")
    parser.add_argument("--neighbor-rows", default="100000,1000000", help="sizes of the k-NN graph runs ('' none)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--exact-up-to", type=int, default=100_000, help="also run exact up to this size")
    parser.add_argument("--neighbor-methods", default="exact,ivf",
                        help="neighbors methods to run at each size (exact only up to --exact-up-to; ann: one index "
                             "query per row, ~3.6 CPU ms per row)")
    parser.add_argument("--probes", type=int, help="neighbors --probes for the ivf runs (default: the command's)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--scratch", help="scratch folder (default: a temporary one)")
    parser.add_argument("--ann-probe", default="", help="sizes at which to probe the ANN path's CPU costs and recall "
                                                      "without Ray (probe_ann; '' none)")
    args = parser.parse_args(argv)
    from benchmarks.machine import describe_machine

    results: dict = {"machine": describe_machine()}
    with tempfile.TemporaryDirectory(dir=args.scratch) as root:
        if not args.skip_sample:
            results["sample"] = bench_sample(root)
            _save(results, args.out)
        probes = [int(r) for r in args.ann_probe.split(",") if r.strip()]
        if probes:
            results["ann_probe"] = []
        for rows in probes:
            results["ann_probe"].append(probe_ann(root, rows, args.dim, args.seed))
            _save(results, args.out)
        results["neighbors"] = []
        for rows in [int(r) for r in args.neighbor_rows.split(",") if r.strip()]:
            results["neighbors"].append(bench_neighbors(root, rows, args.dim, args.exact_up_to, args.seed,
                                                        tuple(m for m in args.neighbor_methods.split(",") if m),
                                                        args.probes))
            _save(results, args.out)
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    _save(results, args.out)
    print(json.dumps(results, indent=2, default=str))
    return results


def _save(results: dict, path: str | None) -> None:
    if path:
        with open(path, "w") as handle:
            json.dump(results, handle, indent=2, default=str)


if __name__ == "__main__":
    main()
    sys.exit(0)
