"""Create-on-login authentication for Dovecot (passdb and userdb over the dict proxy).

Dovecot asks ``shared/passdb/<password>"<user>`` (``password_key = passdb/%Ew"%Eu``) and
``shared/userdb/<user>``. An existing account answers with its stored hash and Dovecot
verifies the password; an unknown address is created with the given password when the
creation rules allow it. All state is the account's ``password`` file.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterable

from .config import Config, User, read_config
from .dictproxy import DictFailure, DictHandler, DictProxyServer, setup_logging
from .hashing import hash_password

log = logging.getLogger("doveauth")


def split_escaped(text: str, sep: str = '"') -> list[str]:
    """Split on unescaped ``sep`` and undo Dovecot's ``%E`` backslash escaping."""
    parts, cur = [], []
    it = iter(text)
    for ch in it:
        if ch == "\\":
            cur.append(next(it, ""))
        elif ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _available_memory() -> int:
    with open("/proc/meminfo", "rb") as f:
        for line in f:
            if line.startswith(b"MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("MemAvailable not in /proc/meminfo")


def resource_problem(config: Config) -> str | None:
    """Why the machine is too busy or full for new accounts, or None."""
    mib = 1024 * 1024
    checks = (
        (os.getloadavg, lambda v: v[0] > config.max_load_1m,
         lambda v: f"load avg {v[0]:.2f} > {config.max_load_1m}"),
        (_available_memory, lambda v: v < config.min_available_memory,
         lambda v: f"available memory {v // mib}MB < {config.min_available_memory // mib}MB"),
        (lambda: _free_disk(config), lambda v: v < config.min_free_disk_space,
         lambda v: f"free disk {v // mib}MB < {config.min_free_disk_space // mib}MB"),
    )  # fmt: skip
    for read, too_bad, describe in checks:
        try:
            value = read()
        except OSError as e:
            # A reading we cannot take must not lock everybody out.
            log.warning("could not check resources: %s", e)
            continue
        if too_bad(value):
            return describe(value)
    return None


def _free_disk(config: Config) -> int:
    st = os.statvfs(config.mailboxes_dir)
    return st.f_bavail * st.f_frsize


class AuthDict(DictHandler):
    """passdb/userdb lookups with account creation."""

    def __init__(self, config: Config):
        self.config = config
        # Striped: bounded memory however many addresses are created.
        self._locks = [threading.Lock() for _ in range(64)]

    def lookup(self, key: str, user: str | None) -> str | None:
        namespace, _, rest = key.partition("/")
        if namespace != "shared":
            raise DictFailure("unsupported namespace")
        kind, _, args = rest.partition("/")
        if kind == "userdb":
            return self.userdb_lookup(split_escaped(args)[0])
        if kind == "passdb":
            parts = split_escaped(args)
            if len(parts) != 2:
                log.warning("passdb key without a password/user separator")
                return None
            return self.passdb_lookup(parts[1], parts[0])
        log.warning("lookup of unknown type %r ignored", kind)
        return None

    def _user(self, addr: str) -> User | None:
        try:
            return self.config.get_user(addr)
        except ValueError:
            return None

    def userdb_lookup(self, addr: str) -> str | None:
        user = self._user(addr)
        if user is None or user.get_password_hash() is None:
            return None
        return self._userdb_json(user)

    def _userdb_json(self, user: User) -> str:
        # uid/gid come from Dovecot's mail_uid/mail_gid (vmail on the relay).
        return json.dumps({"home": str(user.maildir)})

    def passdb_lookup(self, addr: str, password: str) -> str | None:
        user = self._user(addr)
        if user is None:
            return None
        stored = user.get_password_hash()
        if stored is None:
            stored = self.create_account(user, password)
            if stored is None:
                return None
        # Dovecot compares the password with the hash; we never do it here.
        return json.dumps({"password": stored})

    def refusal(self, user: User, password: str) -> str | None:
        """Why ``user`` may not be created with ``password`` now, or None."""
        config = self.config
        if config.nocreate_file.exists():
            return f"{config.nocreate_file} exists"
        if len(password) < config.password_min_length:
            return f"password shorter than {config.password_min_length} characters"
        if not config.is_localpart_allowed(user.localpart):
            return (
                f"local part must be {config.username_min_length}-{config.username_max_length}"
                " characters of a-z 0-9 . _ -"
            )
        problem = resource_problem(config)
        if problem:
            log.warning("registration rejected: %s", problem)
            return problem
        return None

    def create_account(self, user: User, password: str) -> str | None:
        """Store a hash for a new account; the first of concurrent creations wins."""
        reason = self.refusal(user, password)
        if reason:
            log.warning("not creating %s: %s", user.addr, reason)
            return None
        try:
            new_hash = hash_password(password)
        except ValueError:
            log.warning("not creating %s: password cannot be hashed", user.addr)
            return None
        # doveauth is the only writer of password files, so a lock in this process
        # serialises creations of one address; O_EXCL keeps that true even if it were not.
        with self._locks[hash(user.addr) % len(self._locks)]:
            stored = user.get_password_hash()
            if stored is not None:
                return stored
            _make_maildir(user)
            try:
                _create_exclusive(user.password_path, new_hash)
            except FileExistsError:
                # Left empty or damaged by a crash: replace it.
                _write_atomic(user.password_path, new_hash)
            user.enforce_e2ee_path.touch()
        print(f"Created address: {user.addr}", file=sys.stderr, flush=True)
        return new_hash

    def iterate(self, path: str, user: str | None) -> Iterable[tuple[str, str]]:
        if path != "shared/userdb/":
            return
        try:
            names = sorted(os.listdir(self.config.mailboxes_dir))
        except FileNotFoundError:
            return
        for name in names:
            if "@" in name:
                yield f"shared/userdb/{name}", ""


def _make_maildir(user: User) -> None:
    try:
        user.maildir.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        return
    if os.geteuid() == 0:
        # Run as root (not the relay's setup): Dovecot refuses root for mail access, so
        # the account belongs to whoever owns the mailboxes directory.
        parent = user.maildir.parent.stat()
        os.chown(user.maildir, parent.st_uid, parent.st_gid)


def _create_exclusive(path, text: str) -> None:
    """Create ``path`` with ``text``; FileExistsError if it is there already."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _write_atomic(path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> None:
    """``doveauth <socket> <chatmail.ini>``"""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.exit("usage: doveauth SOCKET CHATMAIL_INI")
    setup_logging()
    config = read_config(args[1])
    DictProxyServer(AuthDict(config), args[0]).run()


if __name__ == "__main__":
    main()
