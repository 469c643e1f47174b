"""The search job: the k best rows of a table for one query text, in any mode (operators/search/retriever.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from operators.scoring import DEFAULT_WEIGHTS, Fusion
from operators.search.retriever import DEFAULT_FUNNEL_SHORTLIST, DEFAULT_SHORTLIST, Retriever, SearchMode
from operators.tables import Pin


@dataclass(frozen=True)
class SearchJob:
    """One query's options (pipelines/commands/search.py says what each means)."""

    uri: str
    query: str
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
    storage: Mapping | None = field(default=None, repr=False)  # operators/storage.py settings


def run_search(job: SearchJob) -> list[dict]:
    """[{"id", "score"}], best first, ties broken by id, at the serving version (or the one pinned)."""
    retriever = Retriever(job.uri, job.table, model=job.model, shortlist=job.shortlist, exact=job.exact,
                          funnel_shortlist=job.funnel_shortlist, storage=job.storage, pin=Pin(job.version, job.tag),
                          rescore_multiplier=job.rescore_multiplier)
    return retriever.search(job.query, mode=job.mode, column=job.column, k=job.k, weights=job.weights,
                            fusion=job.fusion, funnel=job.funnel)
