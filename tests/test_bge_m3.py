"""BGE-M3 encoder: parity with FlagEmbedding on a tiny random checkpoint, batching, Arrow and LanceDB.

The checkpoint is random, so these tests say nothing about retrieval quality; they check that we
compute exactly FlagEmbedding's function of a checkpoint in BAAI/bge-m3's layout, whatever the
batching, and store it in the table contract's types.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from operators import scoring
from operators.encoders.base import EncoderSpec
from operators.encoders.batching import pad_batch
from operators.encoders.bge_m3 import BgeM3Encoder
from operators.schema import COLBERT, DENSE, SPARSE, SPARSE_TYPE, colbert_type, dense_type
from tests.simulated_oom import fail_batches_above

LONG_TEXT = " ".join(["Embedding models turn text into vectors that capture meaning for search and clustering."] * 24)
TEXTS = [
    "the the the fox fox fox jumps over the lazy dog",  # repeated tokens: max-merge of weights
    "Der schnelle braune Fuchs springt über den Hund, den Hund!",
    "北京是中国的首都，北京很大。长江是中国最长的河流。",
    "Москва является столицей России. Москва большая.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "Ελληνικά 🙂 characters the vocabulary lacks",  # <unk> ids, dropped from the lexical weights
    "",
    LONG_TEXT,
]
WHOLE = 2048  # the tiny checkpoint's position limit: every text above is kept whole
CUT = 16  # short enough that most texts above are truncated


def _encoder(path: str, **spec) -> BgeM3Encoder:
    return BgeM3Encoder.from_spec(path, EncoderSpec(model=path, device="cpu", **spec))


@pytest.fixture(scope="module")
def encoder(tiny_bge_m3_path) -> BgeM3Encoder:
    return _encoder(tiny_bge_m3_path, max_length=WHOLE)


@pytest.fixture(scope="module")
def encoded(encoder):
    return encoder.encode(TEXTS)


def _sparse_dicts(column: pa.Array) -> list[dict[int, float]]:
    return [dict(zip(row["indices"], row["values"], strict=True)) for row in column.to_pylist()]


def _colbert_rows(column: pa.Array) -> list[np.ndarray]:
    return [
        np.asarray(row, dtype=np.float32).reshape(-1, column.type.value_type.list_size) for row in column.to_pylist()
    ]


def _dense(column: pa.Array) -> np.ndarray:
    return np.asarray(column.to_pylist(), dtype=np.float32)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _assert_same_outputs(got: dict[str, pa.Array], want: dict[str, pa.Array], *, atol: float = 1e-5) -> None:
    """Two encodings of the same texts agree column by column, row by row (up to float noise from
    different padding)."""
    assert got.keys() == want.keys()
    if DENSE in want:
        np.testing.assert_allclose(_dense(got[DENSE]), _dense(want[DENSE]), atol=atol)
    if SPARSE in want:
        for got_row, want_row in zip(_sparse_dicts(got[SPARSE]), _sparse_dicts(want[SPARSE]), strict=True):
            assert got_row.keys() == want_row.keys()
            np.testing.assert_allclose([got_row[k] for k in want_row], list(want_row.values()), atol=atol)
    if COLBERT in want:
        for got_row, want_row in zip(_colbert_rows(got[COLBERT]), _colbert_rows(want[COLBERT]), strict=True):
            np.testing.assert_allclose(got_row, want_row, atol=2e-3)  # float16 storage: one ulp near 1


def _compare_with_flag(ours, ref, token_counts: np.ndarray) -> dict[str, float]:
    """Assert parity with FlagEmbedding's encode output; return the figures measured."""
    dense_cos = _cosines(_dense(ours[DENSE]), ref["dense_vecs"])
    assert dense_cos.min() >= 0.9999

    weight_diff = 0.0
    for row, ref_row in zip(_sparse_dicts(ours[SPARSE]), ref["lexical_weights"], strict=True):
        assert set(row) == {int(token) for token in ref_row}, "same token ids kept"
        for token, weight in row.items():
            weight_diff = max(weight_diff, abs(weight - float(ref_row[str(token)])))
    assert weight_diff <= 1e-3

    colbert_cos = 1.0
    for row, ref_row, tokens in zip(_colbert_rows(ours[COLBERT]), ref["colbert_vecs"], token_counts, strict=True):
        assert row.shape == ref_row.shape == (tokens - 1, row.shape[1]), "one vector per token but CLS"
        colbert_cos = min(colbert_cos, float(_cosines(row, ref_row).min()))
    assert colbert_cos >= 0.999
    return {"dense_cos": float(dense_cos.min()), "sparse_diff": weight_diff, "colbert_cos": colbert_cos}


