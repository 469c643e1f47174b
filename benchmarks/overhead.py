"""`make bench-overhead`: where `embedlake embed` spends its time per row, beside the encoder alone (issue 21).

With a tiny random BGE-M3-shaped model (dense only) the model costs ~100 us a row, so everything else the
pipeline does shows. Three parts, on one synopsis lake (the sample's package synopses, repeated under unique
ids, in shards):

1. The stages' own CPU cost, in this process and without Ray, on the lake's rows, each timed around the
   pipeline's own code: reading Parquet, the text and id checks and provenance columns, hashing, the
   incremental decision (first run, and a re-run against the table's keys), tokenisation, the model's forward
   pass, the encoder actor's Arrow assembly, the copies into and out of Ray's object store (pickled blocks at
   each of the three exchanges), and the writer's commits (keyed upserts at the pipeline's batch size).
2. `embedlake embed` itself (the CLI, in a process of its own, wall clock), with the run's `stage_seconds`:
   preparing (listing, footers, table checks), Ray's start, planning, Ray Data's start-up to the first read,
   first read to last commit, the end of the write stage, Ray's shutdown, manifest, indexes and publish
   (`finish`); what the command took besides (imports, exit) is its wall time less the summary's `seconds`.
3. Peers on the same texts, interleaved A-B-B-A with the pipeline: the encoder alone (one process, the
   pipeline's batch size), and, when installed (`pip install -e '.[bench]'`), Daft's ten-line pipeline
   (`read_parquet` -> `embed_text(provider="transformers")` -> `write_lance`), by wall clock.

    python -m benchmarks.overhead --rows 60000 --shards 6 --repeats 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pickle
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.corpus import SAMPLE_DIR
from pipelines.ray_runtime import QUIET_ENV

for _key, _value in QUIET_ENV.items():  # no hub, no tokenizer threads: as in the pipeline's workers
    os.environ.setdefault(_key, _value)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS_FILE = PROJECT_ROOT / "benchmarks" / "RESULTS.md"
# Stages of part 1, in pipeline order, and what each times.
STAGES = {
    "read": "Parquet row groups into Arrow (ShardReader, less the three below)",
    "checks": "id and text decoding, null/blank checks (row_problems)",
    "provenance": "order, file, side, read-time columns and the stage schema (conform)",
    "hash": "text_hash of every row (text_hashes)",
    "decide": "the incremental decision, first run (one partition)",
    "keys_scan": "re-run: the table's key rows (TableKeysSource's scan)",
    "decide_rerun": "re-run: the decision against the table's keys",
    "copies": "object-store round trips of the blocks at the 3 exchanges (pickle 5, buffers copied)",
    "tokenise": "the encoder's tokenizer (tokenize_flat)",
    "forward": "padding and the model's forward pass (encode less tokenise)",
    "assembly": "the encoder actor's Arrow output (EmbedRows less encode)",
    "commit": "the writer's keyed upserts at the pipeline's rows per write (write_batch)",
}
RUN_STAGES = ["prepare", "ray_start", "plan", "to_first_read", "first_read_to_last_commit", "after_last_commit",
              "ray_shutdown", "manifest", "finish"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def synopses() -> list[str]:
    """The sample's package synopses (its `title` column): short texts, ~40 characters."""
    table = pa.concat_tables([pq.read_table(p, columns=["title"]) for p in sorted(SAMPLE_DIR.glob("*.parquet"))])
    return [t for t in table.column("title").to_pylist() if t and t.strip()]


