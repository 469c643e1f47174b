"""`train --mine-negatives TABLE`: hard negatives from an embedlake table's own dense vectors.

The selection rules on their own, the miner against sentence-transformers' `mine_hard_negatives` on the
same corpus (the rules it defines: positives removed, relative margin, range_min, top sampling), the table
checks and option errors (before Ray or training start), the Ray Data pipeline (an anchor with two positives
never gets either as a negative; a killed run's finished set is reused), and a training run on mined
negatives through the CLI.
"""

from __future__ import annotations

import glob
import os

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.training.mining import (
    MINED_SCHEMA,
    MiningSettings,
    NegativeMiner,
    folded,
    group_by_anchor,
    select_negatives,
)
from operators.training.pairs import ANCHOR, NEGATIVE, POSITIVE, PairColumns, PairReader
from tests.cli_runs import cli_error, run_cli
from tests.minilm_lake import write_minilm_table

TABLE_DOCS = 90
ANCHORS = 40


# -- the rules, without a model ------------------------------------------------------------------
def test_the_positive_the_anchor_and_repeats_are_never_negatives():
    texts = ["the positive ", "the anchor", "a", "the  positive", "b", "a", "c"]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    chosen = select_negatives("the anchor", ["the positive"], texts, scores, None,
                              MiningSettings(count=3, margin=None))
    assert [text for text, _ in chosen.negatives] == ["a", "b", "c"]
    assert chosen.positives_seen == 2, "whitespace is folded when comparing with the positive"


def test_skip_margin_and_count_follow_sentence_transformers_order():
    texts = ["pos", "n1", "n2", "n3", "n4", "n5"]
    scores = [0.80, 0.79, 0.70, 0.60, 0.50, 0.40]
    # margin 0.05 of 0.80: above 0.76 is a likely false negative (n1); then skip one (n2), take two
    chosen = select_negatives("q", ["pos"], texts, scores, 0.80, MiningSettings(count=2, skip=1, margin=0.05))
    assert chosen.negatives == [("n3", pytest.approx(0.60)), ("n4", pytest.approx(0.50))]
    assert chosen.margin_dropped == 1
    assert select_negatives("q", ["pos"], texts, scores, 0.80, MiningSettings(margin=0.0)).negatives[0][0] == "n1"
    nothing = select_negatives("q", ["pos"], texts, scores, 0.30, MiningSettings())
    assert nothing.negatives == [] and nothing.margin_dropped == 5


def test_depth_bounds_the_hits_considered():
    texts = ["pos", *[f"n{i}" for i in range(20)]]
    scores = list(np.linspace(0.9, 0.1, len(texts)))
    settings = MiningSettings(count=1, skip=3, depth=4, margin=None)
    assert select_negatives("q", ["pos"], texts, scores, None, settings).negatives[0][0] == "n3"
    assert select_negatives("q", ["pos"], texts, scores, None,
                            MiningSettings(count=2, skip=3, depth=4, margin=None)).negatives == [
        ("n3", pytest.approx(scores[4]))], "a fifth candidate is beyond --mine-depth 4"


def test_in_a_passage_table_a_passage_of_the_positive_is_the_positive():
    positive = "First part of the document. Second part of it."
    texts = ["Second part of it.", "another document", "First part"]
    chosen = select_negatives("q", [positive], texts, [0.9, 0.8, 0.7], None,
                              MiningSettings(count=2, margin=None, passages=True))
    assert [text for text, _ in chosen.negatives] == ["another document"]


def test_grouping_collects_every_positive_of_an_anchor():
    pairs = pa.table({ANCHOR: ["a", "b", "a", "a"], POSITIVE: ["x", "y", "z", "x"]})
    grouped = {row[ANCHOR]: row["positives"] for row in group_by_anchor(pairs).to_pylist()}
    assert grouped == {"a": ["x", "z"], "b": ["y"]}


def test_settings_that_cannot_give_a_negative_are_refused():
    for settings, message in ((MiningSettings(count=0), "--mine-count"), (MiningSettings(skip=-1), "--mine-skip"),
                              (MiningSettings(count=2, skip=3, depth=4), "--mine-depth 4"),
                              (MiningSettings(margin=1.5), "--mine-margin")):
        with pytest.raises(ValueError, match=message):
            settings.check()


