"""chatmail-quota-expire: remove the oldest messages of a full mailbox.

Dovecot runs it as a ``quota_warning`` script when a mailbox passes 75 % of its quota,
as ``chatmail-quota-expire <target_mb> <mailbox dir>`` with 70 % of the quota as target,
so clients never reach their own 80 %/95 % warnings. ``chatmail-expire`` calls the same
code daily. Messages younger than 24 hours are never removed: a message that has not been
fetched yet must get its chance.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MIN_AGE = 24 * 3600
# Dovecot maildir file names carry the size as ",S=<bytes>" (maildir_save.c).
_SIZE_RE = re.compile(r",S=(\d+)")
MESSAGE_DIRS = ("cur", "new")


@dataclass(frozen=True, order=True)
class MessageFile:
    mtime: float
    size: int
    path: Path


def message_files(maildir: Path, subdirs=MESSAGE_DIRS) -> list[MessageFile]:
    """Messages in ``subdirs`` of INBOX and of every ``.Folder``; vanished files skipped."""
    folders = [maildir]
    try:
        folders += [p for p in maildir.iterdir() if p.name.startswith(".") and p.is_dir()]
    except FileNotFoundError:
        return []
    result = []
    for folder in folders:
        for sub in subdirs:
            try:
                entries = list(os.scandir(folder / sub))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # expunged by Dovecot meanwhile
                if not entry.is_file(follow_symlinks=False):
                    continue
                m = _SIZE_RE.search(entry.name)
                size = int(m.group(1)) if m else st.st_size
                result.append(MessageFile(st.st_mtime, size, Path(entry.path)))
    return result


def select_for_quota(
    messages: list[MessageFile], target_bytes: int, now: float
) -> list[MessageFile]:
    """Oldest messages to remove so that the rest fits in ``target_bytes``."""
    total = sum(m.size for m in messages)
    chosen = []
    for m in sorted(messages):
        if total <= target_bytes or m.mtime > now - MIN_AGE:
            break
        chosen.append(m)
        total -= m.size
    return chosen


def expire_to_quota(maildir: Path, target_bytes: int, now: float | None = None) -> int:
    """Remove messages down to ``target_bytes``; returns how many were removed."""
    now = time.time() if now is None else now
    removed = 0
    for m in select_for_quota(message_files(maildir), target_bytes, now):
        try:
            m.path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    if removed:
        # Dovecot recounts the quota when the file is gone.
        (maildir / "maildirsize").unlink(missing_ok=True)
        print(
            f"quota-expire: removed {removed} message(s) from {maildir.name}",
            file=sys.stderr,
            flush=True,
        )
    return removed


def main(argv: list[str] | None = None) -> None:
    """``chatmail-quota-expire <target_mb> <mailbox dir>``"""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[0].isdigit():
        sys.exit("usage: chatmail-quota-expire TARGET_MB MAILBOX_DIR")
    maildir = Path(args[1])
    if not maildir.is_dir():
        sys.exit(f"{maildir} is not a mailbox directory")
    expire_to_quota(maildir, int(args[0]) * 1024 * 1024)


if __name__ == "__main__":
    main()
