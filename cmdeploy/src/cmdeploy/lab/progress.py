"""Progress lines for slow lab steps (a live line on a terminal, a line per 15 s in logs)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable


class Progress:
    """One status line for a slow step: elapsed seconds plus the latest detail."""

    def __init__(self, title: str, out=None):
        self.title = title
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.detail = ""
        self.start = time.monotonic()
        self._last_plain = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        self.out.write(f"{self.title} ...\n")
        self.out.flush()
        self._thread = threading.Thread(target=self._tick, daemon=True)
        self._thread.start()
        return self

    def update(self, detail: str) -> None:
        self.detail = detail.strip()

    def _line(self) -> str:
        secs = int(time.monotonic() - self.start)
        return f"  [{secs // 60}:{secs % 60:02d}] {self.detail}"[:110]

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            if self.tty:
                self.out.write("\r\x1b[K" + self._line())
                self.out.flush()
            elif time.monotonic() - self._last_plain >= 15:
                # Logs of CI runs get a line every 15 s instead of carriage-return updates.
                self._last_plain = time.monotonic()
                self.out.write(self._line() + "\n")
                self.out.flush()

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        secs = time.monotonic() - self.start
        state = "done" if exc_type is None else "FAILED"
        prefix = "\r\x1b[K" if self.tty else ""
        self.out.write(f"{prefix}  {self.title}: {state} after {secs:.0f} s\n")
        self.out.flush()


def follow_lines(proc: subprocess.Popen, on_line: Callable[[str], None]) -> list[str]:
    """Feed each output line of a running process to a callback; return the last 30 lines."""
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        on_line(line)
        tail = (tail + [line.rstrip()])[-30:]
    proc.wait()
    return tail
