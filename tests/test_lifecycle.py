"""A model upgrade through the real pipeline on the session's Ray, with searches running throughout.

Model A, then B (the same shape with other weights, as a fine-tuned copy would be): the first B run is
SIGKILLed after some commits, the same command finishes it; every search answered meanwhile is A's exact
top-k or B's, never a mix, and B's once the run has ended; `rollback` gives A's answers again, exactly.
Then ten nightly incremental runs, each ending with its own maintenance: versions and bytes stay bounded and a
tagged version survives. tests/test_serving.py covers the other starts (a rebuild for other columns, a rollback
followed by a run, tables written before serving tags) and maintain against no maintain, without Ray.
"""

from __future__ import annotations

import threading

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from operators.schema import MODEL
from operators.search.retriever import Retriever
from operators.tables import Lake
from tests.cli_runs import run_cli, sigkill_cli_when

pytestmark = pytest.mark.ray
QUERIES = ("compression library for large files", "network monitoring tool", "python bindings", "font rendering")
K = 5
ROWS = 60


@pytest.fixture(scope="module")
def models(tmp_path_factory, minilm_path) -> tuple[str, str]:
    from tests.tiny_st_model import build_tiny_st_model

    folder = tmp_path_factory.mktemp("models")
    return (build_tiny_st_model(str(folder / "a"), minilm_path, seed=7),
            build_tiny_st_model(str(folder / "b"), minilm_path, seed=8))


def answers(output: str) -> dict[str, list[tuple[str, float]]]:
    """Each query's top-k from one reader opened afresh at the serving version (as one `evaluate` command, or
    a search service that opens the table once, reads it)."""
    reader = Retriever(output, "docs")
    return {query: [(hit["id"], round(hit["score"], 5)) for hit in reader.search(query, k=K)] for query in QUERIES}


def main_line_models(output: str) -> list[str]:
    try:
        return Lake(output).table("docs").dataset().to_table(columns=[MODEL]).column(MODEL).to_pylist()
    except (ValueError, OSError):
        return []


def test_upgrade_killed_resumed_and_rolled_back_under_searches(ray_session, models, sample_dir, tmp_path):
    model_a, model_b = models
    lake, output = tmp_path / "lake", str(tmp_path / "out")
    lake.mkdir()
    rows = ds.dataset(str(sample_dir)).to_table(columns=["id", "text"]).slice(0, ROWS)
    for shard in range(3):
        pq.write_table(rows.slice(shard * 20, 20), lake / f"part-{shard}.parquet")
    common = ["--actors", "1", "--rows-per-batch", "5", "--rows-per-write", "5", "--no-progress", "--json"]

    code, first, err = run_cli("embed", str(lake), output, "--model", model_a, *common)
    assert code == 0, err[-2000:]
    assert first["published"] and first["start"] == "created"
    answers_a = answers(output)

    # The upgrade to B, killed after some commits: readers keep A throughout.
    argv = ["embed", str(lake), output, "--model", model_b, *common]
    gcs = ray_session.get_runtime_context().gcs_address
    seen = []

    def some_b_committed() -> bool:
        seen.append(answers(output))  # searches all along
        return sum(model != first["model"] for model in main_line_models(output)) >= 20

    sigkill_cli_when([*argv, "--address", gcs], some_b_committed, 600, "20 rows of B committed")
    killed_at = main_line_models(output)
    assert 20 <= sum(m != first["model"] for m in killed_at) < ROWS  # the main line mixes A and B ...
    assert all(answer == answers_a for answer in seen) and answers(output) == answers_a  # ... readers: all A
    latest = Lake(output).table("docs").dataset().version
    code, _, err = run_cli("search", output, "--query", QUERIES[0], "--version", str(latest))
    assert code == 1 and "embedded by another model" in err.strip().splitlines()[-1]
    code, listed, _ = run_cli("versions", output, "--json")
    assert code == 0 and listed["versions"][0]["state"] == "unfinished run"

    # The same command again finishes the upgrade, with searches running all along.
    result: dict = {}

    def finish() -> None:
        result["code"], result["summary"], result["err"] = run_cli(*argv)

    run = threading.Thread(target=finish, daemon=True)
    run.start()
    during = 0
    while run.is_alive():
        seen.append(answers(output))
        during += 1
    run.join()
    assert result["code"] == 0, result["err"][-2000:]
    resumed = result["summary"]
    assert resumed["start"] == "resumed" and resumed["model_change"] and resumed["published"]
    assert resumed["rows_unchanged"] >= 20 and resumed["rows_written"] <= ROWS - 20 and during >= 1
    answers_b = answers(output)
    assert answers_b != answers_a
    for answer in seen:
        for query in QUERIES:
            assert answer[query] in (answers_a[query], answers_b[query]), (query, answer[query])
        assert answer in (answers_a, answers_b)  # one version per reader: never A for one query and B for another
    assert set(main_line_models(output)) == {resumed["model"]}

    # B serving: queries are encoded by B (the table's metadata moved with its vectors); A's model is refused.
    code, _, err = run_cli("search", output, "--query", QUERIES[0], "--model", model_a)
    assert code == 1 and "refusing to score queries of one model against vectors of another" in err

    # Rollback: A's answers exactly, and the versions listing says what serves.
    code, rolled, err = run_cli("rollback", output, "--json")
    assert code == 0, err[-2000:]
    assert rolled["serving_version"] == first["version"] and rolled["previous_version"] == resumed["version"]
    assert answers(output) == answers_a
    code, listed, _ = run_cli("versions", output, "--json")
    states = {entry["version"]: entry["state"] for entry in listed["versions"]}
    assert states[first["version"]] == "serving" and states[resumed["version"]] == "rolled back"
    assert [run["job"] for run in listed["runs"][:2]] == ["rollback", "embed"]


