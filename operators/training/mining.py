"""Hard negatives for training pairs from an embedlake table's own dense vectors, without Ray.

For each distinct anchor: encode it with the table's model (its query prompt), take the table's top hits
on `dense` (the ANN index when the table has one, else exact), drop the anchor's positives, and keep the
first hits left as negatives. The selection follows sentence-transformers' `mine_hard_negatives` (its
"top" sampling, `range_min` as `skip`, `range_max` as `depth`, `relative_margin` as `margin`), applied to
the table's stored vectors instead of a corpus the function would encode itself in one process:

- a hit is one of the anchor's positives when its text is one of them (whitespace folded); in a passage
  table, when its text lies inside one of them (a passage of the positive document). Every positive of
  the anchor counts, across all of its input rows (the pipeline groups the pairs by anchor first). A hit
  whose text is the anchor itself, and a text already taken for this anchor (a duplicate row), are skipped;
- `margin` (relative, default 0.05 as NV-Retriever's TopK-PercPos recommends): a candidate whose score
  is above `positive - |positive| x margin` is dropped as a likely false negative, with the anchor's
  weakest positive as the reference, as sentence-transformers does. A positive found among the hits
  scores as stored; one that is not there is encoded (the table model's document prompt);
- `skip` candidates (left after the two rules above) are passed over, then the next `count` are taken.

An anchor left with no candidate gets no negative (sentence-transformers drops it too); the caller counts
these. Scores are dot products of unit vectors (cosine), as `search` reports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.schema import DENSE
from operators.training.pairs import ANCHOR, NEGATIVE, POSITIVE

POSITIVES = "positives"  # an anchor's distinct positives, after grouping
POSITIVE_SCORE = "positive_score"  # of the anchor's weakest positive (the margin's reference)
NEGATIVE_SCORE = "negative_score"
NEGATIVE_RANK = "negative_rank"  # 1 for the first negative taken for the anchor
DEFAULT_MARGIN = 0.05
DEPTH_PER_NEGATIVE = 10  # sentence-transformers' range_max with a margin: skip + 10 x count
EXACT_MATRIX_BYTES = 256 * 2**20  # an exact searcher holds the column in memory up to this size
QUERY_PROMPT, DOCUMENT_PROMPT = "query", "document"

MINED_SCHEMA = pa.schema([
    pa.field(ANCHOR, pa.string()),
    pa.field(POSITIVE, pa.string()),
    pa.field(NEGATIVE, pa.string()),
    pa.field(POSITIVE_SCORE, pa.float32()),
    pa.field(NEGATIVE_SCORE, pa.float32()),
    pa.field(NEGATIVE_RANK, pa.int32()),
])


@dataclass(frozen=True)
class MiningSettings:
    """How many negatives per anchor and which of its hits may be one (see the module docstring)."""

    count: int = 1
    skip: int = 0
    depth: int | None = None  # hits considered per anchor besides its positives; None: skip + 10 x count
    margin: float | None = DEFAULT_MARGIN  # None: no margin rule
    passages: bool = False  # a passage table: a hit inside a positive is a passage of it

    @property
    def candidates(self) -> int:
        return self.depth if self.depth is not None else self.skip + DEPTH_PER_NEGATIVE * self.count

    def check(self) -> None:
        """ValueError naming the option for impossible settings (the CLI turns them into usage errors)."""
        if self.count < 1:
            msg = f"--mine-count must be at least 1, got {self.count}"
            raise ValueError(msg)
        if self.skip < 0:
            msg = f"--mine-skip must be 0 or more, got {self.skip}"
            raise ValueError(msg)
        if self.candidates < self.skip + self.count:
            msg = (f"--mine-depth {self.candidates} leaves fewer than --mine-count {self.count} hits after "
                   f"--mine-skip {self.skip}")
            raise ValueError(msg)
        if self.margin is not None and not 0.0 <= self.margin < 1.0:
            msg = f"--mine-margin must be in [0, 1) or 'off', got {self.margin}"
            raise ValueError(msg)


def folded(text: str) -> str:
    """A text as compared: whitespace runs folded to one space, ends trimmed."""
    return " ".join(text.split())


def group_by_anchor(pairs: pa.Table) -> pa.Table:
    """(anchor, positives): one row per distinct anchor of `pairs` with its distinct positives, in order of
    first appearance. Correct for the whole input when every row of an anchor is in `pairs` (the pipeline
    hash-partitions the pairs by anchor before calling this)."""
    if pairs.num_rows == 0:
        return pa.table({ANCHOR: pa.array([], pa.string()), POSITIVES: pa.array([], pa.list_(pa.string()))})
    grouped = pairs.select([ANCHOR, POSITIVE]).group_by(ANCHOR, use_threads=False).aggregate(
        [(POSITIVE, "distinct")])
    return pa.table({ANCHOR: grouped[ANCHOR], POSITIVES: grouped[f"{POSITIVE}_distinct"]})


@dataclass
class Selection:
    """What the rules kept for one anchor, and why others went."""

    negatives: list[tuple[str, float]] = field(default_factory=list)  # (text, score), best first
    positive_score: float | None = None
    positives_seen: int = 0  # hits that were one of the positives
    margin_dropped: int = 0


def positive_scores_from_hits(positives: Sequence[str], texts: Sequence[str], scores: Sequence[float],
                              passages: bool) -> list[float | None]:
    """Each positive's score where the hits hold it (its best passage's in a passage table), else None."""
    best: dict[str, float] = {}
    wanted = [folded(p) for p in positives]
    for text, score in zip(texts, scores, strict=True):
        hit = folded(text)
        for positive in wanted:
            if (hit == positive or (passages and hit and hit in positive)) and score > best.get(positive, -np.inf):
                best[positive] = float(score)
    return [best.get(positive) for positive in wanted]


def select_negatives(anchor: str, positives: Sequence[str], texts: Sequence[str], scores: Sequence[float],
                     positive_score: float | None, settings: MiningSettings) -> Selection:
    """The negatives for one anchor from its hits (`texts`, `scores`, best first): positives, the anchor and
    repeats are not candidates; of the first `candidates` candidates, those too close to `positive_score`
    (with a margin) are dropped, `skip` passed over, `count` taken."""
    wanted = {folded(p) for p in positives}
    own = folded(anchor)
    threshold = None
    if settings.margin is not None and positive_score is not None:
        threshold = positive_score - abs(positive_score) * settings.margin
    selection = Selection(positive_score=positive_score)
    seen: set[str] = set()
    passed = considered = 0
    for text, score in zip(texts, scores, strict=False):
        if considered == settings.candidates:
            break
        hit = folded(text or "")
        if not hit:
            continue
        if hit in wanted or (settings.passages and any(hit in positive for positive in wanted)):
            selection.positives_seen += 1
            continue
        if hit == own or hit in seen:
            continue
        seen.add(hit)
        considered += 1  # a candidate: the first `candidates` of them are considered (range_max)
        if threshold is not None and score > threshold:
            selection.margin_dropped += 1
            continue
        if passed < settings.skip:
            passed += 1
            continue
        selection.negatives.append((text, float(score)))
        if len(selection.negatives) == settings.count:
            break
    return selection


def triplets(anchor: str, positives: Sequence[str], selection: Selection) -> dict[str, list]:
    """The training rows for one anchor: each positive with each negative, sentence-transformers'
    "triplet" format (one row per negative), as columns."""
    rows: dict[str, list] = {name: [] for name in MINED_SCHEMA.names}
    for positive in positives:
        for rank, (text, score) in enumerate(selection.negatives, 1):
            rows[ANCHOR].append(anchor)
            rows[POSITIVE].append(positive)
            rows[NEGATIVE].append(text)
            rows[POSITIVE_SCORE].append(selection.positive_score)
            rows[NEGATIVE_SCORE].append(score)
            rows[NEGATIVE_RANK].append(rank)
    return rows


@dataclass
class MiningCounts:
    """What a batch (or the whole run) mined: only these travel to the driver."""

    anchors: int = 0
    pairs: int = 0  # distinct (anchor, positive) pairs
    triplets: int = 0
    anchors_without_negative: int = 0
    anchors_short: int = 0  # fewer than `count` negatives, at least one
    positives_in_hits: int = 0  # positives found among the hits (scored as stored, not encoded)
    margin_dropped: int = 0
    positive_score_sum: float = 0.0  # over the triplets whose anchor has a reference score (a margin)
    positive_scored: int = 0
    negative_score_sum: float = 0.0

    def add(self, other: MiningCounts) -> MiningCounts:
        return MiningCounts(**{name: getattr(self, name) + getattr(other, name) for name in self.__dataclass_fields__})

    def as_row(self) -> dict:
        return dict(self.__dict__)

    def summary(self) -> dict:
        def mean(total: float, n: int) -> float | None:
            return round(total / n, 4) if n else None

        return {"anchors": self.anchors, "pairs": self.pairs, "triplets": self.triplets,
                "anchors_without_negative": self.anchors_without_negative, "anchors_short": self.anchors_short,
                "positives_in_hits": self.positives_in_hits, "margin_dropped": self.margin_dropped,
                "mean_positive_score": mean(self.positive_score_sum, self.positive_scored),
                "mean_negative_score": mean(self.negative_score_sum, self.triplets)}


class DenseHits:
    """The table's top hits on `dense` for a batch of query vectors, at one version: the column's ANN index
    when it has one (hits rescored exactly from their stored vectors), else exact dot products (the
    column held in memory up to EXACT_MATRIX_BYTES, streamed from the table beyond)."""

    def __init__(self, store, text_column: str, column: str = DENSE) -> None:
        self.store = store
        self.text_column = text_column
        self.column = column
        self.index = store.vector_index(column)
        self.matrix = None
        if self.index is None and store.rows * store.dim(column) * 4 <= EXACT_MATRIX_BYTES:
            from operators.vectors import as_matrix

            self.matrix = as_matrix(store.dataset.to_table(columns=[column]).column(column))

    @property
    def method(self) -> str:
        return "exact" if self.index is None else f"ann ({self.index[0]})"

    def __call__(self, queries: np.ndarray, n: int) -> list[tuple[list[str], np.ndarray]]:
        """(texts, scores) of each query's n best rows, best first."""
        if self.index is not None:
            return [self._ann(query, n) for query in queries]
        from operators.search.dense import exact_topn, scan_topn

        if self.matrix is not None:
            positions, scores = exact_topn(self.matrix, queries, n)
        else:
            positions, scores = scan_topn(self.store, self.column, queries, n)
        unique, where = np.unique(positions, return_inverse=True)
        texts = np.asarray(self.store.take(unique, [self.text_column]).column(0).to_pylist(), dtype=object)
        found = texts[where.reshape(positions.shape)]
        return [(found[row].tolist(), scores[row]) for row in range(positions.shape[0])]

    def _ann(self, query: np.ndarray, n: int) -> tuple[list[str], np.ndarray]:
        from operators.vectors import as_matrix

        hits = self.store.vector_search(self.column, query, n, [self.text_column, self.column])
        if hits.num_rows == 0:
            return [], np.zeros(0, dtype=np.float32)
        scores = as_matrix(hits.column(self.column)) @ np.asarray(query, dtype=np.float32)
        order = np.argsort(-scores, kind="stable")
        texts = hits.column(self.text_column).to_pylist()
        return [texts[i] for i in order], scores[order]


