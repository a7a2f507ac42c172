"""Throttling on a deployed lab relay: new accounts and /new per client IP, password guessing.

The relay is deployed with a small per-IP allowance (5 new accounts at once, 1 per hour),
so the lab's client namespace (one IP) runs into it quickly. The guessing test runs last:
Dovecot's penalty then delays every login from the client's IP for a while.
"""

from __future__ import annotations

import json
import secrets
import sys

import pytest

from cmdeploy.lab.relay import lab_relay

pytestmark = pytest.mark.lab

PASSWORD = "password123"
BURST = 5


@pytest.fixture(scope="module")
def relay(lab, tmp_path_factory):
    limits = {"max_new_accounts_per_ip_burst": BURST, "max_new_accounts_per_ip_per_hour": 1,
              # Lab hosts share the machine's load average; a busy machine must not
              # make doveauth refuse for load instead.
              "max_load_1m": 1000}  # fmt: skip
    return lab_relay(lab, "relay1", tmp_path_factory.mktemp("throttling"), limits)


def probe(lab, name: str, **kwargs):
    argv = [sys.executable, "-m", "cmdeploy.tests.lab.throttle_probes", name, json.dumps(kwargs)]
    proc = lab.client_ns_run(argv, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def new_users(relay, n: int) -> list[str]:
    return [f"{secrets.token_hex(5)[:9]}@{relay.domain}" for _ in range(n)]


def journal(lab, relay, unit: str) -> str:
    return lab.ssh_run(relay.name, f"journalctl -u {unit} --no-pager -o cat -n 200").stdout


def test_new_accounts_beyond_the_per_ip_burst_are_refused_logins_go_on(lab, relay):
    direct, via_443 = new_users(relay, 3), new_users(relay, 2)
    created = probe(lab, "logins", host=relay.domain, users=direct, password=PASSWORD)
    # Through nginx's port-443 multiplexer: counted for the same client IP (PROXY protocol).
    created += probe(lab, "logins", host=relay.domain, users=via_443, password=PASSWORD, port=443)
    assert [r["ok"] for r in created] == [True] * BURST, (created, journal(lab, relay, "doveauth"))
    (late,) = new_users(relay, 1)
    for port in (993, 443):
        refused = probe(lab, "logins", host=relay.domain, users=[late], password=PASSWORD,
                        port=port)  # fmt: skip
        assert not refused[0]["ok"], f"account created beyond the burst on port {port}"
    # SMTP AUTH through 443 reaches Postfix with the client's address too (PROXY protocol).
    refused = probe(lab, "smtp_logins", host=relay.domain, users=[late], password=PASSWORD)
    assert not refused[0]["ok"], "account created beyond the burst by SMTP over 443"
    existing = probe(lab, "smtp_logins", host=relay.domain, users=direct[:1], password=PASSWORD)
    assert existing[0]["ok"], existing
    log = journal(lab, relay, "doveauth")
    assert f"registration rejected: too many new accounts from {lab.client_ip}" in log
    assert f"Created address: {late}" not in log
    again = probe(lab, "logins", host=relay.domain, users=direct + via_443, password=PASSWORD)
    assert [r["ok"] for r in again] == [True] * BURST, again


def test_new_posts_beyond_the_burst_get_429(lab, relay):
    statuses = probe(lab, "post_new", host=relay.domain, count=BURST + 3)
    print(f"\n/new statuses: {statuses}")
    assert statuses[:BURST] == [200] * BURST
    assert statuses[BURST:] == [429] * 3


def test_password_guesser_is_slowed_other_clients_are_not(lab, relay):
    (victim,) = new_users(relay, 1)
    # Created from relay2's host: the client namespace used up its allowance above.
    code = (
        "import imaplib, ssl, sys, time\n"
        "ctx = ssl.create_default_context(); ctx.check_hostname = False\n"
        "ctx.verify_mode = ssl.CERT_NONE\n"
        "t = time.monotonic(); c = imaplib.IMAP4_SSL(sys.argv[1], 993, ssl_context=ctx)\n"
        "c.login(sys.argv[2], sys.argv[3]); c.logout(); print(time.monotonic() - t)\n"
    )

    def login_from_other_host() -> float:
        cmd = f"python3 -c '{code}' {relay.ip} {victim} {PASSWORD}"
        return float(lab.ssh_run("relay2", cmd, timeout=120).stdout.strip())

    login_from_other_host()  # creates the victim's account
    attempts = probe(lab, "guesses", host=relay.domain, user=victim, count=6)
    secs = [round(a["secs"], 2) for a in attempts]
    other = login_from_other_host()
    print(f"\nwrong-password LOGIN answers from one IP (s): {secs}")
    print(f"correct login from another IP right after: {other:.2f} s")
    assert not any(a["ok"] for a in attempts)
    # auth_failure_delay alone answers each failure after ~2 s; the penalty adds 2, 4, 8,
    # then 15 s per IP, so later attempts wait much longer than the first.
    assert secs[-1] >= 5 and secs[-1] >= secs[0] + 3, secs
    assert other < 2, "a correct login from another IP was slowed by the guesser"
