"""pytest fixtures for tests that need the lab; import them into a conftest.py.

The lab is session-scoped: brought up once, and always torn down at the end of the
session (also after failures), unless CMLAB_KEEP=1 asks to keep it for the next run.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .lab import Lab

# The lab must never touch the machine's own name resolution (lab-facts 6).
GUARDED_FILES = [Path("/etc/resolv.conf"), Path("/etc/hosts")]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent"


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """A running lab with CMLAB_HOSTS (default 2) hosts, torn down after the session."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    guarded = {p: _digest(p) for p in GUARDED_FILES}
    the_lab = Lab()
    try:
        the_lab.up(hosts=int(os.environ.get("CMLAB_HOSTS", "2")))
        yield the_lab
    finally:
        if os.environ.get("CMLAB_KEEP") != "1":
            records = the_lab.records()
            the_lab.down()
            left = the_lab.leftovers(records)
            assert not left, f"lab down left these behind: {left}"
        changed = [str(p) for p, digest in guarded.items() if _digest(p) != digest]
        assert not changed, f"the lab changed the machine's {changed}"
