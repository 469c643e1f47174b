"""The train job: Matryoshka fine-tuning on Ray Train, checkpointed to MODEL_OUT, resumable after a kill.

Driver: validates the options and the input's schema, runs one check task per shard (counts and the
first empty text; only counts come back), then hands the training to Ray Train's `TorchTrainer`:
data-parallel workers (one GPU each when the cluster has GPUs, else CPU workers), each reading its
pairs from the lake itself and running sentence-transformers' trainer under torch.distributed.
Every epoch ends in a checkpoint (weights, optimizer, scheduler, RNG) that Ray Train persists under
MODEL_OUT/checkpoints; re-running the same command after a kill restores Ray Train's run from there and
the trainer resumes from the last epoch. The final model is reported as one more checkpoint, then
copied to MODEL_OUT's root as a plain sentence-transformers folder, evaluated on the held-out pairs
against the base model in a Ray task, and the checkpoints are removed.

MODEL_OUT layout: the model files; `embedlake_training.json` (settings); `training_report.{json,png}`;
while a run is unfinished, `checkpoints/` (`train_config.json` + Ray Train's run folder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field

from operators.errors import UsageError, option_name
from operators.model_store import (
    filesystem,
    is_remote,
    join,
    read_json,
    remove_tree,
    write_bytes,
    write_json,
)
from operators.schema import TEXT
from operators.sources import ShardSet, find_shards
from operators.storage import redacted_errors
from operators.tables import check_table_name
from operators.training.matryoshka import (
    TRAINING_FILE,
    MatryoshkaSettings,
    TrainingOptions,
    check_dims,
    loss_by_epoch,
    loss_curve,
    options_of,
)
from operators.training.mining import DEFAULT_MARGIN, MiningSettings
from operators.training.pairs import PairCheck, PairColumns, PairReader, check_input
from pipelines.train_worker import FINAL_DIR

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
RUN_NAME = "run"
CONFIG_FILE = "train_config.json"
REPORT_FILE = "training_report.json"
PLOT_FILE = "training_report.png"
LOSS_POINTS = 200  # about this many logged losses per run
MAX_FAILURES = 2  # worker failures Ray Train recovers from (from the last checkpoint) before giving up


# The --mine-* options besides --mine-negatives, with their defaults (TrainJob's).
MINE_DEFAULTS = {"mine_table": None, "mine_count": 1, "mine_skip": 0, "mine_depth": None,
                 "mine_margin": DEFAULT_MARGIN, "mine_text_column": TEXT}


@dataclass(kw_only=True)
class TrainJob(TrainingOptions):
    """Everything one `embedlake train` run needs; plain data validated at the edge. The CLI fills it
    field by field from the options of the same names (pipelines/commands/train.py)."""

    input: str
    model_out: str
    anchor_column: str
    positive_column: str
    negative_column: str | None = None
    base: str = "minilm"
    dims: list[int] = field(default_factory=list)  # empty: the full size, then 1024..64 below it
    dim_weights: list[float] = field(default_factory=list)  # empty: uniform
    holdout: float = 0.1
    workers: int = 1
    cpus_per_worker: int | None = None  # default: the cluster's CPUs shared out (1 with GPUs)
    address: str | None = None
    overwrite: bool = False
    progress: bool = True
    storage: dict = field(default_factory=dict, repr=False)  # resolved settings (operators/storage.py)
    command: list[str] = field(default_factory=list)
    # --mine-negatives: hard negatives from an embedlake table (pipelines/mine_negatives.py)
    mine_negatives: str | None = None  # OUTPUT (the table from mine_table) or a table folder OUTPUT/NAME.lance
    mine_table: str | None = None  # default: docs
    mine_count: int = 1  # negatives per anchor (one training row each)
    mine_skip: int = 0  # candidates passed over before taking negatives
    mine_depth: int | None = None  # hits considered per anchor; default skip + 10 x count
    mine_margin: float | None = DEFAULT_MARGIN  # relative margin to the positive's score; None: off
    mine_text_column: str = TEXT

    def columns(self) -> PairColumns:
        return PairColumns(self.anchor_column, self.positive_column, self.negative_column)

    def mining(self) -> MiningSettings:
        return MiningSettings(count=self.mine_count, skip=self.mine_skip, depth=self.mine_depth,
                              margin=self.mine_margin)

    def identity(self) -> dict:
        """What makes two runs the same run (a resume must match it); resources are not part of it, nor the
        mining options of a run that mines nothing (so runs from before they existed keep their identity)."""
        skip = {"workers", "cpus_per_worker", "address", "overwrite", "progress", "storage", "command"}
        if self.mine_negatives is None:
            skip |= set(MINE_DEFAULTS)
        return {k: v for k, v in asdict(self).items() if k not in skip}


def validate(job: TrainJob) -> None:
    """Option checks that need no data: fail (exit status 2) before anything starts."""
    checks = [
        (job.epochs >= 1, f"--epochs must be at least 1, got {job.epochs}"),
        (job.batch_size >= 2, f"--batch-size must be at least 2 (in-batch negatives), got {job.batch_size}"),
        (job.workers >= 1, f"--workers must be at least 1, got {job.workers}"),
        (job.batch_size % job.workers == 0 and job.batch_size // job.workers >= 1,
         f"--batch-size {job.batch_size} must split evenly over {job.workers} workers (it is the global batch)"),
        (0.0 <= job.holdout < 1.0, f"--holdout must be in [0, 1), got {job.holdout}"),
        (job.max_length is None or job.max_length >= 8, f"--max-length must be at least 8, got {job.max_length}"),
        (job.learning_rate > 0, f"--learning-rate must be positive, got {job.learning_rate}"),
        (0.0 <= job.warmup_ratio < 1.0, f"--warmup-ratio must be in [0, 1), got {job.warmup_ratio}"),
        (job.cpus_per_worker is None or job.cpus_per_worker >= 1, "--cpus-per-worker must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    validate_mining(job)


def validate_mining(job: TrainJob) -> None:
    """--mine-* options: with --mine-negatives only, never with --negative-column, and possible."""
    from pipelines.mine_negatives import table_location

    if job.mine_negatives is None:
        given = [option_name(name) for name, default in MINE_DEFAULTS.items() if getattr(job, name) != default]
        if given:
            msg = f"{', '.join(given)} only apply with --mine-negatives TABLE, which is not given"
            raise UsageError(msg)
        return
    if job.negative_column is not None:
        msg = ("--mine-negatives and --negative-column both give the hard negatives: mine them from a table or "
               "read them from a column, not both")
        raise UsageError(msg)
    check_table_name(table_location(job.mine_negatives, job.mine_table)[1])
    try:
        job.mining().check()
    except ValueError as error:
        raise UsageError(str(error)) from None


def model_dimension(folder: str) -> int:
    from operators.encoders.folders import describe_mrl_folder as describe_folder

    return describe_folder(folder).dimension


def settings_for(job: TrainJob, base_folder: str) -> MatryoshkaSettings:
    try:
        dims, weights = check_dims(job.dims, job.dim_weights, model_dimension(base_folder))
    except ValueError as error:
        raise UsageError(str(error)) from None
    return MatryoshkaSettings(base=base_folder, dims=dims, dim_weights=weights, **options_of(job))


def finished_run(job: TrainJob) -> dict | None:
    """MODEL_OUT's state, read only: the stored report when this very run already finished, None when
    it is empty or holds this run unfinished. A run of other settings is refused unless --overwrite
    (then it is replaced at `claim_output`); a folder that is not ours is always refused."""
    storage = job.storage
    fs, path = filesystem(job.model_out, storage)
    with redacted_errors(storage):
        if fs.exists(path) and not fs.isdir(path):
            msg = f"MODEL_OUT {job.model_out} is a file, not a folder"
            raise ValueError(msg)
        entries = fs.ls(path, detail=False) if fs.exists(path) else []
    finished = read_json(join(job.model_out, REPORT_FILE), storage)
    unfinished = read_json(join(job.model_out, CHECKPOINTS, CONFIG_FILE), storage)
    if entries and finished is None and unfinished is None:
        msg = (f"MODEL_OUT {job.model_out} is not empty and holds no embedlake training run; "
               "choose a new or empty folder")
        raise ValueError(msg)
    previous = (finished or {}).get("job") or unfinished
    identity = json.loads(json.dumps(job.identity()))
    if previous is not None and previous != identity and not job.overwrite:
        changed = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
        state = "a finished" if finished else "an unfinished"
        msg = (f"MODEL_OUT {job.model_out} holds {state} run with other settings ({', '.join(changed)}); "
               "pass --overwrite to replace it, or choose another folder")
        raise ValueError(msg)
    if finished is not None and previous == identity and not job.overwrite:
        return {**finished, "already_trained": True}
    return None


def claim_output(job: TrainJob) -> None:
    """Start (or keep) this run in MODEL_OUT: a replaced run's files go, the run's settings are noted."""
    storage = job.storage
    noted = read_json(join(job.model_out, CHECKPOINTS, CONFIG_FILE), storage)
    identity = json.loads(json.dumps(job.identity()))
    finished = read_json(join(job.model_out, REPORT_FILE), storage)
    replacing = job.overwrite or finished is not None or (noted is not None and noted != identity)
    if replacing:
        remove_tree(job.model_out, storage)  # finished_run() checked that the folder is a run of ours
    if replacing or noted is None:
        write_json(join(job.model_out, CHECKPOINTS, CONFIG_FILE), identity, storage)


def run_train(job: TrainJob) -> dict:
    """Run the job and return the JSON summary (also written to MODEL_OUT/training_report.json)."""
    from operators.encoders.loader import resolve_model_path

    started = time.time()
    validate(job)
    base_folder = resolve_model_path(job.base)
    settings = settings_for(job, base_folder)
    shards = find_shards(job.input, job.storage)
    check_input(shards, job.columns())
    done = finished_run(job)
    if done is not None:
        log.info("MODEL_OUT %s already holds this finished run; nothing to do", job.model_out)
        return done
    mining_table = None
    if job.mine_negatives is not None:  # the table is checked before Ray starts (pipelines/mine_negatives.py)
        from pipelines.mine_negatives import open_mining_table

        mining_table = open_mining_table(job.mine_negatives, job.mine_table, job.mine_text_column, job.storage)

    from pipelines.ray_runtime import cluster_cpus, cluster_gpus, start_ray, stop_ray

    we_started_ray = start_ray(job.address, num_cpus=os.cpu_count())
    try:
        reader = PairReader(job.columns(), job.holdout, job.storage)
        counts = check_pairs(reader, shards, job.batch_size)
        claim_output(job)
        source = TrainSource(shards, reader, counts.train)
        if mining_table is not None:
            source = mine(job, mining_table, source, base_folder)
        steps_per_epoch = source.rows // job.batch_size
        gpus = cluster_gpus()
        cpus = job.cpus_per_worker or (1 if gpus else max(1, cluster_cpus() // job.workers))
        log.info("training on %d pairs (%d held out) from %d shard(s): %d workers (%s), %d steps per epoch",
                 source.rows, counts.holdout, counts.files, job.workers, "GPU" if gpus else f"{cpus} CPUs each",
                 steps_per_epoch)
        train_started = time.time()
        final = fit(job, settings, shards, reader, counts, use_gpu=gpus > 0, cpus_per_worker=cpus,
                    logging_steps=max(1, steps_per_epoch * job.epochs // LOSS_POINTS), private_ray=we_started_ray,
                    source=source)
        train_seconds = time.time() - train_started
        publish_model(job, final["path"], final["filesystem"])
    finally:
        if we_started_ray:
            stop_ray()
    summary = {
        "model_out": job.model_out,
        "base": job.base,
        "pairs": counts.rows,
        "train_pairs": source.rows,
        "holdout_pairs": counts.holdout,
        "evaluated_pairs": final["evaluation"].get("pairs", 0),
        "files": counts.files,
        "workers": job.workers,
        "device": "gpu" if gpus else "cpu",
        "cpus_per_worker": cpus,
        "steps": final["steps"],
        "resumed_from_step": final["resumed_from_step"],
        "epochs": job.epochs,
        "dims": settings.dims,
        "dim_weights": settings.dim_weights,
        "prompts": final["prompts"],
        "loss_by_epoch": loss_by_epoch(final["loss"], job.epochs),
        "loss": final["loss"],
        "evaluation": final["evaluation"],
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.time() - started, 1),
        "job": json.loads(json.dumps(job.identity())),
    }
    if source.mining is not None:
        summary["mining"] = source.mining
    write_report(job, summary)
    remove_tree(join(job.model_out, CHECKPOINTS), job.storage)
    return summary


@dataclass
class TrainSource:
    """Where the workers read their training rows: the input's training split, or the mined triplets."""

    shards: ShardSet
    reader: PairReader
    rows: int
    mining: dict | None = None  # the mining summary, for mined triplets


