"""Progress of an embed run on stderr: rows encoded and rows committed, with a rate and an ETA.

Encoder actors and writer tasks report the rows they pass on through Ray's own key-value store (the GCS's:
each worker process puts its running totals under a key of its own, one small write per batch; no counter actor,
so no process to start for it, ~2 CPU s on a small machine); a thread of the driver sums them and draws one line,
redrawn in place on a terminal, else logged every LOG_EVERY_S seconds.
Rows count as the run's accounting counts them (written + unchanged + quarantined: `RunCounts.rows_read`), so both
counts end at the rows the run read. The rate is that of encoding over the last RATE_WINDOW_S seconds, measured
from the first encoded batch (loading the model is not encoding), and the ETA counts down the rows left at that rate.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from operators.embed import EmbedRows
from operators.embed_passages import EmbedPassages
from operators.exchange import ROWS_COL

log = logging.getLogger("pipelines.embed")

REDRAW_S = 0.5  # terminal redraws
LOG_EVERY_S = 15.0  # a progress line in a log (stderr not a terminal)
RATE_WINDOW_S = 30.0
MIN_RATE_SPAN_S = 10.0


def rows_of(batch: pa.Table) -> int:
    """Input rows a batch of decided or encoded rows stands for (a DELETED row stands for none)."""
    return int(pc.sum(batch.column(ROWS_COL)).as_py() or 0) if batch.num_rows else 0


KV_NAMESPACE = "embedlake"
# This process's running totals per run (encoded, committed): an encoder actor and a reused task worker add to them.
_TOTALS: dict[str, list[int]] = {}
_TOTALS_LOCK = threading.Lock()


class RowCounter:
    """The run's two counts in Ray's key-value store: what encoders and writers add in a worker process is its
    running totals under `<run>/<host>:<pid>`, and the driver sums every key of the run. A plain object (a run
    token), pickled into the actors and the sink; reporting never fails a run."""

    def __init__(self, run: str) -> None:
        self.prefix = f"progress/{run}/"

    def add(self, encoded: int = 0, committed: int = 0) -> None:
        from ray.experimental import internal_kv

        with _TOTALS_LOCK:
            totals = _TOTALS.setdefault(self.prefix, [0, 0])
            totals[0] += encoded
            totals[1] += committed
            value = f"{totals[0]},{totals[1]}"
        try:
            internal_kv._internal_kv_put(f"{self.prefix}{socket.gethostname()}:{os.getpid()}", value,
                                         namespace=KV_NAMESPACE)
        except Exception as error:  # noqa: BLE001 - progress never fails a run
            log.debug("progress not reported: %s", error)

    def counts(self) -> tuple[int, int]:
        from ray.experimental import internal_kv

        encoded = committed = 0
        for key in internal_kv._internal_kv_list(self.prefix, namespace=KV_NAMESPACE):
            value = internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)
            if value:
                done = value.decode().split(",")
                encoded, committed = encoded + int(done[0]), committed + int(done[1])
        return encoded, committed

    def clear(self) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_del(self.prefix, del_by_prefix=True, namespace=KV_NAMESPACE)


class _Reporting:
    """An encoder stage that tells the run's counter how many input rows it passed on (a document's passages
    count once: `rows_of`)."""

    def __init__(self, *args, counter=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.counter = counter

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = super().__call__(batch)
        if self.counter is not None:
            self.counter.add(encoded=rows_of(out))
        return out


class ReportingEmbedRows(_Reporting, EmbedRows):
    """operators/embed.py's EmbedRows, reporting."""


class ReportingEmbedPassages(_Reporting, EmbedPassages):
    """operators/embed_passages.py's EmbedPassages, reporting."""


@dataclass
class ProgressView:
    """What the line says, from the counts seen so far (no Ray, no clock of its own: tests drive `now`); the
    time in parentheses is the time since the run's encoding stage started."""

    total: int
    started: float
    samples: deque = field(default_factory=deque)  # (time, encoded) when encoded changed

    def update(self, encoded: int, now: float) -> None:
        if encoded and (not self.samples or encoded != self.samples[-1][1]):
            self.samples.append((now, encoded))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW_S:  # keep one sample before it
            self.samples.popleft()

    def rate(self) -> float | None:
        """Rows encoded per second between the oldest and newest sample in the window, once they are at least
        MIN_RATE_SPAN_S apart (actors started together finish their first batches together)."""
        if len(self.samples) < 2:
            return None
        (t0, c0), (t1, c1) = self.samples[0], self.samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 - t0 >= MIN_RATE_SPAN_S else None

    def line(self, encoded: int, committed: int, now: float) -> str:
        total = max(self.total, 1)
        # A batch retried after an actor or a writer died is counted again: never show more than there is.
        encoded, committed = min(encoded, self.total), min(committed, self.total)
        elapsed = _clock(now - self.started)
        if not encoded:
            return f"embed: {self.total:,} rows to read; starting encoders ({elapsed})"
        text = f"embed: {encoded:,}/{self.total:,} encoded ({100 * encoded / total:.0f}%), {committed:,} committed"
        rate = self.rate()
        if encoded >= self.total:
            return f"{text}; committing the last rows ({elapsed})" if committed < self.total else f"{text} ({elapsed})"
        if rate is None or rate <= 0:
            return f"{text}; measuring the rate ({elapsed})"
        last_time = self.samples[-1][0]
        eta = max((self.total - encoded) / rate - (now - last_time), 0.0)
        return f"{text}; {rate:,.1f} rows/s, ETA {_clock(eta)} ({elapsed})"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class ProgressMonitor:
    """The run's counter and the driver's thread that draws the line; a context manager around the run."""

    def __init__(self, total: int, enabled: bool = True, run: str = "run") -> None:
        self.view = ProgressView(total, time.time())
        self.enabled = enabled and total > 0
        self.counter = RowCounter(run) if self.enabled else None
        self.stream = sys.stderr
        self.terminal = self.stream.isatty()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._width = 0

    def __enter__(self) -> ProgressMonitor:
        if self.enabled:
            self._thread = threading.Thread(target=self._draw, daemon=True, name="embed-progress")
            self._thread.start()
        return self

    def __exit__(self, exc_type, *rest: object) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=10)
        if exc_type is None:
            self._show(final=True)
        elif self.terminal and self._width:
            self.stream.write("\n")
        try:
            self.counter.clear()
        except Exception:  # noqa: BLE001 - Ray may be gone with the error being raised
            log.debug("progress keys not cleared", exc_info=True)

    def _counts(self) -> tuple[int, int] | None:
        try:
            return self.counter.counts()
        except Exception:  # noqa: BLE001 - progress never fails a run
            return None

    def _draw(self) -> None:
        logged = 0.0
        while not self._stop.wait(REDRAW_S):
            if self.terminal:
                self._show()
            elif time.time() - logged >= LOG_EVERY_S:
                logged = time.time()
                self._show()

    def _show(self, final: bool = False) -> None:
        counts = self._counts()
        if counts is None:
            return
        now = time.time()
        self.view.update(counts[0], now)
        text = self.view.line(*counts, now)
        if not self.terminal:
            log.info("%s", text)
            return
        text = text[: max(shutil.get_terminal_size().columns - 1, 20)]
        self.stream.write("\r" + text.ljust(self._width) + ("\n" if final else ""))
        self.stream.flush()
        self._width = len(text)
