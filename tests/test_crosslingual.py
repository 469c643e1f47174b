"""`evaluate` per (query language, document language) pair: each entry equals the textbook metrics of a
brute-force ranking restricted to that language's documents, with only their judgments counting."""

from __future__ import annotations

import json
import os

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.metrics import evaluate_run
from operators.schema import COLBERT, DENSE, SPARSE
from operators.scoring import SparseVector
from operators.table_meta import TableMeta
from pipelines.evaluate import EvaluateJob, run_evaluate
from tests.search_tables import brute_lexical, brute_ranking, random_rows, to_arrow
from tests.test_evaluate import KnownEncoder

N = 240
K = 5
DOC_LANGUAGES = ("en", "de", "fr")
QUERY_LANGUAGES = ("de", "en")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("xling"))
    rng = np.random.default_rng(21)
    columns = random_rows(rng, N)
    meta = TableMeta(model="fake", model_id="fake:1", kind="bge-m3", dims=[16, 8], outputs=["dense", "sparse",
                                                                                             "colbert"])
    table = to_arrow(columns, meta=meta)
    languages = [DOC_LANGUAGES[i % 3] for i in range(N)]
    languages[5] = None  # undetermined
    table = table.append_column("lang", pa.array(languages, pa.string()))
    lancedb.connect(path).create_table("docs", table)
    noise = random_rows(np.random.default_rng(22), N)
    queries = {name: (lambda m: m / np.linalg.norm(m, axis=1, keepdims=True))(columns[name] + 0.8 * noise[name])
               .astype(np.float32) for name in (DENSE, "dense_16", "dense_8")}
    queries[SPARSE] = [{"indices": row["indices"][:3] + [7], "values": row["values"][:3] + [0.2]}
                       if 7 not in row["indices"][:3] else row for row in columns[SPARSE]]
    queries[COLBERT] = columns[COLBERT]
    targets = list(range(0, N, 8))
    query_ids = [f"q{t}" for t in targets]
    folder = tmp_path_factory.mktemp("labels")
    pq.write_table(pa.table({"query_id": query_ids, "text": [f"row {t}" for t in targets],
                             "language": [QUERY_LANGUAGES[i % 2] for i in range(len(targets))]}),
                   folder / "queries.parquet")
    qrels = {f"q{t}": {f"doc{t:05d}": 2, f"doc{(t + 1) % N:05d}": 1} for t in targets}
    rows = [(q, d, r) for q, judged in qrels.items() for d, r in judged.items()]
    pq.write_table(pa.table({"query_id": [r[0] for r in rows], "doc_id": [r[1] for r in rows],
                             "relevance": [r[2] for r in rows]}), folder / "qrels.parquet")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("operators.search.queries.load_query_encoder", lambda store, model=None: KnownEncoder(queries))
        result = run_evaluate(EvaluateJob(path, str(folder / "queries.parquet"), str(folder / "qrels.parquet"),
                                          k=K, language_column="lang",
                                          report=str(tmp_path_factory.mktemp("report") / "r.json")))
    return columns, queries, targets, qrels, languages, result


def test_every_pair_equals_a_brute_force_restricted_to_its_documents(setup):
    columns, queries, targets, qrels, languages, result = setup
    pairs = result["languages"]["pairs"]
    doc_langs = ["und" if lang is None else lang for lang in languages]
    assert result["languages"]["document_languages"] == {"de": 80, "en": 80, "fr": 79, "und": 1}  # row 5 (fr) is und
    assert result["languages"]["query_languages"] == {"de": 15, "en": 15}
    for q_lang in QUERY_LANGUAGES:
        members = [f"q{t}" for i, t in enumerate(targets) if QUERY_LANGUAGES[i % 2] == q_lang]
        for d_lang in ("de", "en", "fr", "und"):
            rows = [i for i in range(N) if doc_langs[i] == d_lang]
            ids = [columns["id"][i] for i in rows]
            judged = {q: {d: r for d, r in rel.items() if doc_langs[int(d[3:])] == d_lang} for q, rel in qrels.items()}
            entry = pairs[q_lang][d_lang]
            assert entry["documents"] == len(rows)
            summary = evaluate_run({}, judged, members, K)
            assert (entry["queries"], entry["queries_without_relevant"]) == (summary.queries,
                                                                             summary.queries_without_relevant)
            for column in (DENSE, "dense_16", "dense_8"):
                run = {f"q{t}": brute_ranking(ids, columns[column][rows] @ queries[column][t], K) for t in targets}
                expected = evaluate_run(run, judged, members, K).means
                for name, value in expected.items():
                    assert entry[column][name] == (None if np.isnan(value) else pytest.approx(value, abs=1e-9))
            run = {}
            for t in targets:
                query = SparseVector.from_pairs(queries[SPARSE][t]["indices"], queries[SPARSE][t]["values"])
                lexical = [brute_lexical(query, columns[SPARSE][i]) for i in rows]
                run[f"q{t}"] = [pair for pair in brute_ranking(ids, lexical, len(ids)) if pair[1] > 0][:K]
            for name, value in evaluate_run(run, judged, members, K).means.items():
                assert entry[SPARSE][name] == (None if np.isnan(value) else pytest.approx(value, abs=1e-9))


def test_pairs_are_in_the_report_with_a_heatmap(setup):
    *_, result = setup
    with open(result["report"]) as handle:
        report = json.load(handle)  # strict JSON: undefined metrics are null, not NaN
    assert report["languages"]["pairs"]["de"]["fr"]["dense"] == result["languages"]["pairs"]["de"]["fr"]["dense"]
    assert report["languages"]["document_column"] == "lang" and report["languages"]["query_column"] == "language"
    assert os.path.getsize(result["languages"]["plot"]) > 5000
    assert result["languages"]["pairs"]["en"]["und"]["queries"] == 0  # no query's relevant doc is undetermined
