"""Issue 17's routing figure: `search --mode auto` (a rule learned by `evaluate --tune-routing`) against the best
single fixed mode on the sample's 400 labelled queries, with a 5-fold held-out estimate and the oracle; and on
a mixed workload (those queries plus name look-ups) where the kinds of query differ.

    python -m benchmarks.routing --out benchmarks/results/routing_sample.json

The sample's documents are encoded once with the product's MiniLM encoder (operators/encoders, no Ray: the
same vectors `embed` writes) into two tables:

- `minilm`: dense only, the table `make demo` gives. `embedlake evaluate --tune-routing` runs on it as a user
  runs it (a subprocess, queries encoded by the table's own model): one mode, nothing to route, nothing stored.
- `minilm_bm25`: the same dense column plus a `sparse` column of BM25 weights (k1 0.9, b 0.4, scikit-learn's
  word tokens; each document's term weight idf * tf (k1 + 1) / (tf + k1 (1 - b + b dl / avgdl)), divided by
  the largest weight in the table, so that a query's score, with weight 1 / (its distinct terms) per term, is its
  BM25 score over the same scale as the dense cosine). No real BGE-M3 weights exist here, and the tiny random
  checkpoint of the tests ranks noise; BM25 stands in for BGE-M3's learned lexical weights, so routing chooses
  between a semantic and a lexical retriever of known quality. The queries get MiniLM's query vector and
  their BM25 weights from a stand-in query encoder; everything else (sparse index, hybrid fusion, features,
  rule, held-out estimate, the metadata commit) is the product's `evaluate --tune-routing`, called in process.
- `mixed` (the same columns): the 400 queries plus a name look-up for each judged package whose description
  contains its own name (the package name alone as the query, e.g. `iperf`; 217 of them), 617 queries in all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from operators.schema import (
    DENSE,
    ID,
    MODEL,
    SOURCE_FILE,
    SPARSE,
    SPARSE_TYPE,
    TEXT_HASH,
    dense_type,
    embeddings_schema,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_DIR = os.path.join(REPO, "data", "sample")
QUERIES = os.path.join(REPO, "data", "eval", "queries.parquet")
QRELS = os.path.join(REPO, "data", "eval", "qrels.parquet")
K1, B = 0.9, 0.4  # Pyserini's BM25 defaults


class Bm25:
    """BM25 weights as sparse vectors over scikit-learn's word vocabulary of the documents."""

    def __init__(self, texts: list[str]) -> None:
        from sklearn.feature_extraction.text import CountVectorizer

        self.vectorizer = CountVectorizer(lowercase=True)
        counts = self.vectorizer.fit_transform(texts).tocsr().astype(np.float64)
        rows = counts.shape[0]
        df = np.diff(counts.tocsc().indptr)
        self.idf = np.log(1 + (rows - df + 0.5) / (df + 0.5))
        lengths = np.asarray(counts.sum(axis=1)).ravel()
        norm = K1 * (1 - B + B * lengths / lengths.mean())
        tf = counts.data
        owner = np.repeat(np.arange(rows), np.diff(counts.indptr))
        counts.data = self.idf[counts.indices] * tf * (K1 + 1) / (tf + norm[owner])
        self.scale = float(counts.data.max())
        counts.data /= self.scale
        self.documents = counts

    def document_rows(self) -> list[dict]:
        matrix = self.documents
        return [{"indices": matrix.indices[a:b].tolist(), "values": matrix.data[a:b].astype(np.float32).tolist()}
                for a, b in zip(matrix.indptr[:-1], matrix.indptr[1:], strict=True)]

    def query_rows(self, texts: list[str]) -> list[dict]:
        present = self.vectorizer.transform(texts).tocsr()
        rows = []
        for a, b in zip(present.indptr[:-1], present.indptr[1:], strict=True):
            terms = np.sort(present.indices[a:b])
            rows.append({"indices": terms.tolist(), "values": [1.0 / max(len(terms), 1)] * len(terms)})
        return rows


