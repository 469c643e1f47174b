"""`make bench-lifecycle`: storage over nightly incremental runs with and without retention, and what reading
through the `serving` tag costs a reader (issue 13).

Two arms get the same nights: one runs the nightly job as shipped (each run ends with compaction and retention,
`--keep-runs 3`), the other with `--no-maintain`. After each night: bytes under the table's folders (table,
`_files`, `_runs`, `_quarantine`, sparse index), stored versions and fragments.

- `--driver tables` (default, what `make bench-lifecycle` runs): the embed job's table steps (begin_run, the
  writers' upserts in commits of `--rows-per-write` rows, the manifest, refresh, publish, retain) driven
  directly, with random unit vectors in the four dense columns MiniLM with `--dims 256,128,64` writes: no Ray
  and no encoder, so that a 100k-row table and ten nights take minutes on two cores. Night 0 writes
  `--base-rows` rows in `--shards` shards; each night after, `--changed` rows of one shard get new vectors and
  a new shard of `--new-rows` rows arrives.
- `--driver pipeline`: the real embed job (MiniLM, one local Ray) over the sample's first `--base-rows` rows;
  each night `--changed` rows of one shard get new texts and a new shard arrives. Night 0 is embedded once and
  copied to the second arm.

Then reader costs on both tables, interleaved, median of `--repeats`: opening the table as readers did
before serving tags (the latest version), as they do now (the version the tag names; with and without
the one-model check), and a whole dense search (open, load the query encoder, encode, top 10).

    make bench-lifecycle                                           # --driver tables --nights 10, 100k rows
    python -m benchmarks.lifecycle --driver pipeline --base-rows 900 --shards 3 --changed 30 --new-rows 30
    python -m benchmarks.lifecycle --readers-only --repeats 50    # reader costs again, on the tables left
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.corpus import SAMPLE_DIR

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS_FILE = PROJECT_ROOT / "benchmarks" / "RESULTS.md"
TABLE = "docs"
QUERY = "fast compression library for large files"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load() -> list[float]:
    return [round(x, 1) for x in os.getloadavg()]


def make_lake(lake: Path, rows: int, shards: int) -> None:
    """The first `rows` rows of the shipped sample, in `shards` shards."""
    import pyarrow.dataset as ds

    table = ds.dataset(str(SAMPLE_DIR)).to_table(columns=["id", "text", "title", "section"]).slice(0, rows)
    lake.mkdir(parents=True)
    per_shard = -(-table.num_rows // shards)
    for shard in range(shards):
        pq.write_table(table.slice(shard * per_shard, per_shard), lake / f"part-{shard}.parquet")


def night_change(lake: Path, night: int, changed: int, new_rows: int) -> None:
    """Night `night`'s drop: new texts for `changed` rows of one shard (rotating), one new shard."""
    shards = sorted(p for p in lake.glob("*.parquet") if not p.name.startswith("drop-"))
    target = shards[night % len(shards)]
    table = pq.read_table(target)
    texts = table.column("text").to_pylist()
    start = (night * changed) % max(1, len(texts) - changed)
    for i in range(start, start + changed):
        texts[i] = f"{texts[i]} (revised, night {night})"
    table = table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))
    pq.write_table(table, target)
    source = pq.read_table(shards[(night + 1) % len(shards)]).slice(0, new_rows)
    ids = [f"{value}-night{night}" for value in source.column("id").to_pylist()]
    drop = source.set_column(source.schema.get_field_index("id"), "id", pa.array(ids, pa.string()))
    pq.write_table(drop, lake / f"drop-{night:02d}.parquet")


def run_night(lake: Path, output: Path, maintain: bool, actors: int) -> dict:
    from pipelines.embed import EmbedJob, run_embed

    job = EmbedJob(input=str(lake), output=str(output), table=TABLE, model="minilm", dims=[256, 128, 64],
                   actors=actors, sync_deletes=True, maintain=maintain, progress=False)
    started = time.perf_counter()
    summary = run_embed(job)
    summary["wall_seconds"] = round(time.perf_counter() - started, 2)
    return summary


