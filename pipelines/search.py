"""The search job: the k best rows of a table for one query text, or the rows nearest a stored item (`like`,
operators/search/like.py), in any mode (operators/search/retriever.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from operators.errors import UsageError
from operators.schema import DOC_ID, ID, MODEL, SOURCE_FILE, TEXT_HASH
from operators.scoring import DEFAULT_WEIGHTS, Fusion
from operators.search.retriever import DEFAULT_FUNNEL_SHORTLIST, DEFAULT_SHORTLIST, Retriever, SearchMode
from operators.tables import Pin, check_table_name


@dataclass(frozen=True)
class SearchJob:
    """One query's options (pipelines/commands/search.py says what each means)."""

    uri: str
    query: str | None = None  # one of query and like
    like: str | None = None  # a stored item's id: its nearest rows, itself excluded
    table: str = "docs"
    mode: SearchMode = SearchMode.DENSE
    column: str | None = None
    k: int = 10
    weights: Sequence[float] = DEFAULT_WEIGHTS
    fusion: Fusion = Fusion.WEIGHTED
    funnel: str | int | None = None
    shortlist: int = DEFAULT_SHORTLIST
    funnel_shortlist: int = DEFAULT_FUNNEL_SHORTLIST
    rescore_multiplier: int | None = None  # quantised funnel: shortlist k x this (None: 100 binary, 10 int8)
    exact: bool = False
    model: str | None = None
    version: int | None = None  # read this table version instead of the serving one
    tag: str | None = None  # or the version with this tag
    group_by: str | None = None  # "doc": a passage table's documents ranked by their best passage
    storage: Mapping | None = field(default=None, repr=False)  # operators/storage.py settings

    def __post_init__(self) -> None:
        check_table_name(self.table)
        if self.mode == SearchMode.AUTO:  # the rule picks the mode and weights: what only a fixed mode takes
            given = [option for option, value in (("--like", self.like), ("--column", self.column),
                                                  ("--funnel", self.funnel)) if value is not None]
            if self.fusion != Fusion.WEIGHTED:
                given.append(f"--fusion {self.fusion}")
            if given:
                msg = (f"--mode auto routes a --query text by the table's rule (weighted fusion); {', '.join(given)} "
                       "takes a fixed --mode")
                raise UsageError(msg)


def run_search(job: SearchJob) -> list[dict]:
    """[{"id", "score"}], best first, ties broken by id, at the serving version (or the one pinned); for `like`,
    without the item itself."""
    retriever = Retriever(job.uri, job.table, model=job.model, shortlist=job.shortlist, exact=job.exact,
                          funnel_shortlist=job.funnel_shortlist, storage=job.storage, pin=Pin(job.version, job.tag),
                          rescore_multiplier=job.rescore_multiplier)
    options = {"mode": job.mode, "column": job.column, "k": job.k, "weights": job.weights, "fusion": job.fusion,
               "funnel": job.funnel}
    if (job.query is None) == (job.like is None):
        msg = "search needs a query or an item to search like, not both"
        raise ValueError(msg)
    if job.group_by is not None:
        return _search_documents(job, retriever, options)
    if job.like is not None:
        from operators.search.like import search_like

        return search_like(retriever, job.like, **options)
    return retriever.search(job.query, **options)


def _search_documents(job: SearchJob, retriever: Retriever, options: dict) -> list[dict]:
    """--group-by doc: [{"id": doc_id, "score", "passage", "chunk", "char_start", "char_end"}], documents
    ranked by their best passage (operators/search/documents.py)."""
    from operators.search.documents import is_passage_table, search_documents, with_spans
    from operators.search.like import search_like

    if job.group_by != "doc":
        msg = f"--group-by takes doc, got {job.group_by!r}"
        raise UsageError(msg)
    store = retriever.store
    if not is_passage_table(store.schema.names):
        msg = (f"--group-by doc needs a passage table (embed --chunk-tokens); table {store.name!r} holds one row "
               "per document")
        raise UsageError(msg)
    query = job.query if job.like is None else None

    def passages(n: int) -> list[dict]:
        retriever.shortlist = max(retriever.shortlist, n)  # colbert and hybrid re-rank at least n candidates
        found = {**options, "k": n}
        if query is None:
            return search_like(retriever, job.like, **found)
        return retriever.search(query, **found)

    if query is not None and job.mode != SearchMode.AUTO:  # encoded once, whatever the depth (auto routes the text)
        query = retriever.encode([query])[0]
    return with_spans(store.dataset, search_documents(passages, job.k, store.rows))


# Shown per hit in text output: the first kept string column (a title, say), cut to this many characters.
SHOWN_CHARS = 70


def kept_text(job: SearchJob, ids: Sequence[str]) -> dict[str, str]:
    """id -> the hit's first kept string column (input columns copied by `embed --keep-columns`), for
    readable output; empty when the table keeps none."""
    from operators.tables import Lake

    dataset = Lake(job.uri, job.storage).table(job.table).snapshot(Pin(job.version, job.tag))  # the version searched
    internal = {ID, TEXT_HASH, MODEL, SOURCE_FILE, DOC_ID}
    shown = [f.name for f in dataset.schema if f.name not in internal
             and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))]
    if not ids or not shown:
        return {}
    quoted = ", ".join("'" + str(i).replace("'", "''") + "'" for i in ids)
    rows = dataset.to_table(columns=[ID, shown[0]], filter=f"{ID} IN ({quoted})").to_pylist()
    return {row[ID]: " ".join(str(row[shown[0]] or "").split()) for row in rows}


def format_hits(hits: list[dict], shown: dict[str, str]) -> str:
    """Rank, score (3 decimals), id and the kept text, aligned for a terminal."""
    if not hits:
        return "no rows matched"
    width = max(len(str(hit["id"])) for hit in hits)
    lines = []
    for rank, hit in enumerate(hits, 1):
        text = shown.get(hit.get("passage", hit["id"]), "")
        if "passage" in hit:  # --group-by doc: the passage that matched and its characters
            text = f"{hit['passage']} [{hit.get('char_start')}:{hit.get('char_end')}] {text}"
        if len(text) > SHOWN_CHARS:
            text = text[: SHOWN_CHARS - 1] + "…"
        lines.append(f"{rank:>3}  {hit['score']:.3f}  {str(hit['id']):<{width}}  {text}".rstrip())
    return "\n".join(lines)
