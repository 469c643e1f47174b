"""Starting or joining Ray, in one place.

`ray.init()` without an address silently joins any local cluster already running, so we say
`address="local"` to start a private one when the user gave no address, and join only the address
they name (`--address` or RAY_ADDRESS).

Ray starts its services (GCS, raylet, ...) with a Python `preexec_fn`, so each child runs the at-fork hooks
of every module its parent has loaded. Jobs check their tables before they start Ray (bad input fails before any
work), so lance and lancedb are loaded by then, and their hooks (a "not fork-safe" warning, an async runtime
restarted in the child: a deadlock risk) would run at every start. A private local Ray is therefore started by
pipelines/ray_launcher.py, a subprocess that has loaded neither, and the driver joins it; `stop_ray` stops it.

What Ray prints that names no risk for our jobs and no step for the user is dropped here, deliberately and
each with its reason; `--verbose` keeps all of it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import select
import subprocess
import sys
import time
import warnings

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
# Actors count against the limit too: an embed run holds its encoders and Ray Data's
# own three (stats, autoscaling coordinator, actor locations), so 4 spares still let Ray kill idle task
# workers and start new ones for the next stage (9 task processes for a 20k-row run, 5 with 12 spares;
# benchmarks/overhead.py).
SPARE_WORKERS = 12
# How long the launcher may take to start Ray (it retries Ray's own 30 s start-up timeout up to three times).
LAUNCH_TIMEOUT_S = 300.0


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
    (the caller then stops it with `stop_ray`)."""
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
    _launch_local_ray(num_cpus, object_store_memory)
    try:
        ray.init(address=_LAUNCHED["address"], runtime_env=runtime_env, logging_level=logging.WARNING,
                 log_to_driver=True)
    except BaseException:
        stop_ray()
        raise
    reinstall_sigterm()  # Ray's own SIGTERM handler dumps a C++ stack; the CLI's exits 130
    return True


# The launcher of the local Ray this process started, if any (one per process, like Ray itself).
_LAUNCHED: dict = {}


def _launch_local_ray(num_cpus: int | None, object_store_memory: int | None) -> None:
    """Start pipelines/ray_launcher.py and wait for the address of the Ray it started."""
    if "RAY_AUTH_MODE" not in os.environ:
        # Ray's default for a new local cluster is token authentication with a token it writes to ~/.ray; the
        # launcher and this driver share one of their own instead (children inherit the environment).
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        from ray._raylet import Config

        Config.initialize("")  # Ray's config is read at import: refreshed as Ray's own ray.init does for its token
    settings = {"num_cpus": num_cpus, "object_store_memory": object_store_memory,
                "_system_config": {"num_workers_soft_limit": (num_cpus or os.cpu_count() or 1) + SPARE_WORKERS}}
    launcher = subprocess.Popen(  # no preexec_fn: no at-fork hooks of ours run in the child
        [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "ray_launcher.py"),
         json.dumps(settings)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None if verbose() else subprocess.DEVNULL,
        start_new_session=True, env={**os.environ, "PYTHONPATH": _worker_pythonpath()})
    _LAUNCHED["process"] = launcher
    reply = _read_line(launcher, LAUNCH_TIMEOUT_S)
    try:
        message = json.loads(reply) if reply else {"error": f"the Ray launcher exited ({launcher.poll()})"}
    except ValueError:
        message = {"error": f"the Ray launcher said {reply[:200]!r}"}
    if "address" not in message:
        stop_ray()
        msg = f"could not start a local Ray: {message.get('error', 'no address')}"
        raise RuntimeError(msg)
    _LAUNCHED["address"] = message["address"]


def _read_line(process: subprocess.Popen, timeout: float) -> str:
    """The launcher's first stdout line, '' if it exits or `timeout` passes first."""
    deadline = time.monotonic() + timeout
    pipe = process.stdout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([pipe], [], [], 1.0)
        if ready:
            return pipe.readline().decode(errors="replace").strip()
        if process.poll() is not None:
            return ""
    return ""


def stop_ray() -> None:
    """Disconnect, and stop the local Ray `start_ray` started (a joined cluster is left running)."""
    ray.shutdown()
    launcher = _LAUNCHED.pop("process", None)
    _LAUNCHED.pop("address", None)
    if launcher is None:
        return
    try:
        launcher.stdin.close()  # the launcher's cue to shut its Ray down
        launcher.wait(timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        from pipelines.ray_launcher import kill_session

        launcher.kill()
        kill_session(launcher.pid)  # its session (start_new_session), before wait() frees the pid for reuse
        launcher.wait()
    finally:
        launcher.stdout.close()


def _worker_pythonpath() -> str:
    existing = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(p for p in (project_root(), existing) if p)


def cluster_gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def cluster_cpus() -> int:
    return int(ray.cluster_resources().get("CPU", 1))
