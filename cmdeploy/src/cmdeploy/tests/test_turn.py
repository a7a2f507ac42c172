"""coturn as deployed: its config, its unit drop-in, and the STUN probe of ``cmdeploy status``.

The deployed server itself (credentials, refusals, secret permissions) is tested in
tests/lab/test_relay_turn.py.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading

import pytest
from chatmaild.testkit.config import init_config

from cmdeploy import status, status_probe
from cmdeploy.deployer_base import DeployOptions
from cmdeploy.tests.test_supervision import assert_restarts_quickly, effective
from cmdeploy.turn import deployer as turn
from cmdeploy.turn.deployer import TurnDeployer


def deployer() -> TurnDeployer:
    return TurnDeployer(init_config("chat.example.org"), DeployOptions())


def render_conf(allowed=()) -> str:
    return deployer().render("turnserver.conf.j2", port=3478, min_port=turn.MIN_PORT,
                             max_port=turn.MAX_PORT, denied=turn.DENIED_PEERS,
                             allowed=list(allowed), user_quota=turn.USER_QUOTA,
                             total_quota=turn.TOTAL_QUOTA, max_bps=turn.MAX_BPS)  # fmt: skip


def options(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.strip().partition("=")
            out.append((key, value))
    return out


def test_config_uses_the_shared_secret_scheme_without_the_secret():
    opts = options(render_conf())
    keys = [k for k, _ in opts]
    assert "use-auth-secret" in keys
    # The secret is added at start by the unit (turnserver-config), never rendered here.
    assert "static-auth-secret" not in keys
    assert not {"lt-cred-mech", "no-auth", "allow-loopback-peers", "web-admin"} & set(keys)
    assert {"no-cli", "no-tcp-relay", "no-multicast-peers", "no-rfc5780", "no-tls"} <= set(keys)
    assert ("realm", "chat.example.org") in opts
    assert ("listening-port", "3478") in opts
    assert ("user-quota", str(turn.USER_QUOTA)) in opts


def _range_contains(spec: str, ip: str) -> bool:
    low, _, high = spec.partition("-")
    addr = ipaddress.ip_address(ip)
    lo, hi = ipaddress.ip_address(low), ipaddress.ip_address(high or low)
    return lo.version == addr.version and lo <= addr <= hi


@pytest.mark.parametrize("ip", [
    "10.1.2.3", "172.16.0.1", "172.31.255.254", "192.168.1.1", "127.0.0.1", "127.1.2.3",
    "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255",
    "::1", "fd00::1", "fe80::1", "::ffff:10.0.0.1", "::ffff:127.0.0.1",
    "64:ff9b::a00:1", "ff02::1",
])  # fmt: skip
def test_private_and_special_peers_are_denied(ip):
    assert any(_range_contains(r, ip) for r in turn.DENIED_PEERS)


@pytest.mark.parametrize("ip", ["1.1.1.1", "8.8.8.8", "172.32.0.1", "2606:4700::1111"])
def test_public_peers_are_not_denied(ip):
    assert not any(_range_contains(r, ip) for r in turn.DENIED_PEERS)


def test_every_denied_range_is_well_formed():
    for spec in turn.DENIED_PEERS:
        # coturn 4.6.1 reads a range that starts at "::" as "deny every peer".
        assert not spec.startswith("::-") and spec != "::", spec
        low, _, high = spec.partition("-")
        assert ipaddress.ip_address(low) <= ipaddress.ip_address(high or low), spec
    assert all(f"denied-peer-ip={r}" in render_conf() for r in turn.DENIED_PEERS)


def test_only_the_relays_own_private_addresses_are_allowed_as_peers():
    got = turn.own_private_addresses("10.77.0.11 203.0.113.7x 1.2.3.4 fe80::1 fd00::5 127.0.0.1")
    assert got == ["10.77.0.11", "fd00::5"]
    assert ("allowed-peer-ip", "10.77.0.11") in options(render_conf(got))
    assert "allowed-peer-ip" not in [k for k, _ in options(render_conf())]


def test_dropin_replaces_debians_config_and_supervises():
    text = deployer().render("supervise.conf.j2", config_script=turn.CONFIG_SCRIPT,
                             memory_high="192M", memory_max="256M", tasks_max=128)  # fmt: skip
    # An empty ExecStart= clears Debian's, which points at the unauthenticated default config.
    assert effective(text, "Service", "ExecStart") == [
        "/usr/bin/turnserver -c /run/turnserver/turnserver.conf"
    ]
    assert effective(text, "Service", "ExecStartPre") == [turn.CONFIG_SCRIPT]
    # Where the script writes: Debian's /lib/systemd/system/coturn.service makes no such dir.
    assert effective(text, "Service", "RuntimeDirectory") == ["turnserver"]
    assert_restarts_quickly(text)
    assert effective(text, "Service", "MemoryMax") == ["256M"]
    assert effective(text, "Service", "MemorySwapMax") == ["0"]


def test_status_probes_coturn_over_udp():
    comps = {c.name: c for c in status.components(init_config("x.org"))}
    (check,) = comps["coturn"].checks
    assert (check["kind"], check["port"]) == ("stun", 3478)


def udp_responder(reply):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))

    def serve():
        data, peer = sock.recvfrom(2048)
        sock.sendto(reply(data), peer)

    threading.Thread(target=serve, daemon=True).start()
    return sock


def test_stun_probe_wants_a_binding_success_for_its_request():
    def success(request: bytes) -> bytes:
        return struct.pack("!HH", 0x0101, 0) + request[4:20]

    sock = udp_responder(success)
    with sock:
        port = sock.getsockname()[1]
        assert status_probe.run_check({"kind": "stun", "host": "127.0.0.1", "port": port}) == (
            True,
            "binding success",
        )

    def other_transaction(request: bytes) -> bytes:
        return struct.pack("!HH", 0x0101, 0) + request[4:8] + bytes(12)

    sock = udp_responder(other_transaction)
    with sock:
        port = sock.getsockname()[1]
        ok, _ = status_probe.run_check({"kind": "stun", "host": "127.0.0.1", "port": port})
        assert not ok


def test_stun_probe_of_a_closed_port_is_down():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ok, seen = status_probe.run_check({"kind": "stun", "host": "127.0.0.1", "port": port})
    assert not ok and seen
