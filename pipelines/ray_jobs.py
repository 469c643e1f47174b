"""Running an embedlake command as a Ray Job: the runtime env that carries this project, the token a
cluster with token auth wants, and following the job to its end.

The job's driver is `python -m pipelines.cli <command>` in the uploaded working dir; it joins the
cluster through the RAY_ADDRESS the job supervisor sets, so `--address` is not needed inside.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
import shlex
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from urllib.parse import urlparse

log = logging.getLogger(__name__)

# Never uploaded: environments, VCS data, caches and table outputs (Ray also honours .gitignore).
WORKING_DIR_EXCLUDES = [
    ".venv", "venv", ".git", "**/__pycache__", ".pytest_cache", ".ruff_cache", "*.egg-info",
    "*.lance", "out", "build", "demo_lake",
]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
AUTH_HEADER = "Authorization"
DEFAULT_TOKEN_PATH = Path("~/.ray/auth_token")
LOOPBACK_NAMES = ("localhost", "ip6-localhost")


class JobFailed(RuntimeError):
    """The job ended in FAILED or STOPPED; `exit_code` is the driver's own when Ray reports it."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class JobOutcome:
    job_id: str
    status: str
    message: str = ""
    exit_code: int | None = None
    result: object = None  # the last JSON line the command printed (its --json result)
    seconds: float = 0.0


def entrypoint(argv: Sequence[str], python: str = "python") -> str:
    """The shell command the job runs: the embedlake CLI from the uploaded working dir."""
    if not argv:
        msg = "no command to submit: put it after `--`, e.g. `embedlake submit --address URL -- embed IN OUT`"
        raise ValueError(msg)
    return shlex.join([python, "-m", "pipelines.cli", *argv])


def project_requirements(root: Path) -> list[str]:
    """The `[project] dependencies` of the project's pyproject.toml (what `pip install .` would pull),
    less Ray itself: a runtime env must use the cluster's Ray."""
    pyproject = root / "pyproject.toml"
    if not pyproject.exists():
        msg = f"{pyproject} not found: cannot read the requirements to install"
        raise ValueError(msg)
    with pyproject.open("rb") as handle:
        requirements = tomllib.load(handle).get("project", {}).get("dependencies", [])
    return [req for req in requirements if re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower() != "ray"]


def build_runtime_env(
    working_dir: Path | None,
    install_requirements: bool = False,
    pip: Sequence[str] = (),
) -> dict:
    """working_dir = this project (without venvs, .git, outputs); pip only when asked, since a
    cluster image usually has the dependencies and installing torch per job takes minutes."""
    runtime_env: dict = {}
    if working_dir is not None:
        if not (working_dir / "pipelines" / "cli.py").exists():
            msg = f"working dir {working_dir} is not the embedlake project (no pipelines/cli.py)"
            raise ValueError(msg)
        runtime_env["working_dir"] = str(working_dir)
        runtime_env["excludes"] = list(WORKING_DIR_EXCLUDES)
    packages = [*(project_requirements(working_dir or Path.cwd()) if install_requirements else []), *pip]
    if packages:
        runtime_env["pip"] = packages
    return runtime_env


