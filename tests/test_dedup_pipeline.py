"""The dedup job and `embedlake dedup`: exact copies, SemDeDup through Ray (bucketed clusters), MinHash."""

from __future__ import annotations

import json
import os

import lancedb
import pytest

from operators.schema import ID, SIMILARITY
from pipelines.cli import main
from pipelines.dedup import DedupJob, run_dedup
from tests.corpus import build_corpus, check_found_and_nothing_unrelated, column

pytestmark = pytest.mark.ray

INTERFACE_KEYS = {"rows", "duplicates", "groups", "removed_fraction"}
SMALL_EDIT_EPS = 0.03


@pytest.fixture(scope="module")
def corpus(sample_dir, minilm_path):
    return build_corpus(str(sample_dir), minilm_path)


@pytest.fixture(scope="module")
def lake(tmp_path_factory, corpus) -> str:
    uri = str(tmp_path_factory.mktemp("lake"))
    lancedb.connect(uri).create_table("docs", corpus.table)
    return uri


def read_duplicates(uri: str):
    return lancedb.connect(uri).open_table("docs_duplicates").to_arrow()


def test_semantic_dedup_finds_every_planted_copy(ray_session, lake, corpus):
    """k=8 clusters over 3 buckets: pairs are only compared inside a cluster, and still all are found."""
    result = run_dedup(DedupJob(uri=lake, table="docs", eps=SMALL_EDIT_EPS, k=8, rows_per_bucket=100))
    duplicates = read_duplicates(lake)
    expected = {**corpus.planted, **corpus.exact}
    assert check_found_and_nothing_unrelated(corpus, duplicates, expected) == len(expected)

    assert INTERFACE_KEYS <= set(result)
    assert result["rows"] == corpus.table.num_rows
    assert result["k"] == 8 and result["buckets"] == 3
    assert result["duplicates"] == duplicates.num_rows
    assert result["exact_duplicates"] == len(corpus.exact)
    assert result["groups"] == len(set(column(duplicates, "duplicate_of")))
    assert result["removed_fraction"] == pytest.approx(duplicates.num_rows / corpus.table.num_rows)
    assert result["removed_at_eps"]["0.03"] == result["near_duplicates"]
    assert len(set(column(duplicates, ID))) == duplicates.num_rows
    assert min(column(duplicates, SIMILARITY)) >= 1 - SMALL_EDIT_EPS - 0.05
    assert not os.listdir(os.path.join(lake, ".embedlake_work"))  # scratch files removed


def test_cli_dedup_default_eps(ray_session, lake, corpus, capsys):
    assert main(["dedup", lake, "--table", "docs", "--keep", "min-id", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert INTERFACE_KEYS <= set(result)
    assert result["eps"] == 0.01 and result["keep"] == "min-id"
    duplicates = read_duplicates(lake)
    must = {**corpus.exact, **{p: o for p, o in corpus.planted.items() if p.endswith("~case")}}
    assert check_found_and_nothing_unrelated(corpus, duplicates, must) == len(must)
    kept = set(column(duplicates, "duplicate_of"))
    assert all(
        keeper < dup
        for keeper, dup in zip(column(duplicates, "duplicate_of"), column(duplicates, ID), strict=True)
    )
    assert not kept & set(column(duplicates, ID))


def test_cli_minhash_finds_planted_edits(ray_session, lake, corpus, capsys):
    assert main(["dedup", lake, "--table", "docs", "--method", "minhash", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert INTERFACE_KEYS <= set(result) and result["method"] == "minhash"
    expected = {**corpus.planted, **corpus.exact}
    assert check_found_and_nothing_unrelated(corpus, read_duplicates(lake), expected) == len(expected)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--table", "nope"], "no table 'nope' in "),
        (["--table", "docs", "--column", "sparse"], "has no column 'sparse'"),
        (
            ["--table", "docs", "--keep", "longest", "--text-column", "body"],
            "has no column 'body' (--keep longest",
        ),
        (["--table", "docs", "--eps", "-1"], "eps must be in [0, 2)"),
    ],
)
def test_cli_errors_are_one_line(lake, capsys, args, message):
    assert main(["dedup", lake, *args, "--json"]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
