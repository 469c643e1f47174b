"""The dedup job and `embedlake dedup`: exact copies, SemDeDup through Ray (bucketed clusters), MinHash."""

from __future__ import annotations

import os

import lancedb
import pytest

from operators.schema import ID, SIMILARITY
from pipelines.dedup import DedupJob, run_dedup
from tests.cli_runs import cli_error, cli_result
from tests.corpus import check_found_and_nothing_unrelated, column

pytestmark = pytest.mark.ray

INTERFACE_KEYS = {"rows", "duplicates", "groups", "removed_fraction"}
SMALL_EDIT_EPS = 0.03


def read_duplicates(uri: str):
    return lancedb.connect(uri).open_table("docs_duplicates").to_arrow()


def test_semantic_dedup_finds_every_planted_copy(ray_session, sections_lake, sections):
    """k=8 clusters over 3 buckets: pairs are only compared inside a cluster, and still all are found."""
    result = run_dedup(DedupJob(uri=sections_lake, table="docs", eps=SMALL_EDIT_EPS, k=8, rows_per_bucket=100))
    duplicates = read_duplicates(sections_lake)
    expected = {**sections.planted, **sections.exact}
    assert check_found_and_nothing_unrelated(sections, duplicates, expected) == len(expected)

    assert INTERFACE_KEYS <= set(result)
    assert result["rows"] == sections.table.num_rows
    assert result["k"] == 8 and result["buckets"] == 3
    assert result["duplicates"] == duplicates.num_rows
    assert result["exact_duplicates"] == len(sections.exact)
    assert result["groups"] == len(set(column(duplicates, "duplicate_of")))
    assert result["removed_fraction"] == pytest.approx(duplicates.num_rows / sections.table.num_rows)
    assert result["removed_at_eps"]["0.03"] == result["near_duplicates"]
    assert len(set(column(duplicates, ID))) == duplicates.num_rows
    assert min(column(duplicates, SIMILARITY)) >= 1 - SMALL_EDIT_EPS - 0.05
    assert not os.listdir(os.path.join(sections_lake, ".embedlake_work"))  # scratch files removed


def test_cli_dedup_default_eps(ray_session, sections_lake, sections):
    result = cli_result("dedup", sections_lake, "--table", "docs", "--keep", "min-id", "--json")
    assert INTERFACE_KEYS <= set(result)
    assert result["eps"] == 0.01 and result["keep"] == "min-id"
    duplicates = read_duplicates(sections_lake)
    must = {**sections.exact, **{p: o for p, o in sections.planted.items() if p.endswith("~case")}}
    assert check_found_and_nothing_unrelated(sections, duplicates, must) == len(must)
    kept = set(column(duplicates, "duplicate_of"))
    assert all(
        keeper < dup
        for keeper, dup in zip(column(duplicates, "duplicate_of"), column(duplicates, ID), strict=True)
    )
    assert not kept & set(column(duplicates, ID))


def test_cli_minhash_finds_planted_edits(ray_session, sections_lake, sections):
    result = cli_result("dedup", sections_lake, "--table", "docs", "--method", "minhash", "--json")
    assert INTERFACE_KEYS <= set(result) and result["method"] == "minhash"
    expected = {**sections.planted, **sections.exact}
    assert check_found_and_nothing_unrelated(sections, read_duplicates(sections_lake), expected) == len(expected)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--table", "nope"], "no table 'nope' in "),
        (["--table", "docs", "--column", "sparse"], "has no column 'sparse'"),
        (
            ["--table", "docs", "--keep", "longest", "--text-column", "body"],
            "has no column 'body' (--keep longest",
        ),
    ],
)
def test_cli_errors_are_one_line(sections_lake, args, message):
    assert message in cli_error("dedup", sections_lake, *args, "--json", alone=True)


def test_bad_option_values_are_usage_errors(sections_lake):
    message = cli_error("dedup", sections_lake, "--table", "docs", "--eps", "-1", "--json", alone=True, status=2)
    assert "--eps must be a number at least 0.0 and at most 2.0, got -1.0" in message
