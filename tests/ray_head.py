"""A throwaway Ray head (`ray start --head --block`) with the Jobs API, for the submit tests.

Token auth is on with a test token, so the submit path is exercised the way Ray 2.60 clusters
run by default. The dashboard binds to 127.0.0.1 (Ray's core gRPC servers bind every interface,
which Ray offers no switch for; the token guards them). It is stopped by process group, never
with `ray stop`, which would kill every Ray on the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.object_store_server import HOST, free_port, stop_process

DASHBOARD_MODULES = ("aiohttp_cors", "opencensus", "prometheus_client", "grpc")


@dataclass
class RayHead:
    dashboard: str
    gcs_address: str
    token: str
    temp_dir: Path
    process: subprocess.Popen = field(repr=False)
    log_file: object = field(default=None, repr=False)

    def client_env(self) -> dict[str, str]:
        """The environment a user would submit with: the cluster's token, and no cloud credentials (those
        belong to the cluster's nodes)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "AWS_"))}
        env["RAY_AUTH_TOKEN"] = self.token
        return env

    def stop(self) -> None:
        # SIGTERM, then SIGKILL, to this head's process group; its state lives in temp_dir, removed below.
        stop_process(self.process, grace=5.0)
        if self.log_file is not None:
            self.log_file.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def missing_dashboard_modules() -> list[str]:
    import importlib.util

    return [name for name in DASHBOARD_MODULES if importlib.util.find_spec(name) is None]


def start_ray_head(num_cpus: int = 3, node_env: dict[str, str] | None = None, timeout: float = 180.0) -> RayHead:
    """A head whose processes (and so the jobs' drivers and workers) see `node_env`, the way a cluster's
    nodes carry their cloud credentials."""
    missing = missing_dashboard_modules()
    if missing:
        msg = f"the Ray Jobs API needs ray[default] (missing {', '.join(missing)}): pip install 'ray[default]'"
        raise RuntimeError(msg)
    temp_dir = Path(tempfile.mkdtemp(prefix="elk-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    token = secrets.token_hex(32)
    gcs_port, dashboard_port = free_port(), free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
        # The job's `python` must be this environment's, as a cluster image's would be.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        **(node_env or {}),
    }
    command = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--disable-usage-stats",
        f"--node-ip-address={HOST}", f"--port={gcs_port}", f"--num-cpus={num_cpus}",
        f"--object-store-memory={300 * 1024 * 1024}", "--include-dashboard=true", f"--dashboard-host={HOST}",
        f"--dashboard-port={dashboard_port}", f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}", f"--temp-dir={temp_dir}",
    ]
    log = open(temp_dir / "ray-start.log", "wb")  # noqa: SIM115 - closed when the head stops
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = RayHead(f"http://{HOST}:{dashboard_port}", f"{HOST}:{gcs_port}", token, temp_dir, process, log)
    try:
        _wait_for_jobs_api(head, timeout)
    except Exception:
        head.stop()
        raise
    return head


def _wait_for_jobs_api(head: RayHead, timeout: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    request = urllib.request.Request(f"{head.dashboard}/api/jobs/", headers={"Authorization": f"Bearer {head.token}"})
    last = ""
    while time.monotonic() < deadline:
        if head.process.poll() is not None:
            msg = f"ray start exited with {head.process.returncode}: {_tail(head.temp_dir / 'ray-start.log')}"
            raise RuntimeError(msg)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as error:
            last = str(error)
        time.sleep(1.0)
    msg = f"the Jobs API at {head.dashboard} did not answer within {timeout:.0f}s ({last})"
    raise RuntimeError(msg)


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
