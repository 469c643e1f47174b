"""The embed operator on batches, without Ray: good rows get vectors, bad rows a reason."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from operators.embed import REASON_COL, EmbedRows
from operators.encoders.base import EncoderSpec
from operators.schema import text_hash
from operators.sources import READ_AT_COL, SOURCE_COL, TEXT_COL


@pytest.fixture(scope="module")
def embed_rows() -> EmbedRows:
    return EmbedRows(EncoderSpec(model="minilm", dims=[64], device="cpu"), keep_columns=["lang"])


def batch(ids, texts, reasons=None) -> pa.Table:
    rows = len(ids)
    return pa.table({
        "id": pa.array(ids, pa.string()),
        TEXT_COL: pa.array(texts, pa.string()),
        "lang": ["en"] * rows,
        SOURCE_COL: [f"f.parquet#{i}" for i in range(rows)],
        READ_AT_COL: [0.0] * rows,
        REASON_COL: pa.array(reasons or [None] * rows, pa.string()),
    })


def test_good_and_bad_rows(embed_rows):
    result = embed_rows(batch(
        ["a", None, "c", "d", "e"],
        ["hello world", "no id", None, "   \n", "bytes"],
        [None, None, None, None, "text is not valid UTF-8"],
    ))
    assert result.column(REASON_COL).to_pylist() == [
        None, "null or empty id", "null text", "empty text", "text is not valid UTF-8"
    ]
    dense = result.column("dense").to_pylist()
    assert dense[0] is not None and all(v is None for v in dense[1:])
    assert np.isclose(np.linalg.norm(dense[0]), 1.0, atol=1e-5)
    assert result.column("text_hash").to_pylist()[0] == text_hash("hello world")
    assert result.column("model").to_pylist()[0] == embed_rows.encoder.model_id
    assert result.column("lang").to_pylist() == ["en"] * 5


def test_all_rows_bad_or_none(embed_rows):
    assert embed_rows(batch(["a"], [""])).column(REASON_COL).to_pylist() == ["empty text"]
    assert embed_rows(batch([], [])).num_rows == 0
