"""`make bench-lifecycle`: storage over nightly incremental runs with and without retention, and what reading
through the `serving` tag costs a reader (issue 13).

The lake is the shipped sample (by default all 2,714 rows in 4 shards). Night 0 embeds it once (the packaged
MiniLM, nested sizes 256/128/64, as `make demo`); the table is copied so that both arms start from the same
bytes. Then, each night, the same change lands in both arms' lake: `--changed` rows of one existing shard get new
texts (the shard is rewritten) and a new shard of `--new-rows` rows arrives. One arm runs the nightly job as
shipped (its run ends with compaction and retention, `--keep-runs 3`), the other with `--no-maintain`. After each
night: bytes under the table's folders (table, `_files`, `_runs`, `_quarantine`, sparse index) and the table's
stored versions.

Then reader costs on both tables, interleaved, median of `--repeats`: opening the table as readers did
before serving tags (the latest version), as they do now (the version the tag names; with and without
the one-model check), and a whole dense search (open, encode the query, top 10) through each.

    make bench-lifecycle    # --nights 10 --base-rows 900 --shards 3 --changed 30 --new-rows 30
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=10)
    parser.add_argument("--base-rows", type=int, default=2714, help="rows of the sample in the first night's lake")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--changed", type=int, default=50, help="rows with new texts per night")
    parser.add_argument("--new-rows", type=int, default=50, help="rows in the new shard per night")
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--scratch", default="/tmp/bench-lifecycle")
    parser.add_argument("--out", default=str(PROJECT_ROOT / "benchmarks" / "results" / "lifecycle.json"))
    parser.add_argument("--readers-only", action="store_true",
                        help="only measure reader costs, on the tables a previous run left in --scratch")
    parser.add_argument("--no-results", dest="write_results", action="store_false",
                        help="do not append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()

    from pipelines.ray_runtime import start_ray

    scratch = Path(args.scratch)
    if args.readers_only:  # reader costs again, on the tables a previous run left in --scratch
        readers = {arm: reader_costs(scratch / f"out-{arm}", args.repeats) for arm in ("maintained", "unmaintained")}
        print(json.dumps({"readers": readers, "load_end": load()}, indent=1))
        return
    shutil.rmtree(scratch, ignore_errors=True)
    lakes = {arm: scratch / f"lake-{arm}" for arm in ("maintained", "unmaintained")}
    outputs = {arm: scratch / f"out-{arm}" for arm in lakes}
    started, began = time.time(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    start_ray(num_cpus=os.cpu_count(), object_store_memory=512 * 1024**2)
    make_lake(lakes["maintained"], args.base_rows, args.shards)
    log("night 0: the whole sample")
    first = run_night(lakes["maintained"], outputs["maintained"], True, args.actors)
    shutil.copytree(lakes["maintained"], lakes["unmaintained"])
    shutil.copytree(outputs["maintained"], outputs["unmaintained"])
    nights = [{"night": 0, "wall_seconds": first["wall_seconds"], "rows_written": first["rows_written"],
               **{arm: footprint(outputs[arm]) for arm in outputs}}]
    for night in range(1, args.nights + 1):
        row: dict = {"night": night}
        for arm in outputs:
            night_change(lakes[arm], night, args.changed, args.new_rows)
            summary = run_night(lakes[arm], outputs[arm], arm == "maintained", args.actors)
            row[arm] = {**footprint(outputs[arm]), "wall_seconds": summary["wall_seconds"],
                        "finish_seconds": summary.get("finish_seconds"), "rows_written": summary["rows_written"],
                        "version": summary["version"]}
        nights.append(row)
        log(f"night {night}: " + ", ".join(f"{arm} {row[arm]['bytes']:,} B / {row[arm]['versions']} versions / "
                                            f"{row[arm]['wall_seconds']} s" for arm in outputs))
    readers = {arm: reader_costs(outputs[arm], args.repeats) for arm in outputs}
    result = {"began": began, "nights": nights, "readers": readers, "base_rows": nights[0]["maintained"]["rows"],
              "shards": args.shards, "changed": args.changed,
              "new_rows": args.new_rows, "seconds": round(time.time() - started), "load_end": load()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    log(json.dumps(readers, indent=1))
    if args.write_results:
        with RESULTS_FILE.open("a") as handle:
            handle.write(report(result))
    import ray

    ray.shutdown()


def report(result: dict) -> str:
    from benchmarks.machine import describe_machine

    machine = describe_machine()
    last = result["nights"][-1]
    kept, grown = last["maintained"], last["unmaintained"]
    lines = [
        "", f"## {result['began']}: make bench-lifecycle (issue 13: retention and serving tags)", "",
        f"- {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, ray {machine['ray']}; load average "
        f"at the end {result['load_end']} (a machine shared with other sessions); took {result['seconds']} s.",
        f"- A lake of the sample's first {result['base_rows']:,} rows in {result['shards']} shards, MiniLM with "
        f"`--dims 256,128,64`; each night {result['changed']} rows of one shard get new texts and a new shard of "
        f"{result['new_rows']} rows arrives; `embed --sync-deletes`, one process, one local Ray. Bytes: everything "
        "under the table's folders (table, `_files`, `_runs`, "
        "`_quarantine`, sparse index).", "",
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
