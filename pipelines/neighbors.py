"""The k-NN graph job: every row's k nearest neighbours written to T_neighbors (id, neighbor, rank, score).

1. The driver opens the table at its serving version (or the version or tag pinned) for the whole job, checks
   the column and picks the method: exact when the table has at most `exact_max_rows` rows (each worker then
   holds the column: rows x dim float32), else `ivf` (below). `ann` queries the column's ANN index in the
   version read, one LanceDB search per row: a serving version without one gets it as `embedlake index`
   builds it (`serving` moves to the version that holds it, same rows); a pinned version, or a serving one
   with an unfinished run on top, is never indexed here (refused).
2. exact / ann: Ray Data reads (id, vector) blocks; a pool of actors scores them (operators/neighbors.py:
   ExactNeighbors or AnnNeighbors, the row itself excluded, ties by id).
   ivf (operators/neighbors_ivf.py): k-means on a seeded sample gives ~sqrt(rows) partitions (driver: the
   centroids only); Ray tasks assign every row its partition and write it to scratch bucket files of nearby
   partitions (pipelines/buckets.py), returning per-partition counts; then one Ray task per bucket reads the
   rows of its partitions' probe lists back and scores each partition's rows against them with one matrix
   product (exact top-k among the probed rows, self excluded, ties by id). The scratch folder is removed.
   Either way FragmentWriter tasks write the edges as data files; the driver receives fragment metadata and
   counts only, and commits T_neighbors once, so readers see the previous graph or the new one.
3. With the ann and ivf methods, `recall_sample` seeded rows get their exact top-k from a Ray pass over the
   table (SampleTopK per 256 MB of vectors, each task's best merged in the driver: sample x k rows at a
   time), and the graph's recall@k against it is reported.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import pyarrow as pa

from operators.errors import check_positive
from operators.neighbors import (
    ID,
    NEIGHBOR,
    NEIGHBORS_SCHEMA,
    QUERY,
    RANK,
    AnnNeighbors,
    ExactNeighbors,
    SampleTopK,
    best_of,
    neighbors_table_name,
    recall_at_k,
)
from operators.neighbors_ivf import (
    BUCKET,
    DEFAULT_PROBES,
    PARTITION,
    PartitionAssigner,
    PartitionedNeighbors,
    bucket_of_partitions,
    fit_centroids,
    partition_count,
    probe_lists,
)
from operators.schema import DENSE, vector_dim
from operators.search.index_plan import IndexType, plan_index, plan_type
from operators.search.store import TableStore
from operators.tables import SERVING, Pin, check_table_name
from operators.vectors import as_matrix
from pipelines.buckets import work_folder, write_buckets
from pipelines.downstream import Stopwatch, num_blocks, sample_rows, using_ray, write_table_from_ray
from pipelines.index import build_for_serving, require_serving_latest

log = logging.getLogger(__name__)

DEFAULT_SEED = 1234
# Exact k-NN costs rows^2 x dim multiply-adds and each worker holds the column: 100k x 384 is ~4e12
# (a minute or two per core) and 150 MB per worker. Beyond it the ANN index answers.
EXACT_MAX_ROWS = 100_000
IO_TASK_CPUS = 0.25  # reader and writer tasks mostly wait on storage
# ivf: rows per scratch bucket, the unit a scoring task reads (with the probed partitions of its neighbours).
ROWS_PER_BUCKET = 65_536
# Vectors per recall-check task: each returns at most (sample x k) candidates to the driver, which keeps the best.
SAMPLE_BATCH_BYTES = 256 * 1024 * 1024


class Method(StrEnum):
    AUTO = "auto"
    EXACT = "exact"
    ANN = "ann"
    IVF = "ivf"


@dataclass(frozen=True)
class NeighborsJob:
    """One k-NN graph run's options (pipelines/commands/neighbors.py says what each means)."""

    uri: str
    table: str
    k: int = 10
    column: str = DENSE
    method: Method = Method.AUTO
    exact_max_rows: int = EXACT_MAX_ROWS
    recall_sample: int = 1000
    index_type: IndexType = IndexType.AUTO
    partitions: int | None = None  # ivf: k-means partitions (default ~sqrt(rows))
    probes: int = DEFAULT_PROBES  # ivf: partitions each partition's rows are scored against (itself included)
    work_dir: str | None = None  # ivf: scratch folder every Ray node can read
    seed: int = DEFAULT_SEED
    actors: int | None = None
    address: str | None = None
    version: int | None = None  # read this table version instead of the serving one
    tag: str | None = None  # or the version with this tag
    storage: Mapping | None = field(default=None, repr=False)  # operators/storage.py settings

    def __post_init__(self) -> None:
        check_table_name(self.table)  # before Ray starts or storage is touched
        check_positive(self, "partitions", "probes")

    @property
    def pin(self) -> Pin:
        """The version read; `--tag serving` is the default, not a pin."""
        return Pin(self.version, None if self.tag == SERVING else self.tag)