class StandInQueryEncoder:
    """MiniLM's query vectors plus BM25 query weights (the `minilm_bm25` table's two modes)."""

    def __init__(self, minilm, bm25: Bm25) -> None:
        self.minilm = minilm
        self.bm25 = bm25
        self.model_id = minilm.model_id

    def encode(self, texts, prompt_name=None):
        batch = self.minilm.encode(list(texts), prompt_name=prompt_name)
        batch.columns[SPARSE] = pa.array(self.bm25.query_rows(list(texts)), type=SPARSE_TYPE)
        return batch


def write_table(uri: str, name: str, ids: list[str], dense: np.ndarray, meta, sparse: list[dict] | None) -> None:
    from operators.table_meta import with_meta
    from operators.tables import Lake

    fields = [pa.field(DENSE, dense_type(dense.shape[1]))] + ([pa.field(SPARSE, SPARSE_TYPE)] if sparse else [])
    schema = with_meta(embeddings_schema(fields), meta)
    columns = {ID: pa.array(ids), TEXT_HASH: pa.nulls(len(ids), pa.string()),
               MODEL: pa.array([meta.model_id] * len(ids)), SOURCE_FILE: pa.nulls(len(ids), pa.string()),
               DENSE: pa.FixedSizeListArray.from_arrays(pa.array(dense.reshape(-1)), dense.shape[1])}
    if sparse:
        columns[SPARSE] = pa.array(sparse, type=SPARSE_TYPE)
    table = pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)
    Lake(uri).table(name)  # checks the name as every command does
    import lancedb

    lancedb.connect(uri).create_table(name, table)


def mixed_queries(root: str, texts: dict[str, str]) -> tuple[str, str]:
    """The sample's queries and qrels plus one name query per judged package whose description holds its name."""
    import pyarrow.parquet as pq

    queries, qrels = pq.read_table(QUERIES).to_pylist(), pq.read_table(QRELS).to_pylist()
    names = sorted({row["doc_id"] for row in qrels if row["doc_id"].lower() in texts[row["doc_id"]].lower()})
    queries += [{"query_id": f"name:{name}", "text": name} for name in names]
    qrels += [{"query_id": f"name:{name}", "doc_id": name, "relevance": 1} for name in names]
    paths = os.path.join(root, "mixed_queries.parquet"), os.path.join(root, "mixed_qrels.parquet")
    pq.write_table(pa.Table.from_pylist([{"query_id": q["query_id"], "text": q["text"]} for q in queries]), paths[0])
    pq.write_table(pa.Table.from_pylist([{"query_id": r["query_id"], "doc_id": r["doc_id"],
                                          "relevance": r["relevance"]} for r in qrels]), paths[1])
    return paths


