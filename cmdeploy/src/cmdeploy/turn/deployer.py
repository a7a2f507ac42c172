"""coturn: the TURN server for Delta Chat calls, with a random secret per relay.

chatmail-metadata hands out credentials under ``/shared/vendor/deltachat/turn`` (coturn's
``use-auth-secret`` scheme: the username is the expiry timestamp, the password an HMAC of
it with the secret). The secret is made on the relay at the first deploy and kept:
``/etc/chatmail-turn/secret``, owner vmail (chatmail-metadata) and group turnserver
(coturn), mode 0440, so no other user of the machine can mint credentials.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from chatmaild.metadata import TURN_PORT, TURN_SECRET_PATH
from pyinfra import host
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server

from cmdeploy.deployer_base import Deployer

CONF_DIR = str(TURN_SECRET_PATH.parent)
SECRET = str(TURN_SECRET_PATH)
CONFIG_SCRIPT = "/usr/local/lib/chatmail-turn/turnserver-config"
DROP_IN = "/etc/systemd/system/coturn.service.d/chatmail-supervise.conf"
# Owner, group and mode of the secret: read by chatmail-metadata (vmail) and coturn.
SECRET_STAT = "vmail:turnserver:440"
# The UDP ports coturn relays from (the IANA dynamic range, coturn's default).
MIN_PORT, MAX_PORT = 49152, 65535
# Peers nobody may reach through the relay: private, shared (CGNAT), loopback, link-local,
# documentation, benchmarking, multicast and reserved ranges, and the IPv6 forms that lead
# to IPv4 ones (mapped, NAT64).
DENIED_PEERS = [
    "0.0.0.0-0.255.255.255",
    "10.0.0.0-10.255.255.255",
    "100.64.0.0-100.127.255.255",
    "127.0.0.0-127.255.255.255",
    "169.254.0.0-169.254.255.255",
    "172.16.0.0-172.31.255.255",
    "192.0.0.0-192.0.2.255",
    "192.88.99.0-192.88.99.255",
    "192.168.0.0-192.168.255.255",
    "198.18.0.0-198.19.255.255",
    "198.51.100.0-198.51.100.255",
    "203.0.113.0-203.0.113.255",
    "224.0.0.0-255.255.255.255",
    # Not "::" (or a range from it): coturn 4.6.1 then refuses every peer, IPv4 ones too
    # (seen with Debian's build); the unspecified address is no peer anyone can name.
    "::1",
    "::ffff:0.0.0.0-::ffff:255.255.255.255",
    "64:ff9b::-64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
    "100::-100::ffff:ffff:ffff:ffff",
    "2001:db8::-2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
    "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "ff00::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
]
# Allocations one credential may hold (a call needs one or two per client and address
# family), allocations in all, and bytes per second per session (HD video is ~0.3 MB/s).
USER_QUOTA = 12
TOTAL_QUOTA = 2000
MAX_BPS = 1_000_000
# Measured in the lab: see docs/operating.md "Supervision".
MEMORY_HIGH, MEMORY_MAX, TASKS_MAX = "192M", "256M", 128


def own_private_addresses(text: str) -> list[str]:
    """The private addresses among ``hostname -I``'s output.

    A relay on a private address (a lab, a NATed host) relays between two allocations of
    its own at that address; on a public address that is allowed anyway."""
    out = []
    for word in text.split():
        try:
            ip = ipaddress.ip_address(word)
        except ValueError:
            continue
        if ip.is_private and not (ip.is_loopback or ip.is_link_local):
            out.append(str(ip))
    return out


class TurnDeployer(Deployer):
    name = "coturn"
    templates = Path(__file__).parent

    def install(self) -> None:
        # Before the package: its postinst starts coturn, which must not run with Debian's
        # default config (no auth). With this drop-in the start fails until the config
        # and the secret exist.
        files.directory(name="coturn: script dir", path=str(Path(CONFIG_SCRIPT).parent))
        self.put_text(_read(self.templates / "turnserver-config"), CONFIG_SCRIPT, mode="755")
        self.put_template("supervise.conf.j2", DROP_IN, config_script=CONFIG_SCRIPT,
                          memory_high=MEMORY_HIGH, memory_max=MEMORY_MAX,
                          tasks_max=TASKS_MAX)  # fmt: skip
        apt.packages(name="coturn: packages", packages=["coturn"])
        files.directory(name="coturn: config dir", path=CONF_DIR, mode="755")
        # Made once and kept: a new secret would invalidate every credential out there.
        state = host.get_fact(
            Command, f"test -s {SECRET} && stat -c %U:%G:%a {SECRET} || echo missing"
        )
        if state != SECRET_STAT:
            # Tracked: a new secret (first deploy, or the operator removed it to rotate it)
            # needs a restart of coturn.
            self.track(server.shell(name="coturn: secret (made once, kept)", commands=[
                f"set -e; if [ ! -s {SECRET} ]; then umask 077;"
                f" od -An -N32 -tx1 /dev/urandom | tr -d ' \\n' > {SECRET}.new;"
                f" mv {SECRET}.new {SECRET}; fi",
                f"chown vmail:turnserver {SECRET}",
                f"chmod 440 {SECRET}",
            ]), SECRET)  # fmt: skip

    def configure(self) -> None:
        addresses = host.get_fact(Command, "hostname -I || true") or ""
        self.put_template("turnserver.conf.j2", f"{CONF_DIR}/turnserver.conf", port=TURN_PORT,
                          min_port=MIN_PORT, max_port=MAX_PORT, denied=DENIED_PEERS,
                          allowed=own_private_addresses(addresses), user_quota=USER_QUOTA,
                          total_quota=TOTAL_QUOTA, max_bps=MAX_BPS)  # fmt: skip

    def activate(self) -> None:
        if self.options.disable_mail:
            self.stop_and_disable("coturn")
            return
        self.check_then_restart("coturn")


def _read(path: Path) -> str:
    return path.read_text()
