"""Near-duplicate detection: exact duplicates by text hash, then SemDeDup inside k-means clusters.

SemDeDup (arXiv 2303.09540, as NeMo Curator runs it): members of one cluster are ranked ("hard": farthest
from the centroid first), each member's score is its highest cosine similarity to a member ranked before it,
and a member is a duplicate when that score reaches `1 - eps`. Similarities are computed in column blocks,
so memory is O(n * block) per cluster, never O(n^2).

Groups: each duplicate points at the first-ranked earlier member it reaches `1 - eps` with; those links form
a forest whose roots are exactly the members SemDeDup keeps, so its connected components are the duplicate
groups and every group loses all but one member (the removed set is NeMo's). The `keep` policy then picks
which member of a group survives: "first" (the first-ranked, SemDeDup's choice), "min-id" (smallest id,
stable across re-runs and encoders) or "longest" (longest text, ties to the smallest id).
Output rows: (id, duplicate_of, similarity) for every member but the keeper, where duplicate_of is the
group's keeper and similarity the cosine between the two (below `1 - eps` only along chains of near-dups).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.cluster import DEFAULT_SEED
from operators.schema import DUPLICATE_OF, DUPLICATES_SCHEMA, ID, SIMILARITY
from operators.vectors import normalize_rows


class Ranking(StrEnum):
    """The order of a cluster's members, the earliest kept."""

    HARD = "hard"  # farthest from the centroid first (SemDeDup)
    EASY = "easy"  # nearest first
    RANDOM = "random"  # a seeded permutation


class Keep(StrEnum):
    """Which member of a duplicate group stays."""

    FIRST = "first"  # the first-ranked (SemDeDup)
    MIN_ID = "min-id"  # the smallest id: stable across re-runs and encoders
    LONGEST = "longest"  # the longest text, ties to the smallest id


# NeMo Curator's and SemDeDup's default: duplicates above cosine 0.99.
DEFAULT_EPS = 0.01
DEFAULT_BLOCK = 1024
# Cap on one block's similarity matrix (float32 cells), so a giant cluster narrows its blocks instead of
# growing memory: 64M cells = 256 MB.
MAX_BLOCK_CELLS = 64 * 1024 * 1024


@dataclass(frozen=True)
class SemDedupConfig:
    """SemDeDup's knobs: threshold (1 - eps), in-cluster ranking, keep policy, block width, seed."""

    eps: float = DEFAULT_EPS
    rank: Ranking = Ranking.HARD
    keep: Keep = Keep.FIRST
    block: int = DEFAULT_BLOCK
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps < 2.0:
            msg = f"eps must be in [0, 2) (duplicates have cosine >= 1 - eps), got {self.eps}"
            raise ValueError(msg)
        if self.rank not in list(Ranking):
            msg = f"rank must be one of {', '.join(Ranking)}, got {self.rank!r}"
            raise ValueError(msg)
        if self.keep not in list(Keep):
            msg = f"keep must be one of {', '.join(Keep)}, got {self.keep!r}"
            raise ValueError(msg)
        if self.block < 1:
            msg = f"block must be at least 1, got {self.block}"
            raise ValueError(msg)

    @property
    def threshold(self) -> float:
        return 1.0 - self.eps


def empty_duplicates() -> pa.Table:
    return DUPLICATES_SCHEMA.empty_table()


def duplicates_table(ids: np.ndarray, keepers: np.ndarray, similarity: np.ndarray) -> pa.Table:
    return pa.table(
        {
            ID: pa.array(ids, pa.string()),
            DUPLICATE_OF: pa.array(keepers, pa.string()),
            SIMILARITY: pa.array(np.asarray(similarity, dtype=np.float32)),
        },
        schema=DUPLICATES_SCHEMA,
    )


