"""The incremental decision on one hash partition, without Ray: duplicates, unchanged rows, deletes."""

from __future__ import annotations

import pyarrow as pa

from operators.exchange import (
    CURRENT_COL,
    FILE_COL,
    INPUT,
    ORDER_COL,
    REASON_COL,
    ROW_BITS,
    ROWS_COL,
    SIDE_COL,
    STATUS_COL,
    TABLE,
    TEXT_COL,
    Status,
    conform,
    decided_row_schema,
    key_row_schema,
)
from operators.incremental import Decision, decide
from operators.schema import ID, TEXT_HASH

KEYS = key_row_schema([])
DECIDED = decided_row_schema([])


def inputs(rows: list[tuple[str | None, str, int, int]], reasons: list[str | None] | None = None) -> pa.Table:
    """(id, hash, file, row) input rows."""
    n = len(rows)
    return conform({
        ID: pa.array([r[0] for r in rows], pa.string()),
        TEXT_HASH: pa.array([r[1] for r in rows], pa.string()),
        TEXT_COL: pa.array([f"text {r[1]}" for r in rows], pa.string()),
        ORDER_COL: pa.array([(r[2] << ROW_BITS) + r[3] for r in rows], pa.int64()),
        FILE_COL: pa.array([r[2] for r in rows], pa.int32()),
        SIDE_COL: pa.array([INPUT] * n, pa.int8()),
        REASON_COL: pa.array(reasons or [None] * n, pa.string()),
    }, KEYS, n)


def stored(rows: list[tuple[str, str, int | None, bool]]) -> pa.Table:
    """(id, hash, file, written by this model) table-key rows."""
    n = len(rows)
    return conform({
        ID: pa.array([r[0] for r in rows], pa.string()),
        TEXT_HASH: pa.array([r[1] for r in rows], pa.string()),
        FILE_COL: pa.array([r[2] for r in rows], pa.int32()),
        SIDE_COL: pa.array([TABLE] * n, pa.int8()),
        CURRENT_COL: pa.array([r[3] for r in rows], pa.bool_()),
    }, KEYS, n)


def outcome(result: pa.Table) -> dict:
    rows = result.to_pylist()
    per_id = {(r[ID], r[ORDER_COL]): (r[STATUS_COL], r[REASON_COL]) for r in rows if r[ID] is not None}
    unchanged = sum(r[ROWS_COL] for r in rows if r[STATUS_COL] == Status.UNCHANGED)
    return {"rows": per_id, "unchanged": unchanged}


def test_unchanged_changed_new_other_model_and_moved_rows():
    rows = pa.concat_tables([
        inputs([("same", "h1", 0, 0), ("edited", "h2-new", 0, 1), ("new", "h3", 0, 2), ("old-model", "h4", 0, 3),
                ("moved", "h5", 1, 0)]),
        stored([("same", "h1", 0, True), ("edited", "h2", 0, True), ("old-model", "h4", 0, False),
                ("moved", "h5", 0, True)]),
    ])
    found = outcome(decide(rows, Decision(), DECIDED))
    assert found["unchanged"] == 1
    assert found["rows"] == {
        ("edited", 1): ("embedded", None),
        ("new", 2): ("embedded", None),
        ("old-model", 3): ("embedded", None),
        ("moved", 1 << ROW_BITS): ("embedded", None),  # its source shard must be rewritten
    }


def test_first_row_of_an_id_in_input_order_wins_and_bad_rows_keep_their_reason():
    rows = inputs([("d", "b", 1, 0), ("d", "a", 0, 5), ("d", "c", 2, 0), ("x", "h", 0, 0), (None, "n", 0, 1)],
                  reasons=[None, None, None, "empty text", "null or empty id"])
    found = outcome(decide(rows, Decision(), DECIDED))["rows"]
    assert found[("d", 5)] == ("embedded", None)
    assert found[("d", (1 << ROW_BITS))] == ("quarantined", "duplicate id")
    assert found[("d", (2 << ROW_BITS))] == ("quarantined", "duplicate id")
    assert found[("x", 0)] == ("quarantined", "empty text")
    result = decide(rows, Decision(), DECIDED).to_pylist()
    assert [r[REASON_COL] for r in result if r[ID] is None] == ["null or empty id"]


def test_an_id_held_by_a_skipped_shard_is_a_duplicate_everywhere_else():
    rows = pa.concat_tables([inputs([("k", "h", 3, 0)]), stored([("k", "h-old", 1, True)])])
    assert outcome(decide(rows, Decision(skipped_files=frozenset({1})), DECIDED))["rows"] == {
        ("k", 3 << ROW_BITS): ("quarantined", "duplicate id")}
    # the same stored row from a shard read this run: an update
    assert outcome(decide(rows, Decision(), DECIDED))["rows"] == {("k", 3 << ROW_BITS): ("embedded", None)}


def test_deletes_spare_skipped_shards_and_ids_still_in_the_input():
    rows = pa.concat_tables([
        inputs([("kept", "h", 0, 0), ("bad-now", "h", 0, 1)], reasons=[None, "empty text"]),
        stored([("kept", "h", 0, True), ("bad-now", "h", 0, True), ("left", "h", 0, True),
                ("in-skipped", "h", 2, True), ("vanished", "h", -1, True), ("unknown", "h", None, True),
                ("left", "h", 0, True)]),  # found twice: by id and by shard
    ])
    result = decide(rows, Decision(skipped_files=frozenset({2}), sync_deletes=True), DECIDED).to_pylist()
    assert sorted(r[ID] for r in result if r[STATUS_COL] == Status.DELETED) == ["left", "vanished"]
    nothing_skipped = decide(rows, Decision(sync_deletes=True), DECIDED).to_pylist()
    assert sorted(r[ID] for r in nothing_skipped if r[STATUS_COL] == Status.DELETED) == [
        "in-skipped", "left", "unknown", "vanished"]
    assert not [r for r in decide(rows, Decision(), DECIDED).to_pylist() if r[STATUS_COL] == Status.DELETED]