def run_cli(*argv: str) -> tuple[int, dict | None, str]:
    """`embedlake ARGV --json` in a subprocess: exit status, the JSON result, stderr."""
    command = [os.path.join(os.path.dirname(sys.executable), "embedlake"), *argv, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    return done.returncode, json.loads(lines[-1]) if done.returncode == 0 and lines else None, done.stderr


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON file for every figure (the PNG goes next to it)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--scratch", help="scratch folder (default: a temporary one)")
    parser.add_argument("--vectors", help="a .npy of the documents' MiniLM vectors: read when it exists (written "
                                          "there otherwise), so that a re-run skips encoding")
    args = parser.parse_args(argv)
    from benchmarks.machine import describe_machine
    from operators.encoders.base import EncoderSpec
    from operators.encoders.loader import describe_encoder, load_encoder
    from operators.table_meta import TableMeta, read_routing
    from operators.tables import Lake
    from pipelines.evaluate import EvaluateJob, run_evaluate

    results: dict = {"machine": describe_machine(), "k": args.k}
    docs = ds.dataset(SAMPLE_DIR, format="parquet").to_table(columns=["id", "text"])
    ids, texts = docs.column("id").to_pylist(), docs.column("text").to_pylist()
    spec = EncoderSpec(model="minilm")
    description = describe_encoder(spec)
    meta = TableMeta(model="minilm", model_id=description.model_id, kind="mrl", dims=description.dims,
                     outputs=[f.name for f in description.fields], max_length=description.max_length)
    encoder = load_encoder(spec)
    if args.vectors and os.path.exists(args.vectors):
        dense = np.load(args.vectors)
        results["encode_seconds"] = f"read from {args.vectors}"
    else:
        started = time.perf_counter()
        dense = np.asarray(encoder.encode(texts).columns[DENSE].flatten().to_numpy(zero_copy_only=False),
                           dtype=np.float32).reshape(len(texts), -1)
        results["encode_seconds"] = round(time.perf_counter() - started, 1)
        if args.vectors:
            np.save(args.vectors, dense)
    bm25 = Bm25(texts)
    with tempfile.TemporaryDirectory(dir=args.scratch) as root:
        uri = os.path.join(root, "lake")
        write_table(uri, "minilm", ids, dense, meta, None)
        meta_bm25 = TableMeta(**{**meta.__dict__, "outputs": [*meta.outputs, SPARSE]})
        write_table(uri, "minilm_bm25", ids, dense, meta_bm25, bm25.document_rows())

        # 1. The dense-only table, as a user runs it: nothing to route.
        code, report, err = run_cli("evaluate", uri, "--table", "minilm", "--queries", QUERIES, "--qrels", QRELS,
                                    "--k", str(args.k), "--tune-routing", "--report", os.path.join(root, "m.json"))
        results["minilm"] = {"exit": code, "routing": (report or {}).get("routing"),
                             "ndcg": (report or {}).get("dense", {}).get(f"ndcg@{args.k}"),
                             "stderr_routing": [line for line in err.splitlines() if "tune-routing" in line]}

        # 2. Dense + BM25: the product's evaluate --tune-routing with the stand-in query encoder.
        import operators.search.queries as queries

        original = queries.load_query_encoder
        queries.load_query_encoder = lambda store, model=None: StandInQueryEncoder(encoder, bm25)
        try:
            started = time.perf_counter()
            out = os.path.join(root, "b.json")
            report = run_evaluate(EvaluateJob(uri, QUERIES, QRELS, table="minilm_bm25", k=args.k, tune_routing=True,
                                              report=out))
            seconds = time.perf_counter() - started
        finally:
            queries.load_query_encoder = original
        routing = report["routing"]
        stored = read_routing(Lake(uri).table("minilm_bm25").snapshot().schema)
        results["minilm_bm25"] = {
            "seconds": round(seconds, 1),
            "modes": {name: report[name] for name in ("dense", "sparse", "hybrid") if name in report},
            "routing": {key: value for key, value in routing.items() if key not in ("rule_json", "plot")},
            "stored_rule_equals_report": stored == routing["rule_json"],
        }
        if args.out and routing.get("plot"):
            shutil.copyfile(routing["plot"], os.path.splitext(args.out)[0] + ".png")

        # 3. A mixed workload: the 400 descriptions' synopses plus name look-ups (the package name alone, for the
        # 217 of those packages whose description names them), where one mode should suit each kind.
        queries_path, qrels_path = mixed_queries(root, dict(zip(ids, texts, strict=True)))
        write_table(uri, "mixed", ids, dense, meta_bm25, bm25.document_rows())
        queries.load_query_encoder = lambda store, model=None: StandInQueryEncoder(encoder, bm25)
        try:
            report = run_evaluate(EvaluateJob(uri, queries_path, qrels_path, table="mixed", k=args.k,
                                              tune_routing=True, report=os.path.join(root, "x.json")))
        finally:
            queries.load_query_encoder = original
        routing = report["routing"]
        results["mixed"] = {
            "queries": report["queries"],
            "routing": {key: value for key, value in routing.items() if key not in ("rule_json", "plot")},
        }
        if args.out and routing.get("plot"):
            shutil.copyfile(routing["plot"], os.path.splitext(args.out)[0] + ".mixed.png")
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2, default=str)
    print(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
