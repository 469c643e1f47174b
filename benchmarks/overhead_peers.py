"""Issue 21's peer comparison in one A-B-B-A run: `embedlake embed` against the encoder alone, sentence-transformers
`encode` and Daft's ten-line pipeline, on short and long texts, and on one shared local multi-process Ray.

Three parts, each interleaved A-B-B-A by wall clock in this one process (so a neighbour's load falls on every peer):

1. The tiny random BGE-M3-shaped model on N short synopses (the pipeline's own cost shows): the encoder alone (one
   process, a torch thread per core), `embedlake embed` of this tree and, with `--before TREE`, of another tree (the
   same command run from that folder: before/after a change in the same run), and Daft's pipeline.
2. MiniLM fp32 (the embedded default) on the sample's synopses (short) and on its descriptions (long):
   `embedlake embed --precision fp32` against sentence-transformers `encode` (its default batch of 32, normalised,
   the model's own max length) and Daft's pipeline. The issue's ratio is the pipeline's `docs_per_s` (first read to
   last commit) over sentence-transformers' docs/s; the whole command's docs/s is given beside it.
3. A census of one run's processes (the command and every process it starts, Ray's included): when each started
   and its CPU seconds, for this tree and `--before`'s.
4. One local multi-process Ray (pipelines/ray_launcher.py, started once, 2 CPUs) that both join: `embedlake embed
   --address` against Daft's Ray runner (`daft.set_runner_ray(address=...)`), on the tiny model's synopses: neither
   pays Ray's start or stop.

    python -m benchmarks.overhead_peers --rows 60000 --repeats 2 [--before /path/to/main-tree]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.corpus import SAMPLE_DIR
from benchmarks.overhead import (
    PROJECT_ROOT,
    abba,
    build_model,
    children_cpu,
    encoder_alone,
    log,
    make_lake,
    save,
)
from pipelines.ray_runtime import QUIET_ENV

for _key, _value in QUIET_ENV.items():
    os.environ.setdefault(_key, _value)

DAFT_SCRIPT = """
import sys, daft
from daft.functions import embed_text
if len(sys.argv) > 4:
    daft.set_runner_ray(address=sys.argv[4])
