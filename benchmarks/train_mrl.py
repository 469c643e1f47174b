"""`make bench-train`: Matryoshka fine-tuning of MiniLM on the sample, base vs trained on the 400 queries.

Training pairs are the sample's (title -> text) pairs minus the packages the 400 evaluation queries ask
for (their synopsis is the query, so training on them would leak the answers). Each model is then used
as a user would: `embed` the 2,714 documents at every nested size, `evaluate` on the 400 queries. The
training runs with 1 and with 2 Ray Train workers (same global batch, negatives gathered across workers),
each command in a process of its own with its own local Ray; wall times and the machine's load go in the
JSON next to the figures, a plot and a markdown table go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq

from benchmarks.machine import describe_machine

REPO = Path(__file__).resolve().parent.parent
SAMPLE, EVAL = REPO / "data" / "sample", REPO / "data" / "eval"
DIMS = (384, 256, 128, 64)
COLUMNS = ("dense", "dense_256", "dense_128", "dense_64")


def training_pairs(folder: Path) -> tuple[str, int]:
    """(title, text) Parquet of every sample document whose package is not an evaluation query's answer."""
    held = set(pq.read_table(EVAL / "qrels.parquet").column("doc_id").to_pylist())
    table = ds.dataset(str(SAMPLE)).to_table(columns=["id", "title", "text"])
    keep = [doc not in held for doc in table.column("id").to_pylist()]
    pairs = table.filter(keep)
    path = folder / "pairs" / "part-0.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pairs, path)
    return str(path.parent), pairs.num_rows


def embedlake(*argv: str) -> tuple[dict, float]:
    """Run one CLI command in its own process; (its JSON result, wall seconds)."""
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", *argv, "--json"], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.time() - started
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        msg = f"embedlake {argv[0]} failed ({done.returncode})"
        raise RuntimeError(msg)
    return json.loads(done.stdout.strip().splitlines()[-1]), seconds


def evaluate_model(model: str, scratch: Path, name: str) -> dict:
    lake = scratch / f"lake-{name}"
    embed, embed_seconds = embedlake("embed", str(SAMPLE), str(lake), "--model", model, "--dims", "256,128,64",
                                     "--no-progress")
    report, _ = embedlake("evaluate", str(lake), "--table", "docs", "--queries", str(EVAL / "queries.parquet"),
                          "--qrels", str(EVAL / "qrels.parquet"), "--report", str(scratch / f"{name}.json"))
    return {"embed_seconds": round(embed_seconds, 1), "rows": embed.get("rows_written"),
            **{column: {metric: round(report[column][metric], 4) for metric in ("ndcg@10", "recall@10", "mrr@10")}
               for column in COLUMNS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--dim-weights", default="", help="loss weight per nested size (384,256,128,64); uniform")
    parser.add_argument("--holdout", type=float, default=0.05)
    parser.add_argument("--query-prompt", default="query: ")
    parser.add_argument("--document-prompt", default="passage: ")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_mrl_2cpu.json"))
    args = parser.parse_args()
    result: dict = {"machine": describe_machine(), "load_at_start": list(os.getloadavg()),
                    "settings": {k: v for k, v in vars(args).items() if k != "out"}}
    started = time.time()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        pairs, count = training_pairs(scratch)
        result["train_pairs_input"] = count
        result["base"] = evaluate_model("minilm", scratch, "base")
        print(json.dumps({"base": result["base"]}), file=sys.stderr)
        result["runs"] = []
        for workers in [int(w) for w in args.workers.split(",")]:
            load_before = list(os.getloadavg())
            out = scratch / f"trained-{workers}w"
            summary, seconds = embedlake(
                "train", pairs, str(out), "--anchor-column", "title", "--positive-column", "text",
                "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--holdout", str(args.holdout),
                "--max-length", str(args.max_length), "--learning-rate", str(args.learning_rate),
                "--query-prompt", args.query_prompt, "--document-prompt", args.document_prompt,
                "--workers", str(workers), "--no-progress",
                *(("--dim-weights", args.dim_weights) if args.dim_weights else ()))
            run = {"workers": workers, "wall_seconds": round(seconds, 1), "train_seconds": summary["train_seconds"],
                   "load_before": load_before, "load_after": list(os.getloadavg()), "steps": summary["steps"],
                   "train_pairs": summary["train_pairs"], "loss_by_epoch": summary["loss_by_epoch"],
                   "holdout": summary["evaluation"], "evaluation": evaluate_model(str(out), scratch, f"t{workers}")}
            result["runs"].append(run)
            print(json.dumps(run), file=sys.stderr)
            save(result, args.out)  # a run stopped later keeps the figures of the runs that finished
            if run is result["runs"][0]:
                import shutil

                shutil.copy(out / "training_report.png", Path(args.out).with_name("train_mrl_report.png"))
    result["seconds"] = round(time.time() - started, 1)
    result["load_at_end"] = list(os.getloadavg())
    save(result, args.out)
    print(markdown(result))


def save(result: dict, out: str) -> None:
    Path(out).write_text(json.dumps(result, indent=2))
    plot(result, str(Path(out).with_suffix(".png")))


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    axis.plot(DIMS, [result["base"][c]["ndcg@10"] for c in COLUMNS], "--o", label="MiniLM (base)")
    for run in result["runs"]:
        axis.plot(DIMS, [run["evaluation"][c]["ndcg@10"] for c in COLUMNS], "-o",
                  label=f"trained, {run['workers']} worker(s)")
    axis.axhline(result["base"]["dense"]["ndcg@10"], color="grey", lw=0.8, ls=":", label="base at 384 dims")
    axis.set_xscale("log", base=2)
    axis.set_xticks(DIMS, [str(d) for d in DIMS])
    axis.set_xlabel("nested size (dims)")
    axis.set_ylabel("nDCG@10, 400 sample queries")
    axis.set_title("embedlake train: Matryoshka fine-tuning of MiniLM")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def markdown(result: dict) -> str:
    lines = ["| model | " + " | ".join(f"nDCG@10 {c}" for c in COLUMNS) + " | 64 / 384 | train wall (fit) |",
             "| --- |" + " --- |" * (len(COLUMNS) + 2)]
    base = result["base"]
    lines.append("| MiniLM (base) | " + " | ".join(f"{base[c]['ndcg@10']:.3f}" for c in COLUMNS)
                 + f" | {base['dense_64']['ndcg@10'] / base['dense']['ndcg@10']:.3f} | - |")
    for run in result["runs"]:
        ev = run["evaluation"]
        scores = " | ".join(f"{ev[c]['ndcg@10']:.3f}" for c in COLUMNS)
        lines.append(f"| trained, {run['workers']} worker(s) | {scores}"
                     + f" | {ev['dense_64']['ndcg@10'] / ev['dense']['ndcg@10']:.3f}"
                     + f" | {run['wall_seconds']:.0f} s ({run['train_seconds']:.0f} s) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
