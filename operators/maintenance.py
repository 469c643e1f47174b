"""Keeping a table fast and its storage bounded: compaction, current indexes, and removing the versions no
retained run needs.

Every commit is a Lance version, and every version keeps its files until it is removed: a nightly job
that updates rows leaves the replaced rows' fragments, one deletion file per commit, index delta segments
and the run's intermediate versions behind, and its storage grows without bound. `maintain` is the
remedy, run at the end of each embed run (unless `--no-maintain`) and as `embedlake maintain`:

- `refresh` (on the main line, before its version is published, so that indexes belong to the version
  readers get): compact fragments (merge small ones, rewrite those with many deleted rows), bring the key
  indexes (id, source_file, model) and every ANN index up to date with the new rows, re-create ANN indexes
  the serving version had when a rebuild dropped them, and build the sparse inverted index of the version.
- `retain` (after publishing): keep the versions of the last `keep_runs` runs, the serving version and
  every version a user's tag pins; delete older run tags; `cleanup_old_versions` removes every other
  version older than `older_than` (and its files) from the table and its `<T>_files`, `<T>_runs` and
  `<T>_quarantine` tables; sparse index folders of removed versions go too.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from operators.schema import SPARSE, dense_columns
from operators.serving import (
    SERVING,
    advance_serving,
    is_run_tag,
    serving_version,
    tag_versions,
)
from operators.sinks.lance_sink import refresh_indexes
from operators.tables import Lake, Pin, TableRef

log = logging.getLogger(__name__)

DEFAULT_KEEP_RUNS = 3  # the serving run and two before it: two rollbacks
VECTOR_INDEX = "VectorIndexDetails"
COMPACT_FRAGMENTS = 64  # without maintenance, fragments are merged past this many (reads stay fast)
LOG_TABLE_FRAGMENTS = 32  # a run log or quarantine table is compacted past this many fragments
SIDE_TABLES = ("_files", "_runs", "_quarantine")
LOG_TABLES = ("_runs", "_quarantine")  # append-mostly: compacted when their commits pile up
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(value: str | int | float | timedelta) -> timedelta:
    """`7d`, `12h`, `30m`, `90s`, `2w` or a number of seconds; 0 means any age."""
    if isinstance(value, timedelta):
        return value
    match = DURATION.match(str(value))
    if not match:
        msg = f"not an age: {value!r} (use e.g. 7d, 12h, 30m or 0)"
        raise ValueError(msg)
    return timedelta(seconds=float(match.group(1)) * UNITS[match.group(2)])


@dataclass(frozen=True)
class Retention:
    """What `retain` keeps: the last `keep_runs` runs' versions (plus the serving one and tagged ones), and
    any version younger than `older_than`."""

    keep_runs: int = DEFAULT_KEEP_RUNS
    older_than: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        if self.keep_runs < 1:
            msg = f"--keep-runs must be at least 1 (the serving run), got {self.keep_runs}"
            raise ValueError(msg)


def table_paths(lake: Lake, table: str) -> list[str]:
    """Every folder that belongs to table `table`: the table, its side tables and its sparse index."""
    from operators.search.store import SPARSE_INDEX_SUFFIX

    base = lake.uri.rstrip("/")
    return [f"{base}/{table}.lance", *(f"{base}/{table}{suffix}.lance" for suffix in SIDE_TABLES),
            f"{base}/{table}{SPARSE_INDEX_SUFFIX}"]


def bytes_on_disk(lake: Lake, table: str) -> int:
    """Bytes stored under the table's folders (every version's files, indexes, side tables)."""
    from operators.storage import filesystem

    total = 0
    for path in table_paths(lake, table):
        fs, root = filesystem(path, lake.storage)
        if fs.exists(root):
            total += int(fs.du(root, total=True))
    return total


def refresh(target: TableRef, compact: bool = True, retrain: bool = False) -> dict:
    """Compaction and indexes for the main line's latest version (the serving one, or a finished run's about to
    be published); commits on the main line, never moves a tag. Returns what was done. Without `compact`
    (`embed --no-maintain`) fragments are merged only once there are many (COMPACT_FRAGMENTS); with `retrain`
    (a model upgrade) ANN indexes are trained anew instead of extended."""
    done: dict = {}
    dataset = target.dataset()
    if len(dataset.get_fragments()) > (1 if compact else COMPACT_FRAGMENTS):
        metrics = dataset.optimize.compact_files()
        done["fragments_removed"] = metrics.fragments_removed
        done["fragments_added"] = metrics.fragments_added
    refresh_indexes(target)
    done["ann_indexes"] = _refresh_ann(target, retrain)
    dataset = target.dataset()
    if SPARSE in dataset.schema.names and dataset.count_rows():
        from operators.search.sparse_index import open_sparse_index
        from operators.search.store import TableStore

        store = TableStore(target.uri, target.name, target.lake.storage, Pin(version=dataset.version))
        index, action = open_sparse_index(store)
        done["sparse_index"] = {"action": action, "version": index.version, "rows": index.rows}
    return done


def _refresh_ann(target: TableRef, retrain: bool = False) -> dict[str, str]:
    """Index the rows an ANN index does not cover yet; re-create the ANN indexes the serving version had on
    columns the latest version has without one (a rebuild starts without indexes). With `retrain` (the rows'
    model changed), build every ANN index anew."""
    from operators.search.ann import create_index
    from operators.search.index_plan import MIN_ROWS, plan_index, plan_type

    dataset = target.dataset()
    vector = {d.field_names[0]: d.name for d in dataset.describe_indices()
              if VECTOR_INDEX in d.type_url and len(d.field_names) == 1}
    done = {}
    if retrain and vector:
        # Centroids and codebooks learnt on another model's vectors would serve the new ones badly: train anew.
        configs = {config.columns[0]: config.index_type for config in _vector_configs(target, dataset.version)}
        rows = dataset.count_rows()
        table = target.open()
        for column in vector:
            dim = dataset.schema.field(column).type.list_size
            create_index(table, plan_index(column, rows, dim, plan_type(configs.get(column, "IVF_HNSW_SQ"))))
            done[column] = "retrained"
        return done
    stale = [name for name in vector.values() if _unindexed(dataset, name)]
    if stale:
        dataset.optimize.optimize_indices(index_names=stale)
        done.update({column: "updated" for column, name in vector.items() if name in stale})
    serving = serving_version(dataset)
    if serving is None or serving == dataset.version:
        return done
    wanted = {config.columns[0]: config.index_type for config in _vector_configs(target, serving)}
    rows = dataset.count_rows()
    missing = [column for column in wanted if column not in vector and column in dense_columns(dataset.schema)]
    if missing and rows >= MIN_ROWS:
        table = target.open()
        for column in missing:
            dim = dataset.schema.field(column).type.list_size
            create_index(table, plan_index(column, rows, dim, plan_type(wanted[column])))
            done[column] = "created"
    return done


def _vector_configs(target: TableRef, version: int) -> list:
    table = target.open()
    table.checkout(version)
    return [config for config in table.list_indices()
            if VECTOR_INDEX in (config.type_url or "") and len(config.columns) == 1]


def _unindexed(dataset, index_name: str) -> int:
    try:
        return int(dataset.stats.index_stats(index_name).get("num_unindexed_rows", 0))
    except (ValueError, RuntimeError, KeyError):
        return 0


def retain(lake: Lake, table: str, retention: Retention) -> dict:
    """Remove the versions (and their files) of the table and its side tables that no retained run, the serving
    version or a user's tag needs; older run tags are deleted first. Returns what was removed."""
    target = lake.table(table)
    dataset = target.dataset()
    tags = tag_versions(dataset)
    serving = tags.get(SERVING)
    run_tags = {name: version for name, version in tags.items() if is_run_tag(name)}
    kept = set(sorted(set(run_tags.values()), reverse=True)[: retention.keep_runs])
    if serving is not None:
        kept.add(serving)
    dropped = sorted(name for name, version in run_tags.items() if version not in kept)
    for name in dropped:
        dataset.tags.delete(name)
    removed = {"run_tags_removed": len(dropped), "versions_removed": 0, "bytes_removed": 0}
    retained_runs = set(run_tags) - set(dropped)
    files = lake.table(f"{table}_files")
    if files.exists():  # the manifest keeps the versions paired with retained runs (serving.restore)
        manifest_tags = files.dataset().tags
        for name in [n for n in manifest_tags.list() if is_run_tag(n) and n not in retained_runs]:
            manifest_tags.delete(name)
    for ref in (target, *(lake.table(f"{table}{suffix}") for suffix in SIDE_TABLES)):
        if not ref.exists():
            continue
        if ref.name.endswith(LOG_TABLES):
            side = ref.dataset()
            if len(side.get_fragments()) > LOG_TABLE_FRAGMENTS:
                side.optimize.compact_files()
        stats = ref.dataset().cleanup_old_versions(older_than=retention.older_than,
                                                   error_if_tagged_old_versions=False)
        removed["versions_removed"] += int(stats.old_versions)
        removed["bytes_removed"] += int(stats.bytes_removed)
    removed["sparse_indexes_removed"] = _drop_sparse_indexes(target)
    return removed