class SyntheticTable:
    """The embed job's table steps driven directly, without Ray or an encoder: the table MiniLM with `--dims
    256,128,64` writes (random unit vectors in its four dense columns), upserted in commits of `rows_per_write`
    rows as the writers commit, then the run's end as run_embed does it (manifest, refresh, publish, retain)."""

    def __init__(self, output: Path, rows_per_write: int) -> None:
        from operators.encoders.base import EncoderSpec
        from operators.encoders.loader import describe_encoder
        from operators.manifest import FileManifest
        from operators.schema import embeddings_schema
        from operators.table_meta import TableMeta, with_meta
        from operators.tables import Lake

        description = describe_encoder(EncoderSpec(model="minilm", dims=[256, 128, 64]))
        self.model_id = description.model_id
        meta = TableMeta(model="minilm", model_id=self.model_id, kind="mrl", dims=description.dims,
                         outputs=[f.name for f in description.fields], max_length=description.max_length)
        self.schema = with_meta(embeddings_schema(description.fields), meta)
        self.lake = Lake(str(output))
        self.ref = self.lake.table(TABLE)
        self.manifest = FileManifest(self.lake, TABLE)
        self.rows_per_write = rows_per_write
        self.rng = __import__("numpy").random.default_rng(0)

    def rows(self, ids: list[str], shard: str, night: int) -> pa.Table:
        import numpy as np

        from operators.schema import ID, MODEL, SOURCE_FILE, TEXT_HASH

        raw = self.rng.normal(size=(len(ids), 384)).astype(np.float32)
        columns = {ID: pa.array(ids), TEXT_HASH: pa.array([f"{night}-{i}" for i in ids]),
                   MODEL: pa.array([self.model_id] * len(ids)), SOURCE_FILE: pa.array([shard] * len(ids))}
        for field in self.schema:
            if pa.types.is_fixed_size_list(field.type):
                width = field.type.list_size
                part = raw[:, :width] / np.linalg.norm(raw[:, :width], axis=1, keepdims=True)
                columns[field.name] = pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), width)
        return pa.table([columns.get(f.name, pa.nulls(len(ids), f.type)) for f in self.schema],
                        schema=self.schema.remove_metadata())

    def run(self, writes: dict[str, list[str]], night: int, maintain: bool, retention) -> dict:
        from operators.maintenance import refresh, retain
        from operators.schema import ID
        from operators.serving import begin_run, mark_building, publish
        from operators.sinks.lance_sink import upsert

        started = time.perf_counter()
        base = begin_run(self.ref, self.manifest.target, self.schema, ID)
        mark_building(self.ref, base.serving)
        for shard, ids in writes.items():
            for start in range(0, len(ids), self.rows_per_write):
                upsert(self.rows(ids[start:start + self.rows_per_write], shard, night), self.ref, self.schema, ID)
        self.manifest.record({shard: (f"v{night}", len(ids)) for shard, ids in writes.items()}, self.model_id,
                             f"night{night}")
        refresh(self.ref, compact=maintain)
        published = publish(self.ref, self.manifest.target, f"night{night}", base.serving)
        if maintain:
            retain(self.lake, TABLE, retention)
        return {"wall_seconds": round(time.perf_counter() - started, 2), "version": published.version,
                "rows_written": sum(len(ids) for ids in writes.values())}


