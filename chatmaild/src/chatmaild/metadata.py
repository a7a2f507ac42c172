"""chatmail-metadata: Delta Chat's IMAP METADATA entries (RFC 5464) via Dovecot's dict proxy.

Dovecot (``mail_attribute_dict = proxy:<socket>:metadata``) maps entries to dict keys:

- ``/private/devicetoken`` on a mailbox is ``priv/<mailbox guid>/devicetoken``. A SET adds
  a token (a device registers once, an account can have several devices), a lookup
  returns all tokens joined by spaces.
- ``/private/messagenew`` is set by ``push_notification.lua`` during LMTP delivery and
  queues a notification for every token of the account (see ``notifier.py``).
- server entries (``GETMETADATA "" /shared/vendor/deltachat/<name>``) arrive as
  ``shared/<guid>/vendor/vendor.dovecot/pvt/server/vendor/deltachat/<name>``: ``irohrelay``
  (when configured), ``maxsmtprecipients``, ``turn`` (TURN credentials for calls, see
  :func:`turn_value`) and ``appversions`` (the shipped ``defaults/appversions.json``).

Tokens live in ``<maildir>/metadata.json`` as ``{"devicetoken": {token: unix time}}`` and
expire after 90 days. Writes hold ``metadata.json.lock`` and replace the file atomically; a
file that cannot be parsed is logged and read as empty.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import filelock

from . import dictproxy
from .config import Config, User
from .dictproxy import DictFailure, DictHandler
from .fsutil import write_atomic
from .notifier import QUEUE_DIRNAME, Notifier

log = logging.getLogger("metadata")

DAY = 86400
TOKEN_MAX_AGE = 90 * DAY
# A timestamp further in the future than this came from a wrong clock; such a token could
# otherwise never expire.
FUTURE_SLACK = 60
# Each token costs one POST per incoming message; a client must not be able to multiply
# that without bound. Far more than the devices of one person.
MAX_TOKENS = 50
LOCK_TIMEOUT = 10.0
# Postfix's smtpd_recipient_limit default.
MAX_SMTP_RECIPIENTS = "1000"
SERVER_PREFIX = "vendor/vendor.dovecot/pvt/server/vendor/deltachat/"

# Written once per relay by the deploy (cmdeploy/turn/deployer.py), readable by this service
# (owner vmail) and coturn (group turnserver) only; coturn gets it as static-auth-secret.
TURN_SECRET_PATH = Path("/etc/chatmail-turn/secret")
TURN_PORT = 3478
# As long as the reference relay's credentials (chatmail-turn: 5 days): Delta Chat fetches
# them at connect time and keeps them, so a shorter life could break calls of clients that
# stay connected for days; and a leaked credential is of use for this long only, to relay
# through this server (coturn's quotas), never to log in anywhere.
TURN_LIFETIME = 5 * DAY
APPVERSIONS_PATH = Path(__file__).parent / "defaults" / "appversions.json"


def turn_password(secret: str, username: str) -> str:
    """coturn's ``use-auth-secret`` password for ``username``: base64(HMAC-SHA1(secret, username))."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def turn_value(host: str, secret: str, now: float) -> str:
    """``host:3478:<expiry>:<password>``; the expiry timestamp is also the TURN username,
    which Delta Chat core requires to be a bare integer."""
    username = str(int(now) + TURN_LIFETIME)
    return f"{host}:{TURN_PORT}:{username}:{turn_password(secret, username)}"


