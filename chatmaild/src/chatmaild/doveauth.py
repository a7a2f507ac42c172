"""Create-on-login authentication for Dovecot (passdb and userdb over the dict proxy).

Dovecot asks ``shared/passdb/<password>"<user>"<client ip>``
(``password_key = passdb/%Ew"%Eu"%E{rip}``; the older key without the IP is still
understood) and ``shared/userdb/<user>``. An existing account answers with its stored hash
and Dovecot verifies the password; an unknown address is created with the given password
when the creation rules allow it, at most ``max_new_accounts_per_ip_burst`` at once and
``max_new_accounts_per_ip_per_hour`` after that per client address. Names that cannot be an
account (too long, control characters, another domain) are answered "not found" without
touching the filesystem. All state is the account's ``password`` file.

The login that creates an account is answered with its password in ``{PLAIN}`` (printable
ASCII passwords only), so that Dovecot compares strings instead of running SHA512-CRYPT on the
hash just made: that second hash was a quarter of the CPU of a new-account login.

Lookups of existing accounts are answered from a cache of the stored hashes, on the event
loop without a worker thread (:meth:`AuthDict.lookup_nowait`). An entry is used only while a
``stat`` of the password file shows the very file it was read from (inode, size, mtime and
ctime in ns): a password file is only ever replaced by a rename (``fsutil.write_atomic``) or
removed with its account (``chatmail-expire``), and either changes that. A miss goes the slow
path (thread pool, file read, creation rules), so create-on-login stays exactly as before.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Iterable

from . import dictproxy
from .config import Config, User
from .dictproxy import NOT_CACHED, DictFailure, DictHandler
from .filtermail.ratelimit import RateLimiter
from .fsutil import write_atomic
from .hashing import hash_password

log = logging.getLogger("doveauth")

# RFC 5321 §4.5.3.1.1: a local part has at most 64 octets; §4.5.3.1.3: a path (with its
# angle brackets) at most 256, so an address at most 254. A mailbox directory is named
# after the address and must fit one file name (255 bytes on ext4).
MAX_LOCALPART = 64
MAX_ADDRESS = 254

# Passwords a new account's own login is answered with in PLAIN (see passdb_lookup):
# printable ASCII, which JSON, the dict protocol and Dovecot carry unchanged; any other
# password gets the stored hash, as every later login does.
_PLAIN_SAFE = re.compile(r"[\x20-\x7e]+")

# Existing accounts whose answers are cached (about 1 KB each): the busiest ones of a relay
# with many more accounts; the others take the slow path, which is just as correct.
MAX_CACHED_ACCOUNTS = 20_000


def _file_identity(path: str) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class AccountCache:
    """addr -> (password file path, its identity, passdb reply, userdb reply).

    Filled by worker threads, read lock-free by the event loop (single dict operations are
    atomic); writers take a lock so that eviction never races an insertion.
    """

    def __init__(self, max_entries: int = MAX_CACHED_ACCOUNTS):
        self.max_entries = max_entries
        self._entries: dict[str, tuple[str, tuple, str, str]] = {}
        self._lock = threading.Lock()

    def get(self, addr: str, kind: str) -> str | None:
        """The cached passdb or userdb reply of ``addr`` if its password file is unchanged."""
        entry = self._entries.get(addr)
        if entry is None:
            return None
        path, identity, passdb, userdb = entry
        try:
            current = _file_identity(path)
        except OSError:
            current = None
        if current != identity:
            self.discard(addr)
            return None
        return passdb if kind == "passdb" else userdb

    def put(self, addr: str, path: str, identity: tuple, passdb: str, userdb: str) -> None:
        with self._lock:
            self._entries.pop(addr, None)
            while len(self._entries) >= self.max_entries:
                # Oldest insertion first: dicts keep insertion order.
                del self._entries[next(iter(self._entries))]
            self._entries[addr] = (path, identity, passdb, userdb)

    def discard(self, addr: str) -> None:
        with self._lock:
            self._entries.pop(addr, None)

    def __len__(self) -> int:
        return len(self._entries)


def split_escaped(text: str, sep: str = '"') -> list[str]:
    """Split on unescaped ``sep`` and undo Dovecot's ``%E`` backslash escaping."""
    if "\\" not in text:
        return text.split(sep)  # the common case, without a loop over every character
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