df = daft.read_parquet(sys.argv[1] + "/*.parquet")
df = df.with_column("dense", embed_text(df["text"], provider="transformers", model=sys.argv[2]))
df.write_lance(sys.argv[3], mode="overwrite")
"""


def sample_lake(folder: Path, column: str, rows: int, shards: int) -> list[str]:
    """`rows` of the sample's `column` (title: synopses, text: descriptions), repeated under unique ids if needed,
    in `shards` shards; their texts."""
    table = pa.concat_tables([pq.read_table(p, columns=[column]) for p in sorted(SAMPLE_DIR.glob("*.parquet"))])
    base = [t for t in table.column(column).to_pylist() if t and t.strip()]
    texts = [base[i % len(base)] for i in range(rows)]
    folder.mkdir(parents=True, exist_ok=True)
    per_shard = -(-rows // shards)
    for shard, start in enumerate(range(0, rows, per_shard)):
        part = texts[start:start + per_shard]
        pq.write_table(pa.table({"id": [f"doc-{start + i}" for i in range(len(part))], "text": part}),
                       folder / f"part-{shard:05d}.parquet")
    return texts


def embedlake(lake: Path, out: Path, args: list[str], root: Path = PROJECT_ROOT) -> tuple[float, dict]:
    """`embedlake embed LAKE OUT ARGS` run from the tree `root` (its own packages and Ray workers): wall seconds of
    the whole command and its JSON summary."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "pipelines.cli", "embed", str(lake), str(out), *args, "--overwrite", "--json"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=str(root), env=env, check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        msg = f"embedlake embed ({root}) failed ({done.returncode}): {done.stderr[-3000:]}"
        raise RuntimeError(msg)
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def census(command: list[str], cwd: Path, env: dict) -> tuple[float, list[dict]]:
    """Run `command` and every process it starts (its descendants, Ray's included: found through /proc every
    0.1 s): wall seconds, and per process when it started (s after the command), its CPU seconds (user + system,
    last seen) and its name. Linux only."""
    tick = os.sysconf("SC_CLK_TCK")

    def table() -> dict[int, tuple[float, float, int, str]]:
        processes = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/cmdline") as handle:
                    name = handle.read().replace("\0", " ").strip()
            except OSError:
                continue
            processes[int(entry)] = (int(fields[19]) / tick, (int(fields[11]) + int(fields[12])) / tick,
                                     int(fields[1]), name)
        return processes

    def uptime() -> float:
        with open("/proc/uptime") as handle:
            return float(handle.read().split()[0])

    started_at, started = uptime(), time.perf_counter()
    process = subprocess.Popen(command, cwd=str(cwd), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: dict[int, dict] = {}
    while process.poll() is None:
        now = table()
        for pid, (start, cpu, _parent, name) in now.items():
            if pid not in seen:
                ancestor, ours = pid, False
                for _ in range(32):  # a descendant of the command, or of one seen before
                    if ancestor == process.pid or ancestor in seen:
                        ours = True
                        break
                    if ancestor not in now:
                        break
                    ancestor = now[ancestor][2]
                if not ours or start < started_at - 1:
                    continue
                seen[pid] = {"start_s": round(start - started_at, 2), "cpu_s": 0.0, "name": ""}
            seen[pid]["cpu_s"] = max(seen[pid]["cpu_s"], cpu)
            current, new = seen[pid]["name"], _short_name(name) if name else ""
            if not current.startswith("ray::") or current == "ray::IDLE":  # a worker names itself by its work
                seen[pid]["name"] = new or current
            elif new.startswith("ray::") and new != "ray::IDLE" and new not in current.split(" + "):
                seen[pid]["name"] = f"{current} + {new}"  # a task worker reused by the next stage
        time.sleep(0.1)
    rows = sorted(seen.values(), key=lambda row: row["start_s"])
    return time.perf_counter() - started, rows


def _short_name(command_line: str) -> str:
    """`ray::MapWorker(...)`, `gcs_server`, `ray_launcher.py`: what a process is, without its arguments."""
    if command_line.startswith("ray::"):
        return command_line.split()[0]
    words = command_line.split()
    if "python" not in os.path.basename(words[0]):
        return os.path.basename(words[0])
    scripts = [os.path.basename(word) for word in words[1:3] if word.endswith(".py")]
    return scripts[-1] if scripts else " ".join(os.path.basename(word) for word in words[:4])[:80]


def daft(lake: Path, model: str, out: Path, address: str | None = None) -> tuple[float, float]:
    """Daft's ten-line pipeline in a process of its own (its native runner, or the Ray at `address`)."""
    shutil.rmtree(out, ignore_errors=True)
    started, cpu = time.perf_counter(), children_cpu()
    done = subprocess.run([sys.executable, "-c", DAFT_SCRIPT, str(lake), model, str(out),
                           *([address] if address else [])], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        msg = f"daft failed ({done.returncode}): {done.stderr[-3000:]}"
        raise RuntimeError(msg)
    return seconds, children_cpu() - cpu


def st_encode(model: str, texts: list[str]) -> float:
    """Wall seconds of sentence-transformers `encode` (default batch of 32, normalised, the model's own max
    length), a torch thread per core, after one warm batch."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(os.cpu_count() or 1)
    st = SentenceTransformer(model, device="cpu")
    st.encode(texts[:32])
    started = time.perf_counter()
    st.encode(texts, batch_size=32, normalize_embeddings=True)
    return time.perf_counter() - started


class Rounds:
    """Wall seconds per peer over A-B-B-A rounds, and the embedlake summaries."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.summaries: dict[str, list[dict]] = defaultdict(list)

    def add(self, name: str, seconds: float, summary: dict | None = None) -> None:
        self.seconds[name].append(round(seconds, 3))
        if summary is not None:
            self.summaries[name].append({k: summary.get(k) for k in ("docs_per_s", "seconds", "encode_seconds",
                                                                     "stage_seconds", "commits", "encoder_actors")})
        log(f"  {name}: {seconds:.2f} s" + (f", docs_per_s {summary['docs_per_s']}, stages "
                                            f"{summary.get('stage_seconds')}" if summary else ""))

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def docs_per_s(self, name: str) -> float:
        return statistics.median(s["docs_per_s"] for s in self.summaries[name])

    def as_dict(self) -> dict:
        return {"seconds": dict(self.seconds), "summaries": dict(self.summaries)}


def part_tiny(scratch: Path, args: argparse.Namespace, model: str) -> dict:
    lake = scratch / "synopses-tiny"
    texts = make_lake(lake, args.rows, args.shards)
    rounds = Rounds()
    peers = ["embedlake", "encoder", *(["embedlake-before"] if args.before else []), "daft"]
    flags = ["--model", model, "--outputs", "dense"]
    for name in abba(peers, args.repeats):
        if name == "embedlake":
            rounds.add(name, *embedlake(lake, scratch / "out", flags))
        elif name == "embedlake-before":
            rounds.add(name, *embedlake(lake, scratch / "out", flags, Path(args.before)))
        elif name == "encoder":
            rounds.add(name, encoder_alone(model, texts, 2048)[0])
        else:
            rounds.add(name, daft(lake, model, scratch / "daft-out")[0])
    encoder_rate = args.rows / rounds.median("encoder")
    result = {"rows": args.rows, "encoder_docs_per_s": round(encoder_rate, 1), **rounds.as_dict()}
    for name in [p for p in peers if p.startswith("embedlake")]:
        result[name] = {
            "docs_per_s": rounds.docs_per_s(name),
            "pipeline_vs_encoder": round(rounds.docs_per_s(name) / encoder_rate, 3),
            "whole_command_docs_per_s": round(args.rows / rounds.median(name), 1),
            "whole_command_vs_encoder": round(args.rows / rounds.median(name) / encoder_rate, 3),
            "daft_over_embedlake_wall": round(rounds.median("daft") / rounds.median(name), 3),
        }
    return result


def part_minilm(scratch: Path, args: argparse.Namespace) -> dict:
    from operators.encoders.loader import resolve_model_path

    model = resolve_model_path("minilm")
    results = {}
    for label, column, rows in (("synopses", "title", args.minilm_synopses),
                                ("descriptions", "text", args.minilm_descriptions)):
        lake = scratch / f"minilm-{label}"
        texts = sample_lake(lake, column, rows, 3)
        rounds = Rounds()
        log(f"MiniLM fp32 on {rows:,} {label} (mean {statistics.mean(map(len, texts)):.0f} characters)")
        for name in abba(["embedlake", "sentence-transformers", "daft"], args.repeats):
            if name == "embedlake":
                rounds.add(name, *embedlake(lake, scratch / "out", ["--model", "minilm", "--precision", "fp32"]))
            elif name == "sentence-transformers":
                rounds.add(name, st_encode(model, texts))
            else:
                rounds.add(name, daft(lake, model, scratch / "daft-out")[0])
        st_rate = rows / rounds.median("sentence-transformers")
        results[label] = {
            "rows": rows, "mean_characters": round(statistics.mean(map(len, texts)), 1),
            "st_docs_per_s": round(st_rate, 1), "docs_per_s": rounds.docs_per_s("embedlake"),
            "pipeline_vs_st": round(rounds.docs_per_s("embedlake") / st_rate, 3),
            "whole_command_vs_st": round(rows / rounds.median("embedlake") / st_rate, 3),
            "daft_over_embedlake_wall": round(rounds.median("daft") / rounds.median("embedlake"), 3),
            **rounds.as_dict(),
        }
    return results


def part_shared_ray(scratch: Path, args: argparse.Namespace, model: str) -> dict:
    """embedlake --address and Daft's Ray runner on one local Ray started once (its start and stop paid by
    neither)."""
    lake = scratch / "synopses-shared"
    make_lake(lake, args.shared_rows, args.shards)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    if "RAY_AUTH_MODE" not in env:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    os.environ.update({k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})  # both clients join with it
    launcher = subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "pipelines" / "ray_launcher.py"), json.dumps({"num_cpus": os.cpu_count()})],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    try:
        address = json.loads(launcher.stdout.readline())["address"]
        rounds = Rounds()
        flags = ["--model", model, "--outputs", "dense", "--address", address]
        for name in abba(["embedlake", "daft"], args.repeats):
            if name == "embedlake":
                rounds.add(name, *embedlake(lake, scratch / "out", flags))
            else:
                rounds.add(name, daft(lake, model, scratch / "daft-out", address)[0])
    finally:
        launcher.stdin.close()
        launcher.wait(timeout=120)
        launcher.stdout.close()
    return {"rows": args.shared_rows, "docs_per_s": rounds.docs_per_s("embedlake"),
            "daft_over_embedlake_wall": round(rounds.median("daft") / rounds.median("embedlake"), 3),
            **rounds.as_dict()}