def make_lake(folder: Path, rows: int, shards: int) -> list[str]:
    """`rows` synopses (the sample's, repeated) under unique ids in `shards` Parquet shards; their texts."""
    base = synopses()
    texts = [base[i % len(base)] for i in range(rows)]
    folder.mkdir(parents=True, exist_ok=True)
    per_shard = -(-rows // shards)
    for shard, start in enumerate(range(0, rows, per_shard)):
        part = texts[start:start + per_shard]
        ids = [f"doc-{start + i}" for i in range(len(part))]
        pq.write_table(pa.table({"id": ids, "text": part}), folder / f"part-{shard:05d}.parquet")
    return texts


def dense_only(model: str) -> list[str]:
    """`outputs` for a model: dense only for a BGE-M3 folder (what the peers compute), none for an MRL model."""
    from operators.encoders.loader import model_kind

    return ["dense"] if model_kind(model) == "bge-m3" else []


def build_model(folder: Path) -> str:
    from benchmarks.models import build_random_bge_m3

    return build_random_bge_m3(str(folder / "bench-bge-m3-tiny"), "tiny", max_positions=512)


@dataclass
class Timer:
    """CPU seconds of this process per stage (all its threads: torch's, Lance's): on a shared 2-core machine
    wall time measures the neighbours' load as much as the code. `clock` is what the stages are timed with."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    clock: object = time.process_time

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds

    def timed(self, function, stage: str):
        """`function`, adding the time of each call to `stage`."""

        def call(*args, **kwargs):
            started = self.clock()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(stage, self.clock() - started)

        return call


def _round_trip(table: pa.Table) -> pa.Table:
    """A block into and out of an object store: pickled with out-of-band buffers (what Ray does), each
    buffer copied once (the put) and the table rebuilt from the copies (the get)."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(table, protocol=5, buffer_callback=buffers.append)
    copies = [bytearray(buffer.raw()) for buffer in buffers]
    return pickle.loads(data, buffers=copies)


def stage_profile(lake: Path, model: str, rows_per_write: int, scratch: Path, rows_per_call: int = 256
                  ) -> dict[str, float]:
    """CPU seconds of each STAGES entry over the whole lake, in this process, one thread for torch (an
    encoder actor's)."""
    import torch

    from operators.encoders.base import EncoderSpec
    from operators.exchange import decided_row_schema, key_row_schema
    from operators.incremental import Decision, TableKeys, decide
    from operators.schema import ID, QUARANTINE_SCHEMA, SOURCE, embeddings_schema, text_hashes
    from operators.sinks.lance_sink import ensure_table
    from operators.sources import ShardReader, decode_ids, decode_texts, row_problems
    from operators.tables import Lake
    from pipelines.embed_progress import ReportingEmbedRows
    from pipelines.embed_writer import Tables, write_batch

    torch.set_num_threads(1)
    timer = Timer()
    clock = timer.clock
    files = sorted(str(p) for p in lake.glob("*.parquet"))
    reader = ShardReader("id", "text")
    blocks: list[pa.Table] = []
    for index, path in enumerate(files):
        started = clock()
        blocks.extend(reader.read(path, file_index=index))
        timer.add("read", clock() - started)
    # the parts of `normalise`, again on the same rows, to split the reader's time
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=reader.rows_per_read, columns=["id", "text"]):
            table = pa.Table.from_batches([batch])
            started = clock()
            ids, id_reasons = decode_ids(table.column("id"))
            texts, reasons = decode_texts(table.column("text"))
            reasons = row_problems(ids, texts, reasons)
            checked = clock()
            text_hashes(texts, None)
            hashed = clock()
            reader.normalise(table, path, 0)
            whole = clock() - hashed
            timer.add("checks", checked - started)
            timer.add("hash", hashed - checked)
            timer.add("provenance", max(whole - (hashed - started), 0.0))
    timer.seconds["read"] -= timer.seconds["checks"] + timer.seconds["hash"] + timer.seconds["provenance"]
    keys = pa.concat_tables(blocks)
    started = clock()
    decided = decide(keys, Decision(), decided_row_schema([]))
    timer.add("decide", clock() - started)

    spec = EncoderSpec(model=model, outputs=dense_only(model))
    embed = ReportingEmbedRows(spec, threads=1)
    encoder = embed.encoder
    encode, tokenize = encoder.encode, encoder.tokenize_flat

    encoder.tokenize_flat, encoder.encode = timer.timed(tokenize, "tokenise"), timer.timed(encode, "forward")
    batch_rows = rows_per_call  # rows per encoder actor call, as the run plans them
    encoded = []
    for start in range(0, decided.num_rows, batch_rows):
        block = decided.slice(start, batch_rows)
        started = clock()
        encoded.append(embed(block))
        timer.add("assembly", clock() - started)
    timer.seconds["assembly"] -= timer.seconds["forward"]
    timer.seconds["forward"] -= timer.seconds["tokenise"]
    started = clock()
    for block in [*blocks, decided, *encoded]:
        _round_trip(block)
    timer.add("copies", clock() - started)

    lake_out = Lake(str(scratch / "profile-out"))
    lake_out.check_writable()
    schema = embeddings_schema(embed.fields)
    tables = Tables(main=lake_out.table("docs"), quarantine=lake_out.table("docs_quarantine"), schema=schema)
    ensure_table(tables.main, schema, primary_key=ID, overwrite=True)
    ensure_table(tables.quarantine, QUARANTINE_SCHEMA, primary_key=SOURCE, overwrite=True)
    listing = pa.array(files, pa.string())
    rows = pa.concat_tables(encoded)
    for start in range(0, rows.num_rows, rows_per_write):
        started = clock()
        write_batch(rows.slice(start, rows_per_write), tables, "profile", listing)
        timer.add("commit", clock() - started)

    # A re-run of the same lake: every key row of the table scanned, then decided against the input.
    target = tables.main
    table_keys = TableKeys(target, target.dataset().version, encoder.model_id, listing, key_row_schema([]))
    started = clock()
    stored = pa.concat_tables([
        part for fragment in target.dataset().get_fragments() for part in table_keys.by_fragments(
            [fragment.fragment_id])])
    timer.add("keys_scan", clock() - started)
    started = clock()
    rerun = decide(pa.concat_tables([keys, stored]), Decision(), decided_row_schema([]))
    timer.add("decide_rerun", clock() - started)
    unchanged = rerun.filter(pa.compute.equal(rerun.column("_status"), "unchanged"))
    if unchanged.num_rows != 1 or unchanged.column("_rows")[0].as_py() != keys.num_rows:
        msg = f"the re-run decision did not find every row unchanged: {rerun.num_rows} rows out"
        raise RuntimeError(msg)
    return dict(timer.seconds)


