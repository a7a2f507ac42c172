"""The two systemd service protocols the chatmaild services speak, without a library:
readiness (``sd_notify(3)``) and sockets passed by a socket unit (``sd_listen_fds(3)``).

A unit with ``Type=notify`` counts as started only once its process sends ``READY=1`` to
the datagram socket named in ``$NOTIFY_SOCKET``. The chatmaild services send it right after
their socket listens, so "active" means "answers" and ``systemctl restart`` returns only
then. Outside systemd (tests, a shell) the variable is unset and nothing is sent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys

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


async def ready_until_stopped() -> None:
    """Tell systemd (and a reader of stderr) that the service listens, then return at
    SIGTERM (systemd's stop) or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("entering serving loop", file=sys.stderr, flush=True)
    ready()
    await stop.wait()


# sd_listen_fds(3): passed sockets start at this descriptor.
LISTEN_FDS_START = 3


def listen_socket(family: int = socket.AF_UNIX) -> socket.socket | None:
    """The one listening socket systemd passed to this process, or None.

    With a socket unit, systemd keeps listening while the service restarts or is stopped,
    so clients wait in the backlog instead of failing to connect.
    """
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    # Not inherited by children (deltachat-rpc-server, pip): the variables name this PID.
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    if count != 1:
        if count:
            log.warning("expected one socket from systemd, got %d: binding my own", count)
        return None
    sock = socket.socket(family, socket.SOCK_STREAM, fileno=LISTEN_FDS_START)
    sock.set_inheritable(False)
    return sock
