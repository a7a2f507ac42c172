"""Running commands and tracking the lab's own long-running processes by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import LabError


def run(argv: Sequence[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command, capturing its output; on failure raise LabError with its stderr."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    proc = subprocess.run(list(argv), **kw)
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout or "").strip()
        raise LabError(f"{' '.join(argv)} failed (exit {proc.returncode}): {err}")
    return proc


def proc_start_time(pid: int) -> int | None:
    """The kernel's start time of a process in clock ticks, or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; fields follow the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def is_alive(pid: int, start_time: int | None = None) -> bool:
    """Whether the process runs and is not a zombie (and, if given, is the one we started)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return False
    # A matching start time tells our process apart from a later one that reused its PID.
    return start_time is None or int(fields[19]) == start_time


def spawn_daemon(
    argv: Sequence[str], log_path: Path, preexec: Callable[[], None] | None = None
) -> dict:
    """Start a long-running process detached from our session; return its PID record."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
        )
    # Popen would warn about a child we never wait for; the lab stops it later by PID.
    proc.returncode = 0
    return {"pid": proc.pid, "start": proc_start_time(proc.pid), "argv": list(argv)}


def reap(pid: int) -> None:
    """Collect the exit status if the process is our own exited child (no zombie is left)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_process(record: dict, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Stop a process we recorded: signal it, wait, then SIGKILL if it is still there."""
    pid, start = record["pid"], record.get("start")
    if not is_alive(pid, start):
        return
    for signum, wait in ((sig, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            reap(pid)
            if not is_alive(pid, start):
                return
            time.sleep(0.1)
    raise LabError(f"process {pid} ({record['argv'][0]}) did not stop even after SIGKILL")