def read_turn_secret(path: Path) -> str | None:
    """The relay's TURN secret, or None (logged) when it cannot be had."""
    try:
        secret = path.read_text("ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        log.error("TURN secret unreadable: %s", e)
        return None
    if not secret:
        log.error("TURN secret %s is empty", path)
        return None
    return secret


SOURCE_KEYS = {"sourceId", "versionInteger", "versionString", "downloadUrl"}
DOWNLOAD_PREFIXES = ("https://github.com/deltachat/", "https://download.delta.chat/")


def _nonempty_str(value) -> bool:
    return isinstance(value, str) and value != ""


def appversions_problem(data) -> str | None:
    """Why ``data`` does not fit the appversions schema Delta Chat core reads, or None.

    Core drops the whole payload on any type mismatch, so nothing partial is ever served."""
    if not isinstance(data, dict) or set(data) != {"clients"}:
        return "the only top-level key must be 'clients'"
    clients = data["clients"]
    if not isinstance(clients, list) or not clients:
        return "'clients' must be a non-empty list"
    client_ids: set[str] = set()
    for client in clients:
        if not isinstance(client, dict) or set(client) != {"clientId", "sources"}:
            return "a client has exactly 'clientId' and 'sources'"
        if not _nonempty_str(client["clientId"]) or client["clientId"] in client_ids:
            return "clientId must be a unique non-empty string"
        client_ids.add(client["clientId"])
        sources = client["sources"]
        if not isinstance(sources, list) or not sources:
            return f"sources of {client['clientId']} must be a non-empty list"
        source_ids: set[str] = set()
        for source in sources:
            if not isinstance(source, dict) or set(source) != SOURCE_KEYS:
                return "a source has exactly " + ", ".join(sorted(SOURCE_KEYS))
            if not _nonempty_str(source["sourceId"]) or source["sourceId"] in source_ids:
                return "sourceId must be a unique non-empty string within its client"
            source_ids.add(source["sourceId"])
            version = source["versionInteger"]
            # bool is an int in Python, not in core's serde.
            if type(version) is not int or not 0 <= version <= 0xFFFFFFFF:
                return "versionInteger must be an integer from 0 to 2^32-1"
            if not _nonempty_str(source["versionString"]):
                return "versionString must be a non-empty string"
            url = source["downloadUrl"]
            if not isinstance(url, str) or not url.startswith(DOWNLOAD_PREFIXES):
                return "downloadUrl must start with " + " or ".join(DOWNLOAD_PREFIXES)
    return None


def appversions_value(path: Path) -> str | None:
    """The file at ``path`` as one line of compact JSON, or None if it is missing or invalid."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as e:
        log.error("appversions %s unreadable: %s", path, e)
        return None
    problem = appversions_problem(data)
    if problem:
        log.error("appversions %s invalid: %s", path, problem)
        return None
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


class MetadataStore:
    """Device tokens per account, in the account's ``metadata.json``."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock

    def _read(self, user: User) -> dict:
        try:
            data = json.loads(user.metadata_path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError as e:
            # Damaged content is repaired by the next write; an OSError (EACCES, EIO) is
            # raised instead: a write must not replace tokens it could not read.
            log.warning("unreadable %s, treating it as empty: %s", user.metadata_path, e)
            return {}
        if not isinstance(data, dict):
            log.warning("%s is not a JSON object, treating it as empty", user.metadata_path)
            return {}
        return data

    def _valid_tokens(self, data: dict) -> dict[str, float]:
        tokens = data.get("devicetoken")
        now = self.clock()
        if isinstance(tokens, list):
            # An older layout kept a bare list; its tokens count as registered now.
            tokens = {t: now for t in tokens if isinstance(t, str)}
        if not isinstance(tokens, dict):
            return {}
        return {
            token: ts
            for token, ts in tokens.items()
            if isinstance(token, str)
            and isinstance(ts, (int, float))
            and now - TOKEN_MAX_AGE < ts <= now + FUTURE_SLACK
        }

    def get_tokens(self, addr: str) -> list[str]:
        """Current tokens of ``addr``, oldest registration first."""
        user = self.config.get_user(addr)
        tokens = self._valid_tokens(self._read(user))
        return sorted(tokens, key=lambda t: tokens[t])

    def add_token(self, addr: str, token: str) -> None:
        """Register ``token`` (again); a re-registered token gets a fresh timestamp."""

        def change(tokens: dict[str, float]) -> None:
            tokens.pop(token, None)
            tokens[token] = self.clock()
            while len(tokens) > MAX_TOKENS:
                del tokens[min(tokens, key=lambda t: tokens[t])]

        self._modify(self.config.get_user(addr), change)

    def remove_token(self, addr: str, token: str) -> None:
        """Forget ``token``; errors are logged, a notifier thread must not die of them."""
        try:
            self._modify(self.config.get_user(addr), lambda tokens: tokens.pop(token, None))
        except (OSError, ValueError, filelock.Timeout) as e:
            log.error("could not remove a token of %s: %s", addr, e)

    def _modify(self, user: User, change: Callable[[dict[str, float]], object]) -> None:
        if not user.maildir.is_dir():
            raise FileNotFoundError(f"no maildir for {user.addr}")
        lock = filelock.FileLock(str(user.metadata_path) + ".lock", timeout=LOCK_TIMEOUT)
        with lock:
            data = self._read(user)
            tokens = self._valid_tokens(data)
            change(tokens)
            data["devicetoken"] = tokens
            write_atomic(user.metadata_path, json.dumps(data))


def _split_key(key: str) -> tuple[str, str] | None:
    """``priv/<guid>/<name>`` or ``shared/<guid>/<name>`` → (namespace, name)."""
    parts = key.split("/", 2)
    if len(parts) != 3 or parts[0] not in ("priv", "shared"):
        return None
    return parts[0], parts[2]


class MetadataDict(DictHandler):
    """The ``metadata`` dict Dovecot uses for IMAP METADATA."""

    def __init__(self, config: Config, store: MetadataStore, notifier: Notifier | None,
                 turn_secret_path: Path = TURN_SECRET_PATH,
                 appversions_path: Path = APPVERSIONS_PATH,
                 clock: Callable[[], float] = time.time):  # fmt: skip
        self.config = config
        self.store = store
        self.notifier = notifier
        self.turn_secret_path = turn_secret_path
        self.appversions_path = appversions_path
        self.clock = clock

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.stop(timeout=1)

    def lookup(self, key: str, user: str | None) -> str | None:
        split = _split_key(key)
        if split == ("priv", "devicetoken"):
            if user is None:
                return None
            try:
                tokens = self.store.get_tokens(user)
            except ValueError:
                log.warning("token lookup for an invalid address")
                return None
            except OSError as e:
                # F, not "no tokens": Dovecot then fails the command temporarily.
                log.error("token lookup for %s failed: %s", user, e)
                raise DictFailure("metadata storage unavailable") from e
            return " ".join(tokens) if tokens else None
        if split is not None and split[0] == "shared" and split[1].startswith(SERVER_PREFIX):
            name = split[1][len(SERVER_PREFIX) :]
            if name == "irohrelay":
                return self.config.iroh_relay or None
            if name == "maxsmtprecipients":
                return MAX_SMTP_RECIPIENTS
            if name == "turn":
                # Read at each lookup (a few bytes): a new secret needs no restart here.
                secret = read_turn_secret(self.turn_secret_path)
                if secret is None:
                    return None
                return turn_value(self.config.mail_domain, secret, self.clock())
            if name == "appversions":
                return appversions_value(self.appversions_path)
        log.debug("lookup ignored: %s", key)
        return None

    def set(self, user: str | None, key: str, value: str | None) -> bool:
        split = _split_key(key)
        if user is None or split is None or split[0] != "priv" or value is None:
            log.warning("unsupported metadata write to %r", key)
            return False
        name = split[1]
        try:
            if name == "devicetoken":
                token = value.strip()
                if not token or any(c.isspace() for c in token):
                    # Lookups join tokens with spaces; a token with one could not be read back.
                    log.warning("device token of %s rejected: empty or with whitespace", user)
                    return False
                self.store.add_token(user, token)
                return True
            if name == "messagenew":
                # Only queue files are written here; HTTP happens in notifier threads, so
                # the LMTP delivery waiting for this reply never waits for the push server.
                tokens = self.store.get_tokens(user)
                if tokens and self.notifier is not None:
                    self.notifier.notify(user, tokens)
                return True
        except (OSError, ValueError, filelock.Timeout) as e:
            log.error("metadata write %r for %s failed: %s", name, user, e)
            return False
        log.warning("unsupported metadata write to %r", key)
        return False


def _open(config: Config) -> MetadataDict:
    """The metadata dict with its notifier running."""
    if not config.mailboxes_dir.is_dir():
        sys.exit(f"mailboxes_dir {config.mailboxes_dir} does not exist; deploy the relay first")
    store = MetadataStore(config)
    notifier = Notifier(
        config.mailboxes_dir / QUEUE_DIRNAME, config.notification_url, store.remove_token
    ).start()
    return MetadataDict(config, store, notifier)


def main(argv: list[str] | None = None) -> None:
    """``chatmail-metadata <socket> <chatmail.ini>``"""
    dictproxy.main("chatmail-metadata", _open, argv)


if __name__ == "__main__":
    main()
