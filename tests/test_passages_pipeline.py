"""Passage tables end to end on the session's Ray (embed --chunk-tokens): rows per passage with their spans,
split vectors equal to encoding each passage's text alone, and per-document incremental runs (an edited
document replaces its passages, a shorter one loses its surplus, a deleted one all of them)."""

from __future__ import annotations

import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cli_runs import cli_result, run_cli

pytestmark = pytest.mark.ray

PARAGRAPH = ("Rivers carry water from the mountains to the sea. They shape valleys over millions of years. "
             "Forests cover a third of the land, and many animals live there.")


def embed(*argv: str) -> dict:
    return cli_result("embed", *argv, "--no-progress", "--json", "--rows-per-batch", "8", "--actors", "1")


def rows_of(output: str) -> dict[str, dict]:
    rows = lance.dataset(f"{output}/docs.lance").to_table().to_pylist()
    return {row["id"]: row for row in rows}


def documents() -> pa.Table:
    texts = [
        "\n\n".join([PARAGRAPH] * 4),  # several passages
        "A short description of a compression tool.",  # one passage
        "\n\n".join([PARAGRAPH.replace("Rivers", "Lakes")] * 3),
    ]
    return pa.table({"id": ["long", "short", "lakes#2"], "text": texts})  # an id with the separator in it


def test_split_passages_then_incremental_per_document(ray_session, minilm_path, tmp_path):
    from operators.encoders.base import EncoderSpec
    from operators.encoders.loader import load_encoder
    from operators.vectors import as_matrix

    lake, output = tmp_path / "lake", str(tmp_path / "out")
    lake.mkdir()
    docs = documents()
    pq.write_table(docs, lake / "a.parquet")
    first = embed(str(lake), output, "--chunk-tokens", "24", "--chunk-overlap", "4", "--keep-text")
    rows = rows_of(output)
    texts = dict(zip(docs.column("id").to_pylist(), docs.column("text").to_pylist(), strict=True))
    by_doc: dict[str, list[dict]] = {}
    for row in rows.values():
        by_doc.setdefault(row["doc_id"], []).append(row)
    assert set(by_doc) == set(texts)
    for doc, found in by_doc.items():
        found.sort(key=lambda row: row["chunk"])
        assert [row["chunk"] for row in found] == list(range(len(found)))
        assert [row["id"] for row in found] == [f"{doc}#{n}" for n in range(len(found))]
        assert found[0]["char_start"] == 0 and found[-1]["char_end"] == len(texts[doc])
        for row in found:
            assert row["text"] == texts[doc][row["char_start"]:row["char_end"]]
    assert len(by_doc["short"]) == 1 and len(by_doc["long"]) > 3
    # documents and passages counted apart: rows_in = written + unchanged + quarantined holds for documents
    assert (first["rows_in"], first["rows_written"], first["rows_inserted"]) == (3, 3, len(rows))
    assert first["passages_written"] == len(rows) and first["chunking"]["mode"] == "split"

    # split: each passage's vector is its text encoded alone
    encoder = load_encoder(EncoderSpec(model=minilm_path, device="cpu"))
    ordered = sorted(rows.values(), key=lambda row: row["id"])
    alone = as_matrix(encoder.encode([row["text"] for row in ordered]).columns["dense"])
    np.testing.assert_allclose(np.stack([row["dense"] for row in ordered]), alone, atol=1e-5)

    # search --group-by doc: documents by their best passage, with its span; evaluate scores documents
    hits = cli_result("search", output, "--query", "compression tool", "--group-by", "doc", "--k", "3", "--json")
    assert [hit["id"] for hit in hits][0] == "short" and len({hit["id"] for hit in hits}) == 3
    for hit in hits:
        assert hit["passage"].rsplit("#", 1)[0] == hit["id"]
        assert (hit["char_start"], hit["char_end"]) == (rows[hit["passage"]]["char_start"],
                                                        rows[hit["passage"]]["char_end"])
    pq.write_table(pa.table({"query_id": ["q1", "q2"], "text": ["valleys shaped by rivers", "compression tool"]}),
                   tmp_path / "queries.parquet")
    pq.write_table(pa.table({"query_id": ["q1", "q2"], "doc_id": ["long", "short"], "relevance": [1, 1]}),
                   tmp_path / "qrels.parquet")
    report = cli_result("evaluate", output, "--queries", str(tmp_path / "queries.parquet"), "--qrels",
                        str(tmp_path / "qrels.parquet"), "--k", "2", "--json")
    assert report["dense"]["recall@2"] == 1.0 and report["queries"] == 2

    # edit one document, shorten another: only their passages change; the third is untouched
    long_passages = len(by_doc["long"])
    edited = docs.set_column(1, "text", pa.array([PARAGRAPH, texts["short"] + " Now with more words.",
                                                  texts["lakes#2"]]))
    pq.write_table(edited, lake / "a.parquet")
    second = embed(str(lake), output, "--chunk-tokens", "24", "--chunk-overlap", "4", "--keep-text")
    after = rows_of(output)
    assert (second["rows_in"], second["rows_written"], second["rows_unchanged"]) == (3, 2, 1)
    long_now = sorted((row for row in after.values() if row["doc_id"] == "long"), key=lambda row: row["chunk"])
    assert 1 <= len(long_now) < long_passages and long_now[-1]["char_end"] == len(PARAGRAPH)
    assert second["passages_deleted"] == long_passages - len(long_now)
    assert second["passages_written"] == len(long_now) + 1
    changed_ids = {row["id"] for row in after.values() if row["doc_id"] in ("long", "short")}
    for passage_id, row in after.items():  # the untouched document's rows are the same rows, vectors and all
        if passage_id not in changed_ids:
            assert row == rows[passage_id]

    # a document that leaves the input takes all its passages with it
    pq.write_table(edited.slice(0, 2), lake / "a.parquet")
    third = embed(str(lake), output, "--chunk-tokens", "24", "--chunk-overlap", "4", "--keep-text", "--sync-deletes")
    assert third["rows_deleted"] == 1 and third["passages_deleted"] == len(by_doc["lakes#2"])
    assert not [row for row in rows_of(output).values() if row["doc_id"] == "lakes#2"]

    # other chunking re-embeds every document (the rows' model records how they were chunked)
    late = embed(str(lake), output, "--chunk-tokens", "24", "--chunk-overlap", "4", "--keep-text",
                 "--chunking", "late")
    assert late["rows_written"] == 2 and late["chunking"]["mode"] == "late"


