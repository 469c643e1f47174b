"""Which version of a table readers see, and how an embed run changes it: readers never see half a run.

A table has one main line of Lance versions, which writers commit to, and a `serving` tag, which readers
read (operators/tables.py `TableRef.snapshot`). An embed run commits batch by batch on the main line as
before; only when it has finished and its row accounting holds does it `publish`: it tags its last
version `run-<run_id>` and moves `serving` there. Vectors, metadata and indexes of that version were
written together, so a reader sees either the previous run's table or this run's, never a mix.

A model upgrade is the same path. With the serving table's columns (same dims and outputs, other
weights), the run updates the main line in place (every row is re-embedded, since the rows' model
differs); with other columns (other dims, outputs or kept columns), it overwrites the main line with an
empty table of the new columns and fills it. Either way readers keep the serving version until the
switch. Lance keeps every version readable until `maintain` removes it, so the main line can change
shape under readers that are pinned to an older one.

How a run starts (`begin_run`), given the serving version S and the main line's latest L:
- L == S: the run builds on S.
- L > S with an unfinished run of the same model and columns that started from S (the main line's
  `embedlake.base` metadata is S, L carries no run's tag): the run resumes it. This is how a killed
  upgrade finishes: re-run the same command, and only what was not committed is encoded.
- L > S otherwise (a killed run of another model, or a version a rollback left behind): S is restored
  as the latest version first, with the `<T>_files` manifest of the run that published S, so the
  manifest always describes the main line's rows.
A table written before serving tags is served at its latest version, which its first run tags.

`rollback` moves `serving` back to an earlier run's version (by default the one before the serving
one); the next embed run then starts from it. Run tags are what `maintain` keeps (the last N runs);
`cleanup_old_versions` never removes a tagged version, so a user's own tag pins a version for good.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pyarrow as pa

from operators.sinks.lance_sink import ADDABLE_COLUMNS, ensure_table
from operators.table_meta import METADATA_KEY, check_one_model, read_meta
from operators.tables import SERVING, TableRef

log = logging.getLogger(__name__)

RUN_TAG_PREFIX = "run-"
# Main-line dataset metadata: the serving version the run now committing on top of it started from.
BASE_KEY = "embedlake.base"

CREATED = "created"  # a new table
CONTINUED = "continued"  # builds on the serving version
RESUMED = "resumed"  # finishes an unfinished run of the same model on top of the serving version
RESTORED = "restored"  # an unfinished or rolled-back main line set aside: the serving version restored
REBUILT = "rebuilt"  # other columns (or --overwrite): the main line starts empty


def run_tag(run_id: str) -> str:
    return f"{RUN_TAG_PREFIX}{run_id}"


def is_run_tag(name: str) -> bool:
    return name.startswith(RUN_TAG_PREFIX)


def is_reserved_tag(name: str) -> bool:
    """Tags embedlake moves and removes itself; every other tag is the user's and is never touched."""
    return name == SERVING or is_run_tag(name)


def tag_versions(dataset) -> dict[str, int]:
    return {name: int(tag["version"]) for name, tag in dataset.tags.list().items()}


def serving_version(dataset) -> int | None:
    """The serving version, None for a table written before serving tags."""
    return tag_versions(dataset).get(SERVING)


def set_tag(dataset, name: str, version: int) -> None:
    """Create the tag or move it."""
    if name in dataset.tags.list():
        dataset.tags.update(name, version)
    else:
        dataset.tags.create(name, version)


def same_columns(a: pa.Schema, b: pa.Schema) -> bool:
    return {f.name: f.type for f in a} == {f.name: f.type for f in b}


def base_of(dataset) -> int | None:
    """The serving version the main line's unfinished run started from (None: not marked)."""
    value = (dataset.metadata or {}).get(BASE_KEY)
    return int(value) if value else None


@dataclass
class RunBase:
    """Where an embed run starts: the serving version readers keep while it runs, and what was done to the
    main line to start there."""

    serving: int
    action: str
    model_change: bool = False  # the serving version's model differs from the run's

    def summary(self) -> dict:
        return {"base_version": self.serving, "start": self.action, "model_change": self.model_change}