def choose_method(job: NeighborsJob, rows: int) -> Method:
    if job.method not in list(Method):
        msg = f"--method must be one of {', '.join(Method)}, got {job.method!r}"
        raise ValueError(msg)
    if job.method == Method.AUTO:
        return Method.EXACT if rows <= job.exact_max_rows else Method.IVF
    if job.method == Method.IVF and rows == 0:
        return Method.EXACT  # nothing to partition: the empty graph
    return Method(job.method)


def run_neighbors(job: NeighborsJob) -> dict:
    """Write T_neighbors; returns the JSON summary (rows, edges, method, index, recall@k on a sample)."""
    if job.k < 1:
        msg = f"--k must be at least 1, got {job.k}"
        raise ValueError(msg)
    watch = Stopwatch()
    store = TableStore(job.uri, job.table, job.storage, pin=job.pin)
    dim = vector_dim(store.schema, job.column, f"table {job.table!r}")
    rows = store.rows
    method = choose_method(job, rows)
    result: dict = {"table": job.table, "column": job.column, "k": job.k, "method": str(method), "rows": rows}
    index = None
    if method == Method.ANN:
        with watch.stage("index"):
            store, index = _ensure_index(store, job, dim)
        result["index"] = index
    target = store.ref.lake.table(neighbors_table_name(job.table))
    with using_ray(job.address, watch):
        from pipelines.ray_runtime import cluster_cpus

        cpus = cluster_cpus()
        actors = job.actors or max(1, cpus)
        if method == Method.IVF:
            work = work_folder(job.uri, f"{job.table}_neighbors", job.work_dir)
            try:
                graph, result["ivf"] = _ivf_graph(store, job, dim, cpus, work, watch)
                with watch.stage("graph"):
                    edges, version = _write_graph(target, graph, rows, job.k)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        else:
            with watch.stage("graph"):
                dataset = _read(store, [ID, job.column], dim, cpus)
                worker, kwargs = (_ExactWorker, {}) if method == Method.EXACT else (_AnnWorker, index)
                from ray.data import ActorPoolStrategy

                graph = dataset.map_batches(
                    worker, batch_format="pyarrow", batch_size=_batch_rows(method),
                    compute=ActorPoolStrategy(size=actors), num_cpus=max(cpus - 0.5, 0.1) / actors,
                    fn_constructor_kwargs={"ref": store.ref, "version": store.version, "column": job.column,
                                           "k": job.k, **kwargs})
                edges, version = _write_graph(target, graph, rows, job.k)
        result.update({"edges": edges, "neighbors_table": target.name, "neighbors_version": version})
        if method != Method.EXACT and job.recall_sample > 0 and rows > 1:
            with watch.stage("recall"):
                result.update(_sample_recall(store, target, job, dim, cpus))
    result["table_version"] = store.version
    result["seconds"] = watch.summary()
    return result


def _write_graph(target, graph, rows: int, k: int) -> tuple[int, int]:
    return write_table_from_ray(target, NEIGHBORS_SCHEMA, graph, total=rows * min(k, max(rows - 1, 0)),
                                desc="edges")


