"""Query routing: pick, per query, the search mode that suits it (`search --mode auto`), by a small rule over
cheap features of the query, learned from labelled queries (`evaluate --tune-routing`).

Why: no single mode wins every query. Lexical matching (sparse) finds the one document that shares a rare
name with the query, and misses paraphrases; dense finds paraphrases, and blurs rare names; the hybrid is a
compromise whose best weights depend on the query. The seed's practice is to route on characteristics of
the query, which cost nothing next to the search itself:

- `words`: the query's length in words (`\\w+`, Unicode);
- `sparse_terms`, `sparse_mass`, `sparse_max`: how many tokens the sparse model weighs, their summed and
  largest weight (how much lexical signal the query carries);
- `rare_share`: share of those tokens that at most `RARE_FRACTION` of the table's rows hold (document
  frequencies from the sparse index, operators/search/sparse_index.py); `mean_idf`: their mean
  log((N + 1) / (df + 1)); `matched_share`: share of the query's sparse weight on tokens some row holds.

The sparse features are 0 for a table without a sparse column. A rule chooses among `Route`s: each single
mode the table stores, and the hybrid at a few weightings (`candidate_routes`). It is a regression tree of
depth 0 to 2 (scikit-learn's `DecisionTreeRegressor`, multi-output), fitted to each route's nDCG@k per query
minus the query's mean over routes (so splits separate queries by which route suits them, not by how hard they
are); a leaf routes to the route with the best mean there. The depth is the one whose routing scores best in a
5-fold cross-validation on the training queries, so a split is kept only where it gains on queries it was not
fitted to (depth 0: the best fixed route). The fitted tree is kept as plain JSON
nodes (`RoutingRule.to_dict`), so applying it needs neither scikit-learn nor a pickle: the table's metadata
keeps it (operators/table_meta.py `ROUTING_KEY`), and a depth-0 tree is a fixed route.

Without a tuned rule, `default_rule`: the hybrid at BGE-M3's default weights where the table has a second
mode (FlagEmbedding's recommended all-modes score), else the one mode there is: nothing is routed until a
rule is tuned on the user's own queries.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from operators.metrics import ndcg_at_k, rank
from operators.scoring import DEFAULT_WEIGHTS, DENSE_MODE, MODES, QueryVectors

HYBRID = "hybrid"
FORMAT = 1
FEATURES = ("words", "sparse_terms", "sparse_mass", "sparse_max", "rare_share", "mean_idf", "matched_share")
RARE_FRACTION = 0.01  # a token held by at most 1% of the rows (and at least by none) is rare
MAX_DEPTH = 2  # at most 4 leaves: a rule a person can read, and few enough splits for a few hundred queries
MIN_LEAF_SHARE = 0.1  # a leaf holds at least 10% of the training queries ...
MIN_LEAF = 8  # ... and at least 8 of them
FOLDS = 5  # held-out estimate: 5-fold cross-validation, each query scored by a rule that never saw it
SEED = 0
WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Route:
    """A mode to search in: a single one, or the hybrid with (dense, sparse, colbert) weights."""

    mode: str
    weights: tuple[float, ...] | None = None

    @property
    def label(self) -> str:
        if self.weights is None:
            return self.mode
        return f"{self.mode}({','.join(f'{w:g}' for w in self.weights)})"

    def as_dict(self) -> dict:
        return {"mode": self.mode, **({"weights": list(self.weights)} if self.weights is not None else {})}

    @classmethod
    def from_dict(cls, value: Mapping) -> Route:
        weights = value.get("weights")
        return cls(str(value["mode"]), tuple(float(w) for w in weights) if weights is not None else None)

    def search_options(self) -> dict:
        """Retriever.search's `mode` and `weights` for this route."""
        return {"mode": self.mode, "weights": list(self.weights) if self.weights is not None else None}


def candidate_routes(modes: Sequence[str], weights: Sequence[float] | None = None) -> list[Route]:
    """Each stored mode alone, then the hybrid at the given weights (BGE-M3's default 0.4,0.2,0.4 when None) and
    at equal weights for each pair of modes, restricted to the modes the table has; duplicates dropped."""
    modes = [mode for mode in MODES if mode in modes]
    routes = [Route(mode) for mode in modes]
    if len(modes) < 2 or DENSE_MODE not in modes:  # the hybrid re-ranks the dense shortlist
        return routes
    chosen = tuple(weights) if weights is not None else DEFAULT_WEIGHTS
    chosen = chosen + (0.0,) * (len(MODES) - len(chosen))
    mixes = [tuple(w if mode in modes else 0.0 for mode, w in zip(MODES, chosen, strict=True))]
    pairs = [(first, second) for i, first in enumerate(modes) for second in modes[i + 1:]]
    mixes.extend(tuple(0.5 if mode in pair else 0.0 for mode in MODES) for pair in pairs)
    seen: set[tuple[float, ...]] = set()
    for mix in mixes:
        total = sum(mix)
        if total <= 0 or sum(1 for w in mix if w > 0) < 2:
            continue
        normal = tuple(round(w / total, 6) for w in mix)  # scale does not change a ranking
        if normal not in seen:
            seen.add(normal)
            routes.append(Route(HYBRID, tuple(round(w, 6) for w in mix)))
    return routes


