"""`embedlake train` end to end on the session's Ray: a tiny random model, tens of pairs, a few steps.

The story a user lives: train (two Ray Train workers, in-batch negatives gathered across them, a hard
negative column), watch the loss fall, load MODEL_OUT in sentence-transformers and in `embed`/`search`
with identical vectors and the trained prompts, re-run the finished command for free, kill a run and
resume it from its last epoch checkpoint, and get a one-line error for bad input before any training.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tests.cli_runs import run_cli, sigkill_cli_when

pytestmark = pytest.mark.ray
PROMPTS = {"query": "query: ", "document": "passage: "}
TINY_DIMS = "48,16,8"


@pytest.fixture(scope="module")
def docs(sample_dir) -> pa.Table:
    return ds.dataset(str(sample_dir)).to_table(columns=["id", "title", "text"]).slice(0, 48)


@pytest.fixture(scope="module")
def pairs(docs, tmp_path_factory) -> str:
    """48 (title -> text) pairs with a hard negative (the next document's text), in two shards."""
    folder = tmp_path_factory.mktemp("pairs")
    texts = docs.column("text").to_pylist()
    table = docs.append_column("negative", pa.array(texts[1:] + texts[:1]))
    pq.write_table(table.slice(0, 24), folder / "part-0.parquet")
    pq.write_table(table.slice(24), folder / "part-1.parquet")
    return str(folder)


def train_argv(pairs: str, out: str, model: str, *extra: str) -> list[str]:
    return ["train", pairs, out, "--base", model, "--anchor-column", "title", "--positive-column", "text",
            "--batch-size", "8", "--learning-rate", "1e-3", "--dims", TINY_DIMS, "--holdout", "0.2",
            "--query-prompt", PROMPTS["query"], "--document-prompt", PROMPTS["document"], "--cpus-per-worker", "1",
            "--no-progress", "--json", *extra]


@pytest.fixture(scope="module")
def trained(ray_session, pairs, tiny_model, tmp_path_factory) -> tuple[str, dict, list[str]]:
    out = str(tmp_path_factory.mktemp("trained") / "model")
    argv = train_argv(pairs, out, tiny_model, "--negative-column", "negative", "--workers", "2", "--epochs", "3")
    code, summary, err = run_cli(*argv)
    assert code == 0, err
    return out, summary, argv


def test_two_workers_train_and_the_loss_falls(trained):
    out, summary, _ = trained
    assert summary["workers"] == 2 and summary["device"] == "cpu"
    assert summary["holdout_pairs"] > 0 and summary["train_pairs"] + summary["holdout_pairs"] == 48
    steps_per_epoch = summary["train_pairs"] // 8
    assert summary["steps"] == 3 * steps_per_epoch and summary["resumed_from_step"] == 0
    assert [point["step"] for point in summary["loss"]] == list(range(1, summary["steps"] + 1))
    first, *_, last = summary["loss_by_epoch"]
    assert last < first, summary["loss_by_epoch"]
    assert summary["dims"] == [48, 16, 8] and summary["dim_weights"] == [1.0, 1.0, 1.0]
    for model in ("base", "trained"):
        assert set(summary["evaluation"][model]) == {"dense", "dense_16", "dense_8"}
        assert all(0.0 <= entry["ndcg@10"] <= 1.0 for entry in summary["evaluation"][model].values())
    assert Path(summary["report"]).is_file() and Path(summary["plot"]).stat().st_size > 10_000
    assert not (Path(out) / "checkpoints").exists(), "checkpoints are removed once the model is published"


def test_model_out_loads_in_sentence_transformers_and_our_encoder_identically(trained, docs):
    from sentence_transformers import SentenceTransformer

    from operators.encoders.mrl import MatryoshkaEncoder
    from operators.vectors import as_matrix

    out, _, _ = trained
    reference = SentenceTransformer(out, device="cpu", local_files_only=True)
    assert reference.prompts == PROMPTS
    ours = MatryoshkaEncoder(out, dims=[16, 8])
    texts = docs.column("title").to_pylist()[:12] + docs.column("text").to_pylist()[:4]
    for prompt_name in ("query", "document"):
        expected = reference.encode(texts, prompt_name=prompt_name, normalize_embeddings=True)
        columns = ours.encode(texts, prompt_name=prompt_name).columns
        np.testing.assert_allclose(as_matrix(columns["dense"]), expected, atol=2e-6)
        small = expected[:, :8] / np.linalg.norm(expected[:, :8], axis=1, keepdims=True)
        np.testing.assert_allclose(as_matrix(columns["dense_8"]), small, atol=2e-6)
    as_query = reference.encode(texts[:2], prompt_name="query")
    as_document = reference.encode(texts[:2], prompt_name="document")
    assert not np.allclose(as_query, as_document), "the two prompts must give different vectors"


def test_embed_and_search_encode_with_the_trained_prompts(trained, docs, tmp_path):
    from sentence_transformers import SentenceTransformer

    out, _, _ = trained
    source = tmp_path / "docs"
    source.mkdir()
    pq.write_table(docs.select(["id", "text"]).slice(0, 10), source / "part-0.parquet")
    lake = str(tmp_path / "lake")
    code, summary, err = run_cli("embed", str(source), lake, "--model", out, "--dims", "16,8", "--actors", "1",
                                 "--no-progress", "--json")
    assert code == 0 and summary["rows_written"] == 10, err
    query = docs.column("title")[3].as_py()
    code, hits, err = run_cli("search", lake, "--table", "docs", "--query", query, "--k", "3", "--json")
    assert code == 0, err
    reference = SentenceTransformer(out, device="cpu", local_files_only=True)
    query_vector = reference.encode([query], prompt_name="query", normalize_embeddings=True)[0]
    doc_vectors = reference.encode(docs.column("text").to_pylist()[:10], prompt_name="document",
                                   normalize_embeddings=True)
    scores = doc_vectors @ query_vector
    ids = docs.column("id").to_pylist()[:10]
    assert hits[0]["id"] == ids[int(np.argmax(scores))]
    assert hits[0]["score"] == pytest.approx(float(scores.max()), abs=1e-5)


def test_a_finished_run_is_not_trained_again_and_other_settings_are_refused(trained):
    out, summary, argv = trained
    started = time.time()
    code, again, err = run_cli(*argv)
    assert code == 0, err
    assert again["already_trained"] is True and again["loss"] == summary["loss"]
    assert time.time() - started < 30
    code, _, err = run_cli(*[("5" if value == "3" and argv[i - 1] == "--epochs" else value)
                             for i, value in enumerate(argv)])
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("embedlake: error:") and "epochs" in last and "--overwrite" in last


def checkpoint_taken(out: Path) -> bool:
    return (out / "checkpoints" / "run" / "checkpoint_manager_snapshot.json").is_file() and any(
        (out / "checkpoints" / "run").glob("checkpoint_*"))


def test_sigkilled_run_resumes_from_its_last_epoch_checkpoint(ray_session, pairs, tiny_model, tmp_path):
    out = tmp_path / "model"
    argv = train_argv(pairs, str(out), tiny_model, "--epochs", "8")
    address = ray_session.get_runtime_context().gcs_address
    sigkill_cli_when([*argv, "--address", address], lambda: checkpoint_taken(out), 240, "its first checkpoint")
    assert not (out / "training_report.json").exists(), "killed before it finished"
    time.sleep(3)  # Ray reaps the dead driver's Train controller and workers
    code, summary, err = run_cli(*argv)
    assert code == 0, err
    steps_per_epoch = summary["train_pairs"] // 8
    assert 0 < summary["resumed_from_step"] < summary["steps"] == 8 * steps_per_epoch
    assert summary["resumed_from_step"] % steps_per_epoch == 0, "checkpoints are taken at epoch ends"
    # The loss curve runs through the kill: every step logged once, those before it from the checkpoint.
    assert [point["step"] for point in summary["loss"]] == list(range(1, summary["steps"] + 1))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--anchor-column": "synopsis"},
         "has no column 'synopsis' (the training pairs; columns found: id, title, text, negative)"),
        ({"--positive-column": "id", "--anchor-column": "id"}, "must differ"),
    ],
)
def test_bad_columns_fail_before_training(pairs, tiny_model, tmp_path, change, message):
    argv = train_argv(pairs, str(tmp_path / "model"), tiny_model)
    for option, value in change.items():
        argv[argv.index(option) + 1] = value
    code, _, err = run_cli(*argv)
    assert code == 1 and message in err
    assert err.strip().splitlines()[-1].startswith("embedlake: error:") and "Traceback" not in err
    assert not (tmp_path / "model").exists()


