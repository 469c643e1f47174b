"""Submitting to Ray Jobs without a cluster: what the job runs, what it uploads, which token it sends."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from pipelines.cli import parse_args
from pipelines.ray_jobs import AUTH_HEADER, LogFollower, auth_headers, build_runtime_env, entrypoint, submit_job
from pipelines.ray_runtime import project_root

TOKEN = "0123456789abcdef0123456789abcdef"


def test_entrypoint_runs_the_cli_with_the_arguments_quoted():
    assert entrypoint(["embed", "s3://b/lake with space/", "out", "--json"]) == \
        "python -m pipelines.cli embed 's3://b/lake with space/' out --json"
    with pytest.raises(ValueError, match="no command to submit"):
        entrypoint([])


def test_submit_takes_the_command_after_the_separator():
    args, _ = parse_args(["submit", "--address", "http://head:8265", "--json", "--", "embed", "in", "out", "--json"])
    assert args.json and args.address == "http://head:8265"
    assert args.job_command == ["--", "embed", "in", "out", "--json"]


def test_runtime_env_uploads_the_project_without_environments_and_installs_only_when_asked():
    root = Path(project_root())
    env = build_runtime_env(root)
    assert env["working_dir"] == str(root) and "pip" not in env
    assert {".venv", ".git", "*.lance"} <= set(env["excludes"])
    with_deps = build_runtime_env(root, install_requirements=True, pip=["boto3"])
    assert any(req.startswith("lancedb") for req in with_deps["pip"]) and with_deps["pip"][-1] == "boto3"
    assert not any(req.startswith("ray") for req in with_deps["pip"])  # the cluster's own Ray stays
    assert build_runtime_env(None, pip=["x==1"]) == {"pip": ["x==1"]}
    with pytest.raises(ValueError, match="not the embedlake project"):
        build_runtime_env(root / "tests")


def test_token_from_environment_or_file_is_sent(tmp_path):
    assert auth_headers("http://head:8265", {"RAY_AUTH_TOKEN": TOKEN}) == {AUTH_HEADER: f"Bearer {TOKEN}"}
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert auth_headers("http://head:8265", {"RAY_AUTH_TOKEN_PATH": str(token_file)})[AUTH_HEADER].endswith(TOKEN)
    assert auth_headers("http://head:8265", {"RAY_AUTH_TOKEN": TOKEN, "RAY_AUTH_MODE": "disabled"}) == {}


def test_default_token_file_goes_only_to_loopback_unless_token_mode(tmp_path):
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(TOKEN)
    home = {"HOME": str(tmp_path)}
    assert auth_headers("http://127.0.0.1:8265", home) == {AUTH_HEADER: f"Bearer {TOKEN}"}
    assert auth_headers("http://localhost:8265", home) != {}
    assert auth_headers("http://head.example:8265", home) == {}
    assert auth_headers("http://head.example:8265", {**home, "RAY_AUTH_MODE": "token"}) != {}
    assert auth_headers("http://127.0.0.1:8265", {"HOME": str(tmp_path / "nobody")}) == {}


def test_log_follower_keeps_the_last_json_line_across_chunks():
    stream = io.StringIO()
    follower = LogFollower(stream)
    for chunk in ("starting\n{\"rows_w", "ritten\": 40}\n", "2026 INFO done\n", "{\"late\": true}"):
        follower.feed(chunk)
    follower.finish()
    assert follower.last_json == {"late": True}
    assert stream.getvalue().startswith("starting\n{\"rows_written\": 40}")


class FlakyHead:
    """A JobSubmissionClient stand-in for a head just started: the dashboard does not answer for `down` tries,
    then has no job agent for `agentless` tries, then takes the job."""

    def __init__(self, down: int = 0, agentless: int = 0, other: str | None = None) -> None:
        self.down, self.agentless, self.other = down, agentless, other
        self.connects = self.submits = 0

    def connect(self) -> FlakyHead:
        self.connects += 1
        if self.connects <= self.down:
            msg = "Failed to connect to Ray at address: http://head:8265."
            raise ConnectionError(msg)
        return self

    def submit_job(self, **job) -> str:
        self.submits += 1
        if self.other:
            raise RuntimeError(self.other)
        if self.submits <= self.agentless:
            msg = "Request failed with status code 500: No available agent to submit job, please try again later.."
            raise RuntimeError(msg)
        return f"raysubmit_{job['entrypoint']}"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_submit_waits_for_a_just_started_head_then_submits():
    head, clock = FlakyHead(down=2, agentless=3), FakeClock()
    client, job_id = submit_job(head.connect, "http://head:8265", 60, clock.sleep, clock, entrypoint="x")
    assert client is head and job_id == "raysubmit_x"
    assert (head.connects, head.submits) == (3, 4) and 0 < clock.now < 60


def test_submit_gives_up_after_the_wait_in_one_line():
    head, clock = FlakyHead(agentless=10**6), FakeClock()
    with pytest.raises(RuntimeError, match=r"did not have a job agent within 60 s .*raise --agent-wait") as error:
        submit_job(head.connect, "http://head:8265", 60, clock.sleep, clock, entrypoint="x")
    assert "\n" not in str(error.value) and 60 <= clock.now <= 61
    head, clock = FlakyHead(down=10**6), FakeClock()
    with pytest.raises(RuntimeError, match=r"did not answer within 5 s \(Failed to connect"):
        submit_job(head.connect, "http://head:8265", 5, clock.sleep, clock, entrypoint="x")


def test_submit_fails_at_once_on_other_refusals():
    head, clock = FlakyHead(other="Request failed with status code 400: bad runtime_env."), FakeClock()
    with pytest.raises(RuntimeError, match="status code 400"):
        submit_job(head.connect, "http://head:8265", 60, clock.sleep, clock, entrypoint="x")
    assert head.submits == 1 and clock.now == 0
