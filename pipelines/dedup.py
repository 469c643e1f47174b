"""The near-duplicate job: exact duplicates by text hash, then SemDeDup (or MinHash) over the rest.

Semantic mode, the way NeMo Curator lays it out, with memory bounded at every step:
1. exact: (id, text_hash) only, one hash aggregation, O(n); copies point at the smallest id of their text.
2. fit spherical k-means on a sample of the vectors (driver).
3. Ray Data assigns every remaining row to its centroid and writes (id, cluster, distance, vector) to Parquet
   partitioned into buckets of whole clusters (cluster mod buckets), so no process ever holds the table.
4. one Ray task per bucket runs SemDeDup on each of its clusters (blockwise, O(cluster * block) memory) and
   returns only the duplicate rows.
5. the driver points exact copies at their final keeper and writes T_duplicates (small) in one commit.
MinHash mode replaces 2-4 with signatures computed by Ray Data and LSH in the driver (comparison runs).
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.cluster import DEFAULT_NITER, DEFAULT_SEED, CentroidAssigner, KMeansConfig, fit_spherical_kmeans
from operators.dedup import (
    DEFAULT_BLOCK,
    DEFAULT_EPS,
    Keep,
    Ranking,
    SemDedupConfig,
    empty_duplicates,
    exact_duplicates,
    removed_at_eps,
    resolve_exact,
    semdedup,
)
from operators.errors import check_choices, check_positive, check_range
from operators.minhash import (
    DEFAULT_NGRAM,
    DEFAULT_NUM_PERM,
    DEFAULT_THRESHOLD,
    LENGTH,
    SIGNATURE,
    MinHasher,
    minhash_duplicates,
)
from operators.schema import (
    CLUSTER,
    DENSE,
    DISTANCE,
    DUPLICATE_OF,
    DUPLICATES_SCHEMA,
    ID,
    TEXT_HASH,
    duplicates_table_name,
    require_columns,
    vector_dim,
)
from operators.tables import Lake, Pin, check_table_name
from operators.vectors import as_matrix
from pipelines.buckets import BUCKET, bucket_folders, read_bucket, work_folder, write_buckets
from pipelines.downstream import Stopwatch, read_ray_dataset, sample_rows, using_ray

log = logging.getLogger(__name__)



class Method(StrEnum):
    SEMANTIC = "semantic"  # SemDeDup on the vectors
    MINHASH = "minhash"  # MinHash + LSH on the texts, for comparison runs


# Aim for clusters of about this many rows when --k is not given: pairwise work per row stays ~1000 dot
# products, and each cluster is small enough for one block pass.
ROWS_PER_CLUSTER = 1000
# Rows per bucket file set: one bucket is what one task holds in memory at once.
ROWS_PER_BUCKET = 50_000
# Also report how many rows SemDeDup would remove at these eps, so a user can pick eps from one run.
EPS_SWEEP = (0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)


@dataclass(frozen=True)
class DedupJob:
    """One dedup run's options (pipelines/commands/dedup.py says what each means)."""

    uri: str
    table: str
    eps: float = DEFAULT_EPS
    column: str = DENSE
    method: Method = Method.SEMANTIC
    k: int | None = None
    rank: Ranking = Ranking.HARD
    keep: Keep = Keep.FIRST
    text_column: str = "text"
    block: int = DEFAULT_BLOCK
    niter: int = DEFAULT_NITER
    seed: int = DEFAULT_SEED
    work_dir: str | None = None
    threshold: float = DEFAULT_THRESHOLD
    num_perm: int = DEFAULT_NUM_PERM
    ngram: int = DEFAULT_NGRAM
    rows_per_bucket: int = ROWS_PER_BUCKET
    address: str | None = None
    version: int | None = None  # read this table version instead of the serving one
    tag: str | None = None  # or the version with this tag
    storage: Mapping | None = field(default=None, repr=False)  # operators/storage.py settings

    def __post_init__(self) -> None:
        check_table_name(self.table)
        check_choices("method", self.method, list(Method))
        check_positive(self, "k", "block", "niter", "num_perm", "ngram", "rows_per_bucket")
        check_range("eps", self.eps, 0.0, 2.0, integer=False)
        check_range("threshold", self.threshold, 0.0, 1.0, integer=False)


def default_k(rows: int) -> int:
    return max(1, round(rows / ROWS_PER_CLUSTER))