# -- parity with FlagEmbedding ---------------------------------------------------------------------
def test_parity_whole_texts(encoder, encoded, flag_model):
    """max_length high enough that neither side cuts the >512-token text."""
    ref = flag_model.encode(TEXTS, return_dense=True, return_sparse=True, return_colbert_vecs=True, max_length=WHOLE)
    assert encoded.token_counts[TEXTS.index(LONG_TEXT)] > 512
    assert not encoded.truncated.any()
    assert sum(len(row) for row in ref["lexical_weights"]) > 20, "sparse head gives many positive weights"
    _compare_with_flag(encoded.columns, ref, encoded.token_counts)


def test_parity_truncated(tiny_bge_m3_path, flag_model):
    """Both cut at the same max_length: same tokens kept, same vectors."""
    ours = _encoder(tiny_bge_m3_path, max_length=CUT).encode(TEXTS)
    ref = flag_model.encode(TEXTS, return_dense=True, return_sparse=True, return_colbert_vecs=True, max_length=CUT)
    assert ours.truncated.sum() >= 5
    assert ours.token_counts.max() == CUT
    _compare_with_flag(ours.columns, ref, ours.token_counts)


QUERIES = ["fox fox jumps", "Hund Fuchs", "北京 首都", "Москва", "lazy dog", "Ελληνικά vectors"]
PASSAGES = [*TEXTS[:4], LONG_TEXT, "cat"]


def test_scores_match_flag_functions(flag_model):
    """operators.scoring on FlagEmbedding's own fp32 outputs equals its compute_lexical_matching_score
    and colbert_score, for one pair and for one query against many passages."""
    out = flag_model.encode(
        QUERIES + PASSAGES, return_dense=True, return_sparse=True, return_colbert_vecs=True, max_length=WHOLE
    )
    lexical, vectors = out["lexical_weights"], out["colbert_vecs"]
    q_lex, p_lex = lexical[: len(QUERIES)], lexical[len(QUERIES) :]
    q_vec, p_vec = vectors[: len(QUERIES)], vectors[len(QUERIES) :]
    want_sparse = flag_model.compute_lexical_matching_score(q_lex, p_lex)  # (queries, passages)
    assert (want_sparse > 0).sum() >= 4
    for i in range(len(QUERIES)):
        np.testing.assert_allclose(scoring.sparse_scores(q_lex[i], p_lex), want_sparse[i], atol=1e-6)
        want_colbert = [float(flag_model.colbert_score(q_vec[i], p)) for p in p_vec]
        np.testing.assert_allclose(scoring.colbert_scores(q_vec[i], p_vec), want_colbert, atol=1e-6)
        assert scoring.sparse_score(q_lex[i], p_lex[i]) == pytest.approx(want_sparse[i, i], abs=1e-6)
        assert scoring.colbert_score(q_vec[i], p_vec[i]) == pytest.approx(want_colbert[i], abs=1e-6)


def test_hybrid_matches_compute_score(encoder, flag_model):
    """Scores from our columns and operators.scoring equal FlagEmbedding's compute_score per mode."""
    pairs = list(zip(QUERIES, PASSAGES, strict=True)) + list(zip(QUERIES, reversed(PASSAGES), strict=True))
    weights = [0.4, 0.2, 0.4]
    ref = flag_model.compute_score(
        pairs, max_query_length=WHOLE, max_passage_length=WHOLE, weights_for_different_modes=weights
    )
    q = encoder.encode([query for query, _ in pairs]).columns
    p = encoder.encode([passage for _, passage in pairs]).columns
    dense = (_dense(q[DENSE]) * _dense(p[DENSE])).sum(axis=1)
    sparse = np.array(
        [scoring.sparse_score(a, b) for a, b in zip(q[SPARSE].to_pylist(), p[SPARSE].to_pylist(), strict=True)]
    )
    colbert = np.array(
        [scoring.colbert_score(a, b) for a, b in zip(_colbert_rows(q[COLBERT]), _colbert_rows(p[COLBERT]), strict=True)]
    )
    assert (sparse > 0).sum() >= 4, "some pairs share weighted tokens"
    np.testing.assert_allclose(dense, ref["dense"], atol=1e-4)
    np.testing.assert_allclose(sparse, ref["sparse"], atol=1e-4)
    # Our ColBERT vectors are stored as float16 (the table contract), FlagEmbedding's are float32:
    # rounding each of D=32 components by up to 2^-12 relative moves a MaxSim score by ~1e-4 here
    # (less at D=1024); the exact score function is checked in test_scores_match_flag_functions.
    np.testing.assert_allclose(colbert, ref["colbert"], atol=3e-4)
    np.testing.assert_allclose(
        scoring.hybrid_scores(dense, sparse, colbert, weights), ref["colbert+sparse+dense"], atol=1e-4
    )
    np.testing.assert_allclose(
        scoring.hybrid_scores(dense, sparse, None, (weights[0], weights[1], 0)),
        ref["sparse+dense"],
        atol=1e-4,
    )


