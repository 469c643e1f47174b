"""A small real corpus for the clustering and dedup tests, embedded once per test process.

Texts from four clearly different Debian sections (topic labels), plus planted near-duplicates of some of
them (one small edit each: lower-casing, one punctuation mark, two adjacent words swapped) and exact copies.
Embedding ~240 texts (128 tokens) with MiniLM on 2 CPU cores takes 10-30 s, so it is cached in-process.
"""

from __future__ import annotations

import difflib
import functools
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from operators.schema import DENSE, DUPLICATE_OF, ID, MODEL, TEXT_HASH, dense_column, text_hash
from operators.vectors import normalize_rows, to_vector_array

SECTIONS = ("fonts", "games", "hamradio", "database")
PER_SECTION = 50
PLANTED_PER_EDIT = 12
EXACT_COPIES = 5
SEED = 7
NESTED_DIM = 128
EDITS = ("case", "punct", "swap")
# Half MiniLM's 256 so the tests embed in seconds; every edit falls inside the first 40 words.
MAX_TOKENS = 128
# Texts at least this similar character-wise (difflib ratio) are near-identical, not "unrelated".
NEAR_IDENTICAL_TEXT = 0.8


@dataclass(frozen=True)
class Corpus:
    table: pa.Table  # id, text_hash, model, dense, dense_128, text, section
    planted: dict[str, str]  # planted id -> id of the original it was made from
    exact: dict[str, str]  # exact copy id -> original id

    @property
    def vectors(self) -> np.ndarray:
        dim = self.table.schema.field(DENSE).type.list_size
        return self.table.column(DENSE).combine_chunks().flatten().to_numpy().reshape(-1, dim)


def edit(text: str, kind: str, rng: random.Random) -> str:
    """One small edit; the result always differs from the input."""
    if kind == "case":
        return text.lower()
    if kind == "punct":
        for old, new in ((", ", " "), (". ", "; "), (".", "")):
            if old in text:
                return text.replace(old, new, 1)
        return text + "."
    words = text.split(" ")
    candidates = [i for i in range(min(40, len(words) - 1)) if words[i] != words[i + 1]]
    i = rng.choice(candidates)
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def _read_sections(sample_dir: Path) -> pa.Table:
    table = pq.read_table(sorted(Path(sample_dir).glob("*.parquet")), columns=["id", "text", "section"])
    rows = [row for row in table.to_pylist() if row["section"] in SECTIONS]
    rng = random.Random(SEED)
    picked = []
    for section in SECTIONS:
        members = sorted((r for r in rows if r["section"] == section), key=lambda r: r["id"])
        picked.extend(rng.sample(members, min(PER_SECTION, len(members))))
    return pa.Table.from_pylist(picked)


@functools.lru_cache(maxsize=1)
def build_corpus(sample_dir: str, model_path: str) -> Corpus:
    from sentence_transformers import SentenceTransformer

    base = _read_sections(Path(sample_dir)).to_pylist()
    rng = random.Random(SEED + 1)
    rows = list(base)
    planted: dict[str, str] = {}
    sources = rng.sample(base, PLANTED_PER_EDIT * len(EDITS) + EXACT_COPIES)
    for n, kind in enumerate(EDITS):
        for source in sources[n * PLANTED_PER_EDIT : (n + 1) * PLANTED_PER_EDIT]:
            text = edit(source["text"], kind, rng)
            if text == source["text"]:  # e.g. already lower-case: that would be an exact copy
                continue
            new_id = f"{source['id']}~{kind}"
            planted[new_id] = source["id"]
            rows.append({"id": new_id, "text": text, "section": source["section"]})
    exact: dict[str, str] = {}
    for source in sources[-EXACT_COPIES:]:
        new_id = f"{source['id']}~copy"
        exact[new_id] = source["id"]
        rows.append({"id": new_id, "text": source["text"], "section": source["section"]})

    model = SentenceTransformer(model_path, device="cpu")
    model.max_seq_length = MAX_TOKENS
    vectors = model.encode([r["text"] for r in rows], normalize_embeddings=True, batch_size=32)
    nested = normalize_rows(vectors[:, :NESTED_DIM])
    table = pa.table(
        {
            ID: [r["id"] for r in rows],
            TEXT_HASH: [text_hash(r["text"]) for r in rows],
            MODEL: ["all-MiniLM-L6-v2"] * len(rows),
            DENSE: to_vector_array(vectors),
            dense_column(NESTED_DIM): to_vector_array(nested),
            "text": [r["text"] for r in rows],
            "section": [r["section"] for r in rows],
        }
    )
    return Corpus(table=table, planted=planted, exact=exact)


def column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist()


def groups_of(duplicates: pa.Table) -> dict[str, str]:
    return dict(zip(column(duplicates, ID), column(duplicates, DUPLICATE_OF), strict=True))


def check_found_and_nothing_unrelated(corpus, duplicates: pa.Table, expected: dict[str, str]) -> int:
    """Every expected (copy, original) pair ends in one group, and every flagged pair is either planted or
    two texts that are near-identical character by character. Returns how many pairs were found."""
    keeper = groups_of(duplicates)
    texts = dict(zip(column(corpus.table, ID), column(corpus.table, "text"), strict=True))
    found = sum(keeper.get(copy, copy) == keeper.get(source, source) for copy, source in expected.items())
    planted = {**corpus.planted, **corpus.exact}
    for item, kept in keeper.items():
        same_source = planted.get(item, item) == planted.get(kept, kept)
        ratio = difflib.SequenceMatcher(None, texts[item], texts[kept]).ratio()
        assert same_source or ratio >= NEAR_IDENTICAL_TEXT, (item, kept, ratio)
    return found
