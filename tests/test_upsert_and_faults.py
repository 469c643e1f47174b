"""Keyed writes under concurrency and encoder failures isolated to their rows (no Ray)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pytest

from operators.embed import EmbedRows
from operators.encoders.base import EncoderSpec
from operators.exchange import REASON_COL, ROWS_COL, STATUS_COL, TEXT_COL, Status, conform, decided_row_schema
from operators.sinks.lance_sink import ensure_table, upsert
from operators.storage import redact_argv, redact_config
from operators.tables import Lake

SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("value", pa.int64())])


def test_concurrent_upserts_never_duplicate_keys(tmp_path):
    target = Lake(str(tmp_path)).table("t")
    ensure_table(target, SCHEMA, primary_key="id")

    def write(writer: int) -> None:
        rows = pa.table({"id": [f"k{i}" for i in range(30)], "value": [writer] * 30}, schema=SCHEMA)
        upsert(rows, target, SCHEMA, "id")

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(write, range(6)))
    ids = target.dataset().to_table(columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == sorted(f"k{i}" for i in range(30))


@pytest.fixture(scope="module")
def embed_rows() -> EmbedRows:
    return EmbedRows(EncoderSpec(model="minilm", device="cpu"))


def test_encoder_error_is_retried_then_isolated_to_its_rows(embed_rows, monkeypatch):
    calls = []
    original = embed_rows.encoder.encode

    def flaky(texts, prompt_name=None):
        calls.append(len(texts))
        if any("poison" in text for text in texts):
            msg = "tokenizer exploded"
            raise RuntimeError(msg)
        return original(texts, prompt_name=prompt_name)

    monkeypatch.setattr(embed_rows.encoder, "encode", flaky)
    texts = [f"ordinary text number {i}" for i in range(7)] + ["poison pill"]
    batch = conform({
        "id": pa.array([f"r{i}" for i in range(8)]),
        TEXT_COL: pa.array(texts),
        STATUS_COL: pa.array([Status.EMBEDDED.value] * 8),
        ROWS_COL: pa.array([1] * 8, pa.int64()),
    }, decided_row_schema([]), 8)
    result = embed_rows(batch)
    status = result.column(STATUS_COL).to_pylist()
    assert status[-1] == Status.QUARANTINED and status[:-1] == ["embedded"] * 7
    assert result.column(REASON_COL).to_pylist()[-1] == "encoder error: tokenizer exploded"
    assert all(np.isclose(np.linalg.norm(v), 1) for v in result.column("dense").to_pylist()[:7])
    assert len(calls) <= 2 + 2 * 2 * 3  # bounded: two tries per level of a bisection over 8 rows


def test_secrets_are_redacted_from_run_log_fields():
    config = {"storage_options": {"aws_secret_access_key": "S3CR3T", "aws_region": "us-east-1"}, "model": "m"}
    assert redact_config(config) == {"storage_options": {"aws_secret_access_key": "***", "aws_region": "us-east-1"},
                              "model": "m"}
    assert redact_argv(["embed", "--aws-secret-key", "S3CR3T", "--token=abc", "AWS_SESSION_TOKEN=x", "in"]) == [
        "embed", "--aws-secret-key", "***", "--token=***", "AWS_SESSION_TOKEN=***", "in"
    ]