def mine(job: TrainJob, table, source: TrainSource, base_folder: str) -> TrainSource:
    """The training rows with negatives mined from `table` (pipelines/mine_negatives.py), by the table's own
    model whatever --base is; fails, before training, when fewer than one batch of them is found."""
    from dataclasses import replace

    from pipelines.mine_negatives import mine_negatives, mined_reader, mined_uri, same_model

    settings = replace(job.mining(), passages=table.passages)
    log.info("mining %d negative(s) per anchor for %d training pairs from table %s (version %d, %d rows, %s search)",
             settings.count, source.rows, table.name, table.version, table.rows, table.method)
    shards, summary = mine_negatives(table, settings, source.shards, source.reader, source.rows,
                                     mined_uri(job.model_out, CHECKPOINTS), job.storage)
    if summary["triplets"] < job.batch_size:
        msg = (f"mining table {table.name!r} gave {summary['triplets']} training row(s), fewer than one batch of "
               f"{job.batch_size}; lower --batch-size, or loosen --mine-margin / --mine-skip")
        raise ValueError(msg)
    summary["table_model_is_base"] = same_model(table, base_folder)
    if summary["anchors_without_negative"]:
        log.warning("%d of %d anchors got no negative from table %s and are left out of training",
                    summary["anchors_without_negative"], summary["anchors"], table.name)
    return TrainSource(shards, mined_reader(job.storage), summary["triplets"], summary)


