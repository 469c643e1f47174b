"""Lexical near-duplicates with MinHash + LSH (datasketch), to compare with SemDeDup on the same rows.

Texts are case-folded, whitespace-collapsed and cut into character n-grams; MinHash signatures estimate the
Jaccard similarity of those shingle sets, LSH banding finds candidate pairs, and a pair is linked when its
estimated Jaccard reaches the threshold. Groups are connected components of the links, one member kept
(by id, or the longest text); similarity in the output is the estimated Jaccard with the keeper.
Signatures are a batch transform (parallel); the LSH index lives in one process, so this mode is meant for
comparison runs, not for the largest tables.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from operators.cluster import DEFAULT_SEED
from operators.dedup import (
    Keep,
    duplicates_table,
    empty_duplicates,
    group_keepers,
    keep_preference,
)
from operators.schema import ID

SIGNATURE = "signature"
LENGTH = "length"
DEFAULT_NUM_PERM = 128
DEFAULT_NGRAM = 5
DEFAULT_THRESHOLD = 0.8
# datasketch >= 2's default hash scheme; signatures must be rebuilt with the scheme that made them.
SCHEME = "affine32"


def normalize_text(text: str) -> str:
    """Case and whitespace do not make a text different."""
    return " ".join(text.casefold().split())


def shingles(text: str, ngram: int) -> list[bytes]:
    """Distinct character n-grams of the normalised text (the whole text when it is shorter)."""
    text = normalize_text(text)
    if len(text) <= ngram:
        return [text.encode("utf-8")]
    return [gram.encode("utf-8") for gram in {text[i : i + ngram] for i in range(len(text) - ngram + 1)}]


def signatures(texts: list[str], num_perm: int, ngram: int, seed: int = DEFAULT_SEED) -> np.ndarray:
    """(n, num_perm) uint32 MinHash signatures (affine32 hash values fit in 32 bits)."""
    from datasketch import MinHash

    if not texts:
        return np.empty((0, num_perm), dtype=np.uint32)
    minhashes = MinHash.bulk((shingles(text, ngram) for text in texts), num_perm=num_perm, seed=seed)
    return np.stack([m.hashvalues for m in minhashes]).astype(np.uint32)


class MinHasher:
    """Batch transform: (id, text column) -> (id, signature, length of the text)."""

    def __init__(self, text_column: str, num_perm: int, ngram: int, seed: int = DEFAULT_SEED) -> None:
        self.text_column = text_column
        self.num_perm = num_perm
        self.ngram = ngram
        self.seed = seed

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = [text or "" for text in batch.column(self.text_column).to_pylist()]
        sigs = signatures(texts, self.num_perm, self.ngram, self.seed)
        flat = pa.array(sigs.reshape(-1), pa.uint32())
        return pa.table(
            {
                ID: batch.column(ID),
                SIGNATURE: pa.FixedSizeListArray.from_arrays(flat, self.num_perm),
                LENGTH: pa.array([len(text) for text in texts], pa.int64()),
            }
        )


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise estimated Jaccard: the fraction of equal signature slots."""
    return np.mean(a == b, axis=-1)


def minhash_duplicates(
    ids: np.ndarray,
    sigs: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    keep: str = Keep.MIN_ID,
    lengths: np.ndarray | None = None,
    seed: int = DEFAULT_SEED,
) -> pa.Table:
    """Duplicate rows (id, duplicate_of, similarity) from MinHash signatures: LSH candidates whose estimated
    Jaccard reaches `threshold`, grouped by connected components. `keep` is "min-id" or "longest"; MinHash
    has no ranking, so "first" means the smallest id too."""
    from datasketch import LeanMinHash, MinHashLSH

    ids = np.asarray(ids, dtype=object)
    n, num_perm = sigs.shape
    if n < 2:
        return empty_duplicates()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    minhashes = [LeanMinHash(seed=seed, hashvalues=sig.astype(np.uint64), scheme=SCHEME) for sig in sigs]
    with lsh.insertion_session() as session:
        for index, minhash in enumerate(minhashes):
            session.insert(index, minhash, check_duplication=False)
    sources, targets = [], []
    for index, minhash in enumerate(minhashes):
        candidates = np.array([c for c in lsh.query(minhash) if c > index], dtype=np.int64)
        if len(candidates):
            close = candidates[jaccard_estimate(sigs[candidates], sigs[index]) >= threshold]
            sources.extend([index] * len(close))
            targets.extend(close.tolist())
    policy = Keep.LONGEST if keep == Keep.LONGEST else Keep.MIN_ID
    preference = keep_preference(policy, ids, lengths)
    keeper = group_keepers(n, np.asarray(sources, np.int64), np.asarray(targets, np.int64), preference)
    removed = np.flatnonzero(keeper != np.arange(n))
    similarity = jaccard_estimate(sigs[removed], sigs[keeper[removed]])
    return duplicates_table(ids[removed], ids[keeper[removed]], similarity)
