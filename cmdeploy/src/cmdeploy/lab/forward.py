"""Loopback port forwards to a lab relay, so that a Delta Chat app on this machine can use it.

Lab names and addresses are reachable only from the lab's client namespace. A forward listens
on 127.0.0.1 of this machine only (never on an address other machines reach) and passes each
connection to the relay's port with socat. A ``dclogin:`` link then names 127.0.0.1 and the
forwarded ports, and accepts the relay's self-signed certificate (``ic=3``), which cannot
name 127.0.0.1.
"""

from __future__ import annotations

import urllib.parse

# Relay port by service; the loopback port is BASE + 100 * host index + the last two digits.
PORTS = {"imap": 993, "smtp": 465, "https": 443}
BASE = 20000
LOOPBACK = "127.0.0.1"


def local_port(index: int, service: str) -> int:
    """The loopback port that forwards ``service`` of the lab host with ``index``."""
    return BASE + 100 * index + PORTS[service] % 100


def socat_argv(index: int, service: str, relay_ip: str) -> list[str]:
    """The socat command line of one forward (one process per accepted connection)."""
    listen = f"TCP4-LISTEN:{local_port(index, service)},bind={LOOPBACK},reuseaddr,fork"
    return ["socat", listen, f"TCP4:{relay_ip}:{PORTS[service]},connect-timeout=10"]


def dclogin_url(addr: str, password: str, index: int) -> str:
    """A ``dclogin:`` link for ``addr`` that reaches the relay through the forwards."""
    query = {
        "p": password,
        "v": "1",
        "ih": LOOPBACK,
        "ip": str(local_port(index, "imap")),
        "is": "ssl",
        "sh": LOOPBACK,
        "sp": str(local_port(index, "smtp")),
        "ss": "ssl",
        "ic": "3",
    }
    return f"dclogin:{urllib.parse.quote(addr, safe='@')}?{urllib.parse.urlencode(query, quote_via=urllib.parse.quote, safe='')}"
