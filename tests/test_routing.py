"""Query routing (issue 17): the features, the rule and its storage, `search --mode auto`, and `evaluate
--tune-routing` on a synthetic table where one mode clearly suits each kind of query.

The table has dense and sparse columns (random vectors, tests/search_tables.py) and every row one token of its
own. Keyword queries are two words and carry only their row's own token (sparse finds the row, dense sees
noise); paraphrase queries are eight words, with a vector near their row's and common tokens (dense finds the
row, sparse does not). The query encoder is replaced by one that returns these vectors, so no model runs and
no Ray starts.
"""

from __future__ import annotations

import json
import logging
import math

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.schema import DENSE, SPARSE
from operators.scoring import QueryVectors, SparseVector
from operators.search.retriever import Retriever
from operators.search.routing import (
    FEATURES,
    Route,
    RoutingRule,
    TermStats,
    candidate_routes,
    default_rule,
    feature_matrix,
    learn_rule,
    query_features,
)
from operators.serving import publish_schema_metadata, serving_version, set_tag
from operators.table_meta import ROUTING_KEY, TableMeta, read_routing
from operators.tables import SERVING, Lake, Pin
from pipelines.evaluate import EvaluateJob, run_evaluate
from tests.cli_runs import run_cli
from tests.search_tables import FAKE_MODEL_ID, random_rows, to_arrow

N = 200
PER_KIND = 40
K = 5
OWN_TOKEN = 1000  # row r holds token OWN_TOKEN + r, which no other row holds
DIM = 32


def build_table(path: str, sparse: bool = True) -> dict:
    rng = np.random.default_rng(5)
    columns = random_rows(rng, N, dim=DIM, dims=(), sparse=sparse, colbert=False)
    if sparse:
        for r, row in enumerate(columns[SPARSE]):
            row["indices"] = [*row["indices"], OWN_TOKEN + r]
            row["values"] = [*row["values"], 0.05]  # alone it ranks its row first; in a hybrid it drowns
    outputs = ["dense", "sparse"] if sparse else ["dense"]
    meta = TableMeta(model="fake", model_id=FAKE_MODEL_ID, kind="bge-m3" if sparse else "mrl", outputs=outputs)
    lancedb.connect(path).create_table("docs", to_arrow(columns, dim=DIM, dims=(), meta=meta))
    return columns


