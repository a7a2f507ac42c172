"""A really full filesystem for tests: a small tmpfs mounted by the test and always unmounted.

Mounting needs root (the test machine and CI run as root); without it the tests that use
:func:`small_tmpfs` are skipped and the monkeypatched ENOSPC tests still run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

FILLER = "zz-filler"


@contextlib.contextmanager
def small_tmpfs(mountpoint: Path, size: str = "256k") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` on ``mountpoint`` (created if missing) for the block."""
    if os.geteuid() != 0:
        import pytest  # only here: the rest of the kit runs without pytest

        pytest.skip("mounting a tmpfs needs root")
    mountpoint.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mountpoint)],
        check=True,
    )
    try:
        yield mountpoint
    finally:
        # Lazy: a process the test started may still hold a file open in there.
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def fill(directory: Path) -> Path:
    """Write a filler file into ``directory`` until its filesystem has no byte left."""
    path = directory / FILLER
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    chunk = b"\0" * 4096
    try:
        while True:
            os.write(fd, chunk)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
    try:
        # The last partial page, byte by byte.
        while True:
            os.write(fd, b"\0")
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return path


def temporary_files(root: Path) -> list[Path]:
    """Every file under ``root`` that a failed atomic write would have left."""
    return [p for p in root.rglob("*") if ".tmp" in p.name]
