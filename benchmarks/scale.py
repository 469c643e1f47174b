"""`make bench-scale`: incremental embed runs over 1M- and 10M-row lakes (issue 12).

The tables are built cheaply: one real run of a random tiny BGE-M3-shaped model over a base of
distinct short texts, then every lake row is a base row copied under a new id, written to the lake's
Parquet shards and (with its vector, text hash and model id) straight into the Lance table. Inputs
and table agree, as if the whole lake had been embedded. Then, on each lake:

    (a) a re-run that checks every row (`--rescan`: the file manifest ignored, every row's hash
        compared), nothing changed;
    (b) the same after 1% of the rows changed, spread over every shard;
    (c) an ordinary run after one new shard of 10k rows was added (10M lake only by default).

Each run is an `embedlake embed` driver process of its own with its own local Ray; the figures are
its wall time, rows/s, peak PSS of the driver and of the largest Ray process. Commit time per batch
is the pipeline's own upsert of one write batch into the 1M and the 10M table.

    python -m benchmarks.scale --sizes 1000000,10000000 --scratch /work/scratch-scale
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.corpus import SAMPLE_DIR
from benchmarks.memory import TreeSampler

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS_FILE = PROJECT_ROOT / "benchmarks" / "RESULTS.md"
ROWS_PER_SHARD = 100_000
ROW_GROUP = 10_000
NEW_SHARD_ROWS = 10_000
BASE_ROWS = 20_000  # distinct texts embedded for real; lake rows repeat them under new ids
MAX_CHARS = 120
CHANGED_EVERY = 100  # (b): one row in a hundred of every shard gets a new text
COMMIT_ROWS = 4096  # rows of one write batch (pipelines/workers.py MAX_ROWS_PER_WRITE)
COMMIT_REPEATS = 5
SAMPLE_SECONDS = 1.0

DRIVER = """
import json, sys
from pipelines.embed import EmbedJob, run_embed
print("SUMMARY " + json.dumps(run_embed(EmbedJob(**json.loads(sys.argv[1])))), flush=True)
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class RunFigures:
    case: str
    rows_in: int
    seconds: float
    driver_peak: int
    worker_peak: int
    worker_name: str
    summary: dict = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds else 0.0


def job_fields() -> set[str]:
    from dataclasses import fields

    from pipelines.embed import EmbedJob

    return {f.name for f in fields(EmbedJob)}


def run_driver(job: dict, case: str) -> RunFigures:
    """One `run_embed` in a driver process of its own; wall time and peaks of its process tree."""
    known = job_fields()
    job = {key: value for key, value in job.items() if key in known}
    started = time.perf_counter()
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(job)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=str(PROJECT_ROOT))
    with TreeSampler(pid=driver.pid, interval=SAMPLE_SECONDS) as sampler:
        stdout, stderr = driver.communicate()
    seconds = time.perf_counter() - started
    if driver.returncode != 0:
        msg = f"{case}: run failed ({driver.returncode}): {stderr[-3000:]}"
        raise RuntimeError(msg)
    summary = json.loads(next(line for line in stdout.splitlines() if line.startswith("SUMMARY "))[8:])
    peak = sampler.peak
    figures = RunFigures(case, summary["rows_in"], seconds, peak.driver_pss, peak.largest_pss, peak.largest_name,
                         summary)
    log(f"{case}: {seconds:.1f} s, {figures.rows_per_s:,.0f} rows/s, driver {peak.driver_pss / 2**20:,.0f} MiB, "
        f"largest worker {peak.largest_pss / 2**20:,.0f} MiB ({peak.largest_name}); "
        + ", ".join(f"{k}={summary.get(k)}" for k in ("rows_written", "rows_unchanged", "rows_quarantined",
                                                         "rows_skipped", "rows_deleted")))
    return figures


def base_texts(count: int) -> list[str]:
    """`count` distinct short texts: sample texts cut to MAX_CHARS, numbered past the first round."""
    sample = pa.concat_tables([pq.read_table(p, columns=["text"]) for p in sorted(SAMPLE_DIR.glob("*.parquet"))])
    texts = [t[:MAX_CHARS] for t in sample.column("text").to_pylist() if t and t.strip()]
    return [texts[i % len(texts)] if i < len(texts) else f"{texts[i % len(texts)][:MAX_CHARS - 8]} #{i}"
            for i in range(count)]


