"""The lab's network: one host bridge and a client network namespace, all named cmlab*."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .errors import LabError
from .processes import run

NETNS_ETC = Path("/etc/netns")


def link_exists(name: str) -> bool:
    return run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def links_with_prefix(*prefixes: str) -> list[str]:
    """Names of the host's network links that start with one of the prefixes."""
    out = run(["ip", "-j", "link", "show"]).stdout
    return [
        link["ifname"] for link in json.loads(out or "[]") if link["ifname"].startswith(prefixes)
    ]


def bridge_ports(bridge: str) -> list[str]:
    out = run(["ip", "-j", "link", "show", "master", bridge], check=False).stdout
    return [link["ifname"] for link in json.loads(out or "[]")]


def ensure_bridge(name: str, address: str) -> bool:
    """Create the bridge with its address (CIDR) unless it exists; return whether it was made."""
    created = False
    if not link_exists(name):
        proc = run(["ip", "link", "add", name, "type", "bridge"], check=False)
        if proc.returncode != 0:
            raise LabError(
                f"cannot create the lab bridge {name} ({proc.stderr.strip()}); the kernel "
                "needs bridge and veth support (modprobe bridge veth)"
            )
        created = True
    addrs = run(["ip", "-j", "addr", "show", "dev", name]).stdout
    have = {
        f"{a['local']}/{a['prefixlen']}"
        for link in json.loads(addrs or "[]")
        for a in link.get("addr_info", [])
    }
    if address not in have:
        run(["ip", "addr", "add", address, "dev", name])
    run(["ip", "link", "set", name, "up"])
    return created


def delete_link(name: str) -> None:
    if link_exists(name):
        run(["ip", "link", "del", name])


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def netns_list() -> list[str]:
    out = run(["ip", "-j", "netns", "list"], check=False).stdout
    return [ns["name"] for ns in json.loads(out or "[]")]


def ensure_client_netns(
    ns: str, bridge: str, host_if: str, ns_if: str, address: str, dns_ip: str
) -> None:
    """A namespace on the bridge whose resolver is the lab DNS (via /etc/netns/NS, never /etc)."""
    etc = NETNS_ETC / ns
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(f"nameserver {dns_ip}\noptions timeout:2 attempts:2\n")
    # Its own hosts file keeps the machine's /etc/hosts entries out of lab name lookups.
    (etc / "hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n")
    if not netns_exists(ns):
        run(["ip", "netns", "add", ns])
    if not link_exists(host_if):
        run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if])
        run(["ip", "link", "set", ns_if, "netns", ns])
    run(["ip", "link", "set", host_if, "master", bridge, "up"])
    inside = ["ip", "netns", "exec", ns]
    run([*inside, "ip", "link", "set", "lo", "up"])
    addrs = run([*inside, "ip", "-j", "addr", "show", "dev", ns_if]).stdout
    if f'"{address.split("/")[0]}"' not in addrs:
        run([*inside, "ip", "addr", "add", address, "dev", ns_if])
    run([*inside, "ip", "link", "set", ns_if, "up"])


def delete_client_netns(ns: str) -> None:
    if netns_exists(ns):
        run(["ip", "netns", "del", ns])
    shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
