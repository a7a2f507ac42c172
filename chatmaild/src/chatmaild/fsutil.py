"""Replacing small state files atomically, so that a full disk or a crash never leaves half of one.

Every file chatmaild keeps (password hashes, ``metadata.json``, the notification queue, the
metrics page, the echobot's password and invite) is written through :func:`write_atomic`: the
bytes go to a temporary file beside the target, which is renamed over it only once they are all
written. A reader sees the old file or the new one, never a mixture, and a write that fails
(``ENOSPC``, ``EDQUOT``, ``EIO``) removes its temporary file and raises, leaving the old file as
it was. Only a writer killed mid-write (SIGKILL, power cut) leaves its temporary file: the
daily expiry removes stale ones in account directories, the notifier those in its queue at
start, chatmail-metrics and the echobot theirs (:func:`remove_stale_temporary_files`).
"""

from __future__ import annotations

import os
import stat
import tempfile
import time
from pathlib import Path

# Temporary files are "<target name>.tmp-<random>", so whoever lists a directory can tell them
# from real files (see is_temporary).
TMP_MARK = ".tmp-"


# A write takes milliseconds; a temporary file this old belongs to a writer that was killed
# (SIGKILL, power cut) before it could rename or remove it.
STALE_AFTER = 600.0


def is_temporary(name: str) -> bool:
    """True for the name of a temporary file that :func:`write_atomic` left behind."""
    return TMP_MARK in name


def stale_temporary_files(
    directory: Path | str, now: float, older_than: float = STALE_AFTER, prefix: str = ""
) -> list[Path]:
    """Temporary files of :func:`write_atomic` directly in ``directory`` (whose target name
    starts with ``prefix``) last written more than ``older_than`` seconds before ``now``."""
    found = []
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        if not (entry.name.startswith(prefix) and is_temporary(entry.name)):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # renamed or removed meanwhile
        if stat.S_ISREG(st.st_mode) and st.st_mtime < now - older_than:
            found.append(Path(entry.path))
    return sorted(found)


def remove_stale_temporary_files(
    directory: Path | str, now: float | None = None, prefix: str = ""
) -> list[Path]:
    """Remove what :func:`stale_temporary_files` finds (for a service's start); returns it."""
    found = stale_temporary_files(directory, time.time() if now is None else now, prefix=prefix)
    for path in found:
        path.unlink(missing_ok=True)
    return found


def write_atomic(
    path: Path | str,
    data: str | bytes,
    *,
    mode: int = 0o600,
    dir_owner: bool = False,
    durable: bool = True,
) -> None:
    """Replace ``path`` with ``data`` (str is written as UTF-8) in one step.

    ``mode`` is the new file's permission bits. ``dir_owner`` gives the file to the owner of its
    directory when running as root (the service that reads it runs as that user).
    ``durable=False`` skips the fsyncs, for files whose loss in a power cut is acceptable but
    whose rate makes an fsync each too expensive; the rename stays atomic either way.
    Any OSError is raised after the temporary file is removed.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + TMP_MARK)
    placed = False
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if dir_owner and os.geteuid() == 0:
                st = os.stat(path.parent)
                os.fchown(f.fileno(), st.st_uid, st.st_gid)
            if durable:
                # Without it a power cut soon after the rename can leave the new name on
                # an empty or partly written file.
                os.fsync(f.fileno())
        os.replace(tmp, path)
        placed = True
        if durable:
            _fsync_dir(path.parent)
    except BaseException:
        if not placed:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