def build_base(scratch: Path, model: str, job_base: dict) -> pa.Table:
    """The real run: BASE_ROWS distinct texts embedded by the pipeline; returns its table rows."""
    import lance

    folder = scratch / "base-input"
    out = scratch / "base-out"
    if not (out / "built").exists():
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        texts = base_texts(BASE_ROWS)
        pq.write_table(pa.table({"id": [f"base-{i}" for i in range(BASE_ROWS)], "text": texts}),
                       folder / "base.parquet", row_group_size=ROW_GROUP)
        run_driver({**job_base, "input": str(folder), "output": str(out), "overwrite": True}, "base run")
        (out / "built").write_text("ok")
    table = lance.dataset(str(out / "docs.lance")).to_table()
    # without Lance's field metadata (the primary-key mark), which the lake's table gets from ensure_table
    table = table.cast(pa.schema([f.remove_metadata() for f in table.schema], metadata=table.schema.metadata))
    order = pc.sort_indices(pc.cast(pc.utf8_slice_codeunits(table.column("id"), 5), pa.int64()))
    return table.take(order)


def shard_rows(shard: int, rows: int, base_count: int, first: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Positions in the base and ids of a lake shard's rows."""
    start = shard * ROWS_PER_SHARD if first is None else first
    positions = np.arange(start, start + rows)
    return positions % base_count, [f"doc-{p:010d}" for p in positions]


def table_target(out: Path, name: str = "docs"):
    """The lake's table as the pipeline addresses it (a TableRef; a LanceTarget in code before it)."""
    try:
        from operators.tables import Lake
    except ImportError:
        from operators.sinks.lance_sink import LanceTarget

        return LanceTarget(str(out), name)
    return Lake(str(out)).table(name)


def lance_dataset(target):
    return target.dataset() if hasattr(target, "dataset") else target.open()


def file_column(schema: pa.Schema) -> str | None:
    """The table column naming each row's source shard, when the pipeline keeps one."""
    try:
        from operators.schema import SOURCE_FILE as FILE
    except ImportError:
        return None
    return FILE if FILE in schema.names else None


def build_lake(scratch: Path, rows: int, base: pa.Table, base_texts_: list[str]) -> tuple[Path, Path]:
    """Input shards of `rows` rows and the table as a run over them would have written it."""
    import lance

    from operators.sinks.lance_sink import ensure_table

    lake = scratch / f"lake-{rows}"
    out = scratch / f"out-{rows}"
    marker = out / "built"
    if marker.exists():
        return lake, out
    shutil.rmtree(lake, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    lake.mkdir(parents=True)
    schema = base.schema
    target = table_target(out)
    ensure_table(target, schema, primary_key="id")
    texts = pa.array(base_texts_, pa.string())
    file_col = file_column(schema)
    shards = rows // ROWS_PER_SHARD

    def table_batches():
        for shard in range(shards):
            path = lake / f"part-{shard:05d}.parquet"
            positions, ids = shard_rows(shard, ROWS_PER_SHARD, base.num_rows)
            take = pa.array(positions)
            pq.write_table(pa.table({"id": ids, "text": texts.take(take)}), path, row_group_size=ROW_GROUP)
            rows_ = base.take(take).set_column(schema.get_field_index("id"), schema.field("id"),
                                               pa.array(ids, pa.string()))
            if file_col:
                rows_ = rows_.set_column(schema.get_field_index(file_col), schema.field(file_col),
                                         pa.array([str(path)] * len(ids), schema.field(file_col).type))
            yield from rows_.cast(schema.remove_metadata()).to_batches()
            if shard % 10 == 9:
                log(f"  lake {rows:,}: {shard + 1}/{shards} shards")

    lance.write_dataset(pa.RecordBatchReader.from_batches(schema.remove_metadata(), table_batches()),
                        target.dataset_uri, mode="append", max_rows_per_file=1_000_000)
    try:  # keep the table's indexes current as a run would
        from operators.sinks.lance_sink import refresh_indexes
    except ImportError:
        refresh_indexes = None
    if refresh_indexes:
        refresh_indexes(target)
    marker.write_text("ok")
    return lake, out


def change_rows(lake: Path) -> int:
    """(b): rewrite every shard with one row in CHANGED_EVERY given a new text."""
    changed = 0
    for path in sorted(lake.glob("part-*.parquet")):
        table = pq.read_table(path)
        texts = table.column("text").to_pylist()
        for i in range(0, len(texts), CHANGED_EVERY):
            texts[i] = f"changed: {texts[i]}"[:MAX_CHARS]
            changed += 1
        pq.write_table(table.set_column(1, "text", pa.array(texts, pa.string())), path, row_group_size=ROW_GROUP)
    return changed


def add_shard(lake: Path, rows: int, base_texts_: list[str]) -> None:
    positions = np.arange(NEW_SHARD_ROWS) % len(base_texts_)
    ids = [f"new-{rows}-{i:06d}" for i in range(NEW_SHARD_ROWS)]
    texts = pa.array(base_texts_, pa.string()).take(pa.array(positions))
    pq.write_table(pa.table({"id": ids, "text": texts}), lake / "part-new.parquet", row_group_size=ROW_GROUP)


def commit_seconds(lake: Path, out: Path, base: pa.Table, rows: int) -> dict:
    """Median seconds of one write batch (COMMIT_ROWS rows) committed the way the pipeline commits:
    an update of existing ids, and an insert of new ids."""
    from operators.sinks.lance_sink import upsert

    target = table_target(out)
    schema = lance_dataset(target).schema
    figures = {}
    for kind in ("update", "insert"):
        times = []
        for repeat in range(COMMIT_REPEATS):
            positions, ids = shard_rows(0, COMMIT_ROWS, base.num_rows,
                                        first=(repeat * 997_331) % (rows - COMMIT_ROWS))
            if kind == "insert":
                ids = [f"commit-{repeat}-{i}" for i in range(COMMIT_ROWS)]
            batch = base.take(pa.array(positions)).set_column(schema.get_field_index("id"), schema.field("id"),
                                                               pa.array(ids, pa.string()))
            col = file_column(schema)
            if col:  # the shard the rows are in (an update that changes nothing a later run would notice)
                first = (repeat * 997_331) % (rows - COMMIT_ROWS)
                shards = [str(lake / f"part-{p // ROWS_PER_SHARD:05d}.parquet")
                          for p in range(first, first + COMMIT_ROWS)]
                if kind == "insert":
                    shards = ["commit-bench"] * COMMIT_ROWS
                batch = batch.set_column(schema.get_field_index(col), schema.field(col),
                                         pa.array(shards, schema.field(col).type))
            started = time.perf_counter()
            upsert(batch, target, schema, "id")
            times.append(time.perf_counter() - started)
        figures[kind] = round(statistics.median(times), 3)
        log(f"  commit of {COMMIT_ROWS} rows ({kind}) into {rows:,} rows: {times}")
    # leave the table as the lake describes it
    lance_dataset(target).delete("id LIKE 'commit-%'")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="lake sizes in rows (multiples of 100k)")
    parser.add_argument("--scratch", default=os.environ.get("SCALE_SCRATCH", "/tmp/embedlake-scale"))
    parser.add_argument("--cases", default="a,b,c", help="which of a (rescan), b (1%% changed), c (new shard)")
    parser.add_argument("--new-shard-sizes", default=None, help="sizes that get case c (default: the largest)")
    parser.add_argument("--object-store-memory", default="1GiB")
    parser.add_argument("--label", default="", help="what code is measured (for RESULTS.md)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch lakes")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    from benchmarks.machine import describe_machine
    from benchmarks.models import build_random_bge_m3
    from pipelines.commands.options import object_store_size

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    cases = {c.strip() for c in args.cases.split(",")}
    c_sizes = {int(s) for s in args.new_shard_sizes.split(",")} if args.new_shard_sizes else {max(sizes)}
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    started = time.time()
    model = str(scratch / "bench-bge-m3-tiny")
    if not (Path(model) / "config.json").exists():
        build_random_bge_m3(model, "tiny", max_positions=512)
    job_base = {"model": model, "outputs": ["dense"], "progress": False,
                "object_store_memory": object_store_size(args.object_store_memory)}
    texts = base_texts(BASE_ROWS)
    base = build_base(scratch, model, job_base)
    results: dict[int, dict] = {}
    for rows in sizes:
        log(f"lake of {rows:,} rows")
        lake, out = build_lake(scratch, rows, base, texts)
        figures: dict = {"runs": {}}
        job = {**job_base, "input": str(lake), "output": str(out), "rescan": True}
        if "a" in cases:
            figures["runs"]["a"] = run_driver(job, f"(a) rescan, {rows:,} rows")
        figures["commit"] = commit_seconds(lake, out, base, rows)
        if "b" in cases:
            figures["changed"] = change_rows(lake)
            figures["runs"]["b"] = run_driver(job, f"(b) rescan, {figures['changed']:,} rows changed")
        if "c" in cases and rows in c_sizes:
            if "b" not in cases:  # the manifest of a complete run over the lake as it is
                run_driver({**job, "rescan": False}, "(c) preparation: ordinary run")
            add_shard(lake, rows, texts)
            figures["runs"]["c"] = run_driver({**job, "rescan": False}, f"(c) new {NEW_SHARD_ROWS:,}-row shard")
        results[rows] = figures
        if not args.keep:
            shutil.rmtree(lake, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    text = report(args.label, machine, results, time.time() - started)
    print(text)
    if not args.no_write:
        with open(RESULTS_FILE, "a") as handle:
            handle.write("\n" + text)
    json_path = PROJECT_ROOT / "benchmarks" / "results" / "scale.json"
    json_path.write_text(json.dumps({str(k): {"commit": v.get("commit"), "runs": {
        c: {"rows_in": r.rows_in, "seconds": round(r.seconds, 1), "driver_peak_mib": r.driver_peak // 2**20,
            "worker_peak_mib": r.worker_peak // 2**20, "worker": r.worker_name, "summary": r.summary}
        for c, r in v["runs"].items()}} for k, v in results.items()}, indent=1))
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def report(label: str, machine: dict, results: dict[int, dict], took: float) -> str:
    lines = [f"## {machine['date']}: `make bench-scale`{': ' + label if label else ''}", "",
             f"- CPU: {machine['cpu']}, {machine['cores']} cores; torch {machine['torch']}, ray {machine['ray']}",
             f"- load average at start {machine['load_average']}, at the end {machine['load_average_end']}; "
             f"took {took:.0f} s",
             "- random tiny BGE-M3-shaped model, dense only; rows of <= 120 characters; shards of 100k rows "
             "(row groups of 10k); 1 GiB object store", "",
             "| case | lake rows | rows in | wall s | rows/s | driver peak | largest worker peak | written | "
             "unchanged | skipped |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    names = {"a": "(a) rescan, nothing changed", "b": "(b) rescan, 1% changed", "c": "(c) one new 10k-row shard"}
    for rows, figures in results.items():
        for case, run in figures["runs"].items():
            s = run.summary
            lines.append(f"| {names[case]} | {rows:,} | {run.rows_in:,} | {run.seconds:,.1f} | {run.rows_per_s:,.0f} | "
                         f"{run.driver_peak / 2**20:,.0f} MiB | {run.worker_peak / 2**20:,.0f} MiB | "
                         f"{s.get('rows_written', 0):,} | {s.get('rows_unchanged', 0):,} | "
                         f"{s.get('rows_skipped', 0):,} |")
    lines.append("")
    for rows, figures in results.items():
        commit = figures.get("commit") or {}
        lines.append(f"- commit of one {COMMIT_ROWS}-row write batch into the {rows:,}-row table (median of "
                     f"{COMMIT_REPEATS}): update {commit.get('update')} s, insert {commit.get('insert')} s")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("RAY_DASHBOARD_ENABLED", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    raise SystemExit(main())
