"""Search over embedlake tables: dense (with the Matryoshka funnel), sparse, ColBERT and hybrid."""

from operators.search.retriever import SEARCH_MODES, Retriever, search

__all__ = ["SEARCH_MODES", "Retriever", "search"]