def client_bucket(rip: str) -> str | None:
    """The key an account-creation limit counts ``rip`` under, or None for no per-IP limit.

    IPv6 clients usually get a whole /64, so that is one bucket. Loopback is the relay
    itself: SMTP that nginx passes on from port 443, local tools and tests (see
    docs/operating.md); an empty or unparsable IP comes from a caller that sent none.
    """
    try:
        ip = ipaddress.ip_address(rip)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class CreationLimiter:
    """GCRA limit of new accounts per client bucket, thread-safe (lookups run in a pool)."""

    def __init__(self, per_hour: int, burst: int, clock=time.monotonic):
        # RateLimiter counts per minute. Its clock here runs in whole ticks of 1/60 of the
        # interval between two creations, so one creation per "minute" is one per
        # 3600/per_hour s, and all its sums are of integers: exact, no float rounding that
        # could cost a burst its last account.
        def ticks() -> float:
            return float(math.floor(clock() * per_hour / 60))

        self._limiter = RateLimiter(1, burst, clock=ticks)
        self._lock = threading.Lock()

    def allow(self, bucket: str) -> bool:
        with self._lock:
            return self._limiter.allow(bucket)

    def __len__(self) -> int:
        return len(self._limiter)


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

    def __init__(self, config: Config, clock=time.monotonic):
        self.config = config
        # Striped: bounded memory however many addresses are created.
        self._locks = [threading.Lock() for _ in range(64)]
        self.creations = CreationLimiter(
            config.max_new_accounts_per_ip_per_hour, config.max_new_accounts_per_ip_burst, clock
        )
        self.cache = AccountCache()

    def lookup_nowait(self, key: str, user: str | None):
        """The reply of an existing account from the cache, else NOT_CACHED (slow path)."""
        kind, addr = _cache_key(key)
        if addr is None:
            return NOT_CACHED
        reply = self.cache.get(addr, kind)
        return NOT_CACHED if reply is None else reply

    def lookup(self, key: str, user: str | None) -> str | None:
        namespace, _, rest = key.partition("/")
        if namespace != "shared":
            raise DictFailure("unsupported namespace")
        kind, _, args = rest.partition("/")
        if kind == "userdb":
            return self.userdb_lookup(split_escaped(args)[0])
        if kind == "passdb":
            parts = split_escaped(args)
            if len(parts) not in (2, 3):
                log.warning('passdb key is not password"user["ip], check auth.conf')
                return None
            rip = parts[2] if len(parts) == 3 else ""
            return self.passdb_lookup(parts[1], parts[0], rip)
        log.warning("lookup of unknown type %r ignored", kind)
        return None

    def _user(self, addr: str) -> User | None:
        """The account for a login name, or None for a name no account can have."""
        # Bounded before anything else: such a name cannot be a mailbox directory
        # (ENAMETOOLONG) and must get "not found", not an internal failure.
        localpart = addr.rpartition("@")[0].encode("utf-8", "surrogatepass")
        if len(localpart) > max(MAX_LOCALPART, self.config.username_max_length):
            return None
        if len(addr.encode("utf-8", "surrogatepass")) > MAX_ADDRESS:
            return None
        try:
            return self.config.get_user(addr)
        except ValueError:
            return None

    def _stored_hash(self, user: User) -> str | None:
        path = str(user.password_path)
        try:
            before = _file_identity(path)
        except FileNotFoundError:
            return None
        except OSError:
            before = None  # get_password_hash below raises or answers the same way
        try:
            stored = user.get_password_hash()
            if stored is not None and before is not None and _file_identity(path) == before:
                # The same file before and after the read: what was read is what it holds.
                self._remember(user, path, before, stored)
            return stored
        except OSError as e:
            if e.errno not in (errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR):
                raise
            log.warning("lookup of an impossible account name refused: %s", e.strerror)
            return None

    def userdb_lookup(self, addr: str) -> str | None:
        user = self._user(addr)
        if user is None or self._stored_hash(user) is None:
            return None
        return self._userdb_json(user)

    def _userdb_json(self, user: User) -> str:
        # uid/gid come from Dovecot's mail_uid/mail_gid (vmail on the relay).
        return json.dumps({"home": str(user.maildir)})

    def _remember(self, user: User, path: str, identity: tuple, stored: str) -> None:
        passdb = json.dumps({"password": stored})
        self.cache.put(user.addr, path, identity, passdb, self._userdb_json(user))

    def passdb_lookup(self, addr: str, password: str, rip: str = "") -> str | None:
        user = self._user(addr)
        if user is None:
            return None
        stored = self._stored_hash(user)
        if stored is None:
            created = self._create(user, password, rip)
            if created is None:
                return None
            stored, by_this_login = created
            if by_this_login and _PLAIN_SAFE.fullmatch(password):
                # The account was just made with exactly this password, so Dovecot's
                # comparison with PLAIN has the outcome a check of the new hash would
                # have, without a second SHA512-CRYPT (about a quarter of the CPU of a
                # new-account login). Only this reply carries it; every later lookup and
                # the loser of a concurrent first login get the stored hash.
                return json.dumps({"password": "{PLAIN}" + password})
        # Dovecot compares the password with the hash; we never do it here.
        return json.dumps({"password": stored})

    def refusal(self, user: User, password: str) -> str | None:
        """Why ``user`` may never be created with ``password``, or None.

        DictFailure while the machine is too busy or too full to create accounts now.
        """
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
            # The machine's state, not the account's: a temporary failure (F, so Dovecot
            # says NO [UNAVAILABLE] / 454) tells the client to retry, where "not found"
            # would read as a wrong password.
            raise DictFailure(f"not creating accounts now: {problem}")
        return None

    def create_account(self, user: User, password: str, rip: str = "") -> str | None:
        """Store a hash for a new account; the first of concurrent creations wins.

        Returns the account's stored hash (the winner's), or None if it may not be created.
        """
        created = self._create(user, password, rip)
        return None if created is None else created[0]

    def _create(self, user: User, password: str, rip: str) -> tuple[str, bool] | None:
        """(stored hash, whether this call stored it), or None if refused."""
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
                return stored, False
            # Counted here, where the account is really made: concurrent first logins of
            # one address and logins of existing accounts use up nothing.
            bucket = client_bucket(rip)
            if bucket is not None and not self.creations.allow(bucket):
                log.warning("registration rejected: too many new accounts from %s", bucket)
                return None
            try:
                _make_maildir(user)
                # The password file comes last: an account exists once it is there, so a
                # creation that fails half-way leaves no account, only a retry.
                user.enforce_e2ee_path.touch()
                # Any file already there is empty or damaged (get_password_hash said so).
                write_atomic(user.password_path, new_hash)
            except OSError as e:
                # A full disk (ENOSPC/EDQUOT) or I/O error is temporary: F makes Dovecot
                # answer NO [UNAVAILABLE] / 454, never "authentication failed".
                log.error("could not create %s: %s", user.addr, e)
                raise DictFailure("account storage unavailable") from e
            path = str(user.password_path)
            try:
                self._remember(user, path, _file_identity(path), new_hash)
            except OSError:
                pass  # not cached: the next lookup reads the file
        print(f"Created address: {user.addr}", file=sys.stderr, flush=True)
        return new_hash, True

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