def begin_run(target: TableRef, files: TableRef, schema: pa.Schema, primary_key: str,
              overwrite: bool = False) -> RunBase:
    """Prepare the main line for a run that writes `schema` (with its TableMeta), as the module says. The
    serving version is left alone; `files` is the table's `<T>_files` manifest (it must exist)."""
    if not target.exists():
        ensure_table(target, schema, primary_key)
        dataset = target.dataset()
        set_tag(dataset, SERVING, dataset.version)  # readers see an empty table until the first run ends
        return RunBase(dataset.version, CREATED)
    dataset = target.dataset()
    serving = serving_version(dataset)
    if serving is None:  # written before serving tags: readers read its latest version, which becomes S
        serving = dataset.version
        set_tag(dataset, SERVING, serving)
    served = read_meta(target.dataset(serving).schema)
    wanted = read_meta(schema)
    model_change = served is not None and wanted is not None and served.model_id != wanted.model_id
    action = CONTINUED
    if dataset.version != serving:
        if not overwrite and _resumable(dataset, serving, schema):
            action = RESUMED
        else:
            restore(target, files, serving)
            action = RESTORED
            log.info("table %s: the main line (version %d) holds an unfinished or rolled-back run; restored the "
                     "serving version %d to build on", target.name, dataset.version, serving)
        dataset = target.dataset()
    if overwrite or not same_columns(_with_addable(target, dataset, schema).schema, schema):
        log.info("table %s: %s; the run rebuilds it from empty while readers keep version %d", target.name,
                 "--overwrite" if overwrite else "its columns change", serving)
        ensure_table(target, schema, primary_key, overwrite=True)
        files.dataset().delete("true")  # the manifest describes the main line's rows: none now
        action = REBUILT
    dataset = target.dataset()
    if read_meta(dataset.schema) != wanted:
        dataset.update_schema_metadata({METADATA_KEY.decode(): schema.metadata[METADATA_KEY].decode()})
    if target.dataset().version != serving:
        mark_building(target, serving)
    return RunBase(serving, action, model_change)


def _with_addable(target: TableRef, dataset, schema: pa.Schema):
    """Add the columns a table written before them lacks (null in its old rows), when that is the only
    difference (operators/sinks/lance_sink.py ADDABLE_COLUMNS)."""
    existing = {f.name: f.type for f in dataset.schema}
    wanted = {f.name: f.type for f in schema}
    added = [schema.field(name) for name in wanted if name not in existing and name in ADDABLE_COLUMNS]
    if added and all(existing.get(k) == v for k, v in wanted.items() if k not in ADDABLE_COLUMNS):
        dataset.add_columns(added)
        return target.dataset()
    return dataset


def _resumable(dataset, serving: int, schema: pa.Schema) -> bool:
    """The main line is an unfinished run of this model and these columns, started from `serving`."""
    at_latest = [name for name, version in tag_versions(dataset).items() if version == dataset.version]
    current, wanted = read_meta(dataset.schema), read_meta(schema)
    return (not any(is_reserved_tag(name) for name in at_latest) and base_of(dataset) == serving
            and current is not None and wanted is not None and current.model_id == wanted.model_id
            and same_columns(dataset.schema, schema))


def mark_building(target: TableRef, serving: int) -> None:
    """Record on the main line that a run builds on `serving` (once, before its first commit), so that a
    run killed after it can be told apart from a run that finished."""
    dataset = target.dataset()
    if base_of(dataset) != serving:
        dataset.update_metadata({BASE_KEY: str(serving)})


def restore(target: TableRef, files: TableRef, version: int) -> None:
    """Make `version` the latest on the main line again, with the manifest of the run that published it (or
    an empty manifest when that is unknown: the next run then reads every shard, and encodes only rows
    that are not already in the table)."""
    target.dataset(version).restore()
    run = next((name for name, at in tag_versions(target.dataset()).items() if at == version and is_run_tag(name)),
               None)
    if run is not None and run in files.dataset().tags.list():
        files.dataset(run).restore()
    else:
        files.dataset().delete("true")


@dataclass
class Published:
    version: int  # the serving version now
    previous: int  # the serving version before
    changed: bool  # False: the run changed nothing, serving stays where it was

    def summary(self) -> dict:
        return {"version": self.version, "previous_version": self.previous, "published": self.changed}