def usage_error(*argv: str) -> str:
    """The one `embedlake: ...` line of a command refused as a usage error (exit status 2)."""
    code, _, err = run_cli(*argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("embedlake: "), (code, err[-3000:])
    return lines[0]


def test_passage_options_are_checked(tmp_path):
    lake = tmp_path / "lake"
    lake.mkdir()
    docs = documents()
    pq.write_table(docs.append_column("doc_id", docs.column("id")), lake / "a.parquet")
    out = str(tmp_path / "out")
    refused = [(("--chunk-tokens", "300"), "--chunk-tokens must be an integer between 1 and 254"),
               (("--chunk-tokens", "0"), "--chunk-tokens must be"),
               (("--chunk-tokens", "8", "--chunk-overlap", "8"), "--chunk-overlap must be"),
               (("--chunk-tokens", "8", "--chunk-overlap", "-1"), "--chunk-overlap must be"),
               (("--chunking", "late"), "add --chunk-tokens"),
               (("--keep-text", "--keep-columns", "text"), "--keep-text"),
               (("--chunk-tokens", "8", "--keep-columns", "doc_id"), "--keep-columns 'doc_id'")]
    for options, message in refused:
        assert message in usage_error("embed", str(lake), out, *options)
    assert not (tmp_path / "out").exists()  # refused before anything is written
