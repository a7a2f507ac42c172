"""One account of the relay: its address check and the files in its maildir."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger(__name__)

# What doveauth stores: {SHA512-CRYPT}$6$<salt>$<86 characters of crypt base64>.
_HASH_RE = re.compile(
    r"^\{SHA512-CRYPT\}\$6\$(rounds=\d+\$)?[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86}$"
)


def check_addr(addr: object, domain: str) -> str:
    """``addr`` if it is a safe address of ``domain``, else ValueError."""
    # This is the single guard between a login name and the filesystem.
    if not isinstance(addr, str) or not addr:
        raise ValueError(f"not an address: {addr!r}")
    localpart, sep, addr_domain = addr.rpartition("@")
    if not sep or addr_domain != domain:
        raise ValueError(f"not an address of {domain}: {addr!r}")
    if (
        not localpart
        or "@" in localpart
        or "/" in localpart
        or "\\" in localpart
        or "\x00" in localpart
        or localpart.startswith(".")
        or localpart.endswith(".")
        or ".." in localpart
        or any(c.isspace() or not c.isprintable() for c in localpart)
    ):
        raise ValueError(f"invalid local part in {addr!r}")
    return addr


@dataclass(frozen=True)
class User:
    """Paths of one account; all state lives in its maildir.

    The paths are computed once per User (cached_property writes the instance's __dict__,
    which a frozen dataclass allows): a new account's creation used each of them several
    times, and building them again was most of its pathlib work.
    """

    config: Config
    addr: str

    @property
    def localpart(self) -> str:
        return self.addr.rsplit("@", 1)[0]

    @cached_property
    def maildir(self) -> Path:
        return self.config.mailboxes_dir / self.addr

    @cached_property
    def password_path(self) -> Path:
        return self.maildir / "password"

    @cached_property
    def enforce_e2ee_path(self) -> Path:
        return self.maildir / "enforceE2EEincoming"

    @cached_property
    def metadata_path(self) -> Path:
        return self.maildir / "metadata.json"

    def get_password_hash(self) -> str | None:
        """The stored hash, or None if the account does not exist (an empty file included)."""
        try:
            data = self.password_path.read_text("ascii").strip()
        except FileNotFoundError:
            return None
        if not _HASH_RE.match(data):
            # Empty or cut short by a crash: creating the account again repairs it.
            log.error("damaged password file for %s, treating account as missing", self.addr)
            return None
        return data