def auth_headers(address: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The Authorization header for a cluster with Ray token auth, or none.

    RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH are always used. The default token file (~/.ray/auth_token,
    which Ray 2.60 creates and then uses to turn auth on for local clusters) is sent only to a
    loopback address or when RAY_AUTH_MODE=token, so a local token does not travel to other hosts.
    RAY_AUTH_MODE=disabled sends nothing.
    """
    environ = os.environ if environ is None else environ
    mode = environ.get("RAY_AUTH_MODE", "").lower()
    if mode == "disabled":
        return {}
    token = environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token and environ.get("RAY_AUTH_TOKEN_PATH"):
        token = _read_token(Path(environ["RAY_AUTH_TOKEN_PATH"]).expanduser())
    if not token and (mode == "token" or _is_loopback(address)):
        home = environ.get("HOME")
        default = Path(home) / ".ray" / "auth_token" if home else DEFAULT_TOKEN_PATH.expanduser()
        token = _read_token(default) if default.exists() else ""
    return {AUTH_HEADER: f"Bearer {token}"} if token else {}


def _read_token(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as error:
        msg = f"cannot read the Ray auth token file {path}: {error.strerror}"
        raise ValueError(msg) from None


def _is_loopback(address: str) -> bool:
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class LogFollower:
    """Writes the job's log chunks to a stream and remembers its last JSON line."""

    stream: TextIO
    written: int = 0
    partial: str = ""
    last_json: object = None

    def feed(self, chunk: str) -> None:
        self.stream.write(chunk)
        self.stream.flush()
        self.written += len(chunk)
        text = self.partial + chunk
        *complete, self.partial = text.split("\n")
        for line in complete:
            self._consider(line)

    def finish(self) -> None:
        if self.partial:
            self._consider(self.partial)
            self.partial = ""

    def _consider(self, line: str) -> None:
        line = line.strip()
        if line[:1] in ("{", "["):
            try:
                self.last_json = json.loads(line)
            except ValueError:
                pass


def follow_job(client, job_id: str, stream: TextIO, poll_seconds: float = 1.0) -> JobOutcome:
    """Stream the job's logs until it ends; if the log websocket fails, poll and print what is left."""
    started = time.monotonic()
    follower = LogFollower(stream)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            follower.feed(chunk)

    try:
        asyncio.run(tail())
    except Exception as error:  # noqa: BLE001 - fall back to polling, the job itself is unaffected
        log.warning("log streaming for %s stopped (%s); polling the job instead", job_id, type(error).__name__)
    while (status := str(client.get_job_status(job_id).value)) not in TERMINAL:
        time.sleep(poll_seconds)
    logs = client.get_job_logs(job_id)
    if len(logs) > follower.written:
        follower.feed(logs[follower.written:])
    follower.finish()
    info = client.get_job_info(job_id)
    return JobOutcome(
        job_id=job_id,
        status=status,
        message=info.message or "",
        exit_code=getattr(info, "driver_exit_code", None),
        result=follower.last_json,
        seconds=round(time.monotonic() - started, 3),
    )


# A head answers this (HTTP 500) between its dashboard coming up and its job agent registering: right after
# `ray start --head`, for seconds to a minute on a loaded machine. Before that, the dashboard may not answer at all.
AGENT_NOT_READY = "No available agent"
AGENT_WAIT_SECONDS = 60.0


def submit_job(connect: Callable[[], object], address: str, wait_seconds: float = AGENT_WAIT_SECONDS,
               sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
               **job) -> tuple[object, str]:
    """Connect (`connect()` makes a JobSubmissionClient) and `client.submit_job(**job)`; while the head's dashboard
    does not answer yet or it has no job agent yet, try again for at most `wait_seconds`, then fail in one line.
    Any other refusal fails at once. Returns the client and the job id."""
    deadline = clock() + wait_seconds
    delay = 1.0
    client = None
    while True:
        try:
            client = client or connect()
            return client, client.submit_job(**job)
        except ConnectionError as error:
            waiting_for, last = "answer", error
        except RuntimeError as error:
            if AGENT_NOT_READY not in str(error):
                raise
            waiting_for, last = "have a job agent", error
        left = deadline - clock()
        if left <= 0:
            msg = (f"the Ray head at {address} did not {waiting_for} within {wait_seconds:.0f} s "
                   f"({' '.join(str(last).split())[:200]}); a head just started takes a while, longer when loaded: "
                   "try again, or raise --agent-wait")
            raise RuntimeError(msg) from None
        log.info("the Ray head at %s does not %s yet; trying again for %.0f s more", address, waiting_for, left)
        sleep(min(delay, left))
        delay = min(delay * 2, 5.0)


def job_client(address: str, environ: Mapping[str, str] | None = None):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address, headers=auth_headers(address, environ))