def exact_duplicates(ids: pa.Array | pa.ChunkedArray, hashes: pa.Array | pa.ChunkedArray) -> pa.Table:
    """Rows whose text hash another row shares, each pointing at its group's smallest id (similarity 1).

    One hash aggregation and one hash join, O(n); rows without a hash are never duplicates.
    """
    rows = pa.table({ID: ids, "hash": hashes}).filter(pc.is_valid(pc.field("hash")))
    groups = rows.group_by("hash").aggregate([(ID, "min"), (ID, "count")])
    groups = groups.filter(pc.field(f"{ID}_count") > 1).select(["hash", f"{ID}_min"])
    if groups.num_rows == 0:
        return empty_duplicates()
    joined = rows.join(groups, keys="hash", join_type="inner")
    joined = joined.filter(pc.field(ID) != pc.field(f"{ID}_min"))
    joined = joined.sort_by([(ID, "ascending")])
    keepers = joined.column(f"{ID}_min").to_numpy(zero_copy_only=False)
    ids_out = joined.column(ID).to_numpy(zero_copy_only=False)
    return duplicates_table(ids_out, keepers, np.ones(len(ids_out), dtype=np.float32))


def id_ranks(ids: np.ndarray) -> np.ndarray:
    """Each id's position in sorted order: a numeric tie-breaker that orders like the strings."""
    order = np.argsort(np.asarray(ids, dtype=str), kind="stable")
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order))
    return ranks


def rank_order(ids: np.ndarray, distances: np.ndarray, rank: str, seed: int) -> np.ndarray:
    """Member indices in SemDeDup's ranking: "hard" farthest from the centroid first, "easy" nearest first
    (ties by id), "random" a seeded permutation."""
    if rank == Ranking.RANDOM:
        return np.random.default_rng(seed).permutation(len(ids))
    distances = np.asarray(distances, dtype=np.float64)
    key = -distances if rank == Ranking.HARD else distances
    return np.lexsort((id_ranks(ids), key))


