"""Benchmark texts: the sample corpus, and long documents made by joining sample texts."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "data" / "sample"


def sample_texts(limit: int | None = None, sample_dir: Path = SAMPLE_DIR) -> list[str]:
    """The sample's texts in file order (2,714 Debian package descriptions, mean ~530 characters)."""
    texts: list[str] = []
    for path in sorted(sample_dir.glob("*.parquet")):
        texts.extend(text for text in pq.read_table(path, columns=["text"]).column("text").to_pylist() if text)
    return texts[:limit] if limit else texts


def long_documents(texts: list[str], count: int, characters: int) -> list[str]:
    """`count` documents of about `characters` characters each, each a different run of sample texts
    (roughly 4.5 characters per token for English WordPiece/SentencePiece)."""
    documents = []
    position = 0
    for _ in range(count):
        parts: list[str] = []
        size = 0
        while size < characters:
            text = texts[position % len(texts)]
            parts.append(text)
            size += len(text) + 2
            position += 1
        documents.append("\n\n".join(parts)[:characters])
    return documents
