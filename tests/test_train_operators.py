"""The training operators without Ray or a model: pairs, the held-out split, nested sizes, the loss curve,
the held-out metrics' ranking."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.training.holdout import holdout_qrels, ranked
from operators.training.matryoshka import check_dims, column_prompts, default_dims, loss_by_epoch, loss_curve
from operators.training.pairs import ANCHOR, HOLDOUT, NEGATIVE, POSITIVE, TRAIN, PairColumns, PairReader, in_holdout


def test_holdout_membership_is_a_stable_fraction_of_anchors():
    anchors = [f"query number {i}" for i in range(5000)]
    held = [in_holdout(a, 0.1) for a in anchors]
    assert 0.08 < sum(held) / len(held) < 0.12
    assert held == [in_holdout(a, 0.1) for a in anchors]
    assert not any(in_holdout(a, 0.0) for a in anchors)
    assert all(in_holdout(a, 0.1) <= in_holdout(a, 0.3) for a in anchors), "a larger holdout contains a smaller one"


@pytest.fixture
def shard(tmp_path) -> str:
    table = pa.table({
        "q": [f"anchor {i // 2}" for i in range(40)],  # each anchor twice: both copies on the same side
        "d": [f"document {i}" for i in range(40)],
        "n": [f"negative {i}" for i in range(40)],
        "other": list(range(40)),
    })
    path = tmp_path / "part-0.parquet"
    pq.write_table(table, path, row_group_size=16)
    return str(path)


def test_read_splits_pairs_by_anchor_and_renames_the_columns(shard):
    reader = PairReader(PairColumns("q", "d", "n"), holdout=0.3)
    train, held = reader.read([shard], TRAIN), reader.read([shard], HOLDOUT)
    assert train.column_names == [ANCHOR, POSITIVE, NEGATIVE]
    assert train.num_rows + held.num_rows == 40 and held.num_rows > 0
    assert not set(train[ANCHOR].to_pylist()) & set(held[ANCHOR].to_pylist())
    check = reader.check(shard)
    assert (check.rows, check.holdout, check.bad_rows, check.first_bad) == (40, held.num_rows, 0, None)


def test_check_counts_blank_and_null_texts_and_names_the_first(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"q": ["a", "b", "c", "d"], "d": ["x", " \n", None, "y"]}), path)
    check = PairReader(PairColumns("q", "d")).check(str(path))
    assert check.bad_rows == 2
    assert check.first_bad == f"{path}#1: positive ('d') is empty or null"


def test_columns_must_exist_differ_and_hold_text(shard):
    schema = pq.read_schema(shard)
    found = r"has no column 'missing' \(the training pairs; columns found: q, d, n, other\)"
    with pytest.raises(ValueError, match=found):
        PairColumns("q", "missing").check(schema, "input x")
    with pytest.raises(ValueError, match="must differ"):
        PairColumns("q", "q").check(schema, "input x")
    with pytest.raises(ValueError, match="column 'other' is int64, training needs text"):
        PairColumns("q", "other").check(schema, "input x")


def test_nested_sizes_default_order_and_validation():
    assert default_dims(384) == [384, 256, 128, 64]
    assert default_dims(1024) == [1024, 768, 512, 256, 128, 64]
    assert check_dims([64, 384, 128], [2, 1, 3], 384) == ([384, 128, 64], [1, 3, 2])
    assert check_dims([], [], 48) == ([48], [1.0])
    for dims, weights, message in (([384, 512], [], "between 1 and"), ([256, 64], [], "full dimension 384"),
                                   ([384, 64], [1], "2 nested size"), ([384, 384], [], "repeat"),
                                   ([384, 64], [0, 0], "at least one positive")):
        with pytest.raises(ValueError, match=message):
            check_dims(dims, weights, 384)


def test_prompts_by_trainer_column():
    assert column_prompts({"query": "q: ", "document": "d: "}) == {ANCHOR: "q: ", POSITIVE: "d: ", NEGATIVE: "d: "}
    assert column_prompts({"query": "q: "}) == {ANCHOR: "q: "}


def test_loss_curve_and_mean_per_epoch():
    history = [{"loss": 4.0, "epoch": 0.5, "step": 1}, {"loss": 2.0, "epoch": 1.0, "step": 2},
               {"loss": 1.0, "epoch": 1.5, "step": 3}, {"loss": 0.0, "epoch": 2.0, "step": 4},
               {"train_loss": 1.75, "epoch": 2.0, "step": 4}]
    curve = loss_curve(history)
    assert [p["step"] for p in curve] == [1, 2, 3, 4]
    assert loss_by_epoch(curve, 2) == [3.0, 0.5]


def test_holdout_queries_group_positives_by_anchor_and_rank_ties_by_id():
    pairs = pa.table({ANCHOR: ["a", "b", "a"], POSITIVE: ["x", "y", "z"]})
    query_ids, queries, documents, qrels = holdout_qrels(pairs)
    assert queries == ["a", "b"] and documents == ["x", "y", "z"]
    assert qrels == {"q0": {"0": 1, "2": 1}, "q1": {"1": 1}}
    scores = np.array([[0.5, 0.9, 0.5]], dtype=np.float32)
    run = ranked(scores[:, :1] * 0 + np.eye(1, dtype=np.float32), scores.T.reshape(3, 1), ["q0"], k=2)
    assert [doc for doc, _ in run["q0"]] == ["1", "0"]