def encoder_alone(model: str, texts: list[str], batch_rows: int) -> tuple[float, float]:
    """Wall and CPU seconds for the encoder alone over `texts`, in this process, a torch thread per core, the
    pipeline's batch size (what one process could do with the whole machine)."""
    import torch

    from operators.encoders.base import EncoderSpec
    from operators.encoders.loader import load_encoder

    torch.set_num_threads(os.cpu_count() or 1)
    encoder = load_encoder(EncoderSpec(model=model, outputs=dense_only(model), device="cpu"))
    encoder.encode(texts[:batch_rows])  # warm
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(texts), batch_rows):
        encoder.encode(texts[start:start + batch_rows])
    return time.perf_counter() - started, time.process_time() - cpu


def st_encode(model: str, texts: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of sentence-transformers `encode` (its default batch size, normalised) of `texts` in
    this process, a torch thread per core: the library a user would call instead, on the same model folder."""
    import torch

    from benchmarks.encoders import ST_BATCH_SIZE, sentence_transformer

    torch.set_num_threads(os.cpu_count() or 1)
    st = sentence_transformer(model, torch.device("cpu"), torch.float32, 512)
    st.encode(texts[:ST_BATCH_SIZE], batch_size=ST_BATCH_SIZE)  # warm
    started, cpu = time.perf_counter(), time.process_time()
    st.encode(texts, batch_size=ST_BATCH_SIZE, normalize_embeddings=True)
    return time.perf_counter() - started, time.process_time() - cpu


def import_seconds(module: str) -> tuple[float, float]:
    """Wall and CPU seconds of a fresh interpreter importing `module` (what every `embedlake embed` pays before
    it reads anything), less the bare interpreter's."""

    def timed(code: str) -> tuple[float, float]:
        started, cpu = time.perf_counter(), children_cpu()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=str(PROJECT_ROOT))
        return time.perf_counter() - started, children_cpu() - cpu

    bare = timed("pass")
    loaded = timed(f"import {module}")
    return loaded[0] - bare[0], loaded[1] - bare[1]