def test_bad_options_are_usage_errors(pairs, tiny_model, tmp_path):
    for option, value, message in (("--batch-size", "9", "split evenly over 2 workers"),
                                   ("--dims", "48,64", "between 1 and the model's dimension 48"),
                                   ("--dims", "16,8", "must include the model's full dimension 48"),
                                   ("--holdout", "1.5", "--holdout must be in [0, 1)")):
        argv = train_argv(pairs, str(tmp_path / "model"), tiny_model, "--workers", "2")
        argv[argv.index(option) + 1] = value
        code, _, err = run_cli(*argv)
        assert code == 2 and message in err, err
    assert not (tmp_path / "model").exists()


def test_empty_anchors_fail_before_training_naming_the_row(ray_session, docs, tiny_model, tmp_path):
    titles = docs.column("title").to_pylist()
    titles[5], titles[9] = "   ", None
    folder = tmp_path / "pairs"
    folder.mkdir()
    pq.write_table(docs.set_column(1, "title", pa.array(titles)), folder / "part-0.parquet")
    code, _, err = run_cli(*train_argv(str(folder), str(tmp_path / "model"), tiny_model))
    assert code == 1, err
    assert "2 pair(s) have an empty or null text, first at" in err and "part-0.parquet#5: anchor ('title')" in err
    assert err.strip().splitlines()[-1].startswith("embedlake: error:") and "Traceback" not in err
    assert not (tmp_path / "model").exists(), "nothing is written before the input is known to be good"


