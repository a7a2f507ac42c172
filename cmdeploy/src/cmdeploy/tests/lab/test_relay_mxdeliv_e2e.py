"""Two lab relays whose port 25 to each other is blocked still exchange mail, over HTTPS.

nftables inside each relay host drops its output to the other relay's port 25 (the
machine's own firewall is never touched; the rule goes away at the end, also on failure).
Then:

1. real Delta Chat clients on relay1 and relay2 chat and complete a SecureJoin across the
   relays (the online suite's own tests, run through ``cmdeploy test``); every delivery
   between them went through chatmail-mxtransport's HTTPS path (Postfix log, mtail);
2. with relay2's nginx stopped as well (both paths down), a message waits deferred in
   relay1's queue and arrives once nginx is back;
3. mtail counts the deliveries per path.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import time

import pytest

from cmdeploy.lab.relay import lab_relay
from cmdeploy.tests.lab.probes import call
from cmdeploy.tests.lab.test_relay_hostile import encrypted, inbox, mail_log, name, since

pytestmark = pytest.mark.lab

PASSWORD = "password123"
TABLE = "chatmail_lab_block25"
# The online suite's Delta Chat tests across relays, and its own HTTPS-path test.
ONLINE_TESTS = (
    "test_one_on_one_chat_across_relays or test_securejoin_across_relays"
    " or test_mail_to_another_relay_goes_over_https"
)


@pytest.fixture(scope="module")
def relays(lab, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mxdeliv-e2e")
    overrides = {"mtail_address": "127.0.0.1", "mxdeliv_outgoing": "true"}
    return (lab_relay(lab, "relay1", workdir, overrides),
            lab_relay(lab, "relay2", workdir, overrides))  # fmt: skip


def block_25(lab, relay, peer_ip: str) -> None:
    lab.ssh_run(relay.name, "command -v nft >/dev/null || "
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -q nftables >/dev/null")  # fmt: skip
    lab.ssh_run(relay.name, (
        f"nft add table inet {TABLE} && "
        f"nft add chain inet {TABLE} out '{{ type filter hook output priority 0 ; }}' && "
        f"nft add rule inet {TABLE} out ip daddr {peer_ip} tcp dport 25 counter drop && "
        # Whatever other address the peer has (IPv6): all port 25 off the host, as a
        # provider's block would be.
        f"nft add rule inet {TABLE} out 'oifname != \"lo\" tcp dport 25 counter drop'"
    ))  # fmt: skip


def unblock_25(lab, relay) -> None:
    lab.ssh_run(relay.name, f"nft delete table inet {TABLE} 2>/dev/null || true", check=False)


def dropped_25(lab, relay) -> int:
    """Packets the block rules dropped so far."""
    out = lab.ssh_run(relay.name, f"nft list table inet {TABLE}").stdout
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", out))


@pytest.fixture(scope="module")
def blocked(lab, relays):
    relay1, relay2 = relays
    try:
        block_25(lab, relay1, relay2.ip)
        block_25(lab, relay2, relay1.ip)
        # The block works: nothing gets through to the other relay's port 25.
        probe = f"python3 -c \"import socket; socket.create_connection(('{relay2.ip}', 25), 3)\""
        assert lab.ssh_run(relay1.name, probe, check=False).returncode != 0
        yield
    finally:
        unblock_25(lab, relay1)
        unblock_25(lab, relay2)


def metrics(lab, relay) -> dict[str, float]:
    out = lab.ssh_run(relay.name, "curl -s http://127.0.0.1:3903/metrics").stdout
    found = {}
    for m in re.finditer(r"^(\w+)\{prog=\"chatmail\.mtail\"[^}]*\} (\S+)$", out, re.M):
        found[m.group(1)] = found.get(m.group(1), 0) + float(m.group(2))
    return found


def online(lab, relay1, relay2, expr: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "cmdeploy.cli", "--config", str(relay1.ini),
            "--ssh-config", str(lab.ssh_config), "test", "--netns", lab.netns,
            "--relay2", relay2.domain, "--ssh-host2", relay2.name,
            "--", "-k", expr]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=600)


def test_delta_chat_across_relays_over_https_only(lab, relays, blocked):
    relay1, relay2 = relays
    starts = since(lab, relay1), since(lab, relay2)
    # The fixture's own probe of the block counts there already.
    dropped = dropped_25(lab, relay1), dropped_25(lab, relay2)
    proc = online(lab, relay1, relay2, ONLINE_TESTS)
    assert proc.returncode == 0 and re.search(r"\b3 passed", proc.stdout), proc.stdout[-3000:]
    for relay, peer, start in zip(relays, relays[::-1], starts, strict=True):
        log = mail_log(lab, relay, start)
        sent = [line for line in log.splitlines()
                if "status=sent (250 OK (HTTPS))" in line and f"@{peer.domain}>" in line]  # fmt: skip
        assert sent, f"{relay.name}: no delivery to {peer.domain} over HTTPS"
        assert "(250 OK (SMTP))" not in log
        assert f"Delivered via HTTPS to {peer.domain}" in log
    # The SMTP fallback was tried nowhere, so nothing hit the block either.
    assert (dropped_25(lab, relay1), dropped_25(lab, relay2)) == dropped


def test_both_paths_down_mail_waits_and_arrives_once_https_is_back(lab, relays, blocked):
    relay1, relay2 = relays
    sender, rcpt = f"{name()}@{relay1.domain}", f"{name()}@{relay2.domain}"
    for addr, relay in ((sender, relay1), (rcpt, relay2)):
        assert call(lab, "imap_login", host=relay.domain, user=addr, password=PASSWORD)["ok"]
    msgid = f"{name(16)}@mxdeliv-e2e.test"
    start = since(lab, relay1)
    lab.ssh_run(relay2.name, "systemctl stop nginx")
    try:
        msg = encrypted(sender, rcpt, msgid)
        reply = call(lab, "smtp_send", host=relay1.domain, port=465, user=sender,
                     password=PASSWORD, msg_b64=base64.b64encode(msg).decode(),
                     mail_from=sender, rcpts=[rcpt])  # fmt: skip
        assert reply["code"] == 250, reply
        # Deferred by the transport (4xx), still in relay1's queue; HTTPS was refused and
        # the SMTP attempt hit the block.
        deadline = time.monotonic() + 120
        while True:
            log = mail_log(lab, relay1, start)
            deferred = [line for line in log.splitlines()
                        if f"to=<{rcpt}>" in line and "status=deferred" in line]  # fmt: skip
            if deferred or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert deferred, log[-3000:]
        assert "Failed to connect to any mail server" in deferred[0], deferred[0]
        assert "status=bounced" not in log
        queue = lab.ssh_run(relay1.name, "postqueue -j").stdout
        assert rcpt in queue
        assert dropped_25(lab, relay1) > 0, "the SMTP fallback was tried and dropped"
        assert inbox(lab, relay2, rcpt) == []
    finally:
        lab.ssh_run(relay2.name, "systemctl start nginx")
    lab.ssh_run(relay1.name, "postqueue -f")
    (got,) = inbox(lab, relay2, rcpt, wait=120, min_count=1)
    assert f"<{msgid}>".encode() in got
    time.sleep(3)
    assert len(inbox(lab, relay2, rcpt)) == 1, "delivered once"
    log = mail_log(lab, relay1, start)
    assert any(f"to=<{rcpt}>" in line and "status=sent (250 OK (HTTPS))" in line
               for line in log.splitlines())  # fmt: skip
    assert rcpt not in lab.ssh_run(relay1.name, "postqueue -j").stdout


def test_mtail_counts_the_deliveries_per_path(lab, relays):
    """After the two tests above: relay1 delivered over HTTPS and deferred once, never SMTP.

    (mtail counted nothing here while its unit gave it ``--logs -``: mtail 3.0.0~rc50 took
    that for a file named "-"; it reads the journal pipe as /dev/stdin now.)"""
    relay1, relay2 = relays
    counts = metrics(lab, relay1)
    assert counts.get("outgoing_https_delivery_count", 0) > 0, counts
    assert counts.get("outgoing_deferred_delivery_count", 0) > 0, counts
    assert counts.get("outgoing_smtp_delivery_count", 0) == 0, counts
    # The other services' lines count as well (Dovecot's on the receiving relay, the
    # incoming /mxdeliv requests): mtail sees the whole journal, not only its own unit's.
    counts2 = metrics(lab, relay2)
    assert counts2.get("delivered_mail", 0) > 0, counts2
    assert counts2.get("mxdeliv_delivered", 0) > 0, counts2
