"""Which envelope recipients are accounts of this relay, failing closed.

A recipient counts as an account only if it is *plainly named*: after ASCII lowercasing
and stripping a ``+extension`` (Postfix ``recipient_delimiter = +``) the local part uses
the account charset, the domain is exactly ``mail_domain`` and the password file exists.
Everything else (``user%relay@relay``, ``relay!user@relay``, quoted local parts, other
domains, accounts that were never created) is no account: refused at RCPT incoming and
counted as refusing cleartext, so a rewrite Postfix might do later cannot open a way
around the gate.
"""

from __future__ import annotations

import errno
import os

from ..config import LOCALPART_RE, Config, User
from .mime import ascii_lower

# What "no such file" looks like for a name that is no account; any other error (EACCES,
# EIO, a mailbox filesystem gone) means we cannot tell, and is raised, so that the caller
# answers 4xx instead of taking a real account for a missing one.
_ABSENT = (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG)


def _exists(path) -> bool:
    # Not Path.exists: that ignores ELOOP and EBADF too, and raises for ENAMETOOLONG.
    try:
        os.stat(path)
    except OSError as e:
        if e.errno in _ABSENT:
            return False
        raise
    return True


def local_account(config: Config, rcpt: str) -> User | None:
    """The existing account that mail for ``rcpt`` would be delivered to, else None.

    OSError when the mailbox storage cannot be read: that is no answer either way.
    """
    local, sep, domain = ascii_lower(rcpt).rpartition("@")
    local = local.split("+", 1)[0]
    if not sep or domain != config.mail_domain or not LOCALPART_RE.match(local):
        return None
    try:
        user = config.get_user(f"{local}@{domain}")
    except ValueError:
        # Leading, trailing or doubled dots: never created by doveauth.
        return None
    return user if _exists(user.password_path) else None


def recipient_enforces_e2ee(config: Config, rcpt: str) -> bool:
    """Whether ``rcpt`` refuses cleartext: not an account, or its ``enforceE2EEincoming`` exists.

    The address is normalized the way delivery treats it, so ``Alice+x@`` cannot dodge
    ``alice@``'s setting. OSError when the storage cannot be read.
    """
    user = local_account(config, rcpt)
    return user is None or _exists(user.enforce_e2ee_path)
