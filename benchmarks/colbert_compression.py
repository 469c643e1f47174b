"""Compressed ColBERT: how far MaxSim top-10 moves from float16 at each storage precision, and its bytes.

    python -m benchmarks.colbert_compression [--docs 1000] [--queries 100] [--bge-m3 FOLDER]

No real BGE-M3 weights exist here, and the tiny random checkpoint's MaxSim scores crowd into a band a few
thousandths wide (its top-10 is a set of near-ties), so the realistic measurement uses real weights: the
packaged MiniLM's token vectors, taken the way BGE-M3 takes its ColBERT vectors (last hidden states, the
CLS position dropped, padding removed, each unit length), stored in float16 as `colbert` is. The tiny
checkpoint is measured too (built here unless `--bge-m3` names a folder). Corpus: the sample's documents;
queries: the labelled eval queries. Agreement = |top-10 on compressed vectors ∩ top-10 on float16| / 10,
averaged over queries; every precision is scored by MaxSim with the float query (operators/scoring.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from operators import colbert_codec, scoring

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = [("int8", 1.0), ("binary", 1.0), ("float16", 2.0), ("int8", 2.0), ("binary", 2.0)]


def minilm_token_vectors(texts: list[str], max_length: int, batch: int = 32) -> pa.Array:
    """MiniLM's token vectors as a ColBERT column: list<fixed_size_list<float16>[384]>."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from operators.encoders.loader import resolve_model_path

    path = resolve_model_path("minilm")
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    rows = []
    for start in range(0, len(texts), batch):
        inputs = tokenizer(texts[start:start + batch], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt")
        with torch.inference_mode():
            states = model(**inputs).last_hidden_state
        for row, mask in zip(states, inputs["attention_mask"].bool(), strict=True):
            rows.append(torch.nn.functional.normalize(row[mask][1:].float(), dim=-1).numpy().astype(np.float16))
    dim = rows[0].shape[1]
    return pa.array([row.tolist() for row in rows], pa.list_(pa.list_(pa.float16(), dim)))


def bge_m3_vectors(folder: str, texts: list[str], prompt: str, max_length: int) -> pa.Array:
    from operators.encoders.base import EncoderSpec
    from operators.encoders.loader import load_encoder

    encoder = load_encoder(EncoderSpec(model=folder, outputs=["colbert"], max_length=max_length))
    return encoder.encode(texts, prompt_name=prompt).columns["colbert"]


def measure(docs: pa.Array, queries: pa.Array, k: int) -> dict:
    query_rows = [np.asarray(queries[i].as_py(), dtype=np.float32) for i in range(len(queries))]
    reference = [scoring.colbert_scores(q, docs) for q in query_rows]

    def top(scores: np.ndarray) -> set[int]:
        return set(np.argsort(-scores, kind="stable")[:k].tolist())

    gaps = [float(np.sort(r)[::-1][k - 1] - np.sort(r)[::-1][k]) for r in reference]
    float16_bytes = docs.nbytes / len(docs)
    result = {"docs": len(docs), "queries": len(queries), "dim": docs.type.value_type.list_size,
              "tokens_per_doc": float(np.mean(docs.value_lengths().to_numpy())),
              f"median_gap_between_{k}th_and_{k + 1}th": float(np.median(gaps)),
              "float16": {"bytes_per_doc": float16_bytes}}
    for precision, pool_factor in SETTINGS:
        started = time.perf_counter()
        stored = colbert_codec.compress_column(docs, precision, pool_factor)
        seconds = time.perf_counter() - started
        agree = np.mean([len(top(scoring.colbert_scores(q, stored["colbert"], stored.get("colbert_scale")))
                             & top(r)) / k for q, r in zip(query_rows, reference, strict=True)])
        size = sum(array.nbytes for array in stored.values()) / len(docs)
        name = precision if pool_factor == 1 else f"{precision}_pool{pool_factor:g}"
        result[name] = {f"top{k}_agreement_with_float16": float(agree), "bytes_per_doc": size,
                        "smaller_than_float16": float16_bytes / size, "compress_seconds": round(seconds, 2)}
    return result


def run(args: argparse.Namespace) -> dict:
    texts = pq.read_table(os.path.join(REPO, "data", "sample")).column("text").to_pylist()[:args.docs]
    queries = pq.read_table(os.path.join(REPO, "data", "eval", "queries.parquet")).column("text").to_pylist()
    queries = queries[:args.queries]
    result = {}
    started = time.perf_counter()
    result["minilm_tokens"] = measure(minilm_token_vectors(texts, args.max_length),
                                      minilm_token_vectors(queries, args.max_length), args.k)
    result["minilm_tokens"]["encode_seconds"] = round(time.perf_counter() - started, 1)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.bge_m3
        if folder is None:
            sys.path.insert(0, REPO)
            from tests.bge_m3_checkpoint import build_tiny_bge_m3

            folder = build_tiny_bge_m3(os.path.join(scratch, "tiny-bge-m3"))
        result["tiny_bge_m3"] = measure(bge_m3_vectors(folder, texts, "document", args.max_length),
                                        bge_m3_vectors(folder, queries, "query", args.max_length), args.k)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--bge-m3", help="a BGE-M3 folder (default: build the tiny random checkpoint)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(run(parse_args(argv)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
