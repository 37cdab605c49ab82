"""The progress display of a sweep's phases: a tqdm bar on a terminal, plain lines in a log file or a pipe."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from tqdm import tqdm

# Off a terminal, a progress line at least this often while tasks run (``Progress.heartbeat``); the
# environment variable MLFSIC_HEARTBEAT_S sets another interval (tests: 0, a line every collection round).
HEARTBEAT_S = float(os.environ.get("MLFSIC_HEARTBEAT_S", "60"))


class Progress:
    """A tqdm bar on a terminal; elsewhere (a log file, a pipe) plain lines: one each time another tenth is
    done, a heartbeat when nothing was printed for ``heartbeat_s``, and a summary.

    A bar redraws itself with carriage returns, which a log file keeps as one endless line; so when
    stderr is not a TTY, ``update`` prints ``<desc>: <done>/<total> <unit> (<pct>%) <elapsed> s`` each
    time another tenth is done (with fewer than 10 tasks: each task but the last), ``heartbeat`` prints
    ``<desc>: <done>/<total> <unit> done, <n> in flight, <n> failed, <4m05s> elapsed`` when no line was
    printed for ``heartbeat_s`` (default ``HEARTBEAT_S``), and ``close(summary)`` prints
    ``<desc>: <summary> in <elapsed> s``.
    """

    def __init__(self, desc: str, total: int, unit: str, enabled: bool, stream: Any = None,
                 heartbeat_s: float | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.desc, self.total, self.unit, self.enabled = desc, total, unit, enabled
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self.tty = enabled and is_tty(self.stream)
        self.done, self.started, self.next_line = 0, time.time(), 1
        self.last_line = self.started
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, disable=not self.tty or total == 0)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.tty:
            self.bar.update(n)
            return
        if not self.enabled or self.total == 0:
            return
        if self.done * 10 >= self.next_line * self.total and self.done < self.total:
            self.next_line = self.done * 10 // self.total + 1
            self.line(f"{self.done}/{self.total} {self.unit} ({100 * self.done // self.total}%) "
                      f"{self.elapsed():.1f} s")

    def heartbeat(self, in_flight: int, failed: int = 0) -> None:
        """Off a terminal, one line of where things stand if none was printed for ``heartbeat_s`` seconds.

        ``in_flight``: tasks submitted and not finished (running or queued); ``failed``: finished tasks that
        failed. Called after every collection round, so a log shows progress however long a task takes.
        """
        if self.tty or not self.enabled or time.time() - self.last_line < self.heartbeat_s:
            return
        self.line(f"{self.done}/{self.total} {self.unit} done, {in_flight} in flight, {failed} failed, "
                  f"{duration_text(self.elapsed())} elapsed")

    def close(self, summary: str) -> None:
        self.bar.close()
        if self.enabled:
            self.line(f"{summary} in {self.elapsed():.1f} s")

    def line(self, text: str) -> None:
        print(f"{self.desc}: {text}", file=self.stream, flush=True)
        self.last_line = time.time()

    def elapsed(self) -> float:
        return time.time() - self.started


def duration_text(seconds: float) -> str:
    """``42s``, ``4m05s``, ``1h02m05s``: a duration for a log line."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def is_tty(stream: Any) -> bool:
    """Whether ``stream`` is a terminal (False for a file, a pipe, or something without ``isatty``)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
