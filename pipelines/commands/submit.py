"""`embedlake submit --address http://HEAD:8265 -- <command>`: run an embedlake command as a Ray Job.

The project travels as the job's working_dir; its requirements are installed only with
`--install-requirements` (cluster images normally carry them). Logs stream while the job runs
(to stderr under --json, so stdout keeps one JSON line); the exit status is the job's.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pipelines.ray_jobs import (
    AGENT_WAIT_SECONDS,
    JobFailed,
    build_runtime_env,
    entrypoint,
    follow_job,
    job_client,
    submit_job,
)
from pipelines.ray_runtime import project_root

log = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "submit",
        help="run an embedlake command as a Ray Job on a cluster",
        description="Run an embedlake command as a Ray Job: embedlake submit --address http://HEAD:8265 -- embed "
                    "s3://bucket/lake/ s3://bucket/lance --json",
    )
    parser.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS"),
                        help="the cluster's dashboard / Jobs API, e.g. http://HEAD:8265 (RAY_API_SERVER_ADDRESS)")
    parser.add_argument("--working-dir", default=project_root(), help="project folder uploaded as the job's "
                        "working_dir (default: this checkout; .venv, .git and *.lance are left out)")
    parser.add_argument("--no-working-dir", dest="upload", action="store_false",
                        help="upload nothing: the cluster's image already has embedlake on its path")
    parser.add_argument("--install-requirements", action="store_true",
                        help="pip-install the project's dependencies in the job's runtime env")
    parser.add_argument("--pip", action="append", default=[], metavar="SPEC",
                        help="extra pip requirement for the job's runtime env (repeatable)")
    parser.add_argument("--entrypoint-num-cpus", type=float, default=None,
                        help="CPUs reserved for the job's driver (default: none, the actor pool gets them)")
    parser.add_argument("--agent-wait", type=float, default=AGENT_WAIT_SECONDS, metavar="SECONDS",
                        help="how long to keep trying while a just-started head does not answer or has no job agent "
                             f"yet (default {AGENT_WAIT_SECONDS:.0f})")
    parser.add_argument("--no-wait", dest="wait", action="store_false",
                        help="return once the job is submitted instead of following it")
    parser.add_argument("job_command", nargs=argparse.REMAINDER,
                        help="after `--`: the embedlake command and its arguments")
    return parser


def run(args: argparse.Namespace) -> dict:
    if not args.address:
        msg = "--address is required (the cluster's Jobs API, e.g. http://HEAD:8265)"
        raise ValueError(msg)
    if args.agent_wait < 0:
        msg = f"--agent-wait must be 0 or more seconds, got {args.agent_wait}"
        raise ValueError(msg)
    argv = list(args.job_command)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    command = entrypoint(argv)
    working_dir = Path(args.working_dir).resolve() if args.upload else None
    runtime_env = build_runtime_env(working_dir, args.install_requirements, args.pip)
    client, job_id = submit_job(
        lambda: job_client(args.address),
        args.address,
        wait_seconds=args.agent_wait,
        entrypoint=command,
        runtime_env=runtime_env,
        metadata={"tool": "embedlake", "command": argv[0]},
        entrypoint_num_cpus=args.entrypoint_num_cpus,
    )
    log.info("submitted %s to %s as job %s", argv[0], args.address, job_id)
    if not args.wait:
        return {"job_id": job_id, "status": "PENDING", "address": args.address}
    stream = sys.stderr if args.json else sys.stdout
    try:
        outcome = follow_job(client, job_id, stream)
    except KeyboardInterrupt:
        print(f"embedlake: stopped following job {job_id}; it keeps running "
              f"(ray job stop --address {args.address} {job_id})", file=sys.stderr)
        raise
    if outcome.status != "SUCCEEDED":
        code = outcome.exit_code if outcome.exit_code else 1
        reason = " ".join(outcome.message.split())[-500:]
        msg = f"job {job_id} {outcome.status}" + (f" (exit {outcome.exit_code})" if outcome.exit_code else "")
        raise JobFailed(f"{msg}: {reason}" if reason else msg, exit_code=code)
    return {
        "job_id": job_id,
        "status": outcome.status,
        "address": args.address,
        "seconds": outcome.seconds,
        "result": outcome.result,
    }