def test_writer_counts_and_flags_shards_whose_rows_hit_encoder_errors(tmp_path):
    """A write batch (no Ray): embedded rows upserted with their shard, quarantine sources rebuilt from `_order`,
    deleted ids removed, and shards with encoder errors flagged so the manifest leaves them out."""
    from operators.exchange import encoded_row_schema
    from operators.schema import QUARANTINE_SCHEMA, SOURCE, SOURCE_FILE, embeddings_schema
    from operators.sinks.lance_sink import ensure_table
    from operators.tables import Lake
    from pipelines.embed_writer import Tables, write_batch

    vector = pa.field("dense", pa.list_(pa.float32(), 2))
    lake = Lake(str(tmp_path))
    tables = Tables(main=lake.table("docs"), quarantine=lake.table("docs_quarantine"),
                    schema=embeddings_schema([vector]))
    ensure_table(tables.main, tables.schema, primary_key=ID)
    ensure_table(tables.quarantine, QUARANTINE_SCHEMA, primary_key=SOURCE)
    files = pa.array(["/lake/a.parquet", "/lake/b.parquet"])
    rows = [("x", Status.EMBEDDED, None, (0 << ROW_BITS) + 4, [1.0, 0.0]),
            ("y", Status.QUARANTINED, "encoder error: boom", (1 << ROW_BITS) + 7, None),
            ("z", Status.QUARANTINED, "empty text", (0 << ROW_BITS) + 9, None)]
    batch = conform({
        ID: pa.array([r[0] for r in rows]), STATUS_COL: pa.array([r[1].value for r in rows]),
        REASON_COL: pa.array([r[2] for r in rows], pa.string()), ORDER_COL: pa.array([r[3] for r in rows], pa.int64()),
        "dense": pa.array([r[4] for r in rows], vector.type), ROWS_COL: pa.array([1, 1, 1], pa.int64()),
        TEXT_HASH: pa.array(["h", None, None]), "model": pa.array(["m", None, None]),
    }, encoded_row_schema([vector], []), 3)
    counts = write_batch(batch, tables, "run-1", files)
    assert (counts.rows_written, counts.rows_quarantined, counts.files_to_retry) == (1, 2, {1})
    stored = tables.main.dataset().to_table().to_pylist()
    assert [(r[ID], r[SOURCE_FILE]) for r in stored] == [("x", "/lake/a.parquet")]
    sources = sorted(r[SOURCE] for r in tables.quarantine.dataset().to_table().to_pylist())
    assert sources == ["/lake/a.parquet#9", "/lake/b.parquet#7"]
    gone = conform({ID: pa.array(["x"]), STATUS_COL: pa.array([Status.DELETED.value]),
                    ROWS_COL: pa.array([0], pa.int64())}, encoded_row_schema([vector], []), 1)
    assert write_batch(gone, tables, "run-2", files).rows_deleted == 1
    assert tables.main.dataset().count_rows() == 0


def test_passage_table_keys_are_documents_at_their_first_passage(tmp_path):
    """A passage table's keys (TableKeys(documents=True), no Ray): one key row per document, its id the document's,
    found by document id, by shard and by fragment."""
    from operators.exchange import CURRENT_COL, FILE_COL, key_row_schema
    from operators.incremental import TableKeys
    from operators.schema import MODEL, SOURCE_FILE, embeddings_schema, passage_fields, passage_id
    from operators.sinks.lance_sink import ensure_table, upsert
    from operators.tables import Lake

    vector = pa.field("dense", pa.list_(pa.float32(), 2))
    schema = embeddings_schema([vector], [], passage_fields())
    target = Lake(str(tmp_path)).table("docs")
    ensure_table(target, schema, primary_key=ID)
    docs = {"a": 3, "b#x": 1}
    rows = [{ID: passage_id(doc, n), "doc_id": doc, "chunk": n, "char_start": n, "char_end": n + 1,
             TEXT_HASH: f"hash-{doc}", MODEL: "m", SOURCE_FILE: "/lake/a.parquet", "dense": [1.0, 0.0]}
            for doc, count in docs.items() for n in range(count)]
    upsert(pa.Table.from_pylist(rows, schema=schema), target, schema, ID)
    keys = TableKeys(target, target.dataset().version, "m", pa.array(["/lake/a.parquet"]), key_row_schema([]),
                     documents=True)

    def found(table: pa.Table) -> list[tuple]:
        return sorted(zip(table.column(ID).to_pylist(), table.column(TEXT_HASH).to_pylist(),
                          table.column(FILE_COL).to_pylist(), table.column(CURRENT_COL).to_pylist(), strict=True))

    expected = [("a", "hash-a", 0, True), ("b#x", "hash-b#x", 0, True)]
    assert found(keys.by_ids(pa.array(["a", "b#x", "a#0", "missing"]))) == expected  # document ids, not passages
    assert found(keys.by_file("/lake/a.parquet")) == expected
    fragments = [fragment.fragment_id for fragment in keys.dataset().get_fragments()]
    assert found(pa.concat_tables(list(keys.by_fragments(fragments)))) == expected
