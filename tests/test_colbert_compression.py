"""Compressed ColBERT on the tiny BGE-M3 checkpoint: how much MaxSim top-10 moves when the float16 token
vectors are stored as int8 (per-token scale) or binary, and how many bytes per document each takes.

The checkpoint is random: its MaxSim scores over a corpus crowd into a band a few thousandths wide (the
10th and 11th best of 300 documents differ by ~1e-4), while int8 moves a score by up to ~1e-3, so on a
large corpus int8's top-10 is a reshuffle of near-ties; the agreement there is printed, and asserted
only against the rounding bound. On the checkpoint's own test corpus (search tests' 14 documents and 5
queries) ranks are far enough apart for the issue's target.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_search_bge_m3 import DOCS, QUERIES

from benchmarks.colbert_compression import measure
from operators import colbert_codec, scoring
from operators.encoders.base import EncoderSpec
from operators.encoders.loader import load_encoder

K = 10
SAMPLE_DOCS = 300


@pytest.fixture(scope="module")
def encoder(tiny_bge_m3_path):
    return load_encoder(EncoderSpec(model=tiny_bge_m3_path, outputs=["colbert"], max_length=64))


def encode(encoder, texts: list[str], prompt: str) -> pa.Array:
    return encoder.encode(texts, prompt_name=prompt).columns["colbert"]


def query_rows(column: pa.Array) -> list[np.ndarray]:
    return [np.asarray(column[i].as_py(), dtype=np.float32) for i in range(len(column))]


def test_int8_top10_agrees_with_float16_on_the_test_corpus(encoder):
    result = measure(encode(encoder, DOCS, "document"), encode(encoder, QUERIES, "query"), K)
    assert result["int8"][f"top{K}_agreement_with_float16"] >= 0.98
    assert result["int8"]["smaller_than_float16"] > 1.7  # (D + 4) / 2D bytes a token: 1.78x at D=32, 1.99x at 1024


def test_compressed_maxsim_on_a_sample_corpus(encoder, sample_dir, capsys):
    texts = pq.read_table(sample_dir).column("text").to_pylist()[:SAMPLE_DOCS]
    docs = encode(encoder, texts, "document")
    queries = encode(encoder, texts[:40], "query")  # document texts as queries: a clear best hit
    result = measure(docs, queries, K)
    with capsys.disabled():
        print(f"\nColBERT on the tiny BGE-M3 checkpoint, {SAMPLE_DOCS} sample documents, {len(queries)} queries:")
        for name, entry in result.items():
            if isinstance(entry, dict):
                print(f"  {name}: {entry}")
    assert result["binary"]["smaller_than_float16"] > 12
    assert result["int8_pool2"]["smaller_than_float16"] > 3.4
    stored = colbert_codec.compress_column(docs, "int8")
    flat, _lengths = colbert_codec.flat_tokens(docs)
    rows = query_rows(queries)
    scores = np.stack([scoring.colbert_scores(q, stored["colbert"], stored["colbert_scale"]) for q in rows])
    reference = np.stack([scoring.colbert_scores(q, docs) for q in rows])
    # rounding moves each token coordinate by at most half its scale, so |q . e| <= |q|_1 * max|v| / 254
    bound = max(np.abs(q).sum(axis=1).max() for q in rows) * np.abs(flat).max() / 254
    assert np.abs(scores - reference).max() <= bound
    assert (scores.argmax(axis=1) == reference.argmax(axis=1)).mean() >= 0.95  # a query's own document stays first