def publish(target: TableRef, files: TableRef, run_id: str, base: int) -> Published:
    """Switch readers to the main line's latest version, which a run has just finished: tag it and the
    manifest's latest version `run-<run_id>` and move `serving` to it. Refuses a version whose rows are not
    all of the metadata's model (the run then fails and nothing changes for readers)."""
    dataset = target.dataset()
    serving = serving_version(dataset)
    if serving is not None and serving != base:
        log.warning("table %s: the serving version moved from %d to %d during the run (a rollback?); this run "
                    "publishes its own version over it", target.name, base, serving)
    if dataset.version == serving:
        return Published(serving, serving, changed=False)
    check_one_model(dataset, f"table {target.name!r} at version {dataset.version}")
    tag = run_tag(run_id)
    manifest = files.dataset()
    set_tag(manifest, tag, manifest.version)
    set_tag(dataset, SERVING, dataset.version)
    set_tag(dataset, tag, dataset.version)
    return Published(dataset.version, serving if serving is not None else base, changed=True)


def advance_serving(target: TableRef, before: int) -> int:
    """After maintenance that kept the rows (compaction, indexes) on top of serving version `before`: move
    `serving` and the run tags at `before` to the latest version. Returns the serving version."""
    dataset = target.dataset()
    if dataset.version == before:
        return before
    for name, version in tag_versions(dataset).items():
        if version == before and is_reserved_tag(name):
            dataset.tags.update(name, dataset.version)
    if serving_version(dataset) is None:
        dataset.tags.create(SERVING, dataset.version)
    return dataset.version


def same_rows(target: TableRef, before: int) -> bool:
    """Whether the latest version holds exactly version `before`'s rows: the same fragments, data files and
    deletion files (index and metadata commits change none of them; any write of rows does). Costs one look at
    each version's fragment list, not a read of the rows."""
    latest = target.dataset()
    return [f.metadata for f in latest.get_fragments()] == [
        f.metadata for f in target.dataset(version=before).get_fragments()]


def run_versions(dataset) -> dict[int, str]:
    """Version -> run id, for the versions that runs published and that are still tagged."""
    return {version: name[len(RUN_TAG_PREFIX):] for name, version in tag_versions(dataset).items()
            if is_run_tag(name)}


def rollback(target: TableRef, to_version: int | None = None, to_run: str | None = None) -> dict:
    """Move `serving` to an earlier run's version: the run before the serving one, or the version or run
    given. The main line is left as it is; the next embed run restores the serving version and builds on
    it (operators/serving.py `begin_run`)."""
    if to_version is not None and to_run is not None:
        msg = "give --to-version or --to-run, not both"
        raise ValueError(msg)
    dataset = target.dataset()
    tags = tag_versions(dataset)
    serving = tags.get(SERVING)
    if serving is None:
        msg = f"table {target.name!r} has no serving version yet (written before serving tags): nothing to roll back"
        raise ValueError(msg)
    runs = run_versions(dataset)
    if to_run is not None:
        if run_tag(to_run) not in tags:
            msg = f"table {target.name!r} keeps no version of run {to_run!r} (embedlake versions lists them)"
            raise ValueError(msg)
        version = tags[run_tag(to_run)]
    elif to_version is not None:
        version = to_version
        if version > dataset.version or version < 1:
            msg = f"table {target.name!r} has no version {version} (latest: {dataset.version})"
            raise ValueError(msg)
    else:
        earlier = sorted(v for v in runs if v < serving)
        if not earlier:
            msg = f"table {target.name!r} keeps no run before its serving version {serving}: nothing to roll back to"
            raise ValueError(msg)
        version = earlier[-1]
    try:
        pinned = target.dataset(version)
    except (ValueError, OSError) as error:
        msg = f"table {target.name!r} no longer holds version {version} (removed by maintain)"
        raise ValueError(msg) from error
    check_one_model(pinned, f"table {target.name!r} at version {version}")
    set_tag(dataset, SERVING, version)
    meta = read_meta(pinned.schema)
    return {"table": target.name, "serving_version": version, "previous_version": serving,
            "run_id": runs.get(version), "model": meta.model_id if meta else None, "rows": pinned.count_rows()}