class NegativeMiner:
    """Mines one batch of grouped anchors (`group_by_anchor`'s rows) against a table: returns the triplets
    (MINED_SCHEMA) and the batch's counts. Holds the table's query encoder and its searcher."""

    def __init__(self, store, encoder, settings: MiningSettings, text_column: str) -> None:
        self.store = store
        self.encoder = encoder
        self.settings = settings
        self.hits = DenseHits(store, text_column)

    def _dense(self, texts: list[str], prompt_name: str) -> np.ndarray:
        from operators.vectors import as_matrix

        return as_matrix(self.encoder.encode(texts, prompt_name=prompt_name).columns[DENSE])

    def __call__(self, groups: pa.Table) -> tuple[pa.Table, MiningCounts]:
        counts = MiningCounts()
        if groups.num_rows == 0:
            return MINED_SCHEMA.empty_table(), counts
        anchors = groups.column(ANCHOR).to_pylist()
        positives = [list(p) for p in groups.column(POSITIVES).to_pylist()]
        queries = self._dense(anchors, QUERY_PROMPT)
        most = max(len(p) for p in positives)
        found = self.hits(queries, self.settings.candidates + most + 1)
        reference, counts.positives_in_hits = self._positive_scores(queries, positives, found)
        columns: dict[str, list] = {name: [] for name in MINED_SCHEMA.names}
        for anchor, wanted, (texts, scores), positive_score in zip(anchors, positives, found, reference,
                                                                   strict=True):
            selection = select_negatives(anchor, wanted, texts, scores, positive_score, self.settings)
            for name, values in triplets(anchor, wanted, selection).items():
                columns[name].extend(values)
            taken = len(selection.negatives)
            counts.anchors += 1
            counts.pairs += len(wanted)
            counts.triplets += taken * len(wanted)
            counts.anchors_without_negative += taken == 0
            counts.anchors_short += 0 < taken < self.settings.count
            counts.margin_dropped += selection.margin_dropped
            counts.negative_score_sum += len(wanted) * sum(score for _text, score in selection.negatives)
            if positive_score is not None:
                counts.positive_score_sum += taken * len(wanted) * positive_score
                counts.positive_scored += taken * len(wanted)
        return pa.table(columns, schema=MINED_SCHEMA), counts

    def _positive_scores(self, queries: np.ndarray, positives: list[list[str]],
                         found: list[tuple[list[str], np.ndarray]]) -> tuple[list[float | None], int]:
        """Each anchor's weakest positive score (from the hits where they hold it, else encoded), and how many
        positives the hits held. None without a margin rule (nothing needs it)."""
        if self.settings.margin is None:
            return [None] * len(positives), 0
        per_anchor = [positive_scores_from_hits(wanted, texts, scores, self.settings.passages)
                      for wanted, (texts, scores) in zip(positives, found, strict=True)]
        in_hits = sum(score is not None for scores in per_anchor for score in scores)
        missing = [(row, i) for row, scores in enumerate(per_anchor) for i, score in enumerate(scores) if score is None]
        if missing:
            vectors = self._dense([positives[row][i] for row, i in missing], DOCUMENT_PROMPT)
            for (row, i), vector in zip(missing, vectors, strict=True):
                per_anchor[row][i] = float(vector @ queries[row])
        return [min(scores) for scores in per_anchor], in_hits


def counts_table(counts: MiningCounts) -> pa.Table:
    """One row of counts, how a Ray worker reports a batch."""
    return pa.Table.from_pylist([counts.as_row()])


def total_counts(rows: pa.Table) -> MiningCounts:
    """The sum of `counts_table` rows."""
    totals = {name: pc.sum(rows.column(name)).as_py() or 0 for name in MiningCounts.__dataclass_fields__}
    return MiningCounts(**totals)
