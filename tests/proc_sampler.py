"""Peak memory and task time of a process tree, sampled from /proc (Linux), for the scale benchmarks.

``ProcSampler(pid)`` polls the process ``pid`` and all its descendants every ``interval`` seconds in a
thread. For the root it keeps ``VmHWM`` (the kernel's own peak resident set, exact up to the last sample
before the process exits). For every Ray worker (a descendant whose title starts with ``ray::``; Ray
renames a worker ``ray::<function>`` while it runs a task and ``ray::IDLE`` between tasks) it keeps its
``VmHWM`` and, per title, the largest ``VmRSS`` / ``RssAnon`` / ``RssFile`` seen while the worker had
that title, the seconds it was seen with it and the CPU seconds (user + system, from ``/proc/<pid>/stat``)
it used between two samples that both saw that title (sampling resolution ``interval``). ``RssFile`` holds the
pages of memory-mapped files (the feature store) a worker has touched; ``RssAnon`` its own heap.

No psutil: it is not a dependency of the package.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

_KB = 1024


def _status(pid: int) -> dict[str, int]:
    values = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "PPid"):
                values[key] = int(rest.split()[0]) * (_KB if key != "PPid" else 1)
    except (OSError, ValueError, IndexError):
        return {}
    return values


def _title(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.split(b"\0")[0].decode(errors="replace").strip()


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15 of stat)


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after the parenthesised command name
        children[ppid].append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    children, todo, found = _children_map(), [pid], []
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class TitleStats:
    rss: int = 0
    anon: int = 0
    file: int = 0
    seconds: float = 0.0
    cpu: float = 0.0


@dataclass
class ProcSampler:
    pid: int
    interval: float = 0.25
    root_hwm: int = 0
    root_cpu: float = 0.0  # the root's own CPU seconds at the last sample
    worker_hwm: dict[int, int] = field(default_factory=dict)
    titles: dict[str, TitleStats] = field(default_factory=lambda: defaultdict(TitleStats))
    _last: dict[int, tuple[str, float]] = field(default_factory=dict)  # pid -> (title, CPU seconds) at the last sample
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> "ProcSampler":
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _loop(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            now = time.perf_counter()
            self.sample(now - last)
            last = now
            self._stop.wait(self.interval)

    def sample(self, elapsed: float) -> None:
        root = _status(self.pid)
        if root:
            self.root_hwm = max(self.root_hwm, root.get("VmHWM", 0))
            self.root_cpu = _cpu_seconds(self.pid) or self.root_cpu
        for pid in descendants(self.pid):
            title = _title(pid)
            if not title.startswith("ray::"):
                continue
            status = _status(pid)
            if not status:
                continue
            self.worker_hwm[pid] = max(self.worker_hwm.get(pid, 0), status.get("VmHWM", 0))
            stats = self.titles[title]
            cpu = _cpu_seconds(pid)
            if cpu is not None:
                previous = self._last.get(pid)
                if previous is not None and previous[0] == title:
                    stats.cpu += cpu - previous[1]
                self._last[pid] = (title, cpu)
            stats.rss = max(stats.rss, status.get("VmRSS", 0))
            stats.anon = max(stats.anon, status.get("RssAnon", 0))
            stats.file = max(stats.file, status.get("RssFile", 0))
            stats.seconds += elapsed

    def peak_worker(self) -> int:
        return max(self.worker_hwm.values(), default=0)


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (0 when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return 0
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file() and not entry.is_symlink())
