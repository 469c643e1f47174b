"""Issue 20's findings, one test (or more) each: bad input never costs data, and fails as one line.

The tests without Ray fail before Ray would start (the cheap path every bad option takes); the few that
need a run use the session's Ray and inputs of a few rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import lance
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.errors import one_line
from operators.schema import is_blank
from operators.sources import ShardReader, decode_ids, decode_texts, find_shards, row_problems
from operators.storage import is_secret, redact_argv
from operators.tables import Lake, check_table_name
from tests.bad_input import run_cli, snapshot, write_lance, write_shard
from tests.conftest import REPO

TEXTS = ["a fast compression library", "a web framework for python", "a tool that parses yaml",
         "an http client", "a database driver for postgres", "a plotting library"]


@pytest.fixture
def shard(tmp_path) -> str:
    lake = tmp_path / "lake"
    lake.mkdir()
    return write_shard(lake / "a.parquet", [f"d{i}" for i in range(len(TEXTS))], TEXTS)


# -- 1. table names: validated before anything touches storage, for every command ---------------------------
@pytest.mark.parametrize("name", ["../victim", "a/b", "/abs", "..", ".hidden", "it's", 'say "x"', "a b", "",
                                  "tab\tname", "x" * 129, "naïve", "a\\b", "~user"])
def test_invalid_table_names_are_refused(name):
    with pytest.raises(ValueError, match="invalid table name"):
        check_table_name(name)
    with pytest.raises(ValueError, match="invalid table name"):
        Lake("/tmp/nowhere").table(name)


@pytest.mark.parametrize("name", ["docs", "docs_v2", "my-table.2026", "_staging", "X" * 128])
def test_valid_table_names_pass(name):
    assert check_table_name(name) == name


@pytest.mark.parametrize("command", [
    ["embed", "{input}", "{db}", "--overwrite"],
    ["search", "{db}", "--query", "a library"],
    ["evaluate", "{db}", "--queries", "{queries}", "--qrels", "{qrels}"],
    ["index", "{db}"],
    ["cluster", "{db}", "--k", "2"],
    ["dedup", "{db}"],
])
@pytest.mark.parametrize("table", ["../victim", "sub/victim", "it's"])
def test_traversal_in_table_never_reaches_outside_output(tmp_path, shard, command, table):
    """Finding 1: `--table ../victim --overwrite` emptied a table outside OUTPUT; now every command refuses the
    name (exit 2) before it opens, creates or replaces anything."""
    db = tmp_path / "db"
    db.mkdir()
    write_lance(tmp_path / "victim.lance")
    write_lance(db / "sub" / "victim.lance") if "/" in table else None
    queries, qrels = tmp_path / "q.parquet", tmp_path / "r.parquet"
    pq.write_table(pa.table({"query_id": ["q1"], "text": ["fast compression"]}), queries)
    pq.write_table(pa.table({"query_id": ["q1"], "doc_id": ["d0"], "relevance": [1]}), qrels)
    before = snapshot(tmp_path)
    argv = [part.format(input=shard, db=db, queries=queries, qrels=qrels) for part in command]
    line = run_cli(*argv, "--table", table).one_line_error(2)
    assert "invalid table name" in line
    assert snapshot(tmp_path) == before  # nothing created, replaced or emptied, inside OUTPUT or out
    assert lance.dataset(str(tmp_path / "victim.lance")).count_rows() == 20


# -- 3. reserved column names -----------------------------------------------------------------------------------
@pytest.mark.parametrize("column", ["id", "model", "dense", "text_hash", "source_file", "dense_64", "sparse",
                                    "colbert"])
def test_kept_column_named_like_an_output_column_is_one_line(tmp_path, shard, column):
    """Finding 3: `--keep-columns id` (model, dense, text_hash) failed with a multi-KB Lance schema dump."""
    outcome = run_cli("embed", shard, str(tmp_path / "db"), "--keep-columns", column)
    line = outcome.one_line_error(2)
    assert f"--keep-columns '{column}'" in line and "rename the input column" in line
    assert not (tmp_path / "db").exists()


# -- 4. Arrow's string-like types are text -----------------------------------------------------------------------
@pytest.mark.parametrize("column", [
    pa.array(["x", "y", None, "x"]).dictionary_encode(),
    pa.array(["x", "y", None, "x"], pa.large_string()),
    pa.array(["x", "y", None, "x"], pa.string_view()),
    pa.array(["x", "y", None, "x"], pa.string()).cast(pa.dictionary(pa.int8(), pa.large_string())),
])
def test_dictionary_and_view_strings_are_text(column):
    texts, reasons = decode_texts(pa.chunked_array([column]))
    assert texts.to_pylist() == ["x", "y", None, "x"]
    assert reasons.to_pylist() == [None] * 4


def test_categorical_text_column_read_from_parquet_is_embedded_text(tmp_path):
    """Finding 4: a pandas Categorical text column quarantined every row as 'text is not a string'."""
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"id": ["1", "2", "3"], "text": pd.Categorical(["red apple", "green pear", "red apple"])})
    path = tmp_path / "cat.parquet"
    frame.to_parquet(path)
    assert pa.types.is_dictionary(pq.read_schema(path).field("text").type)
    (batch,) = list(ShardReader("id", "text").read(str(path)))
    assert batch.column("_reason").to_pylist() == [None, None, None]
    assert batch.column("_text").to_pylist() == ["red apple", "green pear", "red apple"]


# -- 5. option checks at the edge ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "message"), [
    (["--max-length", "-5"], "--max-length must be a positive integer, got -5"),
    (["--max-length", "0"], "--max-length must be a positive integer, got 0"),
    (["--actors", "-1"], "--actors must be a positive integer, got -1"),
    (["--actors", "0"], "--actors must be a positive integer, got 0"),
    (["--threads-per-actor", "0"], "--threads-per-actor must be a positive integer"),
    (["--rows-per-batch", "-3"], "--rows-per-batch must be a positive integer"),
    (["--rows-per-write", "0"], "--rows-per-write must be a positive integer"),
    (["--max-tokens-per-batch", "0"], "--max-tokens-per-batch must be a positive integer"),
    (["--dims", "128,-1"], "--dims must be positive integers"),
    (["--outputs", "dense,lexical"], "--outputs: 'lexical' not one of dense, sparse, colbert"),
    (["--outputs", "dense,sparse"], "--outputs dense,sparse applies to BGE-M3 models"),
    (["--actors", "two"], "argument --actors: invalid int value: 'two'"),
    (["--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
    (["--object-store-memory", "1KB"], "too small for Ray"),
    (["--no-such-option"], "unrecognized arguments: --no-such-option"),
])
def test_embed_option_values_are_checked_before_anything_runs(tmp_path, shard, options, message):
    """Finding 5: --max-length -5 quarantined every row (exit 0), --actors -1 failed after Ray started with a
    tuple repr, 0 silently meant the default, --outputs with an MRL model was ignored."""
    outcome = run_cli("embed", shard, str(tmp_path / "db"), *options)
    assert message in outcome.one_line_error(2)
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize(("command", "message"), [
    (["search", "{db}", "--query", "x", "--k", "0"], "--k must be at least 1, got 0"),
    (["search", "{db}", "--query", "x", "--shortlist", "0"], "--shortlist must be at least 1, got 0"),
    (["search", "{db}", "--query", "x", "--mode", "sparse", "--column", "dense"], "--column applies to dense"),
    (["search", "{db}", "--query", "   "], "--query is empty"),
    (["search", "{db}", "--query", "\u200b\u200b\ufeff"], "--query is empty"),
    (["index", "{db}", "--sample", "0"], "--sample must be an integer at least 1, got 0"),
    (["index", "{db}", "--k", "-1"], "--k must be an integer at least 1, got -1"),
    (["cluster", "{db}", "--table", "docs", "--k", "0"], "--k must be a positive integer, got 0"),
    (["cluster", "{db}", "--table", "docs", "--k", "3", "--niter", "0"], "--niter must be a positive integer"),
    (["dedup", "{db}", "--table", "docs", "--eps", "-0.1"], "--eps must be a number at least 0.0"),
    (["dedup", "{db}", "--table", "docs", "--threshold", "1.5"], "--threshold must be a number"),
    (["dedup", "{db}", "--table", "docs", "--num-perm", "0"], "--num-perm must be a positive integer"),
])
def test_downstream_option_values_are_usage_errors(tmp_path, command, message):
    """Finding 5 for the other commands (and finding 8: an empty or invisible query returned results)."""
    from tests.search_tables import make_table

    db = tmp_path / "db"
    make_table(str(db), n=20)
    before = snapshot(db)
    line = run_cli(*[part.format(db=db) for part in command]).one_line_error(2)
    assert message in line
    assert snapshot(db) == before


# -- 6. evaluate: valid JSON, one-line errors for bad labels -------------------------------------------------------
@pytest.mark.parametrize(("relevance", "message"), [
    (pa.array(["high", "low"]), "relevance must be whole numbers (0 = not relevant), row 0 has 'high'"),
    (pa.array([1.0, float("nan")]), "row 1 has nan"),
    (pa.array([1, None], pa.int64()), "row 1 has None"),
    (pa.array([2.5, 1.0]), "row 0 has 2.5"),
])
def test_bad_relevance_values_are_one_line(tmp_path, relevance, message):
    queries, qrels = tmp_path / "q.parquet", tmp_path / "r.parquet"
    pq.write_table(pa.table({"query_id": ["q1", "q2"], "text": ["fast compression", "web"]}), queries)
    pq.write_table(pa.table({"query_id": ["q1", "q2"], "doc_id": ["d0", "d1"], "relevance": relevance}), qrels)
    line = run_cli("evaluate", str(tmp_path / "db"), "--queries", str(queries), "--qrels", str(qrels)).one_line_error(1)
    assert message in line


def test_qrels_matching_no_query_is_an_error_not_nan(tmp_path):
    """Finding 6: qrels whose query_ids match no query printed NaN in the --json line and the report."""
    queries, qrels = tmp_path / "q.parquet", tmp_path / "r.parquet"
    pq.write_table(pa.table({"query_id": ["q1"], "text": ["fast compression"]}), queries)
    pq.write_table(pa.table({"query_id": ["other"], "doc_id": ["d0"], "relevance": [1]}), qrels)
    outcome = run_cli("evaluate", str(tmp_path / "db"), "--queries", str(queries), "--qrels", str(qrels), "--json")
    assert "match none of the queries" in outcome.one_line_error(1)
    assert "NaN" not in outcome.out + outcome.err


def test_json_output_never_holds_nan(capsys):
    from pipelines.cli import emit

    emit({"dense": {"ndcg@10": float("nan"), "recall@10": 0.5}, "inf": float("inf")}, as_json=True)
    assert json.loads(capsys.readouterr().out) == {"dense": {"ndcg@10": None, "recall@10": 0.5}, "inf": None}


# -- 7. raw crashes become one line or quarantined rows ----------------------------------------------------------
def test_invalid_utf8_ids_are_quarantined_with_a_reason(tmp_path):
    """Finding 7: an id column with invalid UTF-8 failed the run with "Invalid UTF8 payload", naming nothing."""
    path = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"id": pa.array([b"ok", b"\xff\xfe", None], pa.binary()), "text": ["a", "b", "c"]}), path)
    (batch,) = list(ShardReader("id", "text").read(str(path)))
    assert batch.column("id").to_pylist() == ["ok", None, None]
    assert batch.column("_reason").to_pylist() == [None, "id is not valid UTF-8", "null or empty id"]
    ids, reasons = decode_ids(pa.array([[1], None], pa.list_(pa.int64())))
    assert reasons.to_pylist() == ["id is not a string or number (list<item: int64>)", None]


def test_native_errors_lose_colour_codes_and_rust_paths_and_keep_their_cause():
    """Finding 7: disk full printed 2 KB of flattened Rust traceback with colour codes, and the run log's
    1000-character cut dropped "No space left on device" at its end."""
    raw = ("\x1b[31mLanceError(IO)\x1b[0m: Generic LocalFileSystem error: Unable to write /db/t.lance/data/x.lance, "
           "/home/runner/.cargo/registry/src/index.crates.io/lance-io-0.20.0/src/local.rs:123:45\n" + "  frame\n" * 400
           + "caused by: No space left on device (os error 28)")
    text = one_line(raw, 1000)
    assert "\x1b" not in text and ".rs:" not in text and "\n" not in text
    assert len(text) <= 1000 and text.startswith("LanceError(IO)")
    assert text.endswith("No space left on device (os error 28)")


@pytest.mark.parametrize(("content", "message"), [
    (None, "config {path}: No such file or directory"),
    ("actors: [1, 2\n", "config {path} is not valid YAML (line 2, column 1)"),
    ("- a list\n", "config {path} must be a YAML mapping"),
    ("no_such_option: 1\n", "has options that 'embed' does not take: no_such_option"),
    ("max_length: -1\n", "--max-length must be a positive integer, got -1"),
    (b"\xff\xfe\x00", "config {path} is not valid YAML"),
])
def test_missing_or_broken_config_is_one_line(tmp_path, shard, content, message):
    """Finding 7: a missing or broken --config printed a Python traceback."""
    path = tmp_path / "conf.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    line = run_cli("embed", shard, str(tmp_path / "db"), "--config", str(path)).one_line_error(2)
    assert message.format(path=path) in line


def test_output_that_is_a_file_or_unwritable_is_one_line(tmp_path, shard):
    """Finding 7: an OUTPUT that is a file or under /proc failed with a raw LanceError(IO) and a Rust path."""
    a_file = tmp_path / "out.txt"
    a_file.write_text("not a database")
    assert "is a file, not a database folder" in run_cli("embed", shard, str(a_file)).one_line_error(2)
    assert a_file.read_text() == "not a database"
    line = run_cli("embed", shard, "/proc/embedlake-db").one_line_error(1)
    assert "OUTPUT /proc/embedlake-db is not a writable folder" in line


def test_a_table_named_like_a_companion_is_refused_before_anything_is_written(tmp_path, shard):
    """Finding 7: a table `x_runs` existing before `--table x` failed after creating x.lance and
    x_quarantine.lance, and --overwrite could not fix it."""
    db = tmp_path / "db"
    write_lance(db / "x_runs.lance")
    before = snapshot(db)
    for extra in ([], ["--overwrite"]):
        line = run_cli("embed", shard, str(db), "--table", "x", *extra).one_line_error(1)
        assert "table x_runs" in line and "not the run log of table 'x'" in line
        assert snapshot(db) == before
    assert sorted(os.listdir(db)) == ["x_runs.lance"]


def test_folders_with_glob_characters_are_folders(tmp_path):
    """Finding 7: folder names with [, ] or * were read as globs ("holds no Parquet files")."""
    for name in ("drop[1]", "star*", "q?"):
        folder = tmp_path / name
        folder.mkdir()
        write_shard(folder / "part.parquet", ["1"], ["text"])
        assert [Path(p).name for p in find_shards(str(folder)).files] == ["part.parquet"]


def test_a_glob_skips_what_the_folder_form_skips(tmp_path):
    """Finding 7: a glob that picked up a CSV (or a _SUCCESS marker) failed while the folder form skipped it."""
    write_shard(tmp_path / "part-0.parquet", ["1"], ["text"])
    (tmp_path / "notes.csv").write_text("id,text\n1,x\n")
    (tmp_path / "_SUCCESS").write_text("")
    assert find_shards(f"{tmp_path}/*").files == find_shards(str(tmp_path)).files == [str(tmp_path / "part-0.parquet")]


# -- 8. state that misleads ----------------------------------------------------------------------------------------
def test_run_log_hides_secrets_only():
    """Finding 8: the run log masked --max-tokens-per-batch as *** because the key contains "token"."""
    for name in ("max_tokens_per_batch", "--max-tokens-per-batch", "tokenizer", "keep_columns", "text_column"):
        assert not is_secret(name), name
    for name in ("aws_session_token", "AWS_SECRET_ACCESS_KEY", "--secret-key", "api_key", "apikey", "authToken",
                 "db.password", "azure_storage_sas_token", "connection_string"):
        assert is_secret(name), name
    assert redact_argv(["embed", "--max-tokens-per-batch", "2048", "--api-key", "s3cr3t"]) == [
        "embed", "--max-tokens-per-batch", "2048", "--api-key", "***"]


def test_search_on_a_missing_database_creates_nothing(tmp_path):
    """Finding 8: `search` on a missing database folder created it."""
    missing = tmp_path / "no-such-db"
    line = run_cli("search", str(missing), "--query", "anything").one_line_error(1)
    assert "no table 'docs' in" in line
    assert not missing.exists()


@pytest.mark.parametrize("text", ["\u200b", "\u200b\u200c\u200d", " \u2060\ufeff ", "\u00ad", "\t\n", "\u3000"])
def test_text_of_only_invisible_characters_is_empty(text):
    """Finding 8: text of only zero-width characters was embedded."""
    assert is_blank(text)
    texts, reasons = decode_texts(pa.array([text, f"visible{text}"]))
    assert row_problems(pa.array(["1", "2"]), texts, reasons).to_pylist() == ["empty text", None]


# -- 9. exit codes -------------------------------------------------------------------------------------------------
def test_usage_errors_exit_2_and_runtime_failures_exit_1(tmp_path, shard):
    assert run_cli("embed").one_line_error(2)  # a missing argument: argparse's error as one line
    assert run_cli("no-such-command").one_line_error(2)
    assert "does not exist" in run_cli("embed", str(tmp_path / "nothing"), str(tmp_path / "db")).one_line_error(1)


def test_sigterm_before_ray_exits_130_with_one_line(tmp_path):
    """Finding 9: SIGTERM died with Ray's C++ stack dump and no `embedlake:` line (this half: the CLI's own
    handler, before any Ray; test_signals_after_ray_started covers a running embed)."""
    script = ("import sys, time\nfrom pipelines import cli\nfrom pipelines.commands import embed\n"
              "embed.run = lambda args: time.sleep(60)\nsys.exit(cli.main(['embed', 'in', 'out']))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("embedlake: interrupted (SIGTERM)")


# -- 10. docs/cli.md is the parsers' own help ------------------------------------------------------------------------
def test_no_reference_to_docs_outside_the_repository():
    """Finding 10: README and --help cited an interface document that a clone does not have. Every Markdown
    document they name must be a file of the repository."""
    import re

    from pipelines.cli_reference import render

    # README is read from the repository's root, docs/cli.md (the rendered --help) from docs/
    for text, folder in (((REPO / "README.md").read_text(), REPO), (render(), REPO / "docs")):
        cited = set(re.findall(r"[\w./-]+\.md\b", text))
        assert cited, "no document cited: the pattern no longer finds them"
        missing = sorted(path for path in cited if not ((folder / path).is_file() or (REPO / path).is_file()))
        assert not missing, missing


# -- runs on the session's Ray: 2, 3, 8 (one table through three runs) and 9 (a signal after Ray started) ----------
@pytest.mark.ray
def test_runs_keep_user_columns_clear_fixed_rows_record_precision_and_overwrite_only_good_input(ray_session,
                                                                                                tmp_path):
    from operators.table_meta import read_meta

    lake, db = tmp_path / "lake", str(tmp_path / "db")
    lake.mkdir()
    ids = [f"d{i}" for i in range(len(TEXTS))]
    texts = [*TEXTS[:-1], "\u200b\u200b"]  # the last text is only zero-width spaces (finding 8)
    user = {"_text": ["the same user value"] * len(ids), "_order": list(range(100, 100 + len(ids)))}
    write_shard(lake / "a.parquet", ids, texts, **user)
    argv = ["embed", str(lake), db, "--keep-columns", "_text,_order", "--json", "--no-progress",
            "--rows-per-batch", "8"]

    first = run_cli(*argv)
    assert first.code == 0, first.err[-3000:]
    summary = json.loads(first.out.strip().splitlines()[-1])
    assert (summary["rows_written"], summary["rows_quarantined"]) == (5, 1)
    rows = {row["id"]: row for row in lance.dataset(f"{db}/docs.lance").to_table().to_pylist()}
    # Finding 3: the user's `_text` and `_order` are kept as they are, and the text column is what was embedded.
    assert [rows[i]["_text"] for i in ids[:5]] == user["_text"][:5]
    assert [rows[i]["_order"] for i in ids[:5]] == user["_order"][:5]
    assert rows["d0"]["dense"] != rows["d1"]["dense"]
    quarantine = lance.dataset(f"{db}/docs_quarantine.lance").to_table().to_pylist()
    assert [(row["id"], row["reason"]) for row in quarantine] == [("d5", "empty text")]

    # Finding 8: the row fixed at its source leaves the quarantine; --precision is recorded in the metadata.
    write_shard(lake / "a.parquet", ids, [*TEXTS[:-1], "a plotting library, fixed"], **user)
    second = run_cli(*argv, "--precision", "bf16")
    assert second.code == 0, second.err[-3000:]
    assert lance.dataset(f"{db}/docs_quarantine.lance").count_rows() == 0
    table = lance.dataset(f"{db}/docs.lance")
    assert table.count_rows() == 6
    meta = read_meta(table.schema)
    assert meta.precision == "bf16" and meta.model_id.endswith(":precision=bf16")
    assert set(table.to_table(columns=["model"]).column("model").to_pylist()) == {meta.model_id}

    # Finding 2: --overwrite with a bad shard in the input fails before the table is replaced.
    (lake / "b.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    version, before = table.version, snapshot(tmp_path / "db" / "docs.lance")
    line = run_cli(*argv, "--overwrite").one_line_error(1)
    assert "cannot read shard" in line and "b.parquet" in line
    assert lance.dataset(f"{db}/docs.lance").version == version
    assert snapshot(tmp_path / "db" / "docs.lance") == before
    assert lance.dataset(f"{db}/docs.lance").count_rows() == 6


@pytest.mark.ray
def test_sigterm_after_ray_started_exits_130_with_one_line(ray_session):
    """Finding 9: SIGTERM during a run died with Ray's C++ stack dump and no `embedlake:` line: `ray.init`
    installs its own SIGTERM handler in every driver, which start_ray now replaces with the CLI's again. The
    child joins the session's Ray (a fresh one costs a minute on a loaded machine)."""
    address = ray_session.get_runtime_context().gcs_address
    script = ("import sys, time\nfrom pipelines import cli\nfrom pipelines.commands import embed\n"
              "from pipelines.ray_runtime import start_ray\n"
              f"def run(args):\n    start_ray({address!r})\n"
              "    print('ray started', file=sys.stderr, flush=True)\n    time.sleep(300)\n"
              "embed.run = run\nsys.exit(cli.main(['embed', 'in', 'out']))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("ray started"):
                proc.terminate()
                break
        lines.append(proc.communicate(timeout=180)[1])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    err = "".join(lines)
    assert proc.returncode == 130, err[-3000:]
    assert "embedlake: interrupted (SIGTERM)" in err, err[-3000:]
    assert "SIGTERM received" not in err and "*** " not in err  # no C++ stack dump