def pin_tag(target: TableRef, name: str, version: int | None = None) -> dict:
    """Tag a version (default: the serving one) with a name of the user's: `maintain` never removes it, and
    readers can read it with `--tag NAME`."""
    if is_reserved_tag(name):
        msg = f"tag {name!r} is embedlake's own ({SERVING!r} and {RUN_TAG_PREFIX}*): choose another name"
        raise ValueError(msg)
    dataset = target.dataset()
    version = version if version is not None else serving_version(dataset) or dataset.version
    if version > dataset.version or version < 1:
        msg = f"table {target.name!r} has no version {version} (latest: {dataset.version})"
        raise ValueError(msg)
    set_tag(dataset, name, version)
    return {"table": target.name, "tag": name, "version": version}


def unpin_tag(target: TableRef, name: str) -> dict:
    if is_reserved_tag(name):
        msg = f"tag {name!r} is embedlake's own: `embedlake rollback` moves {SERVING!r}, maintain removes run tags"
        raise ValueError(msg)
    dataset = target.dataset()
    if name not in dataset.tags.list():
        msg = f"table {target.name!r} has no tag {name!r}"
        raise ValueError(msg)
    dataset.tags.delete(name)
    return {"table": target.name, "untagged": name}


def list_versions(target: TableRef, runs: list[dict]) -> list[dict]:
    """The versions a reader can pin, newest first: every tagged one (serving, retained runs, the user's) and
    the latest, with the run that published it (from `runs`, the run log), its model, time, rows and bytes
    (the version's data files; versions share unchanged files)."""
    dataset = target.dataset()
    tags = tag_versions(dataset)
    serving = tags.get(SERVING)
    stored = {int(v["version"]): v for v in dataset.versions()}
    by_run = {run["run_id"]: run for run in runs}
    entries = []
    for version in sorted(set(tags.values()) | {dataset.version}, reverse=True):
        names = sorted(name for name, at in tags.items() if at == version)
        run_ids = [name[len(RUN_TAG_PREFIX):] for name in names if is_run_tag(name)]
        run = next((by_run[r] for r in run_ids if r in by_run), None)
        info = stored.get(version, {})
        details = info.get("metadata", {})
        meta = read_meta(target.dataset(version).schema)
        if version == serving:
            state = "serving"
        elif run_ids:
            state = "previous run" if serving is None or version < serving else "rolled back"
        elif version == dataset.version and not names:
            state = "unfinished run" if base_of(dataset) == serving else "latest"
        else:
            state = "pinned"
        entries.append({
            "version": version,
            "state": state,
            "tags": names,
            "run_id": run["run_id"] if run else (run_ids[0] if run_ids else None),
            "model": meta.model_id if meta else None,
            "finished_at": str(run["finished_at"]) if run and run["finished_at"] else None,
            "committed_at": str(info["timestamp"]) if info.get("timestamp") else None,
            "rows": int(details["total_rows"]) if "total_rows" in details else None,
            "bytes": int(details["total_files_size"]) if "total_files_size" in details else None,
        })
    return entries


def publish_schema_metadata(target: TableRef, values: dict[str, str], expected: int | None = None) -> int:
    """A metadata-only commit that readers see at once and whole: written on top of the serving version, then
    `serving` (and the run tags there) moved to it. Its rows, vectors and indexes are the serving version's,
    so readers go from one complete snapshot to the same one with the new metadata. Refused (nothing written)
    when the main line holds an unfinished run, whose rows the commit would carry to readers, or when the
    serving version is no longer `expected` (the one the values were computed on). Returns the new version."""
    dataset = target.dataset()
    serving = serving_version(dataset)
    current = serving if serving is not None else dataset.version
    if expected is not None and current != expected:
        msg = (f"table {target.name!r}: the serving version moved from {expected} to {current} while this ran; "
               "run it again on the new version")
        raise ValueError(msg)
    if dataset.version != current:
        msg = (f"table {target.name!r}: its main line (version {dataset.version}) holds an unfinished embed run "
               f"on top of the serving version {current}; let the run finish (or re-run it), then run this again")
        raise ValueError(msg)
    dataset.update_schema_metadata(values)
    committed = int(dataset.version)
    if committed != current + 1:  # another writer committed in between: its rows would reach readers
        msg = (f"table {target.name!r}: another writer committed while the metadata was written; readers stay on "
               f"version {current}, and the metadata reaches them with that writer's run")
        raise ValueError(msg)
    for name, version in tag_versions(dataset).items():
        if version == current and is_reserved_tag(name):
            dataset.tags.update(name, committed)
    if serving is None:
        dataset.tags.create(SERVING, committed)
    return committed