def earlier_matches(
    vectors: np.ndarray, threshold: float, block: int = DEFAULT_BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """For rows in ranked order: each row's highest cosine to an earlier row (-inf for the first), and the
    first earlier row reaching `threshold` (-1 when none).

    Column blocks of width `block`: block [s, e) needs only rows [0, e), so peak memory is e * block cells
    and the total work is the upper triangle, n^2 / 2 dot products.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n = x.shape[0]
    block = max(1, min(block, MAX_BLOCK_CELLS // max(n, 1)))
    score = np.full(n, -np.inf, dtype=np.float32)
    match = np.full(n, -1, dtype=np.int64)
    side = min(block, n)
    lower = np.tril(np.ones((side, side), dtype=bool))  # in a diagonal block: row i >= column j
    for start in range(0, n, block):
        stop = min(start + block, n)
        sims = x[:stop] @ x[start:stop].T  # (stop, width): rows are candidates, columns the block's members
        width = stop - start
        # Only rows ranked before a column count: blank the block's own lower triangle and diagonal.
        np.putmask(sims[start:stop], lower[:width, :width], -np.inf)
        score[start:stop] = sims.max(axis=0)
        hits = sims >= threshold
        found = hits.any(axis=0)
        match[start:stop] = np.where(found, hits.argmax(axis=0), -1)
    return score, match


def group_keepers(n: int, sources: np.ndarray, targets: np.ndarray, preference: np.ndarray) -> np.ndarray:
    """The keeper of each of n members' groups: connected components of the links sources[i] - targets[i],
    and in each component the member with the smallest `preference`."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n == 0:
        return np.empty(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(sources), dtype=np.int8), (sources, targets)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    order = np.lexsort((preference, component))
    first_of_component = np.ones(n, dtype=bool)
    first_of_component[1:] = component[order][1:] != component[order][:-1]
    keeper_by_component = np.empty(component.max() + 1, dtype=np.int64)
    keeper_by_component[component[order][first_of_component]] = order[first_of_component]
    return keeper_by_component[component]


def keep_preference(keep: str, ids: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """Smaller is kept first: ranked position ("first"), id order ("min-id"), longest text ("longest")."""
    if keep == Keep.FIRST:
        return np.arange(len(ids))
    if keep == Keep.MIN_ID:
        return id_ranks(ids)
    if lengths is None:
        msg = "keep policy 'longest' needs text lengths"
        raise ValueError(msg)
    # Longest first, then smallest id: one integer key.
    by_length = np.lexsort((id_ranks(ids), -np.asarray(lengths, dtype=np.int64)))
    preference = np.empty(len(ids), dtype=np.int64)
    preference[by_length] = np.arange(len(ids))
    return preference


@dataclass
class ClusterResult:
    """One cluster's duplicates, and every member's score (for counting what other eps would remove)."""

    duplicates: pa.Table
    scores: np.ndarray


def semdedup_cluster(
    ids: np.ndarray,
    vectors: np.ndarray,
    distances: np.ndarray,
    config: SemDedupConfig,
    lengths: np.ndarray | None = None,
    seed: int | None = None,
) -> ClusterResult:
    """SemDeDup on the members of one cluster (ids, vectors, cosine distances to its centroid)."""
    ids = np.asarray(ids, dtype=object)
    if len(ids) < 2:
        return ClusterResult(empty_duplicates(), np.full(len(ids), -np.inf, dtype=np.float32))
    order = rank_order(ids, distances, config.rank, config.seed if seed is None else seed)
    ranked_ids = ids[order]
    x = normalize_rows(np.asarray(vectors)[order])
    score, match = earlier_matches(x, config.threshold, config.block)
    ranked_lengths = None if lengths is None else np.asarray(lengths)[order]
    linked = np.flatnonzero(match >= 0)
    preference = keep_preference(config.keep, ranked_ids, ranked_lengths)
    keeper = group_keepers(len(ids), linked, match[linked], preference)
    removed = np.flatnonzero(keeper != np.arange(len(ids)))
    similarity = np.einsum("ij,ij->i", x[removed], x[keeper[removed]])
    table = duplicates_table(ranked_ids[removed], ranked_ids[keeper[removed]], similarity)
    return ClusterResult(table, score)


def semdedup(
    ids: np.ndarray,
    vectors: np.ndarray,
    clusters: np.ndarray,
    distances: np.ndarray,
    config: SemDedupConfig,
    lengths: np.ndarray | None = None,
) -> ClusterResult:
    """SemDeDup over rows of any number of clusters (each cluster independently; random ranking is seeded
    per cluster so a cluster's result does not depend on which other clusters share its batch)."""
    clusters = np.asarray(clusters)
    order = np.argsort(clusters, kind="stable")
    bounds = np.flatnonzero(np.diff(clusters[order])) + 1
    tables, scores = [], []
    for members in np.split(order, bounds):
        if len(members) == 0:
            continue
        result = semdedup_cluster(
            np.asarray(ids, dtype=object)[members],
            np.asarray(vectors)[members],
            np.asarray(distances)[members],
            config,
            None if lengths is None else np.asarray(lengths)[members],
            seed=config.seed + int(clusters[members[0]]),
        )
        tables.append(result.duplicates)
        scores.append(result.scores)
    if not tables:
        return ClusterResult(empty_duplicates(), np.empty(0, dtype=np.float32))
    return ClusterResult(pa.concat_tables(tables), np.concatenate(scores))


def resolve_exact(exact: pa.Table, semantic: pa.Table) -> pa.Table:
    """Exact duplicates re-pointed at their final keeper: when an exact group's keeper is itself a semantic
    duplicate, its copies follow it to that group's keeper (with its similarity)."""
    if exact.num_rows == 0:
        return semantic
    keeper_of = dict(
        zip(semantic.column(ID).to_pylist(), semantic.column(DUPLICATE_OF).to_pylist(), strict=True)
    )
    similarity_of = dict(
        zip(semantic.column(ID).to_pylist(), semantic.column(SIMILARITY).to_pylist(), strict=True)
    )
    first = exact.column(DUPLICATE_OF).to_pylist()
    keepers = [keeper_of.get(keeper, keeper) for keeper in first]
    similarity = [similarity_of.get(keeper, 1.0) for keeper in first]
    resolved = duplicates_table(np.asarray(exact.column(ID).to_pylist(), dtype=object), keepers, similarity)
    return pa.concat_tables([resolved, semantic]).sort_by([(ID, "ascending")])


def removed_at_eps(scores: np.ndarray, eps_values: tuple[float, ...]) -> dict[str, int]:
    """How many items SemDeDup would remove at other eps: the count of scores >= 1 - eps."""
    return {f"{eps:g}": int(np.count_nonzero(scores >= 1.0 - eps)) for eps in eps_values}