def _ivf_graph(store: TableStore, job: NeighborsJob, dim: int, cpus: int, work: str, watch: Stopwatch):
    """Steps 1-2 of the ivf method up to the edges (a lazy Ray dataset, one block per bucket) and its summary:
    partitions, buckets, probes, and the candidates scored per row."""
    import ray

    rows = store.rows
    partitions = partition_count(rows, job.partitions)
    with watch.stage("partition"):
        wanted = min(rows, partitions * 64, max(partitions, SAMPLE_BATCH_BYTES // (4 * dim)))
        sample = sample_rows(store.dataset, wanted, [job.column], job.seed)
        centroids = fit_centroids(as_matrix(sample.column(job.column)), partitions, job.seed)
        del sample
        bucket_of = bucket_of_partitions(centroids, math.ceil(rows / ROWS_PER_BUCKET), job.seed)
        counts = _read(store, [ID, job.column], dim, cpus).map_batches(
            _BucketWriter(centroids, bucket_of, job.column, work), batch_format="pyarrow", batch_size=None,
            num_cpus=1)
        sizes = np.zeros(len(centroids), dtype=np.int64)
        for batch in counts.iter_batches(batch_format="numpy", batch_size=None):
            np.add.at(sizes, batch[PARTITION], batch["rows"])
        if int(sizes.sum()) != rows:
            msg = f"partitioned {int(sizes.sum())} rows, expected {rows}; is --work-dir shared by every Ray node?"
            raise RuntimeError(msg)
        probes = probe_lists(centroids, sizes, job.probes, job.k)
    items = []
    for bucket in range(int(bucket_of.max(initial=-1)) + 1):
        targets = [p for p in np.flatnonzero(bucket_of == bucket).tolist() if sizes[p]]
        if targets:
            lists = [probes[p].tolist() for p in targets]
            read = sorted({int(bucket_of[p]) for probe in lists for p in probe})
            items.append({BUCKET: bucket, "targets": targets, "probes": lists, "read": read})
    scored = sum(int(sizes[p]) * int(sizes[probes[p]].sum()) for p in range(len(sizes)) if sizes[p])
    summary = {"partitions": len(centroids), "probes": job.probes, "buckets": len(items),
               "candidates_per_row": round(scored / max(rows, 1), 1)}
    graph = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        _score_buckets, batch_format="pyarrow", batch_size=1, num_cpus=1,
        fn_kwargs={"work": work, "column": job.column, "k": job.k})
    return graph, summary


class _BucketWriter:
    """Batch transform (step 2, ivf): the rows with their partition appended to their bucket's scratch files;
    returns only the rows per partition."""

    def __init__(self, centroids: np.ndarray, bucket_of: np.ndarray, column: str, work: str) -> None:
        self.assign = PartitionAssigner(centroids, bucket_of, column)
        self.work = work

    def __call__(self, batch: pa.Table) -> pa.Table:
        assigned = self.assign(batch)
        write_buckets(assigned, self.work)
        partition, rows = np.unique(assigned.column(PARTITION).to_numpy(), return_counts=True)
        return pa.table({PARTITION: pa.array(partition, pa.int32()), "rows": pa.array(rows, pa.int64())})


def _score_buckets(batch: pa.Table, work: str, column: str, k: int) -> pa.Table:
    """Step 2 (ivf) for buckets: the rows of every partition their partitions probe, read back from the
    scratch files of the buckets holding them, scored by PartitionedNeighbors."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    parts = []
    for targets, probes, read in zip(*(batch.column(c).to_pylist() for c in ("targets", "probes", "read")),
                                     strict=True):
        wanted = pa.array(sorted({p for probe in probes for p in probe}), pa.int32())
        rows = pa.concat_tables([pads.dataset(os.path.join(work, f"{BUCKET}={b}"), format="ipc").to_table(
            columns=[ID, PARTITION, column], filter=pc.field(PARTITION).isin(wanted)) for b in read])
        _, first = np.unique(np.asarray(rows.column(ID).to_pylist(), dtype=str), return_index=True)
        if len(first) < rows.num_rows:  # a retried writer task wrote its rows twice: keep one copy
            rows = rows.take(np.sort(first))
        parts.append(PartitionedNeighbors(column, k)(rows, targets, [np.asarray(p) for p in probes]))
    return pa.concat_tables(parts) if parts else NEIGHBORS_SCHEMA.empty_table()


def _batch_rows(method: Method) -> int:
    """Query rows per actor call: exact scores (rows x table) blocks itself; ANN sends a few calls' worth."""
    return 4096 if method == Method.EXACT else 2048


def _read(store: TableStore, columns: list[str], dim: int, cpus: int):
    import ray

    return ray.data.read_lance(store.ref.dataset_uri, version=store.version, columns=columns,
                               storage_options=store.ref.lake.lance_options(),
                               override_num_blocks=num_blocks(store.rows, dim, cpus), num_cpus=IO_TASK_CPUS)


def _ensure_index(store: TableStore, job: NeighborsJob, dim: int) -> tuple[TableStore, dict]:
    """The ANN index of the version read and how it is searched. A version read without one gets it the way
    `embedlake index` builds it: on the serving version, which then moves to the version holding the index (same
    rows), so the index always belongs to the snapshot that readers, and this job, read. An index is never built
    on a version readers do not read: a pinned version, or a serving version with an unfinished run on top of it,
    without an index is refused."""
    existing = store.vector_index(job.column)
    built = None
    if existing is None:
        _require_buildable(store, job)
        plan = plan_index(job.column, store.rows, dim, job.index_type)
        log.info("building %s on %s.%s (%d rows) for the k-NN graph, for serving version %d", plan.index_type,
                 job.table, job.column, store.rows, store.version)
        store, seconds = build_for_serving(store, [plan])
        built = round(seconds[job.column], 3)
        existing = store.vector_index(job.column)
        if existing is None:
            msg = f"building an ANN index on {job.column!r} of table {job.table!r} left no index"
            raise RuntimeError(msg)
    plan = plan_index(job.column, store.rows, dim, plan_type(existing[0]))
    index = {"index_type": existing[0], "metric": existing[1], "nprobes": plan.nprobes,
             "refine_factor": plan.refine_factor}
    if built is not None:
        index["build_seconds"] = built
    return store, index


def _require_buildable(store: TableStore, job: NeighborsJob) -> None:
    """A one-line error unless an index may be built for the version read: the serving one, as the latest."""
    where = f"table {job.table!r} has no ANN index on {job.column!r} at version {store.version}"
    if job.pin != Pin():
        msg = (f"{where} ({job.pin.describe()}), and indexes are built for the serving version only: read the serving "
               "version, pin a version that has one, or use --method exact")
        raise ValueError(msg)
    require_serving_latest(store, f"{where} (serving), and none is built for it: ", "; or use --method exact")


class _ExactWorker:
    """Actor: holds the whole column (small tables) and scores blocks of rows against it."""

    def __init__(self, ref, version: int, column: str, k: int) -> None:
        data = ref.dataset(version).to_table(columns=[ID, column])
        self.column = column
        self.op = ExactNeighbors(as_matrix(data.column(column)), np.asarray(data.column(ID).to_pylist(),
                                                                             dtype=object), k)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.op(batch, self.column)


class _AnnWorker:
    """Actor: queries the table's ANN index (opened once, at the job's version) for blocks of rows."""

    def __init__(self, ref, version: int, column: str, k: int, index_type: str, metric: str, nprobes: int,
                 refine_factor: int | None, build_seconds: float | None = None) -> None:
        table = ref.open()
        table.checkout(version)
        self.op = AnnNeighbors(table, column, k, metric, nprobes=nprobes, refine_factor=refine_factor)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.op(batch)


def _sample_recall(store: TableStore, target, job: NeighborsJob, dim: int, cpus: int) -> dict:
    """Recall@k of the written graph against exact top-k on `recall_sample` seeded rows."""
    sample = sample_rows(store.dataset, job.recall_sample, [ID, job.column], job.seed)
    sample_ids = sample.column(ID).to_pylist()
    batch_rows = max(1, SAMPLE_BATCH_BYTES // (4 * dim))
    candidates = _read(store, [ID, job.column], dim, cpus).map_batches(
        SampleTopK(as_matrix(sample.column(job.column)), sample_ids, job.column, job.k),
        batch_format="pyarrow", batch_size=batch_rows, num_cpus=1)
    best = None
    for part in candidates.iter_batches(batch_format="pyarrow", batch_size=None):
        best = best_of([part] if best is None else [best, part], job.k)  # (sample x k) rows at most
    truth: dict[str, list[str]] = {doc: [] for doc in sample_ids}
    if best is not None:
        for query, doc in zip(best.column(QUERY).to_pylist(), best.column(ID).to_pylist(), strict=True):
            truth[sample_ids[query]].append(doc)
    quoted = ", ".join("'" + doc.replace("'", "''") + "'" for doc in sample_ids)
    edges = target.dataset().to_table(columns=[ID, NEIGHBOR, RANK], filter=f"{ID} IN ({quoted})")
    found: dict[str, list[tuple[int, str]]] = {}
    for doc, neighbor, rank in zip(*(edges.column(c).to_pylist() for c in (ID, NEIGHBOR, RANK)), strict=True):
        found.setdefault(doc, []).append((rank, neighbor))
    graph = {doc: [neighbor for _rank, neighbor in sorted(pairs)] for doc, pairs in found.items()}
    return {f"recall@{job.k}": recall_at_k(graph, truth, job.k), "recall_sample": len(sample_ids)}
