"""Documents ranked by their best passage (operators/search/documents.py): the aggregation search --group-by doc
and evaluate use on passage tables."""

from __future__ import annotations

from operators.metrics import evaluate_run
from operators.search.documents import best_per_document, document_of, documents_run, search_documents


def test_document_of_keeps_separators_inside_ids():
    assert document_of("a#b#12") == "a#b" and document_of("doc#0") == "doc"


def test_best_passage_per_document_in_rank_order():
    ranked = [("b#2", 0.9), ("a#0", 0.8), ("b#0", 0.7), ("c#1", 0.6), ("a#3", 0.5)]
    assert best_per_document(ranked) == [("b", 0.9, "b#2"), ("a", 0.8, "a#0"), ("c", 0.6, "c#1")]
    run = documents_run({"q": ranked}, k=2)
    assert run == {"q": [("b", 0.9), ("a", 0.8)]}
    # max over passages: a document found by any of its passages is retrieved at its best one's rank
    assert evaluate_run(run, {"q": {"a": 1.0}}, ["q"], 2).as_dict()["mrr@2"] == 0.5


def test_search_deepens_until_k_documents():
    passages = [{"id": f"d{n // 10}#{n % 10}", "score": 1.0 - n / 1000} for n in range(200)]  # 10 per document
    asked = []

    def search(n: int) -> list[dict]:
        asked.append(n)
        return passages[:n]

    found = search_documents(search, k=5, rows=len(passages))
    assert [hit["id"] for hit in found] == ["d0", "d1", "d2", "d3", "d4"]
    assert found[0]["passage"] == "d0#0" and asked == [20, 80]
    asked.clear()
    assert len(search_documents(search, k=50, rows=len(passages))) == 20  # the table has 20 documents
    assert asked[-1] >= len(passages)