# -- features ------------------------------------------------------------------------------------
@dataclass
class TermStats:
    """Document frequencies of the sparse model's tokens in one table version."""

    terms: np.ndarray  # int64 sorted token ids
    df: np.ndarray  # int64 rows holding each
    rows: int

    @classmethod
    def from_index(cls, index) -> TermStats:
        """From a SparseIndex (its postings per token are the rows that hold it)."""
        return cls(np.asarray(index.terms, dtype=np.int64), np.diff(index.offsets).astype(np.int64), int(index.rows))

    def df_of(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64)
        if self.terms.size == 0 or tokens.size == 0:
            return np.zeros(tokens.size, dtype=np.int64)
        found = np.minimum(np.searchsorted(self.terms, tokens), self.terms.size - 1)
        return np.where(self.terms[found] == tokens, self.df[found], 0)


def query_features(text: str, query: QueryVectors | None = None, stats: TermStats | None = None) -> dict[str, float]:
    """The features of one query (module docstring), each a float; the same inputs give the same numbers."""
    features = dict.fromkeys(FEATURES, 0.0)
    features["words"] = float(len(WORD.findall(text or "")))
    sparse = query.sparse if query is not None else None
    if sparse is None or len(sparse) == 0:
        return features
    values = np.asarray(sparse.values, dtype=np.float64)
    features["sparse_terms"] = float(len(sparse))
    features["sparse_mass"] = float(values.sum())
    features["sparse_max"] = float(values.max())
    if stats is not None and stats.rows > 0:
        df = stats.df_of(sparse.indices)
        features["rare_share"] = float(np.mean(df <= RARE_FRACTION * stats.rows))
        features["mean_idf"] = float(np.mean(np.log((stats.rows + 1) / (df + 1))))
        mass = values.sum()
        features["matched_share"] = float(values[df > 0].sum() / mass) if mass > 0 else 0.0
    return features


def feature_matrix(rows: Sequence[Mapping[str, float]], names: Sequence[str] = FEATURES) -> np.ndarray:
    return np.array([[float(row[name]) for name in names] for row in rows], dtype=np.float64).reshape(len(rows),
                                                                                                     len(names))


# -- the rule ------------------------------------------------------------------------------------
@dataclass
class RoutingRule:
    """A tree over query features whose leaves name routes: node i is {"feature", "threshold", "left", "right"}
    (feature <= threshold goes left, compared in float32 as scikit-learn does) or {"route": index}."""

    routes: list[Route]
    nodes: list[dict]
    features: tuple[str, ...] = FEATURES
    model_id: str | None = None  # the encoder the features were computed with
    info: dict = field(default_factory=dict)  # how it was made: tuned (queries, version, k) or default

    @classmethod
    def fixed(cls, route: Route, **kwargs) -> RoutingRule:
        return cls([route], [{"route": 0}], **kwargs)

    @property
    def modes(self) -> list[str]:
        """The modes the routes need."""
        needed = set()
        for route in self.routes:
            if route.weights is None:
                needed.add(route.mode)
            else:
                needed.update(mode for mode, w in zip(MODES, route.weights, strict=False) if w > 0)
        return [mode for mode in MODES if mode in needed]

    def choose(self, features: Mapping[str, float]) -> Route:
        node = self.nodes[0]
        while "route" not in node:
            value = float(np.float32(features[self.features[node["feature"]]]))
            node = self.nodes[node["left"] if value <= node["threshold"] else node["right"]]
        return self.routes[node["route"]]

    def choose_many(self, matrix: np.ndarray) -> np.ndarray:
        """Route index of each row of a feature matrix (columns in `features` order)."""
        rows = [dict(zip(self.features, row, strict=True)) for row in np.asarray(matrix)]
        return np.array([self.routes.index(self.choose(row)) for row in rows], dtype=np.int64)

    def describe(self) -> list[str]:
        """The rule as readable lines: `if words <= 3.5 and ...: sparse`."""
        lines: list[str] = []

        def walk(index: int, conditions: list[str]) -> None:
            node = self.nodes[index]
            if "route" in node:
                lines.append(f"{' and '.join(conditions) or 'always'}: {self.routes[node['route']].label}")
                return
            name, threshold = self.features[node["feature"]], node["threshold"]
            walk(node["left"], [*conditions, f"{name} <= {threshold:.4g}"])
            walk(node["right"], [*conditions, f"{name} > {threshold:.4g}"])

        walk(0, [])
        return lines

    def to_dict(self) -> dict:
        return {"format": FORMAT, "features": list(self.features), "routes": [r.as_dict() for r in self.routes],
                "nodes": self.nodes, "model_id": self.model_id, "info": self.info}

    @classmethod
    def from_dict(cls, value: Mapping) -> RoutingRule:
        if value.get("format") != FORMAT:
            msg = f"routing rule of format {value.get('format')!r}, this embedlake reads format {FORMAT}"
            raise ValueError(msg)
        features = tuple(value["features"])
        unknown = sorted(set(features) - set(FEATURES))
        if unknown:
            msg = f"routing rule uses features this embedlake does not compute: {', '.join(unknown)}"
            raise ValueError(msg)
        rule = cls([Route.from_dict(r) for r in value["routes"]], [dict(n) for n in value["nodes"]], features,
                   value.get("model_id"), dict(value.get("info") or {}))
        rule.check()
        return rule

    def check(self) -> None:
        """Every node reachable is well formed (a stored rule is read back before it is trusted)."""
        for node in self.nodes:
            if "route" in node:
                ok = 0 <= int(node["route"]) < len(self.routes)
            else:
                ok = (0 <= int(node["feature"]) < len(self.features)
                      and all(0 < int(node[side]) < len(self.nodes) for side in ("left", "right"))
                      and math.isfinite(float(node["threshold"])))
            if not ok:
                msg = f"malformed routing rule node {node}"
                raise ValueError(msg)


