"""The raw IDLE client against Debian's Dovecot on loopback, and its pure helpers."""

from __future__ import annotations

import asyncio
import smtplib
import time

import pytest
from chatmaild.testkit.dovecot_instance import DOMAIN, DovecotInstance

from cmdeploy import idleclients, loadgen


def test_exists_lines_are_parsed_and_nothing_else():
    assert idleclients.parse_exists(b"* 12 EXISTS\r\n") == 12
    assert idleclients.parse_exists(b"* 0 EXISTS") == 0
    assert idleclients.parse_exists(b"* 3 RECENT\r\n") is None
    assert idleclients.parse_exists(b"c1 OK [READ-WRITE] * 4 EXISTS\r\n") is None


def test_quoted_strings_escape_backslash_and_quote():
    assert idleclients.quoted('a"b\\c') == '"a\\"b\\\\c"'


def test_latency_summary_in_milliseconds_with_nearest_rank_p90():
    s = idleclients.latency_summary([i / 1000 for i in range(1, 11)])
    assert s == {"n": 10, "median": 5.5, "p90": 9.0, "mean": 5.5, "min": 1.0, "max": 10.0}
    assert idleclients.percentile([3.0], 90) == 3.0
    assert idleclients.latency_summary([]) == {"n": 0}


def test_fd_limit_is_raised_up_to_the_hard_limit():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        got = idleclients.raise_fd_limit(10**9)
        assert got == (hard if hard != resource.RLIM_INFINITY else 10**9)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def dovecot():
    with DovecotInstance() as d:
        yield d


def test_idle_client_stamps_each_delivery_and_logs_out(dovecot):
    account = loadgen.accounts(DOMAIN, 1)[0]

    def deliver() -> float:
        with smtplib.LMTP("127.0.0.1", dovecot.lmtp_port) as lmtp:
            lmtp.sendmail("s@example.org", [account.addr],
                          loadgen.message("s@example.org", account.addr, loadgen.new_token()))  # fmt: skip
        return time.perf_counter()

    async def run():
        client = await idleclients.connect_idle("127.0.0.1", account, dovecot.imap_port, tls=False)
        assert client.exists == 0
        got = await idleclients.latency_series(lambda rcpt: deliver(), client, 2)
        await client.close()
        return client, got

    client, got = asyncio.run(run())
    assert [n for n, _ in client.arrivals] == [1, 2]
    # Within the wait's timeout; stock Dovecot holds each notification ~0.5 s.
    assert all(0 <= s < 15 for s in got)
    assert client.writer.is_closing()


def test_a_wrong_password_is_an_imap_error(dovecot):
    account = loadgen.accounts(DOMAIN, 1)[0]

    async def run():
        first = await idleclients.connect_idle("127.0.0.1", account, dovecot.imap_port, tls=False)
        await first.close()
        bad = loadgen.Account(account.addr, "wrong-password-123")
        await idleclients.connect_idle("127.0.0.1", bad, dovecot.imap_port, tls=False)

    with pytest.raises(idleclients.ImapError):
        asyncio.run(run())