def _drop_sparse_indexes(target: TableRef) -> int:
    """Sparse index folders of versions the table no longer keeps tagged (the latest version's stays)."""
    from operators.search.sparse_index import IndexLocation, kept_versions
    from operators.search.store import SPARSE_INDEX_SUFFIX

    location = IndexLocation.open(f"{target.uri.rstrip('/')}/{target.name}{SPARSE_INDEX_SUFFIX}", target.lake.storage)
    stale = [version for version in location.versions() if version not in kept_versions(target)]
    location.drop(stale)
    return len(stale)


def _age_of(dataset, version: int) -> timedelta:
    """How long ago `version` was committed (Lance's version timestamps are naive local time)."""
    committed = next(v["timestamp"] for v in dataset.versions() if int(v["version"]) == version)
    return max(datetime.now(committed.tzinfo) - committed, timedelta(0))


def maintain(lake: Lake, table: str, retention: Retention = Retention()) -> dict:
    """Python API behind `embedlake maintain`: refresh the serving version (when no unfinished run sits on top
    of it) and move `serving` to the result, then remove what no retained run needs. Reports bytes before and
    after."""
    target = lake.table(table)
    if not target.exists():
        msg = f"no table {table!r} in {lake.uri}"
        raise ValueError(msg)
    before = bytes_on_disk(lake, table)
    dataset = target.dataset()
    versions_before = len(dataset.versions())
    serving = serving_version(dataset)
    result: dict = {"table": table, "uri": lake.uri}
    if serving is None or dataset.version == serving:
        result["refresh"] = refresh(target)
        result["serving_version"] = advance_serving(target, dataset.version)
    else:
        result["serving_version"] = serving
        result["refresh"] = {"skipped": f"an unfinished run (latest version {dataset.version}) is on top of the "
                                        f"serving version {serving}: re-run its embed command to finish it"}
        # That run may still be committing: keep every version from the serving one on (its writers read them),
        # with an hour's margin for the time between this reading and the cleanup.
        retention = replace(retention, older_than=max(retention.older_than,
                                                      _age_of(dataset, serving) + timedelta(hours=1)))
    result.update(retain(lake, table, retention))
    result["versions_before"] = versions_before
    result["versions_after"] = len(target.dataset().versions())
    result["bytes_before"] = before
    result["bytes_after"] = bytes_on_disk(lake, table)
    return result