def _cache_key(key: str) -> tuple[str, str | None]:
    """("passdb" or "userdb", address) of a lookup key, address None if not cacheable."""
    if key.startswith("shared/passdb/"):
        parts = split_escaped(key[len("shared/passdb/") :])
        return "passdb", parts[1] if len(parts) in (2, 3) else None
    if key.startswith("shared/userdb/"):
        return "userdb", split_escaped(key[len("shared/userdb/") :])[0]
    return "", None


def _make_maildir(user: User) -> None:
    try:
        user.maildir.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        return
    # Dovecot's home for the account (dovecot.conf.j2 sets home=<maildir>/home), where LMTP
    # keeps its duplicate database; made here so that the first delivery finds it.
    home = user.maildir / "home"
    home.mkdir(mode=0o700)
    if os.geteuid() == 0:
        # Run as root (not the relay's setup): Dovecot refuses root for mail access, so
        # the account belongs to whoever owns the mailboxes directory.
        parent = user.maildir.parent.stat()
        for path in (user.maildir, home):
            os.chown(path, parent.st_uid, parent.st_gid)


def main(argv: list[str] | None = None) -> None:
    """``doveauth <socket> <chatmail.ini>``"""
    dictproxy.main("doveauth", AuthDict, argv)


if __name__ == "__main__":
    main()
