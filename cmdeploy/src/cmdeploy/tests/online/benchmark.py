"""``cmdeploy bench``: figures for a deployed relay (and a second one), not pass/fail.

Each benchmark runs a few times; the table at the end shows median, min and max seconds.
"""

from __future__ import annotations

import imaplib
import os
import secrets
import smtplib
import statistics
import time
from pathlib import Path

import pytest

from cmdeploy.tests.online.dcutil import online_account as _online
from cmdeploy.tests.online.dcutil import wait_text

RESULTS: dict[str, list[float]] = {}


def measure(name: str, func, n: int) -> None:
    for _ in range(n):
        start = time.perf_counter()
        func()
        RESULTS.setdefault(name, []).append(time.perf_counter() - start)


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    lines = ["", "benchmark results", f"{'benchmark name':36} {'median':>8} {'min':>8} {'max':>8}"]
    for name, values in RESULTS.items():
        lines.append(
            f"{name:36} {statistics.median(values):8.3f} {min(values):8.3f} {max(values):8.3f}"
        )
    print("\n".join(lines))


def test_tls_connect_imap(domain, ssl_context):
    measure(
        "tls connect imap (993)",
        lambda: imaplib.IMAP4_SSL(domain, 993, ssl_context=ssl_context).logout(),
        10,
    )


def test_tls_connect_smtp(domain, ssl_context):
    measure(
        "tls connect smtp (465)",
        lambda: smtplib.SMTP_SSL(domain, 465, context=ssl_context).quit(),
        10,
    )


def test_login_new_account_imap(domain, ssl_context, creds):
    def login():
        conn = imaplib.IMAP4_SSL(domain, 993, ssl_context=ssl_context)
        conn.login(creds.addr(), creds.password())
        conn.logout()

    measure("login new account imap", login, 10)


def test_login_new_account_smtp(domain, ssl_context, creds):
    def login():
        conn = smtplib.SMTP_SSL(domain, 465, context=ssl_context)
        conn.login(creds.addr(), creds.password())
        conn.quit()

    measure("login new account smtp", login, 10)


def online_account(dc, creds, domain):
    return _online(dc, creds.addr(domain), creds.password(), domain)


def test_configure_to_online(dc, creds, domain):
    measure("delta chat configure to online", lambda: online_account(dc, creds, domain), 5)


def _ping_pong(dc, creds, d1, d2, name):
    a, b = online_account(dc, creds, d1), online_account(dc, creds, d2)
    chat_ab, chat_ba = a.create_chat(b), b.create_chat(a)

    def round_trip():
        chat_ab.send_text("ping")
        wait_text(b, "ping")
        chat_ba.send_text("pong")
        wait_text(a, "pong")

    round_trip()  # warm up: key exchange, first IDLE
    measure(name, round_trip, 5)


def test_ping_pong_one_relay(dc, creds, domain):
    _ping_pong(dc, creds, domain, domain, "ping-pong one relay")


def test_ping_pong_two_relays(dc, creds, domain, domain2):
    _ping_pong(dc, creds, domain, domain2, "ping-pong two relays")


def bench_password(ini: Path) -> str:
    """The password of the bench accounts, kept beside chatmail.ini (made on first use)."""
    path = ini.parent / "bench-password"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(18))
        path.chmod(0o600)
    return path.read_text().strip()


def test_send_burst_receive(dc, creds, domain, config):
    exempt = sorted(a for a in config.rate_limit_exempt if a.endswith(f"@{domain}"))
    if len(exempt) >= 2:
        # The documented override (rate_limit_exempt) lifts the send limit for this pair.
        password = bench_password(Path(os.environ["CHATMAIL_INI"]))
        a, b = (_online(dc, addr, password, domain) for addr in exempt[:2])
        n = 50
    else:
        # Within the sender's burst allowance (less the one message GCRA may already
        # count), so the relay's rate limit does not shape the figure.
        a, b = online_account(dc, creds, domain), online_account(dc, creds, domain)
        n = max(1, min(10, config.max_user_send_burst_size - 1))
    b.create_chat(a)  # accepted: messages of a contact request raise no INCOMING_MSG
    chat = a.create_chat(b)

    def burst():
        for i in range(n):
            chat.send_text(f"burst {i}")
        wait_text(b, f"burst {n - 1}", timeout=120)

    measure(f"send {n}, receive {n}", burst, 1)
