"""The lab's state file and its lock: what the lab started or created, written first-hand."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from .processes import is_alive

STATE_DIR = Path(os.environ.get("CMLAB_STATE_DIR", "/var/lib/chatmail-lab"))
CACHE_DIR = Path(os.environ.get("CMLAB_CACHE_DIR", "/var/cache/chatmail-lab"))


class StateStore:
    """The state directory: `state.json`, its lock, and where logs, zones and host trees go.

    The state records hosts (by name, with index, root, mount, PID records and links),
    lab processes (`procs`, by key), links, network namespaces and changed sysctls.
    """

    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir)
        self.file = self.dir / "state.json"
        self.log_dir = self.dir / "logs"
        self.zone_dir = self.dir / "zones"
        self.hosts_dir = self.dir / "hosts"

    def load(self) -> dict:
        if self.file.exists():
            return json.loads(self.file.read_text())
        return {"hosts": {}, "procs": {}, "links": [], "netns": [], "sysctl": {}}

    def save(self, state: dict) -> None:
        # Written aside and renamed, so an interrupted run never leaves half a record.
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.file)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the lab's lock: one lab command at a time changes what runs."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


def running(rec: dict | None) -> bool:
    """Whether a recorded process (a PID record) still runs."""
    return bool(rec) and is_alive(rec["pid"], rec["start"])


def by_index(rec: dict) -> int:
    """Sort key of host records: hosts in index order."""
    return rec["index"]
