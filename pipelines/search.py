"""The search job: the k best rows of a table for one query text, in any mode (operators/search/retriever.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from operators.scoring import DEFAULT_WEIGHTS, Fusion
from operators.search.retriever import DEFAULT_FUNNEL_SHORTLIST, DEFAULT_SHORTLIST, Retriever, SearchMode
from operators.tables import check_table_name


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
    exact: bool = False
    model: str | None = None
    storage: Mapping | None = field(default=None, repr=False)  # operators/storage.py settings

    def __post_init__(self) -> None:
        check_table_name(self.table)


def run_search(job: SearchJob) -> list[dict]:
    """[{"id", "score"}], best first, ties broken by id."""
    retriever = Retriever(job.uri, job.table, model=job.model, shortlist=job.shortlist, exact=job.exact,
                          funnel_shortlist=job.funnel_shortlist, storage=job.storage)
    return retriever.search(job.query, mode=job.mode, column=job.column, k=job.k, weights=job.weights,
                            fusion=job.fusion, funnel=job.funnel)
