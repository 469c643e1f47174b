"""Issue 17's figures: document-level nDCG@10 of truncation vs split vs late chunking, and passages/s vs whole
documents/s, with MiniLM on the sample (`make bench-chunk`, ~10 min on 2 loaded cores).

Two tasks, the corpus searched exactly (numpy), each document scored by its best passage (max over passages):
- longest: the sample's `--longest` longest documents (in MiniLM tokens) as the corpus, with the queries whose
  relevant document is among them; truncation cuts each document at the model's limit.
- concatenated: the first `--concat-docs` sample documents shuffled (seed 1234) and joined `--group` at a time
  into long documents ("\\n\\n" between parts), with every query whose document is among them; its relevant
  document is the concatenation holding its document, so most of a long document lies past the model's limit.

Encoding goes through embedlake's own operators (operators/passages.py, the MiniLM encoder), one process,
torch's default threads; each mode's time covers chunking, tokenisation and the forward passes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

import numpy as np
import pyarrow.parquet as pq

from benchmarks.machine import describe_machine
from operators.encoders.base import EncoderSpec
from operators.encoders.loader import load_encoder
from operators.metrics import evaluate_run
from operators.passages import Chunking, ChunkMode, encode_passages
from operators.vectors import as_matrix

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 1234


def load_sample(sample: str, queries: str, qrels: str) -> tuple[list[str], list[str], list[str], list[str], dict]:
    docs = pq.read_table(sample, columns=["id", "text"]).to_pylist()
    asked = pq.read_table(queries).to_pylist()
    judged: dict[str, dict[str, float]] = {}
    for row in pq.read_table(qrels).to_pylist():
        judged.setdefault(row["query_id"], {})[row["doc_id"]] = float(row["relevance"])
    return ([d["id"] for d in docs], [d["text"] for d in docs], [q["query_id"] for q in asked],
            [q["text"] for q in asked], judged)


def concatenated(ids: list[str], texts: list[str], judged: dict, group: int) -> tuple[list[str], list[str], dict]:
    order = list(range(len(ids)))
    random.Random(SEED).shuffle(order)
    long_ids, long_texts, owner = [], [], {}
    for start in range(0, len(order), group):
        members = order[start:start + group]
        name = f"long{start // group:04d}"
        long_ids.append(name)
        long_texts.append("\n\n".join(texts[i] for i in members))
        owner.update({ids[i]: name for i in members})
    long_judged = {}
    for qid, relevant in judged.items():
        grades: dict[str, float] = {}
        for doc, grade in relevant.items():
            if doc in owner:
                grades[owner[doc]] = max(grades.get(owner[doc], 0.0), grade)
        long_judged[qid] = grades
    return long_ids, long_texts, long_judged


def encode_mode(encoder, texts: list[str], mode: str, chunking: Chunking | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(passage vectors, the document of each passage, timing) for one mode; truncation = one row per text."""
    started = time.perf_counter()
    if chunking is None:
        encoded = encoder.encode(texts)
        owners = np.arange(len(texts))
    else:
        passages, encoded = encode_passages(encoder, texts, chunking)
        owners = np.repeat(np.arange(len(texts)), [len(found) for found in passages])
    seconds = time.perf_counter() - started
    vectors = as_matrix(encoded.columns["dense"])
    timing = {"mode": mode, "documents": len(texts), "passages": int(len(owners)), "seconds": round(seconds, 2),
              "documents_per_s": round(len(texts) / seconds, 2), "passages_per_s": round(len(owners) / seconds, 2),
              "tokens": int(np.sum(encoded.token_counts)), "truncated": int(np.sum(encoded.truncated))}
    return vectors, owners, timing


def document_run(queries: np.ndarray, vectors: np.ndarray, owners: np.ndarray, doc_ids: list[str],
                 query_ids: list[str], k: int) -> dict:
    """Each query's top-k documents by their best passage (exact scores; `owners` ascending, every document
    with at least one passage)."""
    scores = queries @ vectors.T
    starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
    best = np.maximum.reduceat(scores, starts, axis=1)
    run = {}
    for i, qid in enumerate(query_ids):
        top = np.argsort(-best[i], kind="stable")[:k]
        run[qid] = [(doc_ids[j], float(best[i, j])) for j in top]
    return run


