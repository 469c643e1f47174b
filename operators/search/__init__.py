"""Search over embedlake tables: dense (with the Matryoshka funnel), sparse, ColBERT and hybrid."""

from operators.search.retriever import Retriever, SearchMode

__all__ = ["Retriever", "SearchMode"]