# -- a MiniLM table that keeps its texts ---------------------------------------------------------
@pytest.fixture(scope="module")
def docs(sample_dir) -> pa.Table:
    files = sorted(glob.glob(os.path.join(sample_dir, "*.parquet")))
    return pq.read_table(files[0], columns=["id", "title", "text"]).slice(0, TABLE_DOCS)


@pytest.fixture(scope="module")
def lake(docs, tmp_path_factory) -> str:
    """`embed --keep-text` of the docs with MiniLM (table `docs`), and one without the text (`bare`)."""
    uri = str(tmp_path_factory.mktemp("mine_lake"))
    write_minilm_table(uri, docs.select(["id", "text"]), keep_text=True)
    write_minilm_table(uri, docs.select(["id", "text"]).slice(0, 10), name="bare")
    return uri


@pytest.fixture(scope="module")
def mining_table(lake):
    from pipelines.mine_negatives import open_mining_table

    return open_mining_table(lake, None, "text", {})


@pytest.fixture(scope="module")
def miner_parts(mining_table):
    from operators.encoders.loader import load_encoder
    from operators.search.store import TableStore
    from operators.tables import Pin

    store = TableStore(mining_table.uri, mining_table.name, pin=Pin(version=mining_table.version))
    return store, load_encoder(mining_table.spec)


def pairs_of(docs: pa.Table, rows: int = ANCHORS) -> pa.Table:
    return pa.table({ANCHOR: docs.column("title").slice(0, rows), POSITIVE: docs.column("text").slice(0, rows)})