def default_rule(modes: Sequence[str], weights: Sequence[float] | None = None, model_id: str | None = None
                 ) -> RoutingRule:
    """The hybrid at the default weights where the table has a second mode next to dense, else its one mode."""
    routes = candidate_routes(modes, weights)
    hybrids = [route for route in routes if route.mode == HYBRID]
    route = hybrids[0] if hybrids else routes[0]
    return RoutingRule.fixed(route, model_id=model_id, info={"source": "default"})


def fit_tree(matrix: np.ndarray, gains: np.ndarray, routes: Sequence[Route], features: Sequence[str] = FEATURES,
             depth: int = MAX_DEPTH, info: Mapping | None = None) -> RoutingRule:
    """Fit a tree of at most `depth` to `gains` (queries x routes, each route's nDCG@k per query) from `matrix`
    (queries x features). A leaf routes to its best route by mean gain, ties to the route best over all the
    queries given (then the first listed); depth 0, or too few queries to split, is that route alone."""
    from sklearn.tree import DecisionTreeRegressor

    gains = np.asarray(gains, dtype=np.float64)
    overall = gains.mean(axis=0) if len(gains) else np.zeros(len(routes))
    order = sorted(range(len(routes)), key=lambda i: (-overall[i], i))
    min_leaf = max(MIN_LEAF, math.ceil(MIN_LEAF_SHARE * len(gains)))
    if len(routes) == 1 or len(gains) < 2 * min_leaf or depth == 0:
        return RoutingRule(list(routes), [{"route": order[0]}], tuple(features), info=dict(info or {}))
    relative = gains - gains.mean(axis=1, keepdims=True)
    tree = DecisionTreeRegressor(max_depth=depth, min_samples_leaf=min_leaf, random_state=SEED)
    tree.fit(np.asarray(matrix, dtype=np.float64), relative)
    structure = tree.tree_
    nodes = []
    for i in range(structure.node_count):
        if structure.children_left[i] == -1:  # a leaf: values are the mean relative gain of each route there
            means = structure.value[i][:, 0]
            best = max(order, key=lambda r: (round(float(means[r]), 9), -order.index(r)))
            nodes.append({"route": int(best)})
        else:
            nodes.append({"feature": int(structure.feature[i]), "threshold": float(structure.threshold[i]),
                          "left": int(structure.children_left[i]), "right": int(structure.children_right[i])})
    return RoutingRule(list(routes), _pruned(nodes), tuple(features), info=dict(info or {}))


def learn_rule(matrix: np.ndarray, gains: np.ndarray, routes: Sequence[Route], features: Sequence[str] = FEATURES,
               max_depth: int = MAX_DEPTH, folds: int = FOLDS, info: Mapping | None = None) -> RoutingRule:
    """The tree at the depth (0 to `max_depth`) whose routing scores best in a `folds`-fold cross-validation
    on these queries (ties to the shallower), fitted on all of them. Depth 0 is the best fixed route: a split is
    kept only where it gained on queries it was not fitted to, so a rule does not route on noise."""
    matrix, gains = np.asarray(matrix, dtype=np.float64), np.asarray(gains, dtype=np.float64)
    scores = {}
    for depth in range(max_depth + 1):
        routed, _fixed, _picks = cross_validated(matrix, gains, routes, features, folds,
                                                 lambda m, g, d=depth: fit_tree(m, g, routes, features, d))
        scores[depth] = float(routed.mean()) if len(routed) else 0.0
    depth = max(scores, key=lambda d: (round(scores[d], 9), -d))
    return fit_tree(matrix, gains, routes, features, depth,
                    {**(info or {}), "depth": depth, "depth_scores": {str(d): v for d, v in scores.items()}})


