"""Shared fixtures: one local Ray per test session, the packaged MiniLM, the sample corpus."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DASHBOARD_ENABLED", "0")

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"


RAY_FIXTURES = ("ray_session", "ray_head")


def pytest_collection_modifyitems(config, items) -> None:
    """A test that starts or joins Ray through a fixture is a `ray` test (`make test-fast` leaves them out),
    whether or not its module says so."""
    for item in items:
        if any(name in RAY_FIXTURES for name in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from operators.encoders.loader import resolve_model_path

    return resolve_model_path("minilm")


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, minilm_path) -> str:
    """A tiny random sentence-transformers model (tests/tiny_st_model.py): training steps in milliseconds."""
    from tests.tiny_st_model import build_tiny_st_model

    return build_tiny_st_model(str(tmp_path_factory.mktemp("tiny-st")), minilm_path)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole run: 2 logical CPUs, what every `embedlake` command starts on CI's 2 cores
    (num_cpus=os.cpu_count()), no dashboard, a small object store. Shut down at the end. The embed plan is one
    encoder actor per logical CPU (pipelines/workers.py): 4 CPUs made every run without --actors start 4
    actors, each a process loading torch and its model, on 2 cores."""
    import ray

    from pipelines.ray_runtime import start_ray, stop_ray

    started = start_ray(address=None, num_cpus=2, object_store_memory=300 * 1024 * 1024)
    yield ray
    if started:
        stop_ray()


@pytest.fixture(scope="module")
def sections(sample_dir, minilm_path):
    """Texts of four Debian sections with planted near-duplicates and copies, MiniLM vectors (tests/corpus.py)."""
    from tests.corpus import build_corpus

    return build_corpus(str(sample_dir), minilm_path)


@pytest.fixture(scope="module")
def sections_lake(tmp_path_factory, sections) -> str:
    """A LanceDB database whose table docs holds `sections`, one per test module (its jobs write beside it)."""
    import lancedb

    uri = str(tmp_path_factory.mktemp("lake"))
    lancedb.connect(uri).create_table("docs", sections.table)
    return uri


@pytest.fixture(scope="session")
def tiny_bge_m3_path(tmp_path_factory) -> str:
    """A random tiny checkpoint in BAAI/bge-m3's folder layout, built offline once per session."""
    from tests.bge_m3_checkpoint import build_tiny_bge_m3

    return build_tiny_bge_m3(str(tmp_path_factory.mktemp("bge-m3") / "tiny-bge-m3"))


@pytest.fixture(scope="session")
def flag_model(tiny_bge_m3_path):
    """FlagEmbedding's own BGE-M3 on the tiny checkpoint (CPU, fp32), loaded once per session."""
    from tests.bge_m3_checkpoint import flag_embedding_model

    model = flag_embedding_model(tiny_bge_m3_path)
    if model is None:
        pytest.skip("FlagEmbedding is not installed (pip install -e .[test])")
    return model


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server on 127.0.0.1 (SeaweedFS, else moto), stopped at the end."""
    from tests.object_store_server import TEST_ACCESS_KEY, TEST_SECRET_KEY, start_s3_server

    server = start_s3_server(tmp_path_factory.mktemp("s3"), TEST_ACCESS_KEY, TEST_SECRET_KEY)
    yield server
    server.stop()
