"""Rows checked by the reader and encoded by the embed operator, without Ray: good rows get vectors,
bad rows a reason."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from operators.embed import EmbedRows
from operators.encoders.base import EncoderSpec
from operators.exchange import (
    REASON_COL,
    ROWS_COL,
    STATUS_COL,
    TEXT_COL,
    Status,
    conform,
    decided_row_schema,
    kept_name,
)
from operators.schema import TEXT_HASH, text_hash
from operators.sources import row_problems

LANG = pa.field("lang", pa.string())


@pytest.fixture(scope="module")
def embed_rows() -> EmbedRows:
    return EmbedRows(EncoderSpec(model="minilm", dims=[64], device="cpu"), keep_fields=[LANG])


def batch(ids, texts, statuses=None) -> pa.Table:
    rows = len(ids)
    statuses = statuses or [Status.EMBEDDED.value] * rows
    return conform({
        "id": pa.array(ids, pa.string()),
        TEXT_COL: pa.array(texts, pa.string()),
        TEXT_HASH: pa.array([text_hash(t) if t else None for t in texts], pa.string()),
        kept_name("lang"): pa.array(["en"] * rows, pa.string()),
        STATUS_COL: pa.array(statuses, pa.string()),
        ROWS_COL: pa.array([1] * rows, pa.int64()),
    }, decided_row_schema([LANG]), rows)


def test_reader_checks_give_each_bad_row_its_reason():
    ids = pa.array(["a", None, "c", "d", "e", ""], pa.string())
    texts = pa.array(["hello world", "no id", None, "   \n", None, "x"], pa.string())
    decoded = pa.array([None, None, None, None, "text is not valid UTF-8", None], pa.string())
    assert row_problems(ids, texts, decoded).to_pylist() == [
        None, "null or empty id", "null text", "empty text", "text is not valid UTF-8", "null or empty id"
    ]


def test_rows_to_embed_get_vectors_and_the_others_pass_through(embed_rows):
    result = embed_rows(batch(["a", "b", "c"], ["hello world", None, None],
                              [Status.EMBEDDED.value, Status.QUARANTINED.value, Status.DELETED.value]))
    dense = result.column("dense").to_pylist()
    assert dense[0] is not None and dense[1:] == [None, None]
    assert np.isclose(np.linalg.norm(dense[0]), 1.0, atol=1e-5)
    assert result.column(TEXT_HASH).to_pylist()[0] == text_hash("hello world")
    assert result.column("model").to_pylist() == [embed_rows.encoder.model_id, None, None]
    assert result.column(STATUS_COL).to_pylist() == ["embedded", "quarantined", "deleted"]
    assert result.column(kept_name("lang")).to_pylist() == ["en"] * 3
    assert result.schema == embed_rows.schema


def test_no_rows_to_embed(embed_rows):
    assert embed_rows(batch(["a"], [None], [Status.QUARANTINED.value])).column(REASON_COL).to_pylist() == [None]
    assert embed_rows(batch([], [])).num_rows == 0


def test_a_runs_driver_describes_the_encoder_without_importing_torch(tmp_path):
    """The driver plans, checks and writes but never encodes: importing torch there cost ~2 s of CPU per
    command (benchmarks/overhead.py). Describing a model (MRL and dense-only BGE-M3) reads config files only."""
    import subprocess
    import sys
    from pathlib import Path

    from operators.encoders.folders import MODULE_KINDS
    from operators.encoders.modules import MODULES
    from tests.bge_m3_checkpoint import build_tiny_bge_m3

    assert set(MODULE_KINDS) == set(MODULES)
    folder = build_tiny_bge_m3(str(tmp_path / "bge-m3"))
    code = f"""
import sys
import pipelines.embed, pipelines.embed_progress, pipelines.embed_source, pipelines.embed_writer
from operators.encoders.base import EncoderSpec
from operators.encoders.loader import describe_encoder
describe_encoder(EncoderSpec(model="minilm", dims=[64]))
describe_encoder(EncoderSpec(model={folder!r}, outputs=["dense", "sparse"]))
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))[:5]
"""
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=str(repo))
    assert done.returncode == 0, done.stderr[-2000:]