@pytest.mark.parametrize(("settings", "theirs"), [
    (MiningSettings(), {"relative_margin": 0.05, "num_negatives": 1}),
    (MiningSettings(count=2, skip=2, margin=None), {"range_min": 2, "num_negatives": 2}),
])
def test_mined_negatives_match_sentence_transformers(docs, miner_parts, minilm_path, settings, theirs,
                                                    tmp_path_factory):
    """Our miner on the table's stored vectors gives the triplets sentence-transformers' `mine_hard_negatives`
    gives on the same texts with the same model (it encodes the corpus itself, in one process)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    store, encoder = miner_parts
    pairs = pairs_of(docs)
    mined, counts = NegativeMiner(store, encoder, settings, "text")(group_by_anchor(pairs))
    model = SentenceTransformer(minilm_path, device="cpu", local_files_only=True)
    cache = str(tmp_path_factory.getbasetemp() / "st_mining_cache")  # its embeddings, encoded once for both cases
    expected = mine_hard_negatives(Dataset.from_dict(pairs.to_pydict()), model, corpus=docs.column("text").to_pylist(),
                                   sampling_strategy="top", output_format="triplet", verbose=False,
                                   cache_folder=cache, **theirs)
    ours = set(zip(*(mined.column(c).to_pylist() for c in (ANCHOR, POSITIVE, NEGATIVE)), strict=True))
    assert ours == set(zip(expected[ANCHOR], expected[POSITIVE], expected[NEGATIVE], strict=True))
    assert counts.triplets == mined.num_rows == len(expected) and counts.anchors == ANCHORS
    table_texts = set(docs.column("text").to_pylist())
    assert all(neg in table_texts and folded(neg) != folded(pos)
               for _a, pos, neg in ours), "negatives are the table's texts, never the positive"
    if settings.margin is not None:
        assert counts.positives_in_hits == ANCHORS, "each positive is in the table: scored as stored, not encoded"
        scores = mined.to_pydict()
        assert all(neg < pos * 0.95 + 1e-6 for pos, neg in zip(scores["positive_score"], scores["negative_score"],
                                                                 strict=True))


def test_a_positive_missing_from_the_table_is_encoded_for_the_margin(docs, miner_parts):
    store, encoder = miner_parts
    outside = pa.table({ANCHOR: ["fast compression library"], POSITIVE: ["A library for fast lossless compression."]})
    mined, counts = NegativeMiner(store, encoder, MiningSettings(margin=0.0), "text")(group_by_anchor(outside))
    assert counts.positives_in_hits == 0 and counts.anchors == 1
    assert mined.num_rows == 0 or mined.column("negative_score")[0].as_py() <= mined.column("positive_score")[0].as_py()


def test_an_indexed_table_is_searched_through_its_ann_index_with_the_exact_result(lake, docs, miner_parts, tmp_path):
    """A table with an ANN index on `dense` is searched through it (hits rescored from their stored vectors):
    on a small table the triplets are those of the exact search."""
    import shutil

    from operators.search.ann import create_index
    from operators.search.index_plan import plan_index
    from operators.search.store import TableStore
    from operators.tables import Lake
    from pipelines.mine_negatives import open_mining_table

    copy = str(tmp_path / "indexed")
    shutil.copytree(lake, copy)
    create_index(Lake(copy).table("docs").open(), plan_index("dense", TABLE_DOCS, 384))
    table = open_mining_table(copy, None, "text", {})
    assert table.method.startswith("ann (")
    exact_store, encoder = miner_parts
    settings = MiningSettings(count=2)
    indexed, _ = NegativeMiner(TableStore(copy, "docs"), encoder, settings, "text")(group_by_anchor(pairs_of(docs)))
    exact, _ = NegativeMiner(exact_store, encoder, settings, "text")(group_by_anchor(pairs_of(docs)))
    assert indexed.num_rows > 0
    assert indexed.select([ANCHOR, NEGATIVE]).to_pylist() == exact.select([ANCHOR, NEGATIVE]).to_pylist()


# -- the table and the options, checked before anything runs --------------------------------------
def train_argv(pairs: str, out: str, model: str, *extra: str) -> list[str]:
    return ["train", pairs, out, "--base", model, "--anchor-column", "title", "--positive-column", "text",
            "--batch-size", "8", "--dims", "48,16", "--holdout", "0.2", "--cpus-per-worker", "1", "--no-progress",
            "--json", *extra]


@pytest.fixture(scope="module")
def pairs_dir(docs, miner_parts, tmp_path_factory) -> str:
    """The first 40 docs as (title -> text) pairs, in two shards, plus the first title again with a second
    positive: the text that would be its negative without this row."""
    folder = tmp_path_factory.mktemp("mine_pairs")
    table = docs.slice(0, ANCHORS).select(["title", "text"])
    alone, _ = NegativeMiner(*miner_parts, MiningSettings(margin=None), "text")(group_by_anchor(pairs_of(docs, 1)))
    extra = pa.table({"title": [docs.column("title")[0].as_py()], "text": alone.column(NEGATIVE).to_pylist()})
    pq.write_table(table.slice(0, 20), folder / "part-0.parquet")
    pq.write_table(pa.concat_tables([table.slice(20), extra]), folder / "part-1.parquet")
    return str(folder)


@pytest.mark.parametrize(("extra", "message"), [
    (("--mine-negatives", "LAKE", "--negative-column", "text"), "not both"),
    (("--mine-count", "2"), "--mine-count only apply with --mine-negatives"),
    (("--mine-negatives", "LAKE", "--mine-count", "0"), "--mine-count must be at least 1"),
    (("--mine-negatives", "LAKE", "--mine-margin", "1.5"), "--mine-margin must be in [0, 1)"),
    (("--mine-negatives", "LAKE", "--mine-margin", "wide"), "expected a number in [0, 1) or 'off'"),
    (("--mine-negatives", "LAKE", "--mine-skip", "5", "--mine-depth", "5"), "--mine-depth 5 leaves fewer"),
    (("--mine-negatives", "LAKE/docs.lance", "--mine-table", "other"), "give one"),
    (("--mine-negatives", "LAKE", "--mine-table", "../x"), "invalid table name"),
])
def test_mining_option_errors_are_usage_errors(pairs_dir, lake, tiny_model, tmp_path, extra, message):
    argv = train_argv(pairs_dir, str(tmp_path / "model"), tiny_model,
                      *(value.replace("LAKE", lake) for value in extra))
    assert message in cli_error(*argv, status=2)
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize(("where", "message"), [
    ("missing", "no table 'docs'"),
    ("bare", "has no column 'text' (the negatives' texts: `embed --keep-text` stores them"),
    ("no_dense", "has no dense column 'dense' to search for negatives"),
    ("no_meta", "carries no embedlake metadata"),
])
def test_a_table_that_cannot_be_mined_fails_before_ray_or_training(pairs_dir, lake, tiny_model, tmp_path, where,
                                                                    message):
    from operators.table_meta import TableMeta, with_meta

    location = {"missing": ["--mine-negatives", str(tmp_path / "nowhere")],
                "bare": ["--mine-negatives", lake, "--mine-table", "bare"]}.get(where)
    if location is None:  # a table with texts but without dense vectors, or without metadata
        meta = TableMeta(model="minilm", model_id="x", kind="mrl")
        schema = pa.schema([pa.field("id", pa.string()), pa.field("text", pa.string())])
        data = pa.table({"id": ["a"], "text": ["some text"]}, schema=with_meta(schema, meta) if where == "no_dense"
                        else schema)
        lancedb.connect(str(tmp_path / "odd")).create_table("docs", data)
        location = ["--mine-negatives", str(tmp_path / "odd" / "docs.lance")]
    assert message in cli_error(*train_argv(pairs_dir, str(tmp_path / "model"), tiny_model, *location))
    assert not (tmp_path / "model").exists(), "nothing is written before the table is known to be good"


# -- on Ray ----------------------------------------------------------------------------------------
def test_the_pipeline_groups_an_anchor_s_positives_and_reuses_a_finished_set(ray_session, pairs_dir, docs,
                                                                             mining_table, tmp_path):
    from operators.sources import find_shards
    from pipelines.mine_negatives import mine_negatives

    reader = PairReader(PairColumns("title", "text"), 0.0, {})
    shards = find_shards(pairs_dir)
    out = str(tmp_path / "mined")
    settings = MiningSettings(count=2, margin=None)  # the margin would drop every candidate above either positive
    mined_shards, summary = mine_negatives(mining_table, settings, shards, reader, ANCHORS + 1, out, {})
    triplets = pa.concat_tables([pq.read_table(path) for path in mined_shards.files])
    assert triplets.schema.equals(MINED_SCHEMA)
    assert summary["anchors"] == ANCHORS and summary["pairs"] == ANCHORS + 1
    assert summary["triplets"] == triplets.num_rows > 0 and summary["table_version"] == mining_table.version
    first = docs.column("title")[0].as_py()
    own = {docs.column("text")[0].as_py(), *pq.read_table(os.path.join(pairs_dir, "part-1.parquet"))
           .column("text").slice(ANCHORS - 20).to_pylist()}
    rows = [row for row in triplets.to_pylist() if row[ANCHOR] == first]
    assert {row[POSITIVE] for row in rows} == own, "both positives of the repeated anchor are trained"
    assert not {row[NEGATIVE] for row in rows} & own, "neither positive of an anchor is ever its negative"
    assert all(row[NEGATIVE] != row[POSITIVE] for row in triplets.to_pylist())
    assert set(triplets.column(NEGATIVE).to_pylist()) <= set(docs.column("text").to_pylist())
    again_shards, again = mine_negatives(mining_table, settings, shards, reader, ANCHORS + 1, out, {})
    assert again["reused"] is True and again_shards.files == mined_shards.files


def test_train_on_mined_negatives_through_the_cli(ray_session, pairs_dir, lake, tiny_model, tmp_path):
    """The tiny model trains on negatives mined from a MiniLM table: anchors are encoded by the table's model
    (MiniLM), not by --base; the held-out pairs are the input's; the mined set goes with the checkpoints."""
    out = tmp_path / "model"
    code, summary, err = run_cli(*train_argv(pairs_dir, str(out), tiny_model, "--mine-negatives", lake,
                                             "--epochs", "1", "--learning-rate", "1e-3"))
    assert code == 0, err[-3000:]
    mining = summary["mining"]
    assert mining["table"] == "docs" and mining["model"] == "minilm" and mining["table_model_is_base"] is False
    assert mining["count"] == 1 and mining["margin"] == 0.05 and mining["search"] == "exact"
    assert summary["train_pairs"] == mining["triplets"] > 0
    assert mining["anchors"] + summary["holdout_pairs"] <= ANCHORS + 1
    assert summary["steps"] == summary["train_pairs"] // 8 and summary["evaluated_pairs"] == summary["holdout_pairs"]
    assert summary["job"]["mine_negatives"] == lake and summary["job"]["mine_count"] == 1
    assert not (out / "checkpoints").exists(), "the mined set is removed with the checkpoints"
