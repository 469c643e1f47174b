"""`search --like ID`: the items nearest a stored item in every mode equal a brute force over the stored
vectors with the item itself excluded (synthetic BGE-M3-shaped table, no encoder)."""

from __future__ import annotations

import lancedb
import numpy as np
import pytest

from operators.schema import COLBERT, DENSE, SPARSE
from operators.scoring import SparseVector
from operators.search.like import search_like, sql_string, stored_query
from operators.search.retriever import Retriever
from tests.search_tables import brute_lexical, brute_maxsim, brute_ranking, make_table

N = 200


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("like"))
    table, columns = make_table(path, n=N, seed=4)
    copy = table.slice(17, 1).to_pydict()
    copy["id"] = ["doc00017-copy"]
    lancedb.connect(path).open_table("docs").add(table.schema.empty_table().from_pydict(copy, schema=table.schema))
    return path, columns


def others(columns, item: int) -> list[int]:
    return [p for p in range(N) if p != item]


def expected_dense(columns, item: int, column: str, k: int):
    rows = others(columns, item)
    scores = columns[column][rows] @ columns[column][item]
    return brute_ranking([columns["id"][p] for p in rows], scores, k)


def hits_of(found):
    return [(hit["id"], hit["score"]) for hit in found]


def assert_same(found, expected):
    assert [doc for doc, _ in hits_of(found)] == [doc for doc, _ in expected]
    np.testing.assert_allclose([s for _, s in hits_of(found)], [s for _, s in expected], atol=1e-5)


@pytest.mark.parametrize("column", [DENSE, "dense_16", "dense_8"])
def test_like_equals_exact_top_k_without_the_item(lake, column):
    path, columns = lake
    retriever = Retriever(path, "docs", exact=True)
    for item in (0, 5, 123):
        found = search_like(retriever, columns["id"][item], k=10, column=column)
        assert_same(found, expected_dense(columns, item, column, 10))


def test_like_finds_an_exact_copy_first_and_never_the_item(lake):
    path, columns = lake
    found = search_like(Retriever(path, "docs", exact=True), "doc00017", k=3)
    assert found[0]["id"] == "doc00017-copy" and found[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert "doc00017" not in [hit["id"] for hit in found] and len(found) == 3


def test_like_through_the_funnel_and_sparse(lake):
    path, columns = lake
    retriever = Retriever(path, "docs", exact=True, funnel_shortlist=N + 1)  # shortlist = table: exact
    item = 42
    assert_same(search_like(retriever, columns["id"][item], k=5, funnel="dense_8"),
                expected_dense(columns, item, DENSE, 5))
    query = SparseVector.from_pairs(columns[SPARSE][item]["indices"], columns[SPARSE][item]["values"])
    rows = others(columns, item)
    lexical = np.array([brute_lexical(query, columns[SPARSE][p]) for p in rows])
    ranking = [pair for pair in brute_ranking([columns["id"][p] for p in rows], lexical, N) if pair[1] > 0][:5]
    assert_same(search_like(retriever, columns["id"][item], k=5, mode="sparse"), ranking)


def test_like_in_hybrid_mode_reranks_the_item_s_own_shortlists(lake):
    path, columns = lake
    shortlist = 25
    retriever = Retriever(path, "docs", exact=True, shortlist=shortlist)
    item = 99
    query = SparseVector.from_pairs(columns[SPARSE][item]["indices"], columns[SPARSE][item]["values"])
    ids = columns["id"] + ["doc00017-copy"]
    dense_all = np.append(columns[DENSE] @ columns[DENSE][item], columns[DENSE][17] @ columns[DENSE][item])
    lexical_all = np.array([brute_lexical(query, row) for row in [*columns[SPARSE], columns[SPARSE][17]]])
    union = {doc for doc, _ in brute_ranking(ids, dense_all, shortlist)}
    union |= {doc for doc, s in brute_ranking(ids, lexical_all, shortlist) if s > 0}
    union.discard(ids[item])
    position = {doc: i for i, doc in enumerate(ids)}
    colbert = {doc: brute_maxsim(columns[COLBERT][item].astype(np.float32),
                                 columns[COLBERT][17 if doc == "doc00017-copy" else position[doc]])
               for doc in union}
    weights = (0.4, 0.2, 0.4)
    hybrid = [(weights[0] * dense_all[position[d]] + weights[1] * lexical_all[position[d]]
               + weights[2] * colbert[d]) / sum(weights) for d in sorted(union)]
    found = search_like(retriever, ids[item], k=8, mode="hybrid", weights=weights)
    assert_same(found, brute_ranking(sorted(union), hybrid, 8))


def test_stored_query_reads_every_vector_and_unknown_ids_fail(lake):
    path, columns = lake
    store = Retriever(path, "docs").store
    query = stored_query(store, "doc00003")
    np.testing.assert_allclose(query.dense["dense_16"], columns["dense_16"][3])
    np.testing.assert_allclose(query.colbert, columns[COLBERT][3].astype(np.float32))
    with pytest.raises(ValueError, match="no row with id \"it's-missing\""):
        stored_query(store, "it's-missing")
    assert sql_string("it's") == "'it''s'"
