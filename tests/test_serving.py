"""Serving versions without Ray: what readers see while runs commit, how a run starts after a kill, a model
change or a rollback, what `maintain` keeps over many nightly runs, and the consistency check.

The embed job's own steps (operators/serving.py begin_run / mark_building / publish, operators/maintenance.py
refresh / retain, the `<T>_files` manifest) drive real Lance tables here; rows are upserted the way the
embed job's writers upsert them (lance_sink.upsert, a few rows per commit), with vectors that say which
model wrote them. tests/test_lifecycle.py runs the same through the real pipeline and Ray.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pyarrow as pa
import pytest

from operators.maintenance import Retention, bytes_on_disk, maintain, parse_age, refresh, retain
from operators.manifest import FileManifest
from operators.schema import DENSE, ID, MODEL, SOURCE_FILE, TEXT_HASH, dense_column, dense_type, embeddings_schema
from operators.serving import (
    CONTINUED,
    CREATED,
    REBUILT,
    RESTORED,
    RESUMED,
    begin_run,
    list_versions,
    mark_building,
    pin_tag,
    publish,
    rollback,
)
from operators.sinks.lance_sink import upsert
from operators.table_meta import TableMeta, with_meta
from operators.tables import SERVING, Lake, Pin

DIM = 8


def schema_for(model_id: str, dims: tuple[int, ...] = ()) -> pa.Schema:
    fields = [pa.field(DENSE, dense_type(DIM)), *(pa.field(dense_column(d), dense_type(d)) for d in dims)]
    meta = TableMeta(model=model_id.split(":")[0], model_id=model_id, kind="mrl", dims=list(dims), outputs=[DENSE])
    return with_meta(embeddings_schema(fields), meta)


def rows_of(model_id: str, ids: list[str], schema: pa.Schema, shard: str = "part-0.parquet",
            text: str = "t") -> pa.Table:
    """Rows as the writer commits them; each model's vectors are its own (seeded by the model id)."""
    rng = np.random.default_rng(abs(hash(model_id)) % 2**32)
    vectors = rng.normal(size=(len(ids), DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    columns = {ID: pa.array(ids), TEXT_HASH: pa.array([f"{text}-{i}" for i in ids]),
               MODEL: pa.array([model_id] * len(ids)), SOURCE_FILE: pa.array([shard] * len(ids))}
    for field in schema:
        if field.name.startswith(DENSE):
            width = field.type.list_size
            columns[field.name] = pa.FixedSizeListArray.from_arrays(pa.array(vectors[:, :width].ravel()), width)
    return pa.table([columns[f.name] for f in schema], schema=schema.remove_metadata())


class Table:
    """One LanceDB table and its manifest, written run by run as the embed job does."""

    def __init__(self, uri: str, name: str = "docs") -> None:
        self.lake = Lake(uri)
        self.ref = self.lake.table(name)
        self.manifest = FileManifest(self.lake, name)
        self.manifest.ensure()  # as the embed job does once its input has passed every check

    def start(self, model_id: str, dims: tuple[int, ...] = (), overwrite: bool = False):
        schema = schema_for(model_id, dims)
        return begin_run(self.ref, self.manifest.target, schema, ID, overwrite=overwrite), schema

    def commit(self, base, schema: pa.Schema, model_id: str, ids: list[str], per_commit: int = 5, **kwargs) -> None:
        mark_building(self.ref, base.serving)
        for start in range(0, len(ids), per_commit):
            upsert(rows_of(model_id, ids[start:start + per_commit], schema, **kwargs), self.ref, schema, ID)

    def run(self, model_id: str, ids: list[str], run_id: str, dims: tuple[int, ...] = (),
            shard: str = "part-0.parquet", text: str = "t", maintained: Retention | None = None):
        """A whole successful run: start, commit, record the manifest, refresh, publish (and maintain)."""
        base, schema = self.start(model_id, dims)
        self.commit(base, schema, model_id, ids, shard=shard, text=text)
        self.manifest.record({shard: (f"v-{text}", len(ids))}, model_id, run_id)
        refresh(self.ref, compact=maintained is not None)
        published = publish(self.ref, self.manifest.target, run_id, base.serving)
        if maintained is not None:
            retain(self.lake, self.ref.name, maintained)
        return base, published

    def served(self, pin: Pin | None = None) -> dict[str, str]:
        """id -> model of what a reader sees."""
        rows = self.ref.snapshot(pin).to_table(columns=[ID, MODEL])
        return dict(zip(rows.column(ID).to_pylist(), rows.column(MODEL).to_pylist(), strict=True))

    def manifest_models(self) -> dict[str, str]:
        return {path: entry.model for path, entry in self.manifest.load().items()}


IDS = [f"doc{i:03d}" for i in range(20)]


def test_readers_keep_the_serving_version_while_a_model_upgrade_commits(tmp_path):
    table = Table(str(tmp_path))
    base, published = table.run("a:1", IDS, "r1")
    assert base.action == CREATED and published.changed
    assert set(table.served().values()) == {"a:1"}

    base, schema = table.start("b:1")  # same columns, other model: updated in place on the main line
    assert base.action == CONTINUED and base.model_change
    table.commit(base, schema, "b:1", IDS[:10])
    assert set(table.served().values()) == {"a:1"}  # readers: all of A
    with pytest.raises(ValueError, match=r"holds 10 of 20 rows embedded by another model than its metadata's b:1"):
        table.served(Pin(version=table.ref.dataset().version))  # the main line mixes both models
    table.commit(base, schema, "b:1", IDS[10:])
    assert set(table.served().values()) == {"a:1"}
    refresh(table.ref)
    published = publish(table.ref, table.manifest.target, "r2", base.serving)
    assert published.changed and published.previous == base.serving
    assert set(table.served().values()) == {"b:1"}
    assert set(table.served(Pin(tag="run-r1")).values()) == {"a:1"}


def test_a_killed_run_is_resumed_by_the_same_model_and_set_aside_by_another(tmp_path):
    table = Table(str(tmp_path))
    _, first = table.run("a:1", IDS, "r1")
    base, schema = table.start("b:1")
    table.commit(base, schema, "b:1", IDS[:10])  # ... and the run is killed here
    again, _ = table.start("b:1")
    assert again.action == RESUMED and again.serving == first.version
    models = table.ref.dataset().to_table(columns=[MODEL]).column(MODEL).to_pylist()
    assert models.count("b:1") == 10  # the resumed run keeps what was committed

    # The scheduled run with the serving model instead: the unfinished B run is set aside, A restored.
    other, _ = table.start("a:1")
    assert other.action == RESTORED and not other.model_change
    latest = table.ref.dataset()
    assert set(latest.to_table(columns=[MODEL]).column(MODEL).to_pylist()) == {"a:1"}
    assert table.manifest_models() == {"part-0.parquet": "a:1"}  # the manifest of the run that published A


def test_after_a_rollback_the_next_run_builds_on_the_rolled_back_version_and_its_manifest(tmp_path):
    table = Table(str(tmp_path))
    _, first = table.run("a:1", IDS[:10], "r1", shard="part-0.parquet")
    _, second = table.run("a:1", IDS[10:], "r2", shard="part-1.parquet")
    assert len(table.served()) == 20 and set(table.manifest_models()) == {"part-0.parquet", "part-1.parquet"}

    result = rollback(table.ref)
    assert result["serving_version"] == first.version and result["previous_version"] == second.version
    assert result["run_id"] == "r1" and len(table.served()) == 10

    # Same model, same command: the rows of part-1 must not be taken for done (their manifest entry goes too).
    base, _ = table.start("a:1")
    assert base.action == RESTORED
    assert set(table.manifest_models()) == {"part-0.parquet"}
    assert table.ref.dataset().count_rows() == 10
    with pytest.raises(ValueError, match="keeps no run before its serving version"):
        rollback(table.ref)
    assert rollback(table.ref, to_run="r2")["serving_version"] == second.version  # and forward again


def test_other_columns_rebuild_the_main_line_while_readers_keep_the_old_table(tmp_path):
    table = Table(str(tmp_path))
    _, first = table.run("a:1", IDS, "r1")
    base, schema = table.start("a:1", dims=(4,))  # same model, a nested size more: every row needs it
    assert base.action == REBUILT and not base.model_change
    assert table.ref.dataset().count_rows() == 0 and table.manifest.load() == {}
    reader = table.ref.snapshot()
    assert reader.version == first.version and dense_column(4) not in reader.schema.names
    table.commit(base, schema, "a:1", IDS[:5])
    assert table.start("a:1", dims=(4,))[0].action == RESUMED  # a kill here: the same command resumes
    table.commit(base, schema, "a:1", IDS[5:])
    publish(table.ref, table.manifest.target, "r2", base.serving)
    assert dense_column(4) in table.ref.snapshot().schema.names and len(table.served()) == 20
    assert dense_column(4) not in table.ref.snapshot(Pin(tag="run-r1")).schema.names


def test_a_table_written_before_serving_tags_is_read_at_its_latest_version_and_tagged_by_its_next_run(tmp_path):
    import lancedb

    schema = schema_for("a:1")
    lancedb.connect(str(tmp_path)).create_table("docs", rows_of("a:1", IDS, schema).replace_schema_metadata(
        schema.metadata))
    table = Table(str(tmp_path))
    assert len(table.served()) == 20
    with pytest.raises(ValueError, match="no serving version yet"):
        rollback(table.ref)
    base, _ = table.start("a:1")
    assert base.action == CONTINUED and table.ref.dataset().tags.list()[SERVING]["version"] == base.serving


def test_pins_and_one_line_errors(tmp_path):
    table = Table(str(tmp_path))
    _, published = table.run("a:1", IDS, "r1")
    with pytest.raises(ValueError, match="not both"):
        Pin(version=1, tag="x")
    with pytest.raises(ValueError, match="has no tag 'nope' \\(tags: run-r1, serving\\)"):
        table.ref.snapshot(Pin(tag="nope"))
    with pytest.raises(ValueError, match="has no version 999"):
        table.ref.snapshot(Pin(version=999))
    with pytest.raises(ValueError, match="embedlake's own"):
        pin_tag(table.ref, "serving")
    assert pin_tag(table.ref, "golden") == {"table": "docs", "tag": "golden", "version": published.version}
    assert parse_age("7d") == timedelta(days=7) and parse_age("0") == timedelta(0) and parse_age(90) == timedelta(
        seconds=90)
    with pytest.raises(ValueError, match="not an age"):
        parse_age("soon")


def nightly(table: Table, night: int, retention: Retention | None) -> None:
    """One nightly run: the same 20 ids with new texts in shard 0 (every row updated, in 4 commits)."""
    table.run("a:1", IDS, f"n{night}", text=f"night{night}", maintained=retention)


def test_ten_nightly_runs_with_maintain_keep_versions_and_bytes_bounded_and_a_pinned_version(tmp_path):
    kept = Table(str(tmp_path / "maintained"))
    grown = Table(str(tmp_path / "unmaintained"))
    retention = Retention(keep_runs=2)
    sizes, versions = [], []
    for night in range(10):
        nightly(kept, night, retention)
        nightly(grown, night, None)
        if night == 1:
            pinned = pin_tag(kept.ref, "golden")["version"]
            golden = kept.served()
            golden_hashes = kept.ref.snapshot(Pin(tag="golden")).to_table(columns=[TEXT_HASH])
        sizes.append(bytes_on_disk(kept.lake, "docs"))
        versions.append(len(kept.ref.dataset().versions()))
    unmaintained = bytes_on_disk(grown.lake, "docs")
    # Kept: the serving run, the one before it, the pinned version and the latest; nothing else.
    assert versions[-1] <= 4 and max(versions[2:]) <= 4
    assert sizes[-1] <= 1.25 * sizes[3], sizes
    assert unmaintained > 3 * sizes[-1], (unmaintained, sizes)
    assert len(grown.ref.dataset().versions()) > 10 * 4
    # The pinned version survived every maintain, as it was.
    assert kept.ref.snapshot(Pin(tag="golden")).version == pinned
    assert kept.served(Pin(tag="golden")) == golden
    assert kept.ref.snapshot(Pin(tag="golden")).to_table(columns=[TEXT_HASH]).equals(golden_hashes)
    listed = {entry["version"]: entry for entry in list_versions(kept.ref, [])}
    assert listed[pinned]["tags"] == ["golden"] and listed[pinned]["state"] == "pinned"
    serving = kept.ref.snapshot().version
    assert listed[serving]["state"] == "serving" and listed[serving]["rows"] == 20


def test_maintain_command_refreshes_the_serving_version_and_skips_an_unfinished_run(tmp_path):
    table = Table(str(tmp_path))
    for night in range(3):
        nightly(table, night, None)
    result = maintain(table.lake, "docs", Retention(keep_runs=1))
    assert result["bytes_after"] < result["bytes_before"] and result["versions_after"] < result["versions_before"]
    assert result["serving_version"] == table.ref.snapshot().version == table.ref.dataset().version
    assert len(table.served()) == 20

    base, schema = table.start("b:1")
    table.commit(base, schema, "b:1", IDS[:5])
    unfinished = table.ref.dataset().version
    building = [int(v["version"]) for v in table.ref.dataset().versions() if int(v["version"]) > base.serving]
    result = maintain(table.lake, "docs", Retention(keep_runs=1))
    assert "unfinished run" in result["refresh"]["skipped"]
    assert table.ref.dataset().version == unfinished  # the run can still be resumed ...
    for version in building:  # ... and every version its writers may be reading is still there
        assert table.ref.dataset(version).version == version
    assert table.start("b:1")[0].action == RESUMED


def test_the_nightly_recipe_is_what_embedlake_accepts():
    """docs/lifecycle.md's cron line and docs/cluster.md's RayJob run `embed` with conf/nightly.yaml: both parse as
    embedlake commands, and the config's options are the embed command's (tests/test_submit.py submits it)."""
    import re
    import shlex
    from pathlib import Path

    import yaml

    from pipelines.cli import parse_args
    from pipelines.commands.options import job_from_args
    from pipelines.embed import EmbedJob

    root = Path(__file__).resolve().parent.parent
    lifecycle = (root / "docs" / "lifecycle.md").read_text()
    cron = re.search(r"\n    (15 2 \* \* \*.*?)\n\n", lifecycle, re.S).group(1).replace("\\\n", " ")
    words = shlex.split(cron.split(">>")[0])
    assert words[:5] == ["15", "2", "*", "*", "*"] and any(word.endswith("bin/embedlake") for word in words)
    submit = words[words.index("submit"):]
    args, _ = parse_args(submit)
    assert args.command == "submit" and args.agent_wait == 60
    inner = args.job_command[1:]
    assert inner[0] == "embed" and inner[inner.index("--config") + 1] == "conf/nightly.yaml"

    cluster = (root / "docs" / "cluster.md").read_text()
    job = yaml.safe_load(re.search(r"```yaml\n(apiVersion: ray.io/v1\nkind: RayJob\n.*?)```", cluster, re.S).group(1))
    assert job["spec"]["shutdownAfterJobFinishes"] and job["spec"]["rayClusterSpec"]["rayVersion"] == "2.60.0"
    entry = shlex.split(job["spec"]["entrypoint"])
    assert entry[0] == "embedlake" and entry[entry.index("--config") + 1].endswith("/conf/nightly.yaml")

    for argv in (inner, entry[1:]):
        config = argv.index("--config") + 1
        args, _ = parse_args([*argv[:config], str(root / "conf" / "nightly.yaml"), *argv[config + 1:]])
        job = job_from_args(EmbedJob, args)
        assert job.keep_runs == 3 and job.sync_deletes and job.maintain and not job.progress
        assert job.input == "s3://bucket/lake/" and job.output == "s3://bucket/lance" and job.dims == [256, 128, 64]


def test_a_model_upgrade_retrains_ann_indexes_and_a_nightly_run_extends_them(tmp_path):
    from operators.search.ann import create_index
    from operators.search.index_plan import IndexType, plan_index
    from operators.serving import advance_serving

    table = Table(str(tmp_path))
    ids = [f"doc{i:04d}" for i in range(300)]
    _, published = table.run("a:1", ids, "r1")
    create_index(table.ref.open(), plan_index(DENSE, 300, DIM, IndexType.IVF_HNSW_SQ))
    advance_serving(table.ref, published.version)  # as `embedlake index` does

    def ann() -> tuple[str, int]:
        dataset = table.ref.dataset()
        index = next(d for d in dataset.describe_indices() if d.field_names == [DENSE])
        return index.segments[0].uuid, int(dataset.stats.index_stats(index.name)["num_unindexed_rows"])

    trained, _ = ann()
    base, schema = table.start("a:1")  # a nightly run: new rows, the same model
    table.commit(base, schema, "a:1", [f"new{i}" for i in range(20)], per_commit=20)
    assert refresh(table.ref)["ann_indexes"] == {DENSE: "updated"}
    assert ann()[1] == 0
    publish(table.ref, table.manifest.target, "r2", base.serving)

    base, schema = table.start("b:1")  # the upgrade: every row re-embedded by another model
    assert base.model_change
    table.commit(base, schema, "b:1", ids + [f"new{i}" for i in range(20)], per_commit=160)
    assert refresh(table.ref, retrain=True)["ann_indexes"] == {DENSE: "retrained"}
    uuid, unindexed = ann()
    assert uuid != trained and unindexed == 0