def test_checkpoint_exercises_special_token_drop(encoder):
    """Precondition of the parity tests: in TEXTS, CLS, EOS and UNK positions do get positive raw
    weights, so FlagEmbedding's rule of dropping them is actually compared."""
    token_ids, _ = encoder.tokenize(TEXTS)
    input_ids, mask = pad_batch(token_ids, encoder.pad_id)
    with torch.no_grad():
        hidden = encoder.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        raw = torch.relu(encoder.sparse_linear(hidden)).squeeze(-1)
    tokenizer = encoder.tokenizer
    for special in (tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        assert (raw[(input_ids == special) & mask.bool()] > 0).any(), f"id {special} never weighted"


def test_lexical_weight_rules(encoder):
    """Hidden states chosen so that each position gets an exact raw weight: special ids, padding and
    weights <= 0 are dropped, a repeated id keeps its max, ids come out ascending."""
    head = encoder.sparse_linear
    w, b = head.weight[0].detach(), head.bias.detach()
    targets = torch.tensor([[0.9, 0.2, -0.5, 0.7, 0.4, -0.1, 0.3, 0.8], [0.6, 0.5, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9]])
    hidden = ((targets - b)[..., None] * w / w.dot(w)).float()
    input_ids = torch.tensor([[0, 17, 9, 9, 17, 5, 3, 2], [0, 40, 40, 2, 1, 1, 1, 1]])
    mask = (input_ids != 1).long()
    with torch.inference_mode():
        rows = encoder._lexical_weights(hidden, input_ids, mask)
    assert [ids.tolist() for ids, _ in rows] == [[9, 17], [40]]
    np.testing.assert_allclose(rows[0][1], [0.7, 0.4], rtol=1e-5)  # 9: -0.5 and 0.7; 17: 0.2 and 0.4
    np.testing.assert_allclose(rows[1][1], [0.5], rtol=1e-5)  # 40 with 0.5 and 0.1
    assert rows[0][0].dtype == np.int32 and rows[0][1].dtype == np.float32


# -- batching ----------------------------------------------------------------------------------
def test_batching_invariance(tiny_bge_m3_path, encoder, encoded):
    """One by one, all together, or cut into many small batches: the same vectors in input order."""
    singles = [encoder.encode([text]).columns for text in TEXTS]
    one_by_one = {name: pa.concat_arrays([single[name] for single in singles]) for name in (DENSE, SPARSE, COLBERT)}
    _assert_same_outputs(one_by_one, encoded.columns)

    small = _encoder(tiny_bge_m3_path, max_length=WHOLE, max_tokens_per_batch=48)
    many = small.encode(TEXTS)
    assert many.padded_tokens < encoded.padded_tokens, "small batches pad less"
    _assert_same_outputs(many.columns, encoded.columns)
    np.testing.assert_array_equal(many.token_counts, encoded.token_counts)


def test_collecting_each_batch_before_launching_the_next_changes_nothing(tiny_bge_m3_path, encoded):
    """`overlap` (collect a batch's outputs after launching the next, the default) only reorders host
    work: with it off, many small batches give the same vectors."""
    encoder = _encoder(tiny_bge_m3_path, max_length=WHOLE, max_tokens_per_batch=48)
    assert encoder.overlap
    encoder.overlap = False
    _assert_same_outputs(encoder.encode(TEXTS).columns, encoded.columns)


def test_oom_splitting(tiny_bge_m3_path, encoded, monkeypatch):
    """A forward pass that runs out of memory is split until it fits; nothing is lost or reordered."""
    encoder = _encoder(tiny_bge_m3_path, max_length=WHOLE, max_tokens_per_batch=1 << 20)
    seen = fail_batches_above(monkeypatch, encoder, 2)
    result = encoder.encode(TEXTS)
    assert result.oom_splits >= 3
    assert seen[0] == len(TEXTS) and max(seen[1:]) <= len(TEXTS) // 2
    _assert_same_outputs(result.columns, encoded.columns)


# -- outputs, types, contract ------------------------------------------------------------------
@pytest.mark.parametrize("outputs", [[SPARSE], [COLBERT, DENSE]])
def test_output_subset(tiny_bge_m3_path, encoded, outputs):
    encoder = _encoder(tiny_bge_m3_path, max_length=WHOLE, outputs=outputs)
    result = encoder.encode(TEXTS)
    expected = [name for name in (DENSE, SPARSE, COLBERT) if name in outputs]
    assert list(result.columns) == expected
    assert [field.name for field in encoder.output_fields()] == expected
    for name in expected:
        assert result.columns[name].type == encoded.columns[name].type
    _assert_same_outputs(result.columns, {name: encoded.columns[name] for name in expected}, atol=1e-6)


def test_unknown_output_rejected(tiny_bge_m3_path):
    with pytest.raises(ValueError, match="unknown BGE-M3 outputs"):
        _encoder(tiny_bge_m3_path, outputs=["dense", "splade"])


def test_arrow_types_and_invariants(encoder, encoded):
    hidden = encoder.model.config.hidden_size
    expected = {DENSE: dense_type(hidden), SPARSE: SPARSE_TYPE, COLBERT: colbert_type(hidden)}
    assert {name: column.type for name, column in encoded.columns.items()} == expected
    assert {field.name: field.type for field in encoder.output_fields()} == expected
    assert all(len(column) == len(TEXTS) and column.null_count == 0 for column in encoded.columns.values())

    np.testing.assert_allclose(np.linalg.norm(_dense(encoded.columns[DENSE]), axis=1), 1.0, atol=1e-5)
    tokenizer = encoder.tokenizer
    dropped = {tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}
    token_ids = encoder.tokenize(TEXTS)[0]
    for row, ids in zip(encoded.columns[SPARSE].to_pylist(), token_ids, strict=True):
        assert row["indices"] == sorted(set(row["indices"])), "ascending, one weight per id"
        assert all(value > 0 for value in row["values"])
        assert set(row["indices"]) == set(row["indices"]) - dropped
        assert set(row["indices"]) <= set(ids)
    assert 3 in token_ids[TEXTS.index("Ελληνικά 🙂 characters the vocabulary lacks")], "text has <unk>"
    assert encoded.columns[SPARSE][TEXTS.index("")].as_py() == {"indices": [], "values": []}
    for row, tokens in zip(_colbert_rows(encoded.columns[COLBERT]), encoded.token_counts, strict=True):
        assert len(row) == tokens - 1
        np.testing.assert_allclose(np.linalg.norm(row, axis=1), 1.0, atol=2e-3)


def test_empty_input(encoder):
    result = encoder.encode([])
    assert {name: (len(column), column.type) for name, column in result.columns.items()} == {
        field.name: (0, field.type) for field in encoder.output_fields()
    }


def test_model_id_and_max_length(tiny_bge_m3_path, encoder):
    default = _encoder(tiny_bge_m3_path)
    assert default.max_length == WHOLE, "8192 by default, capped at the checkpoint's 2048 positions"
    assert encoder.model_id.startswith("bge-m3:tiny-bge-m3:")
    assert encoder.model_id.endswith(f":max_length={WHOLE}")
    assert _encoder(tiny_bge_m3_path, max_length=CUT).model_id != encoder.model_id
    assert _encoder(tiny_bge_m3_path, max_length=WHOLE, outputs=[SPARSE]).model_id == encoder.model_id
    with pytest.raises(ValueError, match="outside what"):
        _encoder(tiny_bge_m3_path, max_length=8192)
    with pytest.raises(ValueError, match="Matryoshka"):
        _encoder(tiny_bge_m3_path, dims=[16])


@pytest.mark.parametrize("outputs", [[], [COLBERT]])
def test_loader_describes_without_loading(tiny_bge_m3_path, outputs):
    """The driver's description (config files only) names the same columns and identity as the worker's
    encoder, so table metadata and row `model` values agree."""
    from operators.encoders.loader import describe_encoder, load_encoder, model_kind

    spec = EncoderSpec(model=tiny_bge_m3_path, device="cpu", outputs=outputs)
    description = describe_encoder(spec)
    encoder = load_encoder(spec)
    assert model_kind(tiny_bge_m3_path) == "bge-m3"
    assert isinstance(encoder, BgeM3Encoder)
    assert description.fields == encoder.output_fields()
    assert (description.model_id, description.max_length) == (encoder.model_id, encoder.max_length)
    assert description.dimension == encoder.model.config.hidden_size and description.dims == []


def test_lancedb_round_trip(encoded, tmp_path):
    import lancedb

    table = pa.table({"id": [f"doc-{i}" for i in range(len(TEXTS))], **encoded.columns})
    db = lancedb.connect(str(tmp_path / "lake"))
    back = db.create_table("docs", data=table).to_arrow().sort_by("id")
    assert back.schema.field(COLBERT).type == colbert_type(encoded.columns[COLBERT].type.value_type.list_size)
    assert back.schema.field(SPARSE).type == SPARSE_TYPE
    for name in (DENSE, SPARSE, COLBERT):
        assert back.column(name).combine_chunks().equals(table.column(name).combine_chunks())


# -- scoring -----------------------------------------------------------------------------------
def test_dense_scores():
    q = np.array([0.6, 0.8], dtype=np.float32)
    passages = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    np.testing.assert_allclose(scoring.dense_scores(q, passages), [0.6, 0.8, 1.0], rtol=1e-6)
    np.testing.assert_allclose(scoring.dense_scores(passages[:2], passages), [[1, 0, 0.6], [0, 1, 0.8]], rtol=1e-6)


def test_sparse_scores_accept_every_form():
    q = {"5": 0.5, "7": 2.0, "9": 1.0}  # FlagEmbedding's form: id strings
    p = {"indices": [1, 7, 9], "values": [3.0, 0.25, 4.0]}  # a row of our column
    assert scoring.sparse_score(q, p) == pytest.approx(2.0 * 0.25 + 1.0 * 4.0)
    assert scoring.sparse_score({7: 2.0}, ([7], [0.25])) == pytest.approx(0.5)
    assert scoring.sparse_score({}, p) == 0.0

    docs = [p, {"indices": [], "values": []}, {"indices": [5], "values": [2.0]}, None]
    column = pa.array(docs, type=SPARSE_TYPE)
    expected = [4.5, 0.0, 1.0, 0.0]
    np.testing.assert_allclose(scoring.sparse_scores(q, column), expected, rtol=1e-6)
    np.testing.assert_allclose(scoring.sparse_scores(q, pa.chunked_array([column[:2], column[2:]])), expected)
    np.testing.assert_allclose(scoring.sparse_scores(q, column.slice(2)), expected[2:])
    np.testing.assert_allclose(scoring.sparse_scores(q, docs[:3]), expected[:3])
    # a repeated token id keeps its max weight, as FlagEmbedding's _process_token_weights builds them
    assert scoring.sparse_score({"indices": [9, 7, 9], "values": [1.0, 2.0, 3.0]}, p) == pytest.approx(
        2.0 * 0.25 + 3.0 * 4.0)
    repeated = pa.array([{"indices": [9, 9, 7], "values": [0.5, 4.0, 1.0]}], type=SPARSE_TYPE)
    np.testing.assert_allclose(scoring.sparse_scores(q, repeated), [2.0 * 1.0 + 1.0 * 4.0], rtol=1e-6)
    with pytest.raises(ValueError, match="as many values as ids"):
        scoring.sparse_score({"indices": [1, 2], "values": [1.0]}, p)


def test_colbert_scores():
    q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    p1 = np.array([[0.6, 0.8], [1.0, 0.0]], dtype=np.float32)  # maxsims 1.0 and 0.8
    p2 = np.array([[-1.0, 0.0]], dtype=np.float32)  # maxsims -1.0 and 0.0
    assert scoring.colbert_score(q, p1) == pytest.approx((1.0 + 0.8) / 2)
    assert scoring.colbert_score(q, p2) == pytest.approx((-1.0 + 0.0) / 2)
    column = pa.array([p1.tolist(), p2.tolist(), []], type=colbert_type(2))
    np.testing.assert_allclose(scoring.colbert_scores(q, column), [0.9, -0.5, 0.0], atol=1e-3)
    np.testing.assert_allclose(scoring.colbert_scores(q, [p1, p2]), [0.9, -0.5], rtol=1e-6)


def test_hybrid_scores():
    dense, sparse, colbert = np.array([0.5, 1.0]), np.array([0.2, 0.0]), np.array([0.9, 0.3])
    np.testing.assert_allclose(
        scoring.hybrid_scores(dense, sparse, colbert, (0.4, 0.2, 0.4)),
        [(0.4 * 0.5 + 0.2 * 0.2 + 0.4 * 0.9) / 1.0, (0.4 * 1.0 + 0.4 * 0.3) / 1.0],
        rtol=1e-6,
    )
    # FlagEmbedding's compute_score default weights (1, 1, 1)
    np.testing.assert_allclose(scoring.hybrid_scores(dense, sparse, colbert, (1, 1, 1)), (dense + sparse + colbert) / 3)
    np.testing.assert_allclose(scoring.hybrid_scores(dense, None, None, (1, 0, 0)), dense)
    with pytest.raises(ValueError, match="no sparse scores"):
        scoring.hybrid_scores(dense, None, colbert, (1, 1, 1))
