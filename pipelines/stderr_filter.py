"""What native code writes to the driver's stderr, less the lines that name no risk for our jobs.

Ray's C++ core worker writes straight to file descriptor 2, past Python's logging and its filters
(pipelines/ray_runtime.py drops Ray's Python notices); this filters that descriptor, line by line.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Lines Ray's C++ core worker writes straight to the driver's stderr (fd 2), past Python's logging. Ray Data
# hands every actor-pool worker its DataContext and transform as object refs (ray-project/ray#57733), so any
# Ray Data actor pool with restarts on (ours: a killed encoder actor is restarted, README) logs this ERROR once
# per driver. The refs are the driver's and Ray Data holds them while the pool lives, so a restarted actor finds
# them; the risk it names (#53727: refs evicted or lost) is the driver's own death, which ends the run anyway.
# Ray's session log (python-core-driver-*.log) keeps the line.
QUIET_STDERR_LINES = (b"has constructor arguments in the object store and max_restarts > 0",)


@contextmanager
def quiet_stderr_lines(enabled: bool = True, markers: tuple[bytes, ...] = QUIET_STDERR_LINES) -> Iterator[None]:
    """Drop the lines holding one of `markers` from what native code (Ray's C++ core worker) writes to fd 2.

    Python's own output does not pass through the filter: sys.stderr writes to the original stderr, which
    stays a terminal for progress bars. Only when sys.stderr is the process's own (a CLI run, not a test that
    captured it) and `enabled` (not under --verbose)."""
    if not enabled or sys.stderr is not sys.__stderr__:
        yield
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    original = sys.stderr
    # Left open at exit: a logging handler may still hold it.
    sys.stderr = os.fdopen(os.dup(terminal), "w", buffering=1, encoding=original.encoding, errors=original.errors)
    pump = threading.Thread(target=_pump_stderr, args=(read_end, terminal, markers), daemon=True,
                            name="stderr-filter")
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)  # our end of the pipe closes; the pump drains it and stops
        sys.stderr = original
        pump.join(timeout=2)


def _pump_stderr(read_end: int, terminal: int, markers: tuple[bytes, ...]) -> None:
    pending = b""
    while chunk := os.read(read_end, 65536):
        *lines, pending = (pending + chunk).split(b"\n")
        kept = b"".join(_kept(line + b"\n", markers) for line in lines)
        # What precedes the last carriage return of the unfinished line is a finished progress-bar frame; the
        # rest waits for its end only if it starts like a native log line ("[date time E pid tid] ...").
        frames, cr, pending = pending.rpartition(b"\r")
        kept += frames + cr
        if not pending.startswith(b"["):
            kept, pending = kept + pending, b""
        _write_all(terminal, kept)
    _write_all(terminal, pending)
    os.close(read_end)


def _kept(line: bytes, markers: tuple[bytes, ...]) -> bytes:
    """The line, less its last frame (after a carriage return) if that holds a marker."""
    frames, cr, last = line.rpartition(b"\r")
    return frames + cr if any(marker in last for marker in markers) else line


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]