def check_pairs(reader: PairReader, shards: ShardSet, batch_size: int) -> PairCheck:
    """One Ray task per shard; only counts and the first bad row come back. Fails before training."""
    import ray

    task = ray.remote(num_cpus=1, max_retries=2)(lambda path: reader.check(path))
    total = PairCheck()
    for found in ray_results([task.remote(path) for path in shards.files]):
        total = total.add(found)
    if total.bad_rows:
        msg = (f"input {shards.uri}: {total.bad_rows} pair(s) have an empty or null text, first at "
               f"{total.first_bad}; every anchor, positive and negative must be a non-empty text")
        raise ValueError(msg)
    if total.train < batch_size:
        msg = (f"input {shards.uri}: {total.train} training pair(s) after the holdout, fewer than one batch of "
               f"{batch_size}; lower --batch-size or --holdout")
        raise ValueError(msg)
    return total


def ray_results(refs: list) -> list:
    """ray.get, re-raising a task's own error (say, a shard without the columns) rather than Ray's
    wrapper with the remote traceback, so the CLI can say it in one line."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise


def fit(job: TrainJob, settings: MatryoshkaSettings, shards: ShardSet, reader: PairReader, counts: PairCheck,
        use_gpu: bool, cpus_per_worker: int, logging_steps: int, private_ray: bool,
        source: TrainSource | None = None) -> dict:
    """Run (or resume) the Ray Train run; returns the final checkpoint's location and the loss curve."""
    import pyarrow.fs as pafs
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.train_worker import train_loop

    fs, path = filesystem(join(job.model_out, CHECKPOINTS), job.storage)
    storage_fs = pafs.PyFileSystem(pafs.FSSpecHandler(fs)) if is_remote(job.model_out) else None
    config = {
        "settings": settings.as_dict(),
        "shards": shards,  # the input: held-out pairs (and the training pairs, unless `source` says otherwise)
        "reader": reader,
        "train_shards": source.shards if source is not None else shards,
        "train_reader": source.reader if source is not None else reader,
        "holdout_pairs": counts.holdout,
        "per_device_batch": job.batch_size // job.workers,
        "logging_steps": logging_steps,
        "threads": cpus_per_worker,
        "progress": job.progress,
        "use_gpu": use_gpu,
        "fingerprint": hashlib.sha256(json.dumps(job.identity(), sort_keys=True).encode()).hexdigest()[:16],
    }
    trainer_class = _local_trainer_class() if private_ray else TorchTrainer
    trainer = trainer_class(
        train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=job.workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(
            name=RUN_NAME,
            storage_path=path,
            storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=MAX_FAILURES),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    with redacted_errors(job.storage):
        result = trainer.fit()
    metrics = result.metrics or {}
    if result.checkpoint is None or not metrics.get("final"):
        msg = "training ended without a final model checkpoint"
        raise RuntimeError(msg)
    history = json.loads(metrics["log_history"])
    return {
        "path": f"{result.checkpoint.path.rstrip('/')}/{FINAL_DIR}",
        "filesystem": fs,
        "steps": int(metrics["steps"]),
        "resumed_from_step": int(metrics["resumed_from_step"]),
        "prompts": json.loads(metrics["prompts"]),
        "evaluation": json.loads(metrics.get("evaluation") or "{}"),
        "loss": loss_curve(history),
    }


def _local_trainer_class():
    """TorchTrainer without its placement-group cleaner, for the private local Ray a run starts: the
    cleaner watches the controller through the state API, which needs the dashboard our local Ray leaves
    off (it fails and prints a traceback); the local Ray is shut down with the run, placement groups too."""
    from ray.train.torch import TorchTrainer

    try:
        from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    except ImportError:  # another Ray version: keep its defaults
        return TorchTrainer

    class LocalTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            return [c for c in callbacks if not isinstance(c, PlacementGroupCleanerCallback)]

    return LocalTorchTrainer


def publish_model(job: TrainJob, final_path: str, fs) -> None:
    """Copy the final checkpoint's model folder to MODEL_OUT's root (same filesystem as the checkpoints)."""
    from operators.model_store import copy_tree

    _, root = filesystem(job.model_out, job.storage)
    with redacted_errors(job.storage):
        copied = copy_tree(fs, final_path, root)
    log.info("wrote %d model files to %s", copied, job.model_out)


def write_report(job: TrainJob, summary: dict) -> None:
    """training_report.json and .png in MODEL_OUT (the plot: nDCG by nested size, and the loss curve)."""
    from operators.training.plot import plot_training

    with tempfile.TemporaryDirectory() as scratch:
        png = os.path.join(scratch, PLOT_FILE)
        plot_training(summary, png)
        with open(png, "rb") as handle:
            write_bytes(join(job.model_out, PLOT_FILE), handle.read(), job.storage)
    summary["report"] = join(job.model_out, REPORT_FILE)
    summary["plot"] = join(job.model_out, PLOT_FILE)
    write_json(join(job.model_out, REPORT_FILE), summary, job.storage)


__all__ = ["TRAINING_FILE", "TrainJob", "run_train"]