def run_dedup(job: DedupJob) -> dict:
    """Find exact and near duplicates, write T_duplicates; returns the JSON summary."""
    watch = Stopwatch()
    if job.method not in list(Method):
        msg = f"method must be one of {', '.join(Method)}, got {job.method!r}"
        raise ValueError(msg)
    config = SemDedupConfig(eps=job.eps, rank=job.rank, keep=job.keep, block=job.block, seed=job.seed)
    lake = Lake(job.uri, job.storage)
    dataset = lake.table(job.table).snapshot(Pin(job.version, job.tag))
    where = f"table {job.table!r}"
    schema = dataset.schema
    if job.method == Method.MINHASH or job.keep == Keep.LONGEST:
        why = "--method minhash" if job.method == Method.MINHASH else "--keep longest"
        require_columns(schema, [job.text_column], where, f"{why} reads the texts; see --text-column")
    dim = vector_dim(schema, job.column, where) if job.method == Method.SEMANTIC else 0
    rows = dataset.count_rows()

    with watch.stage("exact"):
        exact = _exact(dataset) if TEXT_HASH in schema.names else empty_duplicates()
        removed = frozenset(exact.column(ID).to_pylist())
    log.info("%d of %d rows are exact copies", len(removed), rows)
    left = rows - len(removed)
    k = job.k or default_k(left)
    if job.method == Method.SEMANTIC and k > max(left, 1):
        msg = f"k={k} is more than the {left} rows left after exact dedup"
        raise ValueError(msg)
    with using_ray(job.address, watch):
        if job.method == Method.SEMANTIC:
            near, details = _semantic(job, config, lake, dataset, dim, k, left, removed, watch)
        else:
            near, details = _minhash(job, lake, dataset, removed, watch)
    with watch.stage("write"):
        duplicates = resolve_exact(exact, near)
        lake.write_table(duplicates_table_name(job.table), DUPLICATES_SCHEMA, [duplicates])
    count = duplicates.num_rows
    return {
        "table": job.table,
        "uri": job.uri,
        "table_version": dataset.version,
        "rows": rows,
        "duplicates": count,
        "groups": len(pc.unique(duplicates.column(DUPLICATE_OF))) if count else 0,
        "removed_fraction": count / rows if rows else 0.0,
        "exact_duplicates": exact.num_rows,
        "near_duplicates": near.num_rows,
        "method": job.method,
        **details,
        "duplicates_table": duplicates_table_name(job.table),
        "seconds": watch.summary(),
    }


def _exact(dataset) -> pa.Table:
    ids = dataset.to_table(columns=[ID, TEXT_HASH])
    return exact_duplicates(ids.column(ID), ids.column(TEXT_HASH))


class _Partitioner:
    """Batch transform for step 3: drop exact copies, assign clusters, append the rows (with their cluster,
    distance, vector and text length) to their bucket's scratch files; returns only the row count."""

    def __init__(self, centroids, column, removed, buckets, text_column, root) -> None:
        self.assigner = CentroidAssigner(centroids, column)
        self.column = column
        self.drop = _Dropper(removed)
        self.buckets = buckets
        self.text_column = text_column
        self.root = root

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch = self.drop(batch)
        assigned = self.assigner(batch)
        out = assigned.append_column(self.column, batch.column(self.column))
        if self.text_column:
            lengths = pc.utf8_length(pc.fill_null(batch.column(self.text_column), ""))
            out = out.append_column(LENGTH, lengths.cast(pa.int64()))
        buckets = out.column(CLUSTER).to_numpy() % self.buckets
        written = write_buckets(out.append_column(BUCKET, pa.array(buckets, pa.int32())), self.root)
        return pa.table({"rows": pa.array([written], pa.int64())})