def part_census(scratch: Path, args: argparse.Namespace, model: str) -> dict:
    """Every process one `embedlake embed` of the tiny model's synopses starts, with its CPU seconds (this tree, and
    `--before`'s)."""
    lake = scratch / "synopses-tiny"
    if not lake.exists():
        make_lake(lake, args.rows, args.shards)
    result = {}
    for label, root in (("after", PROJECT_ROOT), *((("before", Path(args.before)),) if args.before else ())):
        command = [sys.executable, "-m", "pipelines.cli", "embed", str(lake), str(scratch / "out"), "--model", model,
                   "--outputs", "dense", "--overwrite", "--json"]
        shutil.rmtree(scratch / "out", ignore_errors=True)
        wall, rows = census(command, root, {**os.environ, "PYTHONPATH": str(root)})
        result[label] = {"wall_s": round(wall, 2), "processes": len(rows),
                         "cpu_s": round(sum(row["cpu_s"] for row in rows), 2), "rows": rows}
        log(f"census {label}: {len(rows)} processes, {result[label]['cpu_s']} CPU s in {wall:.1f} s")
    return result


def run(args: argparse.Namespace) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="bench-peers-", dir=args.scratch))
    try:
        result: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
                        "load_before": [round(x, 2) for x in os.getloadavg()]}
        model = build_model(scratch)
        parts = args.parts.split(",")
        if "tiny" in parts:
            log(f"tiny model, {args.rows:,} synopses in {args.shards} shards")
            result["tiny"] = part_tiny(scratch, args, model)
            result["load_after_tiny"] = [round(x, 2) for x in os.getloadavg()]
        if "minilm" in parts:
            result["minilm"] = part_minilm(scratch, args)
            result["load_after_minilm"] = [round(x, 2) for x in os.getloadavg()]
        if "census" in parts:
            result["census"] = part_census(scratch, args, model)
        if "ray" in parts:
            log(f"one shared local Ray, tiny model, {args.shared_rows:,} synopses")
            result["shared_ray"] = part_shared_ray(scratch, args, model)
        result["load_after"] = [round(x, 2) for x in os.getloadavg()]
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def report(result: dict) -> str:
    lines = [f"## {result['date']}: issue 21 peers, A-B-B-A (`python -m benchmarks.overhead_peers`)", "",
             f"{result['cpus']} CPUs; load {result['load_before']} before, {result['load_after']} after.", ""]
    tiny = result.get("tiny")
    if tiny:
        lines.append(f"- tiny model, {tiny['rows']:,} synopses: encoder alone {tiny['encoder_docs_per_s']:,} docs/s")
        for name in ("embedlake", "embedlake-before"):
            if name in tiny:
                t = tiny[name]
                lines.append(f"  - {name}: docs_per_s {t['docs_per_s']:,} ({t['pipeline_vs_encoder']:.2f}x the "
                             f"encoder), whole command {t['whole_command_docs_per_s']:,} docs/s "
                             f"({t['whole_command_vs_encoder']:.2f}x); Daft's wall / ours "
                             f"{t['daft_over_embedlake_wall']:.2f}")
    for label, m in result.get("minilm", {}).items():
        lines.append(f"- MiniLM fp32, {m['rows']:,} {label} (~{m['mean_characters']:.0f} chars): pipeline docs_per_s "
                     f"{m['docs_per_s']:,} = {m['pipeline_vs_st']:.2f}x sentence-transformers' {m['st_docs_per_s']:,}; "
                     f"whole command {m['whole_command_vs_st']:.2f}x; Daft's wall / ours "
                     f"{m['daft_over_embedlake_wall']:.2f}")
    for label, counted in result.get("census", {}).items():
        lines.append(f"- processes of one run ({label}): {counted['processes']}, {counted['cpu_s']} CPU s in "
                     f"{counted['wall_s']} s wall")
    shared = result.get("shared_ray")
    if shared:
        lines.append(f"- one shared local Ray, tiny model, {shared['rows']:,} synopses: Daft's Ray runner wall / "
                     f"`embedlake embed --address` {shared['daft_over_embedlake_wall']:.2f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead_peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=60_000, help="synopses for the tiny model's part")
    parser.add_argument("--shards", type=int, default=6)
    parser.add_argument("--minilm-synopses", type=int, default=3_000)
    parser.add_argument("--minilm-descriptions", type=int, default=1_500)
    parser.add_argument("--shared-rows", type=int, default=60_000, help="synopses for the shared-Ray part")
    parser.add_argument("--repeats", type=int, default=2, help="A-B-B-A rounds")
    parser.add_argument("--parts", default="tiny,census,minilm,ray")
    parser.add_argument("--before", default=None, help="another tree's embedlake in the tiny part (before/after)")
    parser.add_argument("--scratch", default=None)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    parser.add_argument("--append-results", action="store_true", help="append a section to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    result = run(args)
    save(result, report(result), args.out, args.append_results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
