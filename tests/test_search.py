"""Every search mode against brute force on the same stored vectors (synthetic BGE-M3-shaped table)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from operators import scoring
from operators.schema import COLBERT, DENSE, SPARSE
from operators.scoring import (
    QueryVectors,
    SparseVector,
    colbert_scores,
    mode_weights,
    parse_weights,
    rrf_scores,
    sparse_scores,
    top_k,
    weight_grid,
)
from operators.search.dense import exact_topn, funnel_topn, scan_topn
from operators.search.retriever import Retriever
from operators.search.sparse_index import SparseIndex, open_sparse_index, stored_versions
from operators.search.store import TableStore
from tests.search_tables import brute_lexical, brute_maxsim, brute_ranking, make_table, random_rows

N = 300


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("lake"))
    _table, columns = make_table(path, n=N, seed=0)
    return path, columns


@pytest.fixture(scope="module")
def queries():
    rng = np.random.default_rng(7)
    rows = random_rows(rng, 8, start=90000)
    result = []
    for i in range(8):
        sparse = rows[SPARSE][i]
        if not sparse["indices"]:
            sparse = {"indices": [1, 2, 3], "values": [0.3, 0.2, 0.1]}
        result.append(QueryVectors(
            dense={name: rows[name][i] for name in ("dense", "dense_16", "dense_8")},
            sparse=SparseVector.from_pairs(sparse["indices"], sparse["values"]),
            colbert=rows[COLBERT][i].astype(np.float32),
        ))
    return result


def as_pairs(hits):
    return [(hit["id"], hit["score"]) for hit in hits]


def assert_same_hits(hits, expected, tolerance=1e-5):
    assert [doc for doc, _ in as_pairs(hits)] == [doc for doc, _ in expected]
    np.testing.assert_allclose([s for _, s in as_pairs(hits)], [s for _, s in expected], atol=tolerance)


@pytest.mark.parametrize("column", ["dense", "dense_16", "dense_8"])
def test_dense_search_equals_numpy(lake, queries, column):
    path, columns = lake
    retriever = Retriever(path, "docs", exact=True)
    for query in queries:
        scores = columns[column] @ query.dense[column]
        hits = retriever.search(query, mode="dense", column=column, k=10)
        assert_same_hits(hits, brute_ranking(columns["id"], scores, 10))


def test_funnel_shortlists_by_small_column_and_reranks_by_full(lake, queries):
    path, columns = lake
    retriever = Retriever(path, "docs", exact=True, funnel_shortlist=40)
    for query in queries:
        shortlist = brute_ranking(columns["id"], columns["dense_8"] @ query.dense["dense_8"], 40)
        positions = [int(doc[3:]) for doc, _ in shortlist]
        full = columns[DENSE][positions] @ query.dense[DENSE]
        expected = brute_ranking([columns["id"][p] for p in positions], full, 5)
        assert_same_hits(retriever.search(query, funnel="dense_8", k=5), expected)
        assert_same_hits(retriever.search(query, funnel=8, k=5), expected)
    # a shortlist as large as the table is exact search
    everything = Retriever(path, "docs", exact=True, funnel_shortlist=N)
    for query in queries:
        exact = brute_ranking(columns["id"], columns[DENSE] @ query.dense[DENSE], 10)
        assert_same_hits(everything.search(query, funnel="dense_16", k=10), exact)


def test_in_memory_exact_and_funnel_topn(lake, queries):
    _path, columns = lake
    matrix = columns[DENSE]
    q = np.stack([query.dense[DENSE] for query in queries])
    positions, scores = exact_topn(matrix, q, 7, block_rows=64)  # several blocks
    for row, query in enumerate(q):
        expected = np.argsort(-(matrix @ query), kind="stable")[:7]
        np.testing.assert_array_equal(positions[row], expected)
        np.testing.assert_allclose(scores[row], (matrix @ query)[expected], rtol=1e-6)
    q_small = np.stack([query.dense["dense_8"] for query in queries])
    f_pos, f_scores = funnel_topn(columns["dense_8"], matrix, q_small, q, 5, shortlist=N)
    np.testing.assert_array_equal(f_pos, positions[:, :5])
    store = TableStore(lake[0], "docs")
    s_pos, s_scores = scan_topn(store, DENSE, q, 7)
    np.testing.assert_array_equal(s_pos, positions)


def test_sparse_index_scores_equal_brute_force(lake, queries):
    path, columns = lake
    store = TableStore(path, "docs")
    index = SparseIndex.build(store)
    assert index.rows == N
    for query in queries:
        expected = np.array([brute_lexical(query.sparse, row) for row in columns[SPARSE]])
        np.testing.assert_allclose(index.scores(query.sparse), expected, atol=1e-6)
        positions, scores = index.search(query.sparse, 10)
        ranking = [pair for pair in brute_ranking(columns["id"], expected, N) if pair[1] > 0][:10]
        assert [columns["id"][p] for p in positions] == [doc for doc, _ in ranking]
        np.testing.assert_allclose(scores, [s for _, s in ranking], atol=1e-6)
        # the vectorised scorer used for candidates agrees too
        table = store.take(np.arange(N), [SPARSE])
        np.testing.assert_allclose(sparse_scores(query.sparse, table.column(SPARSE)), expected, atol=1e-6)
        singles = [scoring.sparse_score((query.sparse.indices, query.sparse.values), row) for row in columns[SPARSE]]
        np.testing.assert_allclose(singles, expected, atol=1e-6)


def test_sparse_index_keeps_the_max_weight_of_a_repeated_token():
    index = SparseIndex.from_postings(
        tokens=np.array([5, 5, 7, 5]), docs=np.array([0, 0, 0, 1]), weights=np.array([0.1, 0.4, 0.2, 0.3]),
        ids=np.array(["a", "b"], dtype=object), version=1, fragments=[],
    )
    np.testing.assert_allclose(index.scores(SparseVector.from_pairs([5, 7], [1.0, 1.0])), [0.6, 0.3])
    assert SparseVector.from_pairs([3, 3, 1], [0.1, 0.5, 0.2]).values.tolist() == pytest.approx([0.2, 0.5])


def test_sparse_index_is_persisted_updated_on_append_and_rebuilt_on_delete(tmp_path, queries):
    import lancedb
    from search_tables import to_arrow

    path = str(tmp_path)
    table, _columns = make_table(path, n=120, seed=3)
    store = TableStore(path, "docs")
    _index, action = open_sparse_index(store)
    assert action == "built"
    assert stored_versions(store.sparse_index_uri()) == [store.version]
    assert open_sparse_index(TableStore(path, "docs"))[1] == "loaded"

    handle = lancedb.connect(path).open_table("docs")
    more = random_rows(np.random.default_rng(4), 50, start=120)
    handle.add(to_arrow(more, meta=None).cast(table.schema))
    grown = TableStore(path, "docs")
    updated, action = open_sparse_index(grown)
    assert action == "updated"
    fresh = SparseIndex.build(grown)
    assert updated.rows == fresh.rows == 170
    for query in queries:
        np.testing.assert_allclose(updated.scores(query.sparse), fresh.scores(query.sparse), atol=1e-6)
    assert stored_versions(grown.sparse_index_uri()) == [grown.version]  # older versions dropped

    handle.delete("id = 'doc00003' OR id = 'doc00130'")
    shrunk = TableStore(path, "docs")
    rebuilt, action = open_sparse_index(shrunk)
    assert action == "rebuilt"
    assert rebuilt.rows == 168 and "doc00003" not in set(rebuilt.ids)
    # positions stay aligned with the table after the delete: take() returns the row the index names
    for query in queries:
        positions, _ = rebuilt.search(query.sparse, 5)
        taken = shrunk.take(positions, ["id"]).column("id").to_pylist()
        assert taken == [rebuilt.ids[p] for p in positions]


def test_colbert_scores_equal_brute_maxsim(lake, queries):
    path, columns = lake
    store = TableStore(path, "docs")
    rows = store.take(np.arange(N), [COLBERT])
    for query in queries:
        expected = [brute_maxsim(query.colbert, passage) for passage in columns[COLBERT]]
        np.testing.assert_allclose(colbert_scores(query.colbert, rows.column(COLBERT)), expected, atol=1e-5)
        # and the single-pair reference of operators.scoring, row by row
        singles = [scoring.colbert_score(query.colbert, passage) for passage in columns[COLBERT]]
        np.testing.assert_allclose(singles, expected, atol=1e-5)


def test_colbert_and_hybrid_rerank_the_union_of_dense_and_sparse_shortlists(lake, queries):
    path, columns = lake
    shortlist = 30
    retriever = Retriever(path, "docs", exact=True, shortlist=shortlist)
    weights = (0.4, 0.2, 0.4)
    for query in queries:
        dense_all = columns[DENSE] @ query.dense[DENSE]
        lexical_all = np.array([brute_lexical(query.sparse, row) for row in columns[SPARSE]])
        dense_ids = {doc for doc, _ in brute_ranking(columns["id"], dense_all, shortlist)}
        sparse_ids = {doc for doc, s in brute_ranking(columns["id"], lexical_all, shortlist) if s > 0}
        union = sorted(dense_ids | sparse_ids)
        positions = [int(doc[3:]) for doc in union]
        colbert = np.array([brute_maxsim(query.colbert, columns[COLBERT][p]) for p in positions])
        hybrid = (weights[0] * dense_all[positions] + weights[1] * lexical_all[positions]
                  + weights[2] * colbert) / sum(weights)
        assert_same_hits(retriever.search(query, mode="colbert", k=10), brute_ranking(union, colbert, 10))
        assert_same_hits(retriever.search(query, mode="hybrid", k=10, weights=weights),
                         brute_ranking(union, hybrid, 10))
        two = (1.0, 0.3)
        dense_sparse = (two[0] * dense_all[positions] + two[1] * lexical_all[positions]) / sum(two)
        # zero ColBERT weight is BGE-M3's "sparse+dense" score
        assert_same_hits(retriever.search(query, mode="hybrid", k=10, weights=(1.0, 0.3, 0.0)),
                         brute_ranking(union, dense_sparse, 10))


def test_reciprocal_rank_fusion_by_hand():
    ids = np.array(["a", "b", "c"], dtype=object)
    scores = {"dense": np.array([0.9, 0.8, 0.1]), "sparse": np.array([0.0, 0.5, 0.7])}
    fused = rrf_scores(ids, scores, {"dense": 1.0, "sparse": 1.0})
    # dense ranks a=1 b=2 c=3; sparse ranks c=1 b=2, a has no shared token so no sparse term
    np.testing.assert_allclose(fused, [1 / 61, 1 / 62 + 1 / 62, 1 / 63 + 1 / 61])


def test_rrf_fusion_through_the_retriever(lake, queries):
    path, _columns = lake
    retriever = Retriever(path, "docs", exact=True, shortlist=30)
    hits = retriever.search(queries[0], mode="hybrid", fusion="rrf", k=5)
    assert len(hits) == 5
    assert all(0 < hit["score"] <= 3 / 61 for hit in hits)
    assert [hit["score"] for hit in hits] == sorted((hit["score"] for hit in hits), reverse=True)


def test_ties_are_broken_by_id():
    ids = np.array(["c", "a", "d", "b"], dtype=object)
    scores = np.array([0.5, 0.5, 0.9, 0.5])
    assert [ids[i] for i in top_k(ids, scores, 3)] == ["d", "a", "b"]


def test_weights_parsing_and_grid():
    assert parse_weights("0.4,0.2,0.4") == (0.4, 0.2, 0.4)
    assert parse_weights("1,1") == (1.0, 1.0)
    for bad in ("1", "a,b", "-1,1,1", "0,0,0", "1,2,3,4"):
        with pytest.raises(ValueError, match="--weights"):
            parse_weights(bad)
    assert mode_weights(None, ["dense", "sparse"]) == {"dense": 0.4, "sparse": 0.2}
    with pytest.raises(ValueError, match="no weight"):
        mode_weights((0, 0, 1), ["dense", "sparse"])
    grid = weight_grid(["dense", "sparse", "colbert"], 0.1)
    assert len(grid) == 66 and all(sum(w.values()) == pytest.approx(1) for w in grid)


def test_errors_name_the_problem(lake, queries, tmp_path):
    path, _columns = lake
    retriever = Retriever(path, "docs")
    with pytest.raises(ValueError, match="no column 'dense_4'"):
        retriever.search(queries[0], column="dense_4")
    with pytest.raises(ValueError, match="--funnel applies to dense mode only"):
        retriever.search(queries[0], mode="hybrid", funnel=8)
    with pytest.raises(ValueError, match="--funnel takes a nested column"):
        retriever.search(queries[0], funnel="dense")
    with pytest.raises(ValueError, match="unknown mode"):
        retriever.search(queries[0], mode="bm25")
    with pytest.raises(ValueError, match="no table 'nope'"):
        Retriever(path, "nope")
    dense_only = str(tmp_path / "mrl")
    make_table(dense_only, n=20, sparse=False, colbert=False)
    with pytest.raises(ValueError, match="sparse search needs column"):
        Retriever(dense_only, "docs").search(queries[0], mode="sparse")
    with pytest.raises(ValueError, match="hybrid search needs"):
        Retriever(dense_only, "docs").search(queries[0], mode="hybrid")


def test_index_folder_is_not_mistaken_for_a_table(lake):
    import lancedb

    path, _ = lake
    Retriever(path, "docs").sparse_index  # noqa: B018 - builds and persists it
    assert os.path.isdir(os.path.join(path, "docs.sparse_index"))
    assert list(lancedb.connect(path).list_tables().tables) == ["docs"]


def test_thresholded_selection_is_exact_on_wide_blocks():
    from operators.search.dense import select_topn

    rng = np.random.default_rng(3)
    scores = rng.standard_normal((6, 50_000)).astype(np.float32)
    scores[2] = 0.0  # a row of ties: any n of them is a correct answer
    scores[3, :100] = 5.0  # many equal maxima
    for n in (1, 10, 300):
        chosen = select_topn(scores, n)
        assert chosen.shape == (6, n)
        for row in range(6):
            assert len(set(chosen[row].tolist())) == n
            kth = np.sort(scores[row])[::-1][n - 1]
            assert scores[row, chosen[row]].min() >= kth
