"""chatmail-expire: remove old messages, large old messages and inactive accounts.

Runs daily (systemd timer) as the mailbox owner. For every account directory:

- last login (the ``password`` mtime, see lastlogin.py) older than
  ``delete_inactive_users_after`` days: the whole directory goes;
- a directory without ``password`` is removed only if it is empty;
- messages (files under ``cur/``, ``new/``, ``tmp/`` of any folder) older than
  ``delete_mails_after`` days go, as do messages in ``cur/`` larger than 200000 bytes older
  than ``delete_large_after`` days;
- then the oldest messages go until the mailbox is below 70 % of ``max_mailbox_size``
  (never messages younger than 24 hours, see quota_expire.py);
- first of all, temporary files that a killed writer left at the top of the account
  directory (``password.tmp-*``, ``metadata.json.tmp-*``, see fsutil.py) go once they are
  ten minutes old, so an account whose creation was cut short can be removed as empty.

Without ``--remove`` nothing is deleted (dry run). All ages compare POSIX timestamps
(``time.time()`` with file mtimes), so the host's time zone plays no part.
``delete_inactive_users`` is the seed's command for the first step alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from .config import Config, read_config
from .fsutil import stale_temporary_files
from .quota_expire import MESSAGE_DIRS, MessageFile, select_for_quota

DAY = 86400
LARGE_MESSAGE_SIZE = 200000
QUOTA_TARGET = 0.7
DEFAULT_INI = "/usr/local/lib/chatmaild/chatmail.ini"


@dataclass
class Mailbox:
    path: Path
    last_login: float | None
    messages: list[MessageFile] = field(default_factory=list)


def scan_mailbox(path: Path) -> Mailbox:
    """Messages are files whose directory is ``cur``, ``new`` or ``tmp``, at any depth."""
    try:
        last_login = (path / "password").stat().st_mtime
    except FileNotFoundError:
        last_login = None
    box = Mailbox(path, last_login)
    for dirpath, _dirnames, filenames in os.walk(path):
        if os.path.basename(dirpath) not in ("cur", "new", "tmp"):
            continue
        for name in filenames:
            file = os.path.join(dirpath, name)
            try:
                st = os.lstat(file)
            except FileNotFoundError:
                continue
            box.messages.append(MessageFile(st.st_mtime, st.st_size, Path(file)))
    return box


@dataclass
class Summary:
    mailboxes: int = 0
    removed_mailboxes: int = 0
    files: int = 0
    removed_files: int = 0
    removed_temporary: int = 0


class Expiry:
    """One expiry run; ``remove=False`` only reports what would go."""

    def __init__(
        self,
        config: Config,
        now: float,
        remove: bool,
        verbose: bool = False,
        out: TextIO | None = None,
        messages: bool = True,
    ):
        self.config = config
        self.now = now
        self.remove = remove
        self.verbose = verbose
        self.out = out
        self.messages = messages
        self.summary = Summary()

    def say(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)

    def account_dirs(self) -> list[Path]:
        result = []
        for entry in sorted(os.scandir(self.config.mailboxes_dir), key=lambda e: e.name):
            if "@" not in entry.name or not entry.is_dir(follow_symlinks=False):
                continue  # pending_notifications and other non-accounts
            try:
                self.config.get_user(entry.name)
            except ValueError:
                continue
            result.append(Path(entry.path))
        return result

    def run(self, maxnum: int | None = None) -> Summary:
        for path in self.account_dirs()[:maxnum]:
            self.remove_stale_temporary(path)
            self.expire_mailbox(scan_mailbox(path))
        return self.summary

    def remove_stale_temporary(self, path: Path) -> None:
        for tmp in stale_temporary_files(path, self.now):
            self._act(f"stale temporary file {tmp}", lambda tmp=tmp: tmp.unlink(missing_ok=True))
            self.summary.removed_temporary += 1

    def expire_mailbox(self, box: Mailbox) -> None:
        s = self.summary
        s.mailboxes += 1
        cutoff = self.now - self.config.delete_inactive_users_after * DAY
        if box.last_login is None:
            self._remove_if_empty(box)
            return
        if 0 < box.last_login < cutoff:
            self._act(f"inactive account {box.path}", lambda: _rmtree(box.path))
            s.removed_mailboxes += 1
            return
        s.files += len(box.messages)
        if not self.messages:
            return
        doomed = self.select_messages(box)
        for m in doomed:
            self._act(str(m.path), lambda m=m: m.path.unlink(missing_ok=True))
        s.removed_files += len(doomed)
        if doomed and self.remove:
            # Dovecot recounts the quota when the file is gone.
            (box.path / "maildirsize").unlink(missing_ok=True)

    def select_messages(self, box: Mailbox) -> list[MessageFile]:
        old = self.now - self.config.delete_mails_after * DAY
        old_large = self.now - self.config.delete_large_after * DAY
        doomed, kept = [], []
        for m in box.messages:
            too_old = m.mtime < old
            large = m.size > LARGE_MESSAGE_SIZE and m.path.parent.name == "cur"
            (doomed if too_old or (large and m.mtime < old_large) else kept).append(m)
        target = int(self.config.max_mailbox_size * QUOTA_TARGET)
        quota_counted = [m for m in kept if m.path.parent.name in MESSAGE_DIRS]
        doomed += select_for_quota(quota_counted, target, self.now)
        return doomed

    def _remove_if_empty(self, box: Mailbox) -> None:
        try:
            # Dovecot's empty home (made by doveauth with the account) does not count.
            entries = [e for e in box.path.iterdir() if not _is_empty_home(e)]
        except FileNotFoundError:
            return
        if entries:
            self.say(f"Skipped deleting {box.path}, doesn't have last_login but isn't empty")
            return
        self._act(f"empty directory {box.path}", lambda: _remove_empty_account(box.path))
        self.summary.removed_mailboxes += 1

    def _act(self, what: str, action) -> None:
        if self.verbose:
            self.say(f"{'removing' if self.remove else 'would remove'} {what}")
        if self.remove:
            try:
                action()
            except OSError as e:
                self.say(f"could not remove {what}: {e}")

    def summary_line(self, seconds: float) -> str:
        s = self.summary
        counts = (
            f"{s.removed_mailboxes} out of {s.mailboxes} mailboxes and "
            f"{s.removed_files} out of {s.files} files in existing mailboxes"
        )
        if self.remove:
            return f"Removed {counts} in {seconds:.2f} seconds"
        return f"Would remove {counts} (dry run, use --remove to delete) in {seconds:.2f} seconds"


def _is_empty_home(entry: Path) -> bool:
    return entry.name == "home" and entry.is_dir() and not any(entry.iterdir())


def _remove_empty_account(path: Path) -> None:
    home = path / "home"
    if home.is_dir():
        home.rmdir()
    path.rmdir()


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        raise OSError(f"{path} could not be removed completely")


def _run(config: Config, args, messages: bool) -> Summary:
    if not config.mailboxes_dir.is_dir():
        sys.exit(f"mailboxes_dir {config.mailboxes_dir} does not exist; check chatmail.ini")
    started = time.monotonic()
    now = time.time() - args.days * DAY
    expiry = Expiry(config, now, args.remove, args.verbose, messages=messages)
    expiry.run(args.maxnum)
    expiry.say(expiry.summary_line(time.monotonic() - started))
    return expiry.summary


def main(argv: list[str] | None = None) -> None:
    """``chatmail-expire [ini] [--days N] [--maxnum N] [-v] [--remove]``"""
    parser = argparse.ArgumentParser(
        prog="chatmail-expire", description="Remove old messages and inactive accounts."
    )
    parser.add_argument("ini", nargs="?", default=DEFAULT_INI, help="chatmail.ini path")
    parser.add_argument(
        "--days", type=float, default=0, help="pretend the current time is N days earlier"
    )
    parser.add_argument("--maxnum", type=int, default=None, help="look at N mailboxes at most")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every removal")
    parser.add_argument("--remove", action="store_true", help="delete (default: dry run)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    _run(read_config(args.ini), args, messages=True)


def delete_inactive_users_main(argv: list[str] | None = None) -> None:
    """``delete_inactive_users [ini] [--dry-run] [-v]``: the seed's command, which deletes."""
    parser = argparse.ArgumentParser(
        prog="delete_inactive_users",
        description="Remove accounts without a login for delete_inactive_users_after days.",
    )
    parser.add_argument("ini", nargs="?", default=DEFAULT_INI, help="chatmail.ini path")
    parser.add_argument("--dry-run", action="store_true", help="only report")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every removal")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    args.remove, args.days, args.maxnum = not args.dry_run, 0, None
    _run(read_config(args.ini), args, messages=False)


if __name__ == "__main__":
    main()
