"""Every command against a table of hostile and careless inputs (README: "What bad input gets").

Each case is a command line, the exit status it must get (2 usage, 1 runtime) and what its one
`embedlake: error:` line must say; the workspace (lakes, a database with tables, a table outside it, config
files) must be byte-for-byte unchanged after every failing case. The cases fail before Ray would start, so the
table costs seconds; the rows that must be quarantined rather than fail the run go through one real run on the
session's Ray at the end.
"""

from __future__ import annotations

import json

import lance
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.bad_input import run_cli, snapshot, write_lance, write_shard
from tests.search_tables import make_table

TEXTS = ["a fast compression library", "a web framework", "a yaml parser", "an http client", "a database driver",
         "a plotting library"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The workspace: good and bad lakes, a database with a table and a foreign `x_runs`, a table outside it."""
    root = tmp_path_factory.mktemp("hostile")
    ids = [f"d{i}" for i in range(len(TEXTS))]
    (root / "lake").mkdir()
    write_shard(root / "lake" / "a.parquet", ids, TEXTS, lang=["en"] * len(ids))
    (root / "lake_bad").mkdir()
    write_shard(root / "lake_bad" / "a.parquet", ids, TEXTS)
    (root / "lake_bad" / "b.parquet").write_bytes(b"PAR1 not parquet at all PAR1")
    (root / "lake_nocol").mkdir()
    pq.write_table(pa.table({"id": ids, "body": TEXTS}), root / "lake_nocol" / "a.parquet")
    (root / "lake_later_nocol").mkdir()
    write_shard(root / "lake_later_nocol" / "a.parquet", ids, TEXTS)
    pq.write_table(pa.table({"id": ["z"], "body": ["x"]}), root / "lake_later_nocol" / "b.parquet")
    (root / "no_parquet").mkdir()
    (root / "no_parquet" / "notes.csv").write_text("id,text\n1,x\n")
    make_table(str(root / "db"), n=30)  # a BGE-M3-shaped table `docs`: minilm writes other columns
    write_lance(root / "db" / "x_runs.lance")
    write_lance(root / "victim.lance")
    (root / "a_file").write_text("not a database")
    pq.write_table(pa.table({"query_id": ["q1", "q2"], "text": ["compression", "web"]}), root / "q.parquet")
    pq.write_table(pa.table({"query_id": ["q1"], "words": ["compression"]}), root / "q_notext.parquet")
    pq.write_table(pa.table({"query_id": ["q1"], "doc_id": ["doc00001"], "relevance": [1]}), root / "r.parquet")
    pq.write_table(pa.table({"query_id": ["q1"], "doc_id": ["doc00001"], "relevance": ["high"]}),
                   root / "r_word.parquet")
    pq.write_table(pa.table({"query_id": ["q1"], "doc_id": ["doc00001"], "relevance": [float("nan")]}),
                   root / "r_nan.parquet")
    pq.write_table(pa.table({"query_id": ["zz"], "doc_id": ["doc00001"], "relevance": [1]}), root / "r_none.parquet")
    (root / "broken.yaml").write_text("table: [docs\n")
    (root / "list.yaml").write_text("- table\n")
    (root / "unknown.yaml").write_text("tabel: docs\n")
    (root / "bad_value.yaml").write_text("actors: 0\n")
    pq.write_table(pa.table({"a": ["x"], "p": ["y"]}), root / "pairs.parquet")
    return root


E, S, EV, IX, CL, DD, TR = ("embed", "{lake}", "{db}"), ("search", "{db}"), ("evaluate", "{db}"), ("index", "{db}"), \
    ("cluster", "{db}"), ("dedup", "{db}"), ("train", "{root}/pairs.parquet", "{root}/model_out")
Q = ("--queries", "{root}/q.parquet", "--qrels", "{root}/r.parquet")
TRAIN = ("--anchor-column", "a", "--positive-column", "p")

# (category, command line, exit status, what the one line says)
CASES = [
    # names: a table is a folder inside OUTPUT, never a path
    ("names", (*E, "--table", "../victim", "--overwrite"), 2, "invalid table name '../victim'"),
    ("names", (*E, "--table", "/tmp/abs"), 2, "invalid table name"),
    ("names", (*E, "--table", "docs;rm -rf ~"), 2, "invalid table name"),
    ("names", (*E, "--table", ""), 2, "invalid table name ''"),
    ("names", (*E, "--table", "x" * 200), 2, "invalid table name"),
    ("names", (*S, "--table", "../victim", "--query", "x"), 2, "invalid table name"),
    ("names", (*EV, "--table", "a/b", *Q), 2, "invalid table name"),
    ("names", (*IX, "--table", ".."), 2, "invalid table name '..'"),
    ("names", (*CL, "--table", "it's", "--k", "2"), 2, "invalid table name"),
    ("names", (*DD, "--table", "a b"), 2, "invalid table name"),
    # paths: INPUT, OUTPUT, the database
    ("paths", ("embed", "{root}/nothing", "{db}"), 1, "does not exist"),
    ("paths", ("embed", "{root}/no_parquet", "{db}"), 1, "holds no Parquet files"),
    ("paths", ("embed", "{root}/no_parquet/*", "{db}"), 1, "holds no Parquet files"),
    ("paths", ("embed", "{lake}", "{root}/a_file"), 2, "is a file, not a database folder"),
    ("paths", ("embed", "{lake}", "/proc/embedlake"), 1, "is not a writable folder"),
    ("paths", ("search", "{root}/no_db", "--query", "x"), 1, "no table 'docs' in"),
    ("paths", ("index", "{root}/no_db"), 1, "no table 'docs' in"),
    ("paths", ("cluster", "{root}/no_db", "--table", "docs", "--k", "2"), 1, "no table 'docs' in"),
    ("paths", ("dedup", "{root}/no_db", "--table", "docs"), 1, "no table 'docs' in"),
    ("paths", ("evaluate", "{db}", "--queries", "{root}/nothing.parquet", "--qrels", "{root}/r.parquet"), 1,
     "cannot read"),
    ("paths", (*TR[:1], "{root}/nothing", "{root}/model_out", *TRAIN), 1, "does not exist"),
    # options: values out of range or malformed, before Ray or a table
    ("options", (*E, "--max-length", "-5"), 2, "--max-length must be a positive integer, got -5"),
    ("options", (*E, "--actors", "0"), 2, "--actors must be a positive integer, got 0"),
    ("options", (*E, "--actors", "-1"), 2, "--actors must be a positive integer, got -1"),
    ("options", (*E, "--rows-per-batch", "abc"), 2, "argument --rows-per-batch: invalid int value"),
    ("options", (*E, "--dims", "0"), 2, "--dims must be positive integers"),
    ("options", (*E, "--dims", "9999"), 1, "nested sizes [9999] must be between 1"),
    ("options", (*E, "--outputs", "sparse"), 2, "--outputs sparse applies to BGE-M3 models"),
    ("options", (*E, "--precision", "fp8"), 2, "invalid choice: 'fp8'"),
    ("options", (*E, "--object-store-memory", "12"), 2, "too small for Ray"),
    ("options", (*E, "--model", ""), 2, "--model is empty"),
    ("options", (*E, "--bogus"), 2, "unrecognized arguments: --bogus"),
    ("options", ("embed",), 2, "the following arguments are required: input, output"),
    ("options", ("nonsense",), 2, "invalid choice: 'nonsense'"),
    ("options", (*S, "--query", "x", "--k", "0"), 2, "--k must be at least 1, got 0"),
    ("options", (*S, "--query", "x", "--k", "-3"), 2, "--k must be at least 1"),
    ("options", (*S, "--query", "x", "--funnel-shortlist", "0"), 2, "--funnel-shortlist must be at least 1"),
    ("options", (*S, "--query", " \t "), 2, "--query is empty"),
    ("options", (*S, "--query", "\u200b\u2060"), 2, "--query is empty"),
    ("options", (*S, "--query", "x", "--mode", "telepathy"), 2, "invalid choice: 'telepathy'"),
    ("options", (*EV, *Q, "--k", "0"), 2, "--k must be an integer at least 1, got 0"),
    ("options", (*EV, *Q, "--limit", "0"), 2, "--limit must be a positive integer, got 0"),
    ("options", (*IX, "--sample", "0"), 2, "--sample must be an integer at least 1"),
    ("options", (*IX, "--min-rows", "-1"), 2, "--min-rows must be an integer at least 0"),
    ("options", (*CL, "--table", "docs", "--k", "0"), 2, "--k must be a positive integer, got 0"),
    ("options", (*CL, "--table", "docs", "--k", "2", "--nredo", "0"), 2, "--nredo must be a positive integer"),
    ("options", (*DD, "--table", "docs", "--eps", "-1"), 2, "--eps must be a number at least 0.0"),
    ("options", (*DD, "--table", "docs", "--eps", "nan"), 2, "--eps must be a number"),
    ("options", (*DD, "--table", "docs", "--k", "0"), 2, "--k must be a positive integer, got 0"),
    ("options", (*DD, "--table", "docs", "--ngram", "0"), 2, "--ngram must be a positive integer"),
    ("options", (*TR, *TRAIN, "--epochs", "0"), 2, "--epochs must be at least 1"),
    ("options", (*TR, *TRAIN, "--holdout", "1.5"), 2, "--holdout must be in [0, 1)"),
    # columns: kept columns that clash, columns the input lacks
    ("columns", (*E, "--keep-columns", "id"), 2, "--keep-columns 'id': the table writes its own column"),
    ("columns", (*E, "--keep-columns", "lang,dense_64"), 2, "--keep-columns 'dense_64'"),
    ("columns", (*E, "--keep-columns", "model"), 2, "--keep-columns 'model'"),
    ("columns", (*E, "--keep-columns", "lang,lang"), 2, "--keep-columns names 'lang' more than once"),
    ("columns", (*E, "--keep-columns", "nope"), 1, "has no column 'nope'"),
    ("columns", (*E, "--text-column", "body"), 1, "has no column 'body'"),
    ("columns", (*E, "--id-column", " "), 2, "--id-column is empty"),
    ("columns", ("embed", "{root}/lake_nocol", "{db}"), 1, "has no column 'text'"),
    ("columns", ("embed", "{root}/lake_later_nocol", "{db}", "--table", "fresh"), 1,
     "cannot read shard {root}/lake_later_nocol/b.parquet (ValueError: shard"),
    ("columns", (*CL, "--table", "docs", "--k", "2", "--column", "dense_7"), 1, "has no column 'dense_7'"),
    ("columns", (*EV, "--queries", "{root}/q_notext.parquet", "--qrels", "{root}/r.parquet"), 1,
     "has no column 'text'"),
    # files: unreadable shards, tables that clash, config files
    ("files", ("embed", "{root}/lake_bad", "{db}", "--table", "fresh"), 1,
     "cannot read shard {root}/lake_bad/b.parquet"),
    ("files", ("embed", "{root}/lake_bad", "{db}", "--table", "docs", "--overwrite"), 1, "cannot read shard"),
    ("files", (*E, "--table", "docs"), 1, "table docs at {db} exists with other columns"),
    ("files", (*E, "--table", "x"), 1, "table x_runs at {db} exists with other columns"),
    ("files", (*E, "--table", "x", "--overwrite"), 1, "not the run log of table 'x'"),
    ("files", (*E, "--config", "{root}/missing.yaml"), 2, "config {root}/missing.yaml: No such file or directory"),
    ("files", (*E, "--config", "{root}/broken.yaml"), 2, "is not valid YAML (line 2"),
    ("files", (*E, "--config", "{root}/list.yaml"), 2, "must be a YAML mapping"),
    ("files", (*E, "--config", "{root}/unknown.yaml"), 2, "options that 'embed' does not take: tabel"),
    ("files", (*E, "--config", "{root}/bad_value.yaml"), 2, "--actors must be a positive integer, got 0"),
    ("files", (*S, "--query", "x", "--config", "{root}/broken.yaml"), 2, "is not valid YAML"),
    # values: labels evaluate cannot use
    ("values", (*EV, "--queries", "{root}/q.parquet", "--qrels", "{root}/r_word.parquet"), 1,
     "relevance must be whole numbers (0 = not relevant), row 0 has 'high'"),
    ("values", (*EV, "--queries", "{root}/q.parquet", "--qrels", "{root}/r_nan.parquet"), 1, "row 0 has nan"),
    ("values", (*EV, "--queries", "{root}/q.parquet", "--qrels", "{root}/r_none.parquet", "--json"), 1,
     "match none of the queries"),
    ("values", (*S, "--query", "x", "--weights", "a,b"), 2, "weights"),
]


@pytest.mark.parametrize(("category", "argv", "code", "says"), CASES,
                         ids=[f"{c[0]}-{' '.join(c[1][:1] + c[1][3:])[:60]}" for c in CASES])
def test_hostile_input_gets_one_line_and_changes_nothing(ws, category, argv, code, says):
    format_args = {"root": ws, "lake": ws / "lake", "db": ws / "db"}
    before = snapshot(ws)
    outcome = run_cli(*[part.format(**format_args) for part in argv])
    line = outcome.one_line_error(code)
    assert says.format(**format_args) in line, line
    assert "NaN" not in outcome.out
    assert snapshot(ws) == before, f"{category}: a failed command changed the workspace"
    assert not (ws / "no_db").exists()


@pytest.mark.ray
def test_hostile_rows_are_quarantined_with_their_reason(ray_session, tmp_path):
    """Values the run cannot embed go to <T>_quarantine with their reason; the run succeeds and accounts for
    every row; dictionary-encoded text is text."""
    lake, db = tmp_path / "lake", str(tmp_path / "db")
    lake.mkdir()
    rows = [  # (id, text as bytes, reason or None)
        (b"ok-1", b"a plain good row", None),
        (b"ok-2", "caf\u00e9 \u2014 unicode is fine".encode(), None),
        (None, b"no id", "null or empty id"),
        (b"", b"empty id", "null or empty id"),
        (b"\xff\xfebad-id", b"an id that is not UTF-8", "id is not valid UTF-8"),
        (b"nul-text", None, "null text"),
        (b"blank", b"   \n\t ", "empty text"),
        (b"zero-width", "\u200b\u200c\u200d\ufeff".encode(), "empty text"),
        (b"controls", b"\x00\x01\x1f", "empty text"),
        (b"bad-utf8", b"\xc3\x28 broken", "text is not valid UTF-8"),
        (b"ok-1", b"a repeat of an id", "duplicate id"),
    ]
    pq.write_table(pa.table({"id": pa.array([r[0] for r in rows], pa.binary()),
                             "text": pa.array([r[1] for r in rows], pa.binary())}), lake / "a.parquet")
    categorical = pa.array(["red apple", "green pear", "red apple"]).dictionary_encode()
    pq.write_table(pa.table({"id": pa.array([b"c1", b"c2", b"c3"], pa.binary()), "text": categorical}),
                   lake / "b.parquet")
    (lake / "c.parquet").write_bytes(b"PAR1 garbage PAR1")
    outcome = run_cli("embed", str(lake), db, "--skip-bad-files", "--json", "--no-progress", "--rows-per-batch", "8")
    assert outcome.code == 0, outcome.err[-3000:]
    summary = json.loads(outcome.out.strip().splitlines()[-1])
    expected_bad = [r for r in rows if r[2]]
    assert summary["rows_in"] == len(rows) + 3
    assert summary["rows_written"] == len(rows) - len(expected_bad) + 3
    assert summary["rows_quarantined"] == len(expected_bad)
    assert summary["files_quarantined"] == 1
    quarantine = lance.dataset(f"{db}/docs_quarantine.lance").to_table().to_pylist()
    reasons = {row["source"]: row["reason"] for row in quarantine}
    for position, (_, _, reason) in enumerate(rows):
        source = f"{lake / 'a.parquet'}#{position}"
        assert reasons.get(source) == reason or (reason is None and source not in reasons), (source, reasons)
    assert reasons[str(lake / "c.parquet")].startswith("unreadable shard")
    table = lance.dataset(f"{db}/docs.lance").to_table(columns=["id"]).column("id").to_pylist()
    assert sorted(table) == ["c1", "c2", "c3", "ok-1", "ok-2"]