def labelled_queries(columns: dict, folder) -> dict[str, QueryVectors]:
    """Query text -> its vectors, and queries.parquet / qrels.parquet in `folder`."""
    rng = np.random.default_rng(6)
    known, ids, texts, relevant = {}, [], [], []
    for i, row in enumerate(list(range(0, N, N // (2 * PER_KIND)))[: 2 * PER_KIND]):
        if i % 2 == 0:  # keyword
            text = f"kw{row} code"
            dense = rng.normal(size=DIM)
            sparse = SparseVector.from_pairs([OWN_TOKEN + row], [1.0])
        else:  # paraphrase
            text = f"a longer description in words of item {row}"
            dense = columns[DENSE][row] + 0.05 * rng.normal(size=DIM)
            sparse = SparseVector.from_pairs(rng.choice(60, size=4, replace=False), rng.uniform(0.1, 0.3, 4))
        known[text] = QueryVectors(dense={DENSE: (dense / np.linalg.norm(dense)).astype(np.float32)}, sparse=sparse)
        ids.append(f"q{row}")
        texts.append(text)
        relevant.append(columns["id"][row])
    pq.write_table(pa.table({"query_id": ids, "text": texts}), folder / "queries.parquet")
    pq.write_table(pa.table({"query_id": ids, "doc_id": relevant, "relevance": [1] * len(ids)}),
                   folder / "qrels.parquet")
    return known


@pytest.fixture
def known_encoder(monkeypatch):
    """Replace the table's query encoder by a lookup of known vectors (set `known` on the returned dict)."""
    vectors: dict[str, QueryVectors] = {}
    monkeypatch.setattr("operators.search.queries.load_query_encoder", lambda store, model=None: None)
    monkeypatch.setattr("operators.search.queries.encode_queries", lambda encoder, texts: [vectors[t] for t in texts])
    return vectors


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("routing_lake"))
    columns = build_table(path)
    folder = tmp_path_factory.mktemp("routing_labels")
    return path, columns, folder, labelled_queries(columns, folder)


@pytest.fixture(scope="module")
def tuned(lake, tmp_path_factory):
    """evaluate --tune-routing on the lake: (the report, the table version before it)."""
    path, _columns, folder, known = lake
    before = Lake(path).table("docs").dataset().version
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("operators.search.queries.load_query_encoder", lambda store, model=None: None)
        patch.setattr("operators.search.queries.encode_queries", lambda encoder, texts: [known[t] for t in texts])
        report = run_evaluate(EvaluateJob(path, str(folder / "queries.parquet"), str(folder / "qrels.parquet"), k=K,
                                          tune_routing=True, report=str(tmp_path_factory.mktemp("rep") / "r.json")))
    return report, before


# -- features ----------------------------------------------------------------------------------
def test_features_are_exact_and_deterministic():
    stats = TermStats(terms=np.array([3, 5, 9]), df=np.array([1, 50, 100]), rows=100)
    query = QueryVectors(sparse=SparseVector.from_pairs([9, 3, 7], [0.2, 0.5, 0.3]))
    features = query_features("Find the libpng  decoder!", query, stats)
    assert features == query_features("Find the libpng  decoder!", query, stats)
    assert list(features) == list(FEATURES)
    assert features["words"] == 4
    assert features["sparse_terms"] == 3
    assert features["sparse_mass"] == pytest.approx(1.0) and features["sparse_max"] == pytest.approx(0.5)
    assert features["rare_share"] == pytest.approx(2 / 3)  # token 3 (df 1) and 7 (in no row); 9 is in every row
    idf = [math.log(101 / 2), math.log(101 / 1), math.log(101 / 101)]  # tokens 3, 7, 9
    assert features["mean_idf"] == pytest.approx(np.mean(idf))
    assert features["matched_share"] == pytest.approx(0.7)  # 0.3 of the weight is on token 7, in no row
    dense_only = query_features("two words", QueryVectors(dense={DENSE: np.ones(4)}), None)
    assert dense_only == {**dict.fromkeys(FEATURES, 0.0), "words": 2.0}


def test_features_of_a_table_are_deterministic(lake, known_encoder):
    path, _columns, _folder, known = lake
    known_encoder.update(known)
    text = next(iter(known))
    first = Retriever(path, "docs").features(text, known[text])
    assert first == Retriever(path, "docs").features(text, known[text])
    assert first["rare_share"] == 1.0 and first["words"] == 2  # a keyword query: its one token is in one row


def test_candidate_routes_follow_the_stored_modes():
    assert [r.label for r in candidate_routes(["dense"])] == ["dense"]
    assert [r.label for r in candidate_routes(["dense", "sparse"])] == [
        "dense", "sparse", "hybrid(0.4,0.2,0)", "hybrid(0.5,0.5,0)"]
    labels = [r.label for r in candidate_routes(["dense", "sparse", "colbert"], [1, 1, 1])]
    assert labels == ["dense", "sparse", "colbert", "hybrid(1,1,1)", "hybrid(0.5,0.5,0)", "hybrid(0.5,0,0.5)",
                      "hybrid(0,0.5,0.5)"]
    assert default_rule(["dense", "sparse"]).choose(dict.fromkeys(FEATURES, 0.0)) == Route("hybrid", (0.4, 0.2, 0.0))
    assert default_rule(["dense"]).choose(dict.fromkeys(FEATURES, 0.0)) == Route("dense")


# -- the rule --------------------------------------------------------------------------------------
def test_rule_round_trips_through_json():
    rng = np.random.default_rng(0)
    matrix = rng.uniform(0, 10, size=(120, len(FEATURES)))
    routes = candidate_routes(["dense", "sparse"])
    gains = rng.uniform(size=(120, len(routes)))
    gains[matrix[:, 4] > 5, 1] += 1  # sparse is better where rare_share is high, dense elsewhere
    gains[matrix[:, 4] <= 5, 0] += 1
    rule = learn_rule(matrix, gains, routes, info={"source": "tuned"})
    assert rule.info["depth"] >= 1 and rule.info["source"] == "tuned"
    rule.model_id = "m:1"
    back = RoutingRule.from_dict(json.loads(json.dumps(rule.to_dict())))
    assert back == rule
    assert (back.choose_many(matrix) == rule.choose_many(matrix)).all()
    assert any("rare_share" in line and line.endswith(": sparse") for line in rule.describe())
    with pytest.raises(ValueError, match="format"):
        RoutingRule.from_dict({**rule.to_dict(), "format": 99})
    with pytest.raises(ValueError, match="malformed"):
        RoutingRule.from_dict({**rule.to_dict(), "nodes": [{"route": 7}]})


def test_too_few_queries_give_the_best_fixed_route():
    routes = candidate_routes(["dense", "sparse"])
    gains = np.array([[0.1, 0.9, 0.2, 0.3]] * 5)
    rule = learn_rule(np.zeros((5, len(FEATURES))), gains, routes)
    assert rule.nodes == [{"route": 1}]


# -- evaluate --tune-routing -----------------------------------------------------------------------
def test_tune_routing_learns_which_mode_suits_which_queries(tuned, lake):
    report, _before = tuned
    routing = report["routing"]
    heldout = routing["heldout"]
    assert heldout["queries"] == 2 * PER_KIND and heldout["folds"] == 5
    # neither mode alone serves both kinds; routing serves each with its own
    assert routing["per_route"]["sparse"] < 0.7 and routing["per_route"]["dense"] < 0.7
    assert heldout["oracle"] > 0.95
    assert heldout["routing"] > heldout["best_fixed"] + 0.3
    assert heldout["routing"] >= heldout["oracle"] - 0.05
    rule = RoutingRule.from_dict(routing["rule_json"])
    path, _columns, _folder, known = lake
    retriever = Retriever(path, "docs")
    for text, vectors in known.items():
        chosen = rule.choose(retriever.features(text, vectors))
        assert (chosen == Route("sparse")) == text.startswith("kw"), (text, chosen)
    with open(report["report"]) as handle:
        assert json.load(handle)["routing"]["heldout"] == heldout
    assert routing["plot"].endswith("r.routing.png")
    with open(routing["plot"], "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_rule_is_stored_in_a_metadata_only_commit_readers_see(tuned, lake):
    report, before = tuned
    path = lake[0]
    target = Lake(path).table("docs")
    dataset = target.dataset()
    assert report["routing"]["stored"] is True
    assert report["routing"]["stored_version"] == dataset.version == before + 1
    assert serving_version(dataset) == dataset.version
    assert read_routing(target.snapshot().schema) == report["routing"]["rule_json"]
    assert read_routing(target.dataset(before).schema) is None
    assert target.dataset(before).to_table().equals(dataset.to_table())  # the same rows, vectors and all
    assert Retriever(path, "docs").routing_rule() == RoutingRule.from_dict(report["routing"]["rule_json"])
    assert Retriever(path, "docs", pin=Pin(version=before)).routing_rule().info == {"source": "default"}


# -- search --mode auto ----------------------------------------------------------------------------
def test_mode_auto_equals_the_chosen_mode_by_hand(tuned, lake, known_encoder):
    path, _columns, _folder, known = lake
    known_encoder.update(known)
    retriever = Retriever(path, "docs")
    rule = retriever.routing_rule()
    assert rule.info["source"] == "tuned"
    seen = set()
    for text, vectors in known.items():
        route = rule.choose(retriever.features(text, vectors))
        seen.add(route.mode)
        assert retriever.search(text, mode="auto", k=K) == retriever.search(text, k=K, **route.search_options())
    assert "sparse" in seen and len(seen) >= 2


def test_search_cli_mode_auto_equals_the_routed_mode(tuned, lake, known_encoder, caplog):
    path, _columns, _folder, known = lake
    known_encoder.update(known)
    retriever = Retriever(path, "docs")
    for text in [next(t for t in known if t.startswith("kw")), next(t for t in known if not t.startswith("kw"))]:
        route = retriever.route(text)
        with caplog.at_level(logging.INFO, logger="operators.search.retriever"):
            code, auto, err = run_cli("search", path, "--query", text, "--mode", "auto", "--k", str(K), "--json")
        assert code == 0, err
        assert f"--mode auto: {route.label}" in caplog.text
        by_hand = ["--mode", route.mode] + (["--weights", ",".join(map(str, route.weights))] if route.weights else [])
        code, fixed, err = run_cli("search", path, "--query", text, *by_hand, "--k", str(K), "--json")
        assert code == 0, err
        assert auto == fixed


def test_mode_auto_refuses_what_it_cannot_route(tuned, lake, known_encoder):
    path, columns, _folder, known = lake
    known_encoder.update(known)
    text = next(iter(known))
    for options, named in ((["--like", columns["id"][0]], "--like"), (["--query", text, "--fusion", "rrf"], "--fusion"),
                           (["--query", text, "--column", "dense"], "--column"),
                           (["--query", text, "--funnel", "dense_bin"], "--funnel")):
        code, _, err = run_cli("search", path, *options, "--mode", "auto", "--json")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("embedlake: error: --mode auto"), err
        assert named in lines[0]
    code, _, err = run_cli("evaluate", path, "--pairs", "p.parquet", "--tune-routing", "--json")
    assert code == 2 and err.strip() == ("embedlake: error: --tune-routing learns from labelled queries: give "
                                         "--queries and --qrels"), err


def test_a_rule_of_another_model_is_not_used(tmp_path, caplog):
    build_table(str(tmp_path))
    target = Lake(str(tmp_path)).table("docs")
    stale = RoutingRule.fixed(Route("sparse"), model_id="another:1", info={"source": "tuned"})
    publish_schema_metadata(target, {ROUTING_KEY.decode(): json.dumps(stale.to_dict())})
    rule = Retriever(str(tmp_path), "docs").routing_rule()
    assert rule.info == {"source": "default"} and rule.routes == [Route("hybrid", (0.4, 0.2, 0.0))]
    assert "tuned for model another:1" in caplog.text


# -- where there is nothing to route, or nowhere to store --------------------------------------------
def test_dense_only_table_has_nothing_to_route(tmp_path, known_encoder):
    columns = build_table(str(tmp_path / "lake"), sparse=False)
    folder = tmp_path / "labels"
    folder.mkdir()
    known = labelled_queries(columns, folder)
    known_encoder.update(known)
    report = run_evaluate(EvaluateJob(str(tmp_path / "lake"), str(folder / "queries.parquet"),
                                      str(folder / "qrels.parquet"), k=K, tune_routing=True, plot=False))
    assert report["routing"]["stored"] is False and report["routing"]["routes"] == ["dense"]
    assert "nothing to route" in report["routing"]["note"]
    assert read_routing(Lake(str(tmp_path / "lake")).table("docs").snapshot().schema) is None
    retriever = Retriever(str(tmp_path / "lake"), "docs")
    text = next(iter(known))
    assert retriever.search(text, mode="auto", k=K) == retriever.search(text, mode="dense", k=K)


def test_not_stored_over_an_unfinished_run_or_from_a_pinned_version(lake, tmp_path, known_encoder):
    _path, _columns, folder, known = lake
    known_encoder.update(known)
    build_table(str(tmp_path))
    target = Lake(str(tmp_path)).table("docs")
    dataset = target.dataset()
    set_tag(dataset, SERVING, dataset.version)
    serving = dataset.version
    dataset.delete("id = 'doc00000'")  # the main line moves on: a run that has not finished
    job = {"queries": str(folder / "queries.parquet"), "qrels": str(folder / "qrels.parquet"), "k": K,
           "tune_routing": True, "plot": False}
    report = run_evaluate(EvaluateJob(str(tmp_path), **job))
    assert report["routing"]["stored"] is False and "unfinished" in report["routing"]["not_stored"]
    assert serving_version(target.dataset()) == serving and target.dataset().version == serving + 1
    assert read_routing(target.snapshot().schema) is None
    set_tag(target.dataset(), SERVING, serving + 1)  # the run published: version `serving` is now an old one
    report = run_evaluate(EvaluateJob(str(tmp_path), version=serving, **job))
    assert report["routing"]["stored"] is False and "not the serving version" in report["routing"]["not_stored"]
    assert read_routing(target.snapshot().schema) is None


def test_feature_matrix_keeps_the_feature_order():
    rows = [dict(zip(FEATURES, range(len(FEATURES)), strict=True))]
    assert feature_matrix(rows).tolist() == [list(map(float, range(len(FEATURES))))]
