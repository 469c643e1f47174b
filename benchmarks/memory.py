"""Peak memory of a process tree, sampled in a background thread.

A local Ray started by the driver runs as the driver's descendants (GCS, raylet, and the workers
under the raylet), so the driver's process tree is "all Ray processes". Resident sizes double-count
shared pages (the plasma store, torch's libraries), so we also sum PSS, which splits each shared
page among the processes that map it: the sum of PSS is what the tree really holds.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

try:
    import psutil
except ImportError:  # a bare GPU box may lack it; encoder runs then report no CPU memory
    psutil = None


@dataclass
class TreeSample:
    rss: int = 0
    pss: int = 0
    processes: int = 0
    largest: int = 0  # PSS of the biggest single process
    largest_name: str = ""
    by_name: dict[str, int] = field(default_factory=dict)  # biggest single process of each name


@dataclass
class PeakMemory:
    """Peaks over a run; `driver` is the root process alone, `tree` everything including it."""

    tree_rss: int = 0
    tree_pss: int = 0
    driver_pss: int = 0
    others_pss: int = 0  # the tree without the root: for a driver, its Ray processes
    largest_pss: int = 0
    largest_name: str = ""
    processes: int = 0
    samples: int = 0
    by_name: dict[str, int] = field(default_factory=dict)  # peak PSS of the biggest process of each name
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (seconds, tree PSS)

    def update(self, sample: TreeSample, driver_pss: int, elapsed: float) -> None:
        self.samples += 1
        self.tree_rss = max(self.tree_rss, sample.rss)
        self.tree_pss = max(self.tree_pss, sample.pss)
        self.driver_pss = max(self.driver_pss, driver_pss)
        self.others_pss = max(self.others_pss, sample.pss - driver_pss)
        self.processes = max(self.processes, sample.processes)
        if sample.largest > self.largest_pss:
            self.largest_pss, self.largest_name = sample.largest, sample.largest_name
        for name, pss in sample.by_name.items():
            self.by_name[name] = max(self.by_name.get(name, 0), pss)
        self.timeline.append((round(elapsed, 2), sample.pss))


def _pss(process: psutil.Process, detailed: bool = True) -> tuple[int, int]:
    """(rss, pss) of one process; pss falls back to rss where smaps cannot be read (or is not asked for)."""
    if not detailed:
        rss = process.memory_info().rss
        return rss, rss
    try:
        info = process.memory_full_info()
        return info.rss, getattr(info, "pss", info.rss)
    except psutil.AccessDenied:
        rss = process.memory_info().rss
        return rss, rss


def sample_tree(root: psutil.Process, children: bool = True, detailed: bool = True) -> tuple[TreeSample, int]:
    """One sample of the tree under `root` (itself included) and root's own PSS."""
    sample = TreeSample()
    driver_pss = 0
    try:
        processes = [root, *(root.children(recursive=True) if children else [])]
    except (psutil.NoSuchProcess, psutil.ZombieProcess):  # the root has exited (a finished driver)
        return sample, driver_pss
    for process in processes:
        try:
            rss, pss = _pss(process, detailed)
            name = process.name()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        sample.rss += rss
        sample.pss += pss
        sample.processes += 1
        kind = name.split("(", 1)[0]  # ray::MapWorker(MapBatches(EmbedRows)) -> ray::MapWorker
        sample.by_name[kind] = max(sample.by_name.get(kind, 0), pss)
        if process.pid == root.pid:
            driver_pss = pss
        elif pss > sample.largest:
            sample.largest, sample.largest_name = pss, name
    return sample, driver_pss


class TreeSampler:
    """Context manager sampling the process tree under `pid` (default: this process) every `interval` s.
    `children=False, detailed=False` samples one process's RSS cheaply (for encoder-only runs)."""

    def __init__(
        self, pid: int | None = None, interval: float = 0.25, children: bool = True, detailed: bool = True
    ) -> None:
        if psutil is None:
            msg = "memory sampling needs psutil (pip install psutil)"
            raise ImportError(msg)
        self.root = psutil.Process(pid or os.getpid())
        self.interval = interval
        self.children = children
        self.detailed = detailed
        self.peak = PeakMemory()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        self._started = 0.0

    def __enter__(self) -> TreeSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._take()

    def _take(self) -> None:
        sample, driver = sample_tree(self.root, self.children, self.detailed)
        self.peak.update(sample, driver, time.monotonic() - self._started)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()


def mib(size: int) -> float:
    return round(size / 2**20, 1)