def run_tables(args, outputs: dict[str, Path]) -> list[dict]:
    """Nights through SyntheticTable: night 0 writes `base_rows` rows in `shards` shards; each night after, the
    rows `changed` of one shard get new vectors and a new shard of `new_rows` rows arrives."""
    from operators.maintenance import Retention

    retention = Retention(keep_runs=3)
    tables = {arm: SyntheticTable(out, args.rows_per_write) for arm, out in outputs.items()}
    per_shard = -(-args.base_rows // args.shards)
    base = {f"part-{s}.parquet": [f"doc{s}-{i:07d}" for i in range(per_shard)] for s in range(args.shards)}
    nights = []
    for night in range(args.nights + 1):
        if night == 0:
            writes = base
        else:
            shard = f"part-{night % args.shards}.parquet"
            offset = (night * args.changed) % max(1, per_shard - args.changed)
            writes = {shard: base[shard][offset:offset + args.changed],
                      f"drop-{night:02d}.parquet": [f"new{night}-{i:06d}" for i in range(args.new_rows)]}
        row: dict = {"night": night}
        for arm, table in tables.items():
            summary = table.run(writes, night, arm == "maintained", retention)
            row[arm] = {**footprint(outputs[arm]), **summary}
        nights.append(row)
        log(f"night {night}: " + ", ".join(f"{arm} {row[arm]['bytes']:,} B / {row[arm]['versions']} versions / "
                                            f"{row[arm]['wall_seconds']} s" for arm in tables))
    return nights


def footprint(output: Path) -> dict:
    from operators.maintenance import bytes_on_disk
    from operators.tables import Lake

    lake = Lake(str(output))
    dataset = lake.table(TABLE).dataset()
    return {"bytes": bytes_on_disk(lake, TABLE), "versions": len(dataset.versions()),
            "fragments": len(dataset.get_fragments()), "rows": dataset.count_rows()}


def reader_costs(output: Path, repeats: int) -> dict:
    """Median seconds of each way to open the table, and of a whole search through the old and the new way."""
    import lance

    from operators.search.retriever import Retriever
    from operators.tables import Lake

    ref = Lake(str(output)).table(TABLE)
    uri = ref.dataset_uri
    cases = {
        "open latest (before serving tags)": lambda: lance.dataset(uri).version,
        "open serving tag, no model check": lambda: ref.snapshot(check_model=False).version,
        "open serving tag + one-model check (readers now)": lambda: ref.snapshot().version,
        "search: open + encode + top-10 (readers now)": lambda: Retriever(str(output), TABLE).search(QUERY, k=10),
    }
    for case in cases.values():  # warm caches and the encoder's first load
        case()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            started = time.perf_counter()
            case()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def run_pipeline(args, scratch: Path, outputs: dict[str, Path]) -> list[dict]:
    """Nights through the real embed job (one local Ray for all): night 0 embeds the lake once, then each night's
    change lands in both arms' lakes."""
    from pipelines.ray_runtime import start_ray

    lakes = {arm: scratch / f"lake-{arm}" for arm in outputs}
    start_ray(num_cpus=os.cpu_count(), object_store_memory=512 * 1024**2)
    make_lake(lakes["maintained"], args.base_rows, args.shards)
    log("night 0: the whole lake")
    first = run_night(lakes["maintained"], outputs["maintained"], True, args.actors)
    shutil.copytree(lakes["maintained"], lakes["unmaintained"])
    shutil.copytree(outputs["maintained"], outputs["unmaintained"])
    nights = [{"night": 0, **{arm: {**footprint(outputs[arm]), "wall_seconds": first["wall_seconds"]}
                              for arm in outputs}}]
    for night in range(1, args.nights + 1):
        row: dict = {"night": night}
        for arm in outputs:
            night_change(lakes[arm], night, args.changed, args.new_rows)
            summary = run_night(lakes[arm], outputs[arm], arm == "maintained", args.actors)
            row[arm] = {**footprint(outputs[arm]), "wall_seconds": summary["wall_seconds"],
                        "rows_written": summary["rows_written"], "version": summary["version"]}
        nights.append(row)
        log(f"night {night}: " + ", ".join(f"{arm} {row[arm]['bytes']:,} B / {row[arm]['versions']} versions / "
                                            f"{row[arm]['wall_seconds']} s" for arm in outputs))
    return nights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver", choices=["tables", "pipeline"], default="tables",
                        help="tables: the embed job's table steps with random vectors (no Ray, no encoder); "
                             "pipeline: the real embed job with MiniLM over the sample")
    parser.add_argument("--nights", type=int, default=10)
    parser.add_argument("--base-rows", type=int, default=100_000, help="rows of the first night")
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--changed", type=int, default=1_000, help="rows of one shard changed per night")
    parser.add_argument("--new-rows", type=int, default=1_000, help="rows in the new shard per night")
    parser.add_argument("--rows-per-write", type=int, default=1_024, help="tables driver: rows per commit")
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--scratch", default="/tmp/bench-lifecycle")
    parser.add_argument("--out", default=str(PROJECT_ROOT / "benchmarks" / "results" / "lifecycle.json"))
    parser.add_argument("--readers-only", action="store_true",
                        help="only measure reader costs, on the tables a previous run left in --scratch")
    parser.add_argument("--no-results", dest="write_results", action="store_false",
                        help="do not append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()

    scratch = Path(args.scratch)
    if args.readers_only:  # reader costs again, on the tables a previous run left in --scratch
        readers = {arm: reader_costs(scratch / f"out-{arm}", args.repeats) for arm in ("maintained", "unmaintained")}
        print(json.dumps({"readers": readers, "load_end": load()}, indent=1))
        return
    shutil.rmtree(scratch, ignore_errors=True)
    started, began = time.time(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    outputs = {arm: scratch / f"out-{arm}" for arm in ("maintained", "unmaintained")}
    if args.driver == "tables":
        nights = run_tables(args, outputs)
    else:
        nights = run_pipeline(args, scratch, outputs)
    readers = {arm: reader_costs(outputs[arm], args.repeats) for arm in outputs}
    result = {"began": began, "driver": args.driver, "nights": nights, "readers": readers,
              "base_rows": nights[0]["maintained"]["rows"], "shards": args.shards, "changed": args.changed,
              "rows_per_write": args.rows_per_write,
              "new_rows": args.new_rows, "seconds": round(time.time() - started), "load_end": load()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    log(json.dumps(readers, indent=1))
    if args.write_results:
        with RESULTS_FILE.open("a") as handle:
            handle.write(report(result))
    if args.driver == "pipeline":
        from pipelines.ray_runtime import stop_ray

        stop_ray()


DRIVERS = {
    "pipeline": "- Driver `pipeline`: a lake of the sample's first {base_rows:,} rows in {shards} shards, the real "
                "embed job with MiniLM and `--dims 256,128,64`, `--sync-deletes`, one process and one local Ray; each "
                "night {changed} rows of one shard get new texts and a new shard of {new_rows} rows arrives.",
    "tables": "- Driver `tables`: the embed job's table steps (operators/serving.py begin_run, the writers' upserts in "
              "commits of {rows_per_write:,} rows, the manifest, operators/maintenance.py refresh, publish, retain) "
              "driven directly with random unit vectors in the columns MiniLM with `--dims 256,128,64` writes (no "
              "Ray, no encoder): {base_rows:,} rows in {shards} shards on night 0, then each night {changed:,} rows "
              "of one shard get new vectors and a new shard of {new_rows:,} rows arrives.",
}


def report(result: dict) -> str:
    from benchmarks.machine import describe_machine

    machine = describe_machine()
    last = result["nights"][-1]
    kept, grown = last["maintained"], last["unmaintained"]
    lines = [
        "", f"## {result['began']}: make bench-lifecycle (issue 13: retention and serving tags)", "",
        f"- {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, ray {machine['ray']}; load average "
        f"at the end {result['load_end']} (a machine shared with other sessions); took {result['seconds']} s.",
        DRIVERS[result["driver"]].format(**result),
        "- Maintained: every run ends with compaction and retention (`--keep-runs 3`); unmaintained: "
        "`--no-maintain`. Bytes: everything under the table's folders (table, `_files`, `_runs`, `_quarantine`, "
        "sparse index).", "",
        "| night | rows | maintained: bytes | versions | run s | without maintain: bytes | versions | run s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["nights"]:
        a, b = row["maintained"], row["unmaintained"]
        lines.append(f"| {row['night']} | {a['rows']:,} | {a['bytes']:,} | {a['versions']} | "
                     f"{a.get('wall_seconds', row.get('wall_seconds'))} | {b['bytes']:,} | {b['versions']} | "
                     f"{b.get('wall_seconds', '')} |")
    lines += ["", f"- After {len(result['nights']) - 1} nights: {kept['bytes']:,} bytes with maintain, "
              f"{grown['bytes']:,} without ({grown['bytes'] / kept['bytes']:.2f}x); {kept['versions']} versions "
              f"stored against {grown['versions']}.", "",
              "| reader step (median) | maintained table | unmaintained table |", "| --- | --- | --- |"]
    for name in result["readers"]["maintained"]:
        lines.append(f"| {name} | {1000 * result['readers']['maintained'][name]:.1f} ms | "
                     f"{1000 * result['readers']['unmaintained'][name]:.1f} ms |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
