"""Bounded waits: poll a condition until it holds, and fail with what was awaited."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    check: Callable[[], T],
    what: str | Callable[[], str],
    timeout: float = 20.0,
    *,
    interval: float = 0.01,
    proc: subprocess.Popen | None = None,
    until: Callable[[T], object] = bool,
) -> T:
    """Call ``check`` until ``until`` holds for what it returns (by default: until it
    returns something true), and return that.

    A bounded wait, never a timing assertion: ``timeout`` only says when to give up; the
    AssertionError then names ``what`` (a callable is asked only then, e.g. for a log) and
    the last result. With ``proc``, fail at once when that process exits.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if until(result):
            return result
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{_text(what)}: process exited with {proc.returncode}")
        if time.monotonic() >= deadline:
            last = "" if result in (None, False) else f"; last: {result!r:.3000}"
            raise AssertionError(f"timed out after {timeout:g}s waiting for {_text(what)}{last}")
        time.sleep(interval)


def _text(what: str | Callable[[], str]) -> str:
    return what if isinstance(what, str) else what()


def connect_unix(path: Path | str, timeout: float = 20.0) -> socket.socket:
    """Connect to a service's unix socket; the file exists a moment before listen()."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            return s
        except (ConnectionRefusedError, FileNotFoundError):
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