def test_ten_nightly_runs_keep_versions_and_bytes_bounded_and_a_pinned_version(ray_session, models, sample_dir,
                                                                                tmp_path):
    """Ten nightly incremental runs through the pipeline, each ending with its own maintenance (the default): the
    stored versions and bytes stay flat, and a version pinned by a tag is still readable, unchanged, at the end."""
    from operators.maintenance import bytes_on_disk
    from operators.tables import Pin

    model_a, _ = models
    lake, output = tmp_path / "lake", str(tmp_path / "out")
    lake.mkdir()
    rows = ds.dataset(str(sample_dir)).to_table(columns=["id", "text"]).slice(100, 20)
    pq.write_table(rows, lake / "part-0.parquet")
    common = ["--model", model_a, "--actors", "1", "--rows-per-batch", "5", "--rows-per-write", "5", "--no-progress",
              "--json", "--keep-runs", "2"]
    table = Lake(output).table("docs")
    sizes, versions = [], []
    for night in range(10):
        texts = [f"{text} (night {night})" if i < 5 else text for i, text in enumerate(rows.column("text").to_pylist())]
        changed = rows.set_column(1, "text", pa.array(texts))
        pq.write_table(changed, lake / "part-0.parquet")
        pq.write_table(rows.slice(0, 3).set_column(0, "id", pa.array([f"n{night}-{i}" for i in range(3)])),
                       lake / f"drop-{night}.parquet")
        code, summary, err = run_cli("embed", str(lake), output, *common)
        assert code == 0, err[-2000:]
        assert summary["published"] and summary["rows_written"] == (23 if night == 0 else 8)
        if night == 1:
            code, pinned, _ = run_cli("versions", output, "--tag", "golden", "--json")
            assert code == 0
            golden = table.snapshot(Pin(tag="golden")).to_table().sort_by("id")
        sizes.append(bytes_on_disk(Lake(output), "docs"))
        versions.append(len(table.dataset().versions()))
    # Kept: the serving run, the one before it, the pinned version and the latest; every other version is gone.
    assert max(versions[3:]) <= 4, versions
    assert sizes[-1] <= 1.3 * sizes[3], sizes  # the table grows by 3 rows a night; its storage does not pile up
    assert table.snapshot(Pin(tag="golden")).version == pinned["version"]
    assert table.snapshot(Pin(tag="golden")).to_table().sort_by("id").equals(golden)
    code, listed, _ = run_cli("versions", output, "--json")
    assert code == 0 and listed["versions_stored"] == versions[-1]
    assert [run["status"] for run in listed["runs"]] == ["succeeded"] * 10