def _semantic(
    job: DedupJob,
    config: SemDedupConfig,
    lake: Lake,
    dataset,
    dim: int,
    k: int,
    rows: int,
    removed: frozenset,
    watch: Stopwatch,
) -> tuple[pa.Table, dict]:
    import ray

    details = {"k": k, "eps": job.eps, "rank": job.rank, "keep": job.keep, "column": job.column}
    if rows == 0:
        return empty_duplicates(), {**details, "buckets": 0, "removed_at_eps": {}}
    kmeans = KMeansConfig(k=k, niter=job.niter, seed=job.seed)
    with watch.stage("sample"):
        sample = sample_rows(dataset, kmeans.sample_rows, [job.column], job.seed)
    with watch.stage("fit"):
        centroids = fit_spherical_kmeans(as_matrix(sample.column(job.column)), kmeans)
    del sample

    buckets = max(1, min(k, math.ceil(rows / job.rows_per_bucket)))
    work = work_folder(job.uri, f"{job.table}_dedup", job.work_dir)
    text_column = job.text_column if job.keep == Keep.LONGEST else None
    columns = [ID, job.column] + ([text_column] if text_column else [])
    try:
        with watch.stage("assign_and_partition"):
            partitioner = _Partitioner(centroids, job.column, removed, buckets, text_column, work)
            counts = read_ray_dataset(lake, dataset, columns, dim).map_batches(
                partitioner, batch_format="pyarrow", batch_size=None
            )
            partitioned = sum(sum(batch["rows"]) for batch in counts.iter_batches(batch_format="numpy"))
        if partitioned != rows:
            msg = f"partitioned {partitioned} rows, expected {rows}; is --work-dir shared by every Ray node?"
            raise RuntimeError(msg)
        with watch.stage("pairwise"):
            folders = bucket_folders(work)
            task = ray.remote(_dedup_bucket)
            results = ray.get([task.remote(folder, job.column, config) for folder in folders])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    near = pa.concat_tables([table for table, _ in results]) if results else empty_duplicates()
    scores = np.concatenate([scores for _, scores in results]) if results else np.empty(0, np.float32)
    return near, {**details, "buckets": len(folders), "removed_at_eps": removed_at_eps(scores, EPS_SWEEP)}


def _dedup_bucket(folder: str, column: str, config: SemDedupConfig) -> tuple[pa.Table, np.ndarray]:
    """Step 4 for one bucket: SemDeDup on each of its clusters; returns duplicate rows and every score."""
    rows = read_bucket(folder)
    ids = rows.column(ID).to_numpy(zero_copy_only=False)
    _, first = np.unique(ids.astype(str), return_index=True)
    if len(first) < len(ids):  # a retried partition task wrote its rows twice: keep one copy
        rows = rows.take(np.sort(first))
    lengths = rows.column(LENGTH).to_numpy() if LENGTH in rows.column_names else None
    result = semdedup(
        rows.column(ID).to_numpy(zero_copy_only=False),
        as_matrix(rows.column(column)),
        rows.column(CLUSTER).to_numpy(),
        rows.column(DISTANCE).to_numpy(),
        config,
        lengths,
    )
    return result.duplicates, result.scores


def _minhash(job: DedupJob, lake: Lake, dataset, removed: frozenset, watch: Stopwatch) -> tuple[pa.Table, dict]:
    """Signatures in parallel (Ray Data), then LSH and grouping in the driver."""
    with watch.stage("signatures"):
        ds = read_ray_dataset(lake, dataset, [ID, job.text_column], 1)
        ds = ds.map_batches(_Dropper(removed), batch_format="pyarrow", batch_size=None)
        ds = ds.map_batches(
            MinHasher(job.text_column, job.num_perm, job.ngram, job.seed),
            batch_format="pyarrow",
            batch_size=None,
        )
        parts = list(ds.iter_batches(batch_format="pyarrow", batch_size=None))
    with watch.stage("lsh"):
        signed = pa.concat_tables(parts) if parts else None
        near = empty_duplicates()
        if signed is not None and signed.num_rows:
            sigs = signed.column(SIGNATURE).combine_chunks().flatten().to_numpy().reshape(-1, job.num_perm)
            near = minhash_duplicates(
                signed.column(ID).to_numpy(zero_copy_only=False),
                sigs,
                job.threshold,
                job.keep,
                signed.column(LENGTH).to_numpy(),
                job.seed,
            )
    details = {
        "threshold": job.threshold,
        "num_perm": job.num_perm,
        "ngram": job.ngram,
        "keep": job.keep,
        "text_column": job.text_column,
    }
    return near, details


class _Dropper:
    """Batch filter: rows whose id is in `ids` (the exact copies) leave before any further work."""

    def __init__(self, ids: frozenset) -> None:
        self.ids = pa.array(sorted(ids), pa.string())

    def __call__(self, batch: pa.Table) -> pa.Table:
        if len(self.ids) == 0:
            return batch
        return batch.filter(pc.invert(pc.is_in(batch.column(ID), value_set=self.ids)))
