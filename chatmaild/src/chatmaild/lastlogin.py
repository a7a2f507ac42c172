"""Last-login tracking for Dovecot's ``last_login`` plugin over the dict proxy.

The day of the last login is the mtime of the account's ``password`` file, so expiry
needs no database. Dovecot commits ``S<id>\\tshared/last-login/<addr>\\t<unix time>``.
"""

from __future__ import annotations

import logging
import os

from . import dictproxy
from .config import Config
from .dictproxy import DictHandler

log = logging.getLogger("lastlogin")

DAY = 86400


def day_of(timestamp: int) -> int:
    """The timestamp rounded down to the start of its (UTC) day."""
    return timestamp // DAY * DAY


class LastLoginDict(DictHandler):
    def __init__(self, config: Config):
        self.config = config

    def set(self, user: str | None, key: str, value: str | None) -> bool:
        prefix = "shared/last-login/"
        if not key.startswith(prefix) or value is None:
            log.warning("unexpected last-login write ignored")
            return False
        try:
            account = self.config.get_user(key[len(prefix) :])
            day = day_of(int(value))
        except ValueError as e:
            log.warning("invalid last-login write: %s", e)
            return False
        try:
            if os.stat(account.password_path).st_mtime != day:
                os.utime(account.password_path, (day, day))
        except FileNotFoundError:
            log.error("last login of %s, which has no password file", account.addr)
            return False
        return True


def main(argv: list[str] | None = None) -> None:
    """``lastlogin <socket> <chatmail.ini>``"""
    dictproxy.main("lastlogin", LastLoginDict, argv)


if __name__ == "__main__":
    main()