def children_cpu() -> float:
    """CPU seconds of every finished descendant of this process (a command's Ray processes are reaped by the
    command, so its figure includes them)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def embedlake_embed(lake: Path, model: str, out: Path) -> tuple[float, dict]:
    """The CLI, as a user runs it: wall seconds of the whole command and its JSON summary (with `cpu_seconds`,
    the command's and its Ray processes' CPU time)."""
    shutil.rmtree(out, ignore_errors=True)
    # `embedlake` is `python -m pipelines.cli`; run as a module so that this benchmark's own tree is the one run
    # (its progress line on, as a user gets it: the progress reporting is part of the cost)
    command = [sys.executable, "-m", "pipelines.cli", "embed", str(lake), str(out), "--model", model,
               *(["--outputs", "dense"] if dense_only(model) else []), "--overwrite", "--json"]
    started, cpu = time.perf_counter(), children_cpu()
    done = subprocess.run(command, capture_output=True, text=True, cwd=str(PROJECT_ROOT), check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        msg = f"embedlake embed failed ({done.returncode}): {done.stderr[-3000:]}"
        raise RuntimeError(msg)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    summary["cpu_seconds"] = children_cpu() - cpu
    return seconds, summary


DAFT_SCRIPT = """
import sys, daft
from daft.functions import embed_text
df = daft.read_parquet(sys.argv[1] + "/*.parquet")
df = df.with_column("dense", embed_text(df["text"], provider="transformers", model=sys.argv[2]))
df.write_lance(sys.argv[3], mode="overwrite")
"""


def daft_embed(lake: Path, model: str, out: Path) -> tuple[float, float]:
    """Daft's ten-line pipeline in a process of its own: wall and CPU seconds."""
    shutil.rmtree(out, ignore_errors=True)
    started, cpu = time.perf_counter(), children_cpu()
    done = subprocess.run([sys.executable, "-c", DAFT_SCRIPT, str(lake), model, str(out)], capture_output=True,
                          text=True, cwd=str(PROJECT_ROOT), check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        msg = f"daft failed ({done.returncode}): {done.stderr[-3000:]}"
        raise RuntimeError(msg)
    return seconds, children_cpu() - cpu


def abba(names: list[str], rounds: int) -> list[str]:
    """A-B-B-A order over `rounds` rounds (each name once per round, every other round reversed)."""
    return [name for r in range(rounds) for name in (names if r % 2 == 0 else names[::-1])]


def run(args: argparse.Namespace) -> dict:
    from operators.encoders.loader import resolve_model_path
    from pipelines import workers
    from pipelines.workers import plan_rows_per_write, plan_workers

    plan_rows_per_call = getattr(workers, "plan_rows_per_call", None)  # absent before issue 21's change

    scratch = Path(tempfile.mkdtemp(prefix="bench-overhead-", dir=args.scratch))
    try:
        lake = scratch / "lake"
        texts = make_lake(lake, args.rows, args.shards)
        model = build_model(scratch) if args.model == "tiny" else resolve_model_path(args.model)
        cpus = os.cpu_count() or 1
        plan = plan_workers(cpus, 0)
        if plan_rows_per_call is not None:
            plan = plan_rows_per_call(args.rows, plan)
        calls, rows_per_write = plan.rows_per_batch, plan_rows_per_write(args.rows, plan)
        result: dict = {"rows": args.rows, "shards": args.shards, "model": args.model if args.model != "tiny" else
                        "tiny random BGE-M3-shaped, dense only", "cpus": cpus, "rows_per_call": calls,
                        "rows_per_write": rows_per_write,
                        "load_before": [round(x, 2) for x in os.getloadavg()], "date": time.strftime(
                            "%Y-%m-%d %H:%M UTC", time.gmtime())}
        log(f"{args.rows:,} synopses in {args.shards} shards; stage profile (one process, no Ray)")
        stages = stage_profile(lake, model, rows_per_write, scratch, calls)
        result["stages_us_per_row"] = {name: round(1e6 * stages[name] / args.rows, 2) for name in STAGES}
        log(json.dumps(result["stages_us_per_row"]))
        if args.profile_only:
            result["load_after"] = [round(x, 2) for x in os.getloadavg()]
            return result
        peers = ["embedlake", "encoder", "sentence-transformers"] + (["daft"] if args.daft and _daft_installed()
                                                                     else [])
        if args.daft and "daft" not in peers:
            result["daft"] = "not installed: pip install -e '.[bench]'"
            log(f"daft skipped: {result['daft']}")
        result["import_seconds"] = {module: [round(x, 2) for x in import_seconds(module)]
                                    for module in ("pipelines.embed", "torch", "ray.data", "lance")}
        log(f"imports (wall, CPU s): {result['import_seconds']}")
        seconds: dict[str, list[float]] = defaultdict(list)
        cpu: dict[str, list[float]] = defaultdict(list)
        summaries: list[dict] = []
        for name in abba(peers, args.repeats):
            if name == "embedlake":
                wall, summary = embedlake_embed(lake, model, scratch / "out")
                summaries.append(summary)
                seconds[name].append(wall)
                cpu[name].append(summary["cpu_seconds"])
                log(f"embedlake embed: {wall:.2f} s wall, docs_per_s {summary['docs_per_s']}, "
                    f"stages {summary.get('stage_seconds')}")
            elif name in ("encoder", "sentence-transformers"):
                wall, used = encoder_alone(model, texts, calls) if name == "encoder" else st_encode(model, texts)
                seconds[name].append(wall)
                cpu[name].append(used)
                log(f"{name}: {wall:.2f} s, {used:.2f} CPU s")
            else:
                wall, used = daft_embed(lake, model, scratch / "daft-out")
                seconds[name].append(wall)
                cpu[name].append(used)
                log(f"daft: {wall:.2f} s, {used:.2f} CPU s")
        result["seconds"] = {name: [round(s, 3) for s in values] for name, values in seconds.items()}
        result["cpu_us_per_row"] = {name: round(1e6 * statistics.median(values) / args.rows, 1)
                                    for name, values in cpu.items()}
        median = {name: statistics.median(values) for name, values in seconds.items()}
        encoder_rate = args.rows / median["encoder"]
        docs_per_s = statistics.median(s["docs_per_s"] for s in summaries)
        result["encoder_docs_per_s"] = round(encoder_rate, 1)
        result["pipeline_docs_per_s"] = docs_per_s
        result["whole_command_docs_per_s"] = round(args.rows / median["embedlake"], 1)
        result["pipeline_vs_encoder"] = round(docs_per_s / encoder_rate, 3)
        result["whole_command_vs_encoder"] = round(result["whole_command_docs_per_s"] / encoder_rate, 3)
        # the MiniLM target, here on the same tiny model: the pipeline's docs_per_s vs ST's encode
        result["pipeline_vs_sentence_transformers"] = round(docs_per_s * median["sentence-transformers"] / args.rows,
                                                            3)
        # above 1: embedlake's whole command is faster than the peer's
        result["embedlake_speedup_wall"] = {name: round(median[name] / median["embedlake"], 3)
                                            for name in median if name != "embedlake"}
        timed = [s for s in summaries if "stage_seconds" in s]  # absent before issue 21's change
        run_stages = {name: statistics.median(s["stage_seconds"].get(name, 0.0) for s in timed)
                      for name in RUN_STAGES} if timed else {}
        run_stages["run (summary seconds + finish)"] = statistics.median(s["seconds"] + s.get("finish_seconds", 0)
                                                                         for s in summaries)
        run_stages["outside_run (imports, exit)"] = median["embedlake"] - run_stages["run (summary seconds + finish)"]
        result["run_us_per_row"] = {name: round(1e6 * value / args.rows, 2) for name, value in run_stages.items()}
        result["summary"] = {k: summaries[-1].get(k) for k in ("commits", "seconds_per_commit", "encoder_actors",
                                                                 "seconds", "encode_seconds", "finish_seconds")}
        result["load_after"] = [round(x, 2) for x in os.getloadavg()]
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _daft_installed() -> bool:
    return importlib.util.find_spec("daft") is not None


def report(result: dict, title: str) -> str:
    lines = [f"## {title}", "",
             f"{result['rows']:,} synopses in {result['shards']} shards, model {result['model']}; "
             f"{result['cpus']} CPUs; load {result['load_before']} before, {result['load_after']} after.", "",
             "| stage (one process, no Ray) | CPU us/row |", "| --- | ---: |"]
    lines += [f"| {name}: {STAGES[name]} | {value} |" for name, value in result["stages_us_per_row"].items()]
    lines += ["", "| `embedlake embed` run stage (wall) | us/row |", "| --- | ---: |"]
    lines += [f"| {name} | {value} |" for name, value in result["run_us_per_row"].items()]
    lines += ["", f"- encoder alone {result['encoder_docs_per_s']:,} docs/s; pipeline docs_per_s "
              f"{result['pipeline_docs_per_s']:,} ({result['pipeline_vs_encoder']:.2f}x the encoder's, "
              f"{result['pipeline_vs_sentence_transformers']:.2f}x sentence-transformers'); whole command "
              f"{result['whole_command_docs_per_s']:,} docs/s ({result['whole_command_vs_encoder']:.2f}x the "
              f"encoder's); rows per encoder call {result['rows_per_call']}, per commit {result['rows_per_write']}"]
    for name, ratio in result.get("embedlake_speedup_wall", {}).items():
        lines.append(f"- `embedlake embed` (whole command, wall) vs {name}: {ratio:.2f}x "
                     f"(above 1: embedlake faster; median of the A-B-B-A rounds)")
    if result.get("daft"):
        lines.append(f"- Daft: {result['daft']}")
    if "import_seconds" in result:
        lines.append(f"- imports in a fresh interpreter (wall s, CPU s): {json.dumps(result['import_seconds'])}")
    lines.append(f"- CPU us per row (finished child processes; embedlake's is a lower bound: Ray's processes run under "
                 f"pipelines/ray_launcher.py and are not all reaped through the command): "
                 f"{json.dumps(result['cpu_us_per_row'])}")
    lines.append(f"- seconds per round (A-B-B-A): {json.dumps(result['seconds'])}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--shards", type=int, default=6)
    parser.add_argument("--model", default="tiny", help="tiny (a random BGE-M3-shaped checkpoint, dense only: the "
                        "pipeline's cost shows), minilm, or a model folder")
    parser.add_argument("--repeats", type=int, default=2, help="A-B-B-A rounds of each peer")
    parser.add_argument("--no-daft", dest="daft", action="store_false", help="leave Daft out")
    parser.add_argument("--profile-only", action="store_true", help="part 1 only (no Ray, no peers)")
    parser.add_argument("--scratch", default=None, help="folder for the lake and tables (default: the temp dir)")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    parser.add_argument("--append-results", action="store_true", help="append a section to benchmarks/RESULTS.md")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    result = run(args)
    if args.profile_only:
        print(json.dumps(result, indent=2))
        return 0
    text = report(result, args.title or f"{result['date']}: pipeline overhead per stage (make bench-overhead)")
    save(result, text, args.out, args.append_results)
    return 0


def save(result: dict, text: str, out: str | None, append: bool) -> None:
    """Print the report; the figures as JSON to `out`; the report appended to RESULTS.md with `append`."""
    print(text)
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    if append:
        with RESULTS_FILE.open("a") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    raise SystemExit(main())
