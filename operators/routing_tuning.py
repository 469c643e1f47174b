"""`evaluate --tune-routing`: learn which search mode suits which query, from labelled queries, and say honestly
how much it gains.

Every route the table supports (operators/search/routing.py `candidate_routes`: each stored mode alone, the
hybrid at a few weightings) is run over the labelled queries exactly as `evaluate` runs its modes (the dense
and sparse runs and the shared candidates of operators/evaluation.py), giving each query's nDCG@k per route.
The held-out estimate is nested 5-fold cross-validation: each query is routed by a rule learned without it (the
tree's depth, 0 to 2, chosen by an inner cross-validation on those training queries alone), and compared with
the route that was best on the same training queries (`best_fixed`) and with each query's own best route
(`oracle`, the ceiling of any rule). The rule that is stored is then learned the same way on all the queries.
A table with one mode has nothing to route: the entry says so and nothing is stored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from operators import scoring
from operators.evaluation import Evaluator
from operators.figures import save_figure
from operators.metrics import metric_name
from operators.schema import DENSE, SPARSE
from operators.scoring import Fusion
from operators.search.retriever import hits
from operators.search.routing import (
    FEATURES,
    FOLDS,
    MAX_DEPTH,
    Route,
    RoutingRule,
    candidate_routes,
    feature_matrix,
    heldout_estimate,
    learn_rule,
    query_gains,
)

log = logging.getLogger(__name__)


def route_run(evaluator: Evaluator, route: Route, dense_positions: np.ndarray | None) -> dict:
    """The top-k run of one route over the labelled queries, as `search --mode <route>` ranks."""
    if route.weights is None and route.mode == DENSE:
        return evaluator.runs[DENSE]
    if route.weights is None and route.mode == SPARSE:
        return evaluator.sparse_run()
    candidates = evaluator.candidates(dense_positions)
    if route.weights is None:  # colbert
        return {qid: [(h["id"], h["score"]) for h in hits(found.ids, found.scores[route.mode], evaluator.depth)]
                for qid, found in zip(evaluator.labelled.ids, candidates, strict=True)}
    weights = scoring.mode_weights(route.weights, evaluator.retriever.available_modes())
    return evaluator.fused_run(candidates, weights, Fusion.WEIGHTED)


def tune_routing(evaluator: Evaluator, dense_positions: np.ndarray | None, weights: Sequence[float] | None = None
                 ) -> tuple[dict, RoutingRule | None]:
    """The report's `routing` entry, and the rule learned on every labelled query (None: nothing to route)."""
    retriever = evaluator.retriever
    modes = retriever.available_modes()
    routes = candidate_routes(modes, weights)
    ndcg = metric_name("ndcg", evaluator.k)
    if len(routes) < 2:
        note = (f"table {retriever.store.name!r} has one search mode ({', '.join(modes) or 'none'}): nothing to "
                "route, no rule stored (BGE-M3 tables, with sparse or colbert outputs, have several)")
        log.warning("--tune-routing: %s", note)
        return {"routes": [route.label for route in routes], "note": note, "stored": False}, None
    # by document on a passage table (the runs rank evaluator.depth passages)
    runs = {route.label: evaluator.documents(route_run(evaluator, route, dense_positions)) for route in routes}
    kept, gains = query_gains(runs, evaluator.labelled.qrels, evaluator.labelled.ids, evaluator.k)
    position = {qid: i for i, qid in enumerate(evaluator.labelled.ids)}
    rows = [retriever.features(evaluator.labelled.texts[position[qid]], evaluator.vectors[position[qid]])
            for qid in kept]
    matrix = feature_matrix(rows)
    model_id = retriever.store.meta.model_id if retriever.store.meta is not None else None
    rule = learn_rule(matrix, gains, routes, FEATURES, MAX_DEPTH, FOLDS,
                      {"source": "tuned", "queries": len(kept), "metric": ndcg,
                       "table_version": retriever.store.version})
    rule.model_id = model_id
    heldout = heldout_estimate(matrix, gains, routes, FEATURES, FOLDS, MAX_DEPTH)
    per_route = {label: float(gains[:, i].mean()) if len(kept) else float("nan")
                 for i, label in enumerate(runs)}
    entry = {
        "metric": ndcg,
        "routes": [route.label for route in routes],
        "per_route": per_route,  # every query, each route fixed: nothing learned, so no held-out needed
        "best_fixed_all": max(per_route, key=per_route.get) if per_route else None,
        "heldout": heldout,
        "rule": rule.describe(),
        "depth": rule.info["depth"],  # chosen by 5-fold cross-validation on all the queries (0: a fixed route)
        "rule_json": rule.to_dict(),
        "features": list(FEATURES),
        "stored": False,
    }
    return entry, rule


def plot_routing(entry: dict, path: str, title: str = "") -> str:
    """Bars of nDCG@k: each route fixed, then the held-out best fixed route, routing and the oracle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heldout = entry["heldout"]
    labels = [*entry["per_route"], "best fixed\n(held-out)", "routing\n(held-out)", "oracle"]
    values = [*entry["per_route"].values(), heldout["best_fixed"], heldout["routing"], heldout["oracle"]]
    colours = ["#9bb"] * len(entry["per_route"]) + ["#557", "#c63", "#bbb"]
    figure, axis = plt.subplots(figsize=(max(6.0, 0.9 * len(labels)), 4.4))
    bars = axis.bar(range(len(labels)), values, color=colours)
    for bar, value in zip(bars, values, strict=True):
        axis.annotate(f"{value:.3f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom",
                      fontsize=8, xytext=(0, 2), textcoords="offset points")
    axis.set_xticks(range(len(labels)), labels, fontsize=8, rotation=20)
    axis.set_ylabel(entry["metric"])
    axis.set_title(f"query routing{': ' + title if title else ''}, {heldout['queries']} queries\n"
                   f"{heldout['folds']}-fold held-out: routing won {heldout['wins']}, lost {heldout['losses']} "
                   "queries against the best fixed route", fontsize=9)
    axis.grid(True, axis="y", alpha=0.3)
    return save_figure(figure, path)