def test_a_folder_that_is_not_a_training_run_is_never_touched(pairs, tiny_model, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    code, _, err = run_cli(*train_argv(pairs, str(precious), tiny_model, "--overwrite"))
    assert code == 1 and "holds no embedlake training run" in err
    assert (precious / "notes.txt").read_text() == "keep me"


def test_train_reads_and_writes_an_object_store(ray_session, s3_server, docs, tiny_model, tmp_path, monkeypatch):
    """Pairs in a bucket, MODEL_OUT in a bucket (Ray Train's checkpoints there too), and the model loads back
    from its s3:// URI as `embed --model s3://...` loads it."""
    from sentence_transformers import SentenceTransformer

    from operators.encoders.loader import resolve_model_path
    from operators.encoders.mrl import MatryoshkaEncoder
    from operators.vectors import as_matrix

    for name in ("AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("EMBEDLAKE_MODEL_CACHE", str(tmp_path / "cache"))
    bucket = s3_server.create_bucket("embedlake-train")
    local = tmp_path / "part-0.parquet"
    pq.write_table(docs.slice(0, 24), local)
    s3_server.client().upload_file(str(local), bucket, "pairs/part-0.parquet")
    out = f"s3://{bucket}/models/tiny"
    code, summary, err = run_cli(*train_argv(f"s3://{bucket}/pairs/", out, tiny_model, "--epochs", "2"))
    assert code == 0, err
    assert summary["report"] == f"{out}/training_report.json" and summary["steps"] == 2 * (summary["train_pairs"] // 8)
    keys = {item["Key"] for item in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert {"models/tiny/modules.json", "models/tiny/model.safetensors", "models/tiny/training_report.png"} <= keys
    assert not any(key.startswith("models/tiny/checkpoints/") for key in keys)
    folder = resolve_model_path(out)
    assert folder.startswith(str(tmp_path / "cache"))
    texts = docs.column("title").to_pylist()[:6]
    expected = SentenceTransformer(folder, device="cpu", local_files_only=True).encode(
        texts, prompt_name="query", normalize_embeddings=True)
    ours = MatryoshkaEncoder(folder).encode(texts, prompt_name="query").columns["dense"]
    np.testing.assert_allclose(as_matrix(ours), expected, atol=2e-6)
