"""Documents ranked by their best passage, for passage tables (embed --chunk-tokens, docs/chunking.md).

A passage's id is `<doc_id>#<chunk>`, so its document is the id before the last `#` (no lookup). A
document scores what its best passage scores (max over its passages, the usual document-level
aggregation for passage retrieval); `search --group-by doc` and `evaluate` on a passage table both rank
this way. The passages searched are k x PASSAGE_DEPTH, deepened until k documents are found or the table
has no more rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from operators.schema import CHAR_END, CHAR_START, CHUNK, DOC_ID, ID, PASSAGE_SEPARATOR

PASSAGE_DEPTH = 4  # passages searched per document wanted (first round; then 4x deeper while short)


def document_of(passage_id: str) -> str:
    return passage_id.rsplit(PASSAGE_SEPARATOR, 1)[0]


def is_passage_table(names: Iterable[str]) -> bool:
    return DOC_ID in set(names)


def best_per_document(ranked: Iterable[tuple[str, float]]) -> list[tuple[str, float, str]]:
    """(document, score, best passage) from passages ranked best first: each document at its first passage."""
    seen: set[str] = set()
    documents = []
    for passage, score in ranked:
        document = document_of(passage)
        if document not in seen:
            seen.add(document)
            documents.append((document, score, passage))
    return documents


def documents_run(run: dict[str, list[tuple[str, float]]], k: int) -> dict[str, list[tuple[str, float]]]:
    """A passage run as a document run: each query's k best documents by their best passage."""
    return {query: [(doc, score) for doc, score, _ in best_per_document(ranked)[:k]] for query, ranked in run.items()}


def search_documents(search: Callable[[int], list[dict]], k: int, rows: int) -> list[dict]:
    """The k best documents ({"id": doc_id, "score", "passage"}) from `search(n)`, which returns the n best
    passages ({"id", "score"}, best first); n grows until k documents are found or all `rows` were searched."""
    depth = k * PASSAGE_DEPTH
    while True:
        hits = search(depth)
        documents = best_per_document((hit["id"], hit["score"]) for hit in hits)
        if len(documents) >= k or len(hits) < depth or depth >= rows:
            return [{"id": doc, "score": score, "passage": passage} for doc, score, passage in documents[:k]]
        depth *= PASSAGE_DEPTH


def with_spans(dataset, documents: list[dict]) -> list[dict]:
    """Each document hit with its best passage's number and character span, read from the table version."""
    if not documents:
        return documents
    quoted = ", ".join("'" + hit["passage"].replace("'", "''") + "'" for hit in documents)
    rows = dataset.to_table(columns=[ID, CHUNK, CHAR_START, CHAR_END], filter=f"{ID} IN ({quoted})").to_pylist()
    spans = {row[ID]: row for row in rows}
    return [{**hit, **{name: spans.get(hit["passage"], {}).get(name) for name in (CHUNK, CHAR_START, CHAR_END)}}
            for hit in documents]
