"""Tell systemd that a service is ready (``sd_notify(3)``), without a library.

A unit with ``Type=notify`` counts as started only once its process sends ``READY=1`` to
the datagram socket named in ``$NOTIFY_SOCKET``. The chatmaild services send it right after
their socket listens, so "active" means "answers" and ``systemctl restart`` returns only
then. Outside systemd (tests, a shell) the variable is unset and nothing is sent.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to systemd; whether it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    # A leading '@' names a socket in the abstract namespace (sd_notify(3)).
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as e:
        # Not fatal here: systemd times the start out and restarts the unit.
        log.warning("cannot notify systemd at %s: %s", address.lstrip("\0"), e)
        return False
    return True


def ready() -> bool:
    """The service listens: let systemd mark the unit active."""
    return notify("READY=1")