def run_task(encoder, name: str, doc_ids: list[str], texts: list[str], query_ids: list[str], query_vectors: np.ndarray,
             judged: dict, chunkings: list[Chunking], k: int) -> dict:
    results = {"documents": len(texts), "queries": len(query_ids)}
    modes: list[tuple[str, Chunking | None]] = [("truncate", None)]
    modes += [(f"{c.mode}_{c.max_tokens}_{c.overlap}", c) for c in chunkings]
    for label, chunking in modes:
        vectors, owners, timing = encode_mode(encoder, texts, label, chunking)
        run = document_run(query_vectors, vectors, owners, doc_ids, query_ids, k)
        metrics = evaluate_run(run, judged, query_ids, k).as_dict()
        results[label] = {**metrics, **timing}
        print(json.dumps({"task": name, label: results[label]}), flush=True)
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", default=os.path.join(REPO, "data", "sample"))
    parser.add_argument("--queries", default=os.path.join(REPO, "data", "eval", "queries.parquet"))
    parser.add_argument("--qrels", default=os.path.join(REPO, "data", "eval", "qrels.parquet"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--chunk-tokens", default="128", help="passage sizes to compare, e.g. 64,128")
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--longest", type=int, default=400, help="the 'longest' task's corpus: this many documents")
    parser.add_argument("--concat-docs", type=int, default=600, help="sample documents the long ones are built of")
    parser.add_argument("--group", type=int, default=10, help="sample documents per concatenated document")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "chunking_2cpu.json"))
    args = parser.parse_args(argv)

    started = time.time()
    machine = describe_machine()
    encoder = load_encoder(EncoderSpec(model=args.model, device="cpu"))
    ids, texts, query_ids, query_texts, judged = load_sample(args.sample, args.queries, args.qrels)
    query_text = dict(zip(query_ids, query_texts, strict=True))
    query_vectors = as_matrix(encoder.encode([query_text[q] for q in query_ids], prompt_name="query").columns["dense"])
    chunkings = [Chunking(int(size), min(args.overlap, int(size) // 4), mode)
                 for size in args.chunk_tokens.split(",") for mode in (ChunkMode.SPLIT, ChunkMode.LATE)]

    full = [len(row) for row in encoder.tokenizer(texts, add_special_tokens=False)["input_ids"]]
    position = {q: i for i, q in enumerate(query_ids)}

    def queries_on(docs: set[str]) -> list[str]:
        return [q for q in query_ids if set(judged.get(q, {})) & docs]

    longest = sorted(np.argsort(-np.asarray(full), kind="stable")[:args.longest].tolist())
    long_ids, long_texts = [ids[i] for i in longest], [texts[i] for i in longest]
    long_queries = queries_on(set(long_ids))
    report = {"machine": machine, "model": encoder.model_id, "max_length": encoder.max_length, "k": args.k,
              "load_before": os.getloadavg(), "args": vars(args),
              "longest": {"min_tokens": int(min(full[i] for i in longest)), "max_tokens": int(max(full)),
                          "over_limit": int(sum(full[i] > encoder.max_length - 2 for i in longest))}}
    report["longest"].update(run_task(encoder, "longest", long_ids, long_texts, long_queries,
                                      query_vectors[[position[q] for q in long_queries]], judged, chunkings, args.k))
    base_ids, base_texts = ids[:args.concat_docs], texts[:args.concat_docs]
    joined_ids, joined_texts, joined_judged = concatenated(base_ids, base_texts, judged, args.group)
    joined_queries = queries_on(set(base_ids))
    joined_lengths = [len(row) for row in encoder.tokenizer(joined_texts, add_special_tokens=False)["input_ids"]]
    report["concatenated"] = {"group": args.group, "median_tokens": float(np.median(joined_lengths)),
                              **run_task(encoder, "concatenated", joined_ids, joined_texts, joined_queries,
                                         query_vectors[[position[q] for q in joined_queries]], joined_judged,
                                         chunkings, args.k)}
    report["load_after"] = os.getloadavg()
    report["seconds"] = round(time.time() - started, 1)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"wrote {args.out}", flush=True)
    return report


if __name__ == "__main__":
    main()
