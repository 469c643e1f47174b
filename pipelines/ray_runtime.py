"""Starting or joining Ray, in one place.

`ray.init()` without an address silently joins any local cluster already running, so we say
`address="local"` to start a private one when the user gave no address, and join only the address
they name (`--address` or RAY_ADDRESS).

Ray forks its services (GCS, raylet, ...) from the driver with a `preexec_fn`, so the child runs the at-fork
hooks of every module loaded before it execs. lance and lancedb register such hooks: lance warns ("not
fork-safe"), lancedb restarts its async runtime in the child and warns ("a small chance of deadlock"). Jobs
check their tables before they start Ray (bad input fails before any work), so both are loaded by then; the
warnings are dropped around the start of a local Ray (`_quiet_fork_warnings`) and the risk they name stays
until a local Ray is started from a process that has not loaded them (issue 22's report). Nothing under
`operators` imports lance at module level (tables load lance and lancedb when first opened).

What Ray prints that names no risk for our jobs and no step for the user is dropped here, deliberately and
each with its reason; `--verbose` keeps all of it.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from operators.errors import reinstall_sigterm

log = logging.getLogger(__name__)

QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DASHBOARD_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "PYTHONWARNINGS": "ignore::UserWarning",
}


# Idle worker processes Ray keeps beyond one per CPU. By default it keeps one per CPU, and encoder
# actors hold those, so every reader and writer task started a fresh Python process and paid its
# imports and its first Lance open (2-3 s of CPU each, taken from the encoders on a small machine).
# Actors count against the limit too: an embed run holds its encoders, its progress counter and Ray Data's
# own three (stats, autoscaling coordinator, actor locations), so 4 spares still let Ray kill idle task
# workers and start new ones for the next stage (9 task processes for a 20k-row run, 5 with 12 spares;
# benchmarks/overhead.py).
SPARE_WORKERS = 12
# Ray gives its raylet 30 s to register and then gives up; on a loaded machine that happens, and a second
# start usually succeeds.
START_ATTEMPTS = 3


# Ray's notices that name no risk for a private local Ray and no step for the user: token authentication
# being on by default (it is what we want) is logged as a WARNING at every start; Ray Data warns that its
# progress bars are off, which is because our jobs draw their own (pipelines/embed_progress.py). --verbose
# keeps them.
QUIET_NOTICES = {
    "ray._private.authentication.authentication_token_setup": ("Token authentication is enabled",),
    "ray.data._internal.progress": ("Progress bars disabled", "Progress bars for operators disabled"),
}


class _DropNotices(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return verbose() or not record.getMessage().startswith(self.prefixes)


def quiet_ray_notices() -> None:
    """Deliberately drop the notices in QUIET_NOTICES (once per process)."""
    for name, prefixes in QUIET_NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in logger.filters):
            logger.addFilter(_DropNotices(prefixes))


def verbose() -> bool:
    return logging.getLogger().getEffectiveLevel() <= logging.DEBUG


def quiet_ray_data() -> None:
    """Ray Data's progress bars off (jobs draw their own) and its INFO lines (execution plans, per-operator
    progress logged every few seconds when stdout is not a terminal, `Data sink finished`) kept to its log
    file (ray-data.log in the session's logs); its warnings and errors still reach stderr. --verbose shows all."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    for handler in logging.getLogger("ray.data").handlers:
        if handler.name == "console":  # Ray Data's own console handler (ray/data/_internal/logging.py)
            handler.setLevel(logging.DEBUG if verbose() else logging.WARNING)
    if not verbose():
        # Raised after the fact when an actor pool got fewer blocks than it has actors: an incremental run knows
        # how many rows changed only after the pool has started, and a small input is one block.
        warnings.filterwarnings("ignore", message="The minimum number of concurrent actors", category=UserWarning)


def project_root() -> str:
    """The folder holding the `operators` and `pipelines` packages."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
) -> bool:
    """Connect to `address` (or RAY_ADDRESS), else start a private local Ray. True when we started it
    (the caller then shuts it down)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return False
    quiet_ray_notices()
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Workers import our packages from the same path as this driver even when it is not pip-installed.
    runtime_env = {"env_vars": {**QUIET_ENV, "PYTHONPATH": _worker_pythonpath()}}
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, logging_level=logging.WARNING)
        reinstall_sigterm()
        return False
    for attempt in range(START_ATTEMPTS):
        try:
            with _quiet_fork_warnings():
                ray.init(
                    address="local",
                    num_cpus=num_cpus,
                    object_store_memory=object_store_memory,
                    include_dashboard=False,
                    runtime_env=runtime_env,
                    logging_level=logging.WARNING,
                    log_to_driver=True,
                    _system_config={"num_workers_soft_limit": (num_cpus or os.cpu_count() or 1) + SPARE_WORKERS},
                )
                reinstall_sigterm()  # Ray's own SIGTERM handler dumps a C++ stack; the CLI's exits 130
            return True
        except Exception as error:  # noqa: BLE001 - Ray raises a bare Exception for this
            if "timed out during startup" not in str(error) or attempt == START_ATTEMPTS - 1:
                raise
            log.warning("local Ray did not start in time (a loaded machine?), trying again")
            ray.shutdown()
    return True


@contextmanager
def _quiet_fork_warnings() -> Iterator[None]:
    """The two at-fork warnings of lance and lancedb, for the forks that start a local Ray (the module's
    docstring says why they fire and what stays open)."""
    with warnings.catch_warnings():
        if verbose():
            yield
            return
        warnings.filterwarnings("ignore", message="lance is not fork-safe", category=UserWarning)
        warnings.filterwarnings("ignore", message="lancedb fork support is experimental", category=RuntimeWarning)
        yield


def _worker_pythonpath() -> str:
    existing = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(p for p in (project_root(), existing) if p)


def cluster_gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def cluster_cpus() -> int:
    return int(ray.cluster_resources().get("CPU", 1))
