"""TURN for Delta Chat calls on a deployed lab relay, from the lab's client namespace.

The credentials come from IMAP METADATA after a real login, as Delta Chat gets them; a
TURN client (tests/lab/turn_client.py, RFC 5766 over UDP) then allocates with them, relays
a datagram each way between two allocations, and is refused with a wrong password, with
an expired timestamp and for private peers. The secret is readable by vmail
(chatmail-metadata) and turnserver (coturn) only, and a second deploy keeps it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import shlex
import subprocess
import time

import pytest
from chatmaild.metadata import appversions_problem

from cmdeploy.lab.relay import cmdeploy, deploy, lab_relay
from cmdeploy.tests.lab import probes, turn_client
from cmdeploy.tests.lab.test_relay_deploy import changed_operations

pytestmark = pytest.mark.lab

SECRET = "/etc/chatmail-turn/secret"
PASSWORD = "turn-test-password-1"


@pytest.fixture(scope="module")
def relay(lab, tmp_path_factory):
    # Stock Dovecot: the patched build is another test's business and takes ~15 min uncached.
    return lab_relay(lab, "relay1", tmp_path_factory.mktemp("turn-relays"),
                     overrides={"dovecot_package": "stock"})  # fmt: skip


def metadata(lab, relay, key: str) -> str | None:
    """The value of server entry ``key`` over IMAP (after a login), None for NIL."""
    out = probes.call(lab, "imap_commands", host=relay.domain, user=f"turnuser1@{relay.domain}",
                      password=PASSWORD, commands=[f'GETMETADATA "" {key}'])  # fmt: skip
    assert out["replies"][0].startswith("t0 OK") and out["replies"][1].startswith("t1 OK"), out
    lines = out["untagged"]
    for i, line in enumerate(lines):
        if not line.startswith("* METADATA"):
            continue
        literal = re.search(r"\{(\d+)\}$", line)
        if literal:
            return lines[i + 1][: int(literal.group(1))]
        m = re.search(r'"((?:[^"\\]|\\.)*)"\)$', line)
        if m:
            return m.group(1)
        assert line.endswith("NIL)"), line
        return None
    raise AssertionError(f"no METADATA reply: {out}")


@pytest.fixture(scope="module")
def published(lab, relay):
    value = metadata(lab, relay, "/shared/vendor/deltachat/turn")
    assert value, "no TURN value"
    host, port, expiry, password = value.split(":", 3)
    return {"host": host, "port": int(port), "username": expiry, "password": password}


def secret(lab, relay) -> str:
    return lab.ssh_run(relay.name, f"cat {SECRET}").stdout.strip()


def test_published_value_has_the_reference_format(lab, relay, published):
    assert published["host"] == relay.domain and published["port"] == 3478
    # Valid for five days from now (a bare integer: the username).
    assert abs(int(published["username"]) - (time.time() + 5 * 86400)) < 120
    digest = hmac.new(secret(lab, relay).encode(), published["username"].encode(), hashlib.sha1)
    assert published["password"] == base64.b64encode(digest.digest()).decode()


def test_allocation_with_the_published_credentials(lab, relay, published):
    got = turn_client.call(lab, "allocate", **published)
    assert got["ok"], got
    assert got["realm"] == relay.domain
    assert got["relayed"][0] == relay.ip and 49152 <= got["relayed"][1] <= 65535
    assert got["mapped"][0] == lab.client_ip


def test_wrong_password_is_refused(lab, published):
    wrong = dict(published, password=published["password"][:-4] + "AAA=")
    got = turn_client.call(lab, "allocate", **wrong)
    assert not got["ok"] and got["code"] == 401, got


def test_expired_timestamp_is_refused_even_when_signed(lab, relay, published):
    expired = str(int(time.time()) - 60)
    key = secret(lab, relay).encode()
    password = base64.b64encode(hmac.new(key, expired.encode(), hashlib.sha1).digest()).decode()
    got = turn_client.call(lab, "allocate", **dict(published, username=expired, password=password))
    assert not got["ok"] and got["code"] == 401, got
    # The same signing with a future timestamp works: only the expiry made the difference.
    future = str(int(time.time()) + 600)
    password = base64.b64encode(hmac.new(key, future.encode(), hashlib.sha1).digest()).decode()
    assert turn_client.call(lab, "allocate", **dict(published, username=future,
                                                    password=password))["ok"]  # fmt: skip


def test_datagrams_relayed_between_two_allocations(lab, published):
    got = turn_client.call(lab, "relay_round_trip", **published)
    assert got["a"]["ok"] and got["b"]["ok"], got
    assert got["permit_a"][0] and got["permit_b"][0], got
    assert got["b_got"] == [got["a_relay"], "ping from a"], got
    assert got["a_got"] == [got["b_relay"], "pong from b"], got


@pytest.mark.parametrize("peer", ["127.0.0.1", "client", "192.168.1.1", "172.16.0.1",
                                  "169.254.169.254", "100.64.0.1"])  # fmt: skip
def test_private_peers_are_refused(lab, published, peer):
    peer = lab.client_ip if peer == "client" else peer
    got = turn_client.call(lab, "permit_peer", peer=peer, **published)
    assert got["allocated"] and not got["permitted"] and got["code"] == 403, got


def test_secret_is_readable_by_coturn_and_metadata_only(lab, relay):
    def run(cmd):
        return lab.ssh_run(relay.name, cmd, check=False)

    assert run(f"stat -c %U:%G:%a {SECRET}").stdout.strip() == "vmail:turnserver:440"
    assert len(secret(lab, relay)) == 64
    for user in ("vmail", "turnserver"):
        assert run(f"runuser -u {user} -- cat {SECRET}").returncode == 0, user
    for user in ("nobody", "echobot", "postfix", "opendkim"):
        proc = run(f"runuser -u {user} -- cat {SECRET}")
        assert proc.returncode != 0 and "Permission denied" in proc.stderr, (user, proc)
    value = secret(lab, relay)
    # Not in any command line nor in a world-readable file.
    assert value not in run("ps -eo args").stdout
    found = run(f"grep -rlF {value} /etc /run /usr/local/lib /var/lib 2>/dev/null").stdout
    assert sorted(found.split()) == sorted([SECRET, "/run/turnserver/turnserver.conf"])
    assert run("stat -c %U:%a /run/turnserver/turnserver.conf").stdout.strip() == "turnserver:600"


def test_coturn_listens_on_3478_and_nothing_else_but_relays(lab, relay):
    udp = lab.ssh_run(relay.name, "ss -Hlnup | grep turnserver || true").stdout
    tcp = lab.ssh_run(relay.name, "ss -Hlntp | grep turnserver || true").stdout
    ports = {int(re.search(r":(\d+)\s", line).group(1)) for line in (udp + tcp).splitlines()}
    # Ports of allocations (49152 and up) come and go; the listeners are 3478 only.
    assert {p for p in ports if p < 49152} == {3478}, udp + tcp
    user = lab.ssh_run(relay.name, "ps -o user= -C turnserver").stdout.split()
    assert user and set(user) == {"turnserver"}


def test_status_reports_coturn_answering(lab, relay):
    out = cmdeploy(lab, relay, "status", check=False).stdout
    line = next((x for x in out.splitlines() if "coturn" in x), "")
    assert "coturn" in line and "stun" in out, out
    assert "down" not in line and "inactive" not in line, out


def test_second_deploy_keeps_the_secret_and_changes_nothing(lab, relay, published):
    before = secret(lab, relay)
    proc = deploy(lab, relay)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert secret(lab, relay) == before
    assert [op for op in changed_operations(proc.stdout + proc.stderr) if "coturn" in op] == []
    # Credentials handed out before the deploy still work.
    assert turn_client.call(lab, "allocate", **published)["ok"]


def test_appversions_over_imap(lab, relay):
    value = metadata(lab, relay, "/shared/vendor/deltachat/appversions")
    assert value and "\n" not in value
    assert appversions_problem(json.loads(value)) is None


def test_memory_of_coturn(lab, relay):
    """Prints coturn's memory after the tests above (a figure for docs/operating.md)."""
    # Lab hosts have no memory controller (MemoryCurrent is "[not set]"): the processes' RSS.
    out = lab.ssh_run(relay.name, "systemctl show -P MemoryMax coturn; for p in "
                      "$(pgrep -x turnserver); do grep VmRSS /proc/$p/status; done").stdout  # fmt: skip
    lines = out.splitlines()
    memory_max = int(lines[0])
    rss = 1024 * sum(int(line.split()[1]) for line in lines[1:] if line.startswith("VmRSS"))
    print(f"coturn RSS={rss / 2**20:.1f} MiB MemoryMax={memory_max / 2**20:.0f} MiB")
    assert memory_max == 256 * 1024 * 1024
    assert 0 < rss < memory_max


def uclient(lab, relay, username: str, password: str) -> subprocess.CompletedProcess:
    """coturn's own test client, run on the relay host (the coturn package ships it):
    two allocations send each other 5 messages each through the server (-y)."""
    cmd = (f"timeout 60 turnutils_uclient -y -n 5 -m 1 -u {shlex.quote(username)}"
           f" -w {shlex.quote(password)} {relay.ip}")  # fmt: skip
    return lab.ssh_run(relay.name, cmd, check=False)


def test_coturns_own_client_relays_with_the_published_credentials(lab, relay, published):
    proc = uclient(lab, relay, published["username"], published["password"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    counts = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", proc.stdout, re.M)
    assert counts and counts[-1][0] == counts[-1][1] and int(counts[-1][0]) >= 10, proc.stdout
    assert "Total lost packets 0 " in proc.stdout, proc.stdout[-2000:]
    wrong = uclient(lab, relay, published["username"], published["password"][:-4] + "AAA=")
    assert wrong.returncode != 0 and "Cannot complete Allocation" in wrong.stdout + wrong.stderr
