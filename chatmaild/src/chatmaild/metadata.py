"""chatmail-metadata: Delta Chat's IMAP METADATA entries (RFC 5464) via Dovecot's dict proxy.

Dovecot (``mail_attribute_dict = proxy:<socket>:metadata``) maps entries to dict keys:

- ``/private/devicetoken`` on a mailbox is ``priv/<mailbox guid>/devicetoken``. A SET adds
  a token (a device registers once, an account can have several devices), a lookup
  returns all tokens joined by spaces.
- ``/private/messagenew`` is set by ``push_notification.lua`` during LMTP delivery and
  queues a notification for every token of the account (see ``notifier.py``).
- server entries (``GETMETADATA "" /shared/vendor/deltachat/<name>``) arrive as
  ``shared/<guid>/vendor/vendor.dovecot/pvt/server/vendor/deltachat/<name>``: ``irohrelay``
  (when configured) and ``maxsmtprecipients``.

Tokens live in ``<maildir>/metadata.json`` as ``{"devicetoken": {token: unix time}}`` and
expire after 90 days. Writes hold ``metadata.json.lock`` and replace the file atomically; a
file that cannot be parsed is logged and read as empty.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable

import filelock

from .config import Config, User, read_config
from .dictproxy import DictFailure, DictHandler, DictProxyServer, setup_logging
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

    def __init__(self, config: Config, store: MetadataStore, notifier: Notifier | None):
        self.config = config
        self.store = store
        self.notifier = notifier

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


def main(argv: list[str] | None = None) -> None:
    """``chatmail-metadata <socket> <chatmail.ini>``"""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.exit("usage: chatmail-metadata SOCKET CHATMAIL_INI")
    setup_logging()
    config = read_config(args[1])
    if not config.mailboxes_dir.is_dir():
        sys.exit(f"mailboxes_dir {config.mailboxes_dir} does not exist; deploy the relay first")
    store = MetadataStore(config)
    notifier = Notifier(
        config.mailboxes_dir / QUEUE_DIRNAME, config.notification_url, store.remove_token
    ).start()
    try:
        DictProxyServer(MetadataDict(config, store, notifier), args[0]).run()
    finally:
        notifier.stop(timeout=1)


if __name__ == "__main__":
    main()
