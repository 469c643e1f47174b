"""A private local Ray, started from a process that has loaded neither lance nor lancedb.

Ray starts its services (GCS, raylet, ...) with a Python `preexec_fn`, so each child runs the at-fork hooks of
every module its parent has loaded before it execs. The jobs' drivers have loaded lance and lancedb by then
(every table check runs before Ray starts), whose hooks warn that they are not fork-safe and restart an async
runtime in the child: a deadlock risk at every start. So the driver starts this script as a plain subprocess
(no `preexec_fn`: CPython runs no at-fork hooks for it), this script starts Ray and prints its address, the driver
joins it, and closing this script's stdin (or the driver's death) shuts the Ray down.

Protocol: argv[1] is a JSON object of `ray.init` settings; one JSON line on stdout, {"address": ...} or
{"error": ...}; then it waits for EOF on stdin. Imports nothing of ours, so nothing else is loaded here.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

# Ray gives its raylet 30 s to register and then gives up; on a loaded machine that happens, and a second
# start usually succeeds.
START_ATTEMPTS = 3


def _die_with_parent() -> None:
    """SIGTERM when the driver dies, even by SIGKILL (Linux); stdin's EOF covers the rest."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1  # noqa: N806 - the kernel's name
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def kill_session(session: int) -> int:
    """SIGKILL every process left in `session` (the launcher's own, which Ray's services and workers inherit),
    but the caller: a worker that outlives its raylet (seen: a Ray Train controller) is ended with its Ray. Linux
    only (/proc); returns how many were signalled."""
    if not os.path.isdir("/proc"):
        return 0
    killed = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            if int(fields[3]) == session and fields[0] != "Z":
                os.kill(int(entry), signal.SIGKILL)
                killed += 1
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read
    return killed


def _start(settings: dict) -> str:
    import ray

    for attempt in range(START_ATTEMPTS):
        try:
            context = ray.init(address="local", include_dashboard=False, log_to_driver=False,
                               logging_level=logging.WARNING, **settings)
            return context.address_info["gcs_address"]
        except Exception as error:  # noqa: BLE001 - Ray raises a bare Exception for this
            if "timed out during startup" not in str(error) or attempt == START_ATTEMPTS - 1:
                raise
            ray.shutdown()
    msg = "unreachable"
    raise AssertionError(msg)


def main() -> int:
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the driver died before the line above
        return 1

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(0)  # through the `finally` below: Ray stops with us

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when its Ray stops
    try:
        address = _start(json.loads(sys.argv[1]))
    except Exception as error:  # noqa: BLE001 - every failure goes back to the driver as one line
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}), flush=True)
        return 1
    import ray

    try:
        print(json.dumps({"address": address}), flush=True)
        sys.stdin.read()  # until the driver closes its end or dies
    finally:
        ray.shutdown()
        kill_session(os.getsid(0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