def _pruned(nodes: list[dict]) -> list[dict]:
    """Splits whose two sides route alike become leaves (the tree a person reads says only what matters)."""
    def collapse(index: int) -> dict:
        node = nodes[index]
        if "route" in node:
            return node
        left, right = collapse(node["left"]), collapse(node["right"])
        if "route" in left and "route" in right and left["route"] == right["route"]:
            return left
        return {**node, "left_node": left, "right_node": right}

    flat: list[dict] = []

    def emit(node: dict) -> int:
        index = len(flat)
        flat.append({})
        if "route" in node:
            flat[index] = {"route": node["route"]}
        else:
            left, right = emit(node["left_node"]), emit(node["right_node"])
            flat[index] = {"feature": node["feature"], "threshold": node["threshold"], "left": left, "right": right}
        return index

    emit(collapse(0))
    return flat


# -- tuning ----------------------------------------------------------------------------------------
def query_gains(runs: Mapping[str, Mapping[str, Sequence[tuple[str, float]]]], qrels: Mapping, query_ids: Sequence[str],
                k: int) -> tuple[list[str], np.ndarray]:
    """(the queries with a relevant document, their nDCG@k under each run: queries x runs, in `runs` order)."""
    kept = [q for q in query_ids if any(rel > 0 for rel in qrels.get(q, {}).values())]
    gains = np.array([[ndcg_at_k(rank(run.get(q, ())), qrels[q], k) for run in runs.values()] for q in kept],
                     dtype=np.float64).reshape(len(kept), len(runs))
    return kept, gains


def folds_of(count: int, folds: int = FOLDS, seed: int = SEED) -> list[np.ndarray]:
    """Query positions of each fold: a seeded shuffle dealt round-robin, so folds differ by at most one."""
    order = np.random.default_rng(seed).permutation(count)
    return [np.sort(order[f::folds]) for f in range(min(folds, count))]


def cross_validated(matrix: np.ndarray, gains: np.ndarray, routes: Sequence[Route], features: Sequence[str],
                    folds: int, learner) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query's gain under the rule `learner(matrix, gains)` learned without its fold, under the route best
    on those same training queries, and the route index the rule chose."""
    count = len(gains)
    routed, fixed, chosen = np.zeros(count), np.zeros(count), np.zeros(count, dtype=np.int64)
    for test in folds_of(count, folds):
        train = np.setdiff1d(np.arange(count), test)
        if train.size == 0 or test.size == 0:
            continue
        picks = learner(matrix[train], gains[train]).choose_many(matrix[test])
        best_fixed = int(np.argmax(gains[train].mean(axis=0)))
        routed[test], fixed[test], chosen[test] = gains[test, picks], gains[test, best_fixed], picks
    return routed, fixed, chosen


def heldout_estimate(matrix: np.ndarray, gains: np.ndarray, routes: Sequence[Route], features: Sequence[str] = FEATURES,
                     folds: int = FOLDS, max_depth: int = MAX_DEPTH) -> dict:
    """Cross-validated nDCG@k of routing (the whole `learn_rule`, depth choice included, on each training part:
    nested cross-validation), of the best fixed route (chosen on each training part), and of the oracle (each
    query's best route, an upper bound no rule reaches), each query scored by what was learned without it; with
    the wins and losses of routing against the fixed route, query by query."""
    count = len(gains)
    routed, fixed, chosen = cross_validated(
        matrix, gains, routes, features, folds,
        lambda m, g: learn_rule(m, g, routes, features, max_depth, folds))
    parts = folds_of(count, folds)
    oracle = gains.max(axis=1) if count else np.zeros(0)
    labels = [route.label for route in routes]
    return {
        "folds": len(parts),
        "queries": int(count),
        "routing": float(routed.mean()) if count else math.nan,
        "best_fixed": float(fixed.mean()) if count else math.nan,
        "oracle": float(oracle.mean()) if count else math.nan,
        "wins": int((routed > fixed + 1e-12).sum()),
        "losses": int((routed < fixed - 1e-12).sum()),
        "routed_share": {labels[i]: float(np.mean(chosen == i)) for i in range(len(routes))} if count else {},
    }
