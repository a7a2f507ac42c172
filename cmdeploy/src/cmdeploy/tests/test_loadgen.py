"""The load generator against a local SMTP server that fails on purpose."""

from __future__ import annotations

import imaplib
import smtplib
import socket
import threading
import time

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from chatmaild.filtermail.gate import check_outgoing
from chatmaild.testkit.dovecot_instance import DOMAIN, DovecotInstance

from cmdeploy import loadgen


class FlakyHandler:
    """Accepts mail, but answers 451 to every other first attempt and 550 for one rcpt."""

    def __init__(self):
        self.lock = threading.Lock()
        self.received: list[bytes] = []
        self.seen: set[bytes] = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("refused"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        token = loadgen.MESSAGE_ID.search(envelope.content).group(1)
        with self.lock:
            if token not in self.seen and len(self.seen) % 2 == 0:
                self.seen.add(token)
                return "451 4.3.0 try again"
            self.seen.add(token)
            self.received.append(envelope.content)
        return "250 OK"


@pytest.fixture
def smtp():
    handler = FlakyHandler()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        auth_require_tls=False,
        authenticator=lambda *a: AuthResult(success=True),
    )
    controller.start()
    yield handler, port
    controller.stop()


def test_every_message_is_accepted_once_after_temporary_failures(smtp, monkeypatch):
    monkeypatch.setattr(loadgen, "RETRY_DELAY", 0.01)
    handler, port = smtp
    senders = loadgen.accounts("example.org", 3, "s")
    rcpts = loadgen.accounts("example.org", 2, "r")
    result = loadgen.send_load("127.0.0.1", senders, rcpts, port=port, count=20, concurrency=4)
    assert len(result.sends) == 20
    assert len(result.accepted) == 20
    assert result.summary()["replies"] == {"250": 20, "451": 10}
    tokens = [loadgen.MESSAGE_ID.search(m).group(1).decode() for m in handler.received]
    assert sorted(tokens) == sorted(s.token for s in result.sends)
    # Round-robin over senders and recipients.
    assert {s.sender for s in result.sends} == {a.addr for a in senders}
    assert {s.rcpt for s in result.sends} == {a.addr for a in rcpts}


def test_permanent_refusal_is_final_and_connection_errors_are_retried(smtp, monkeypatch):
    monkeypatch.setattr(loadgen, "RETRY_DELAY", 0.01)
    _, port = smtp
    senders = loadgen.accounts("example.org", 1)
    refused = [loadgen.Account("refused@example.org", "x")]
    result = loadgen.send_load("127.0.0.1", senders, refused, port=port, count=2)
    assert [s.codes for s in result.sends] == [[550], [550]]
    assert result.summary()["permanent"] == 2
    closed = loadgen.send_load("127.0.0.1", senders, refused, port=1, count=1, retry_for=0.05)
    (send,) = closed.sends
    assert set(send.codes) == {0} and len(send.codes) >= 2
    assert send.attempts[0].phase == "connect"
    assert send.accepted_at is None


def test_load_stops_by_itself_and_round_trips_as_json(smtp):
    _, port = smtp
    accts = loadgen.accounts("example.org", 2)
    result = loadgen.send_load("127.0.0.1", accts, accts, port=port, duration=0.5, rate=20)
    assert 5 <= len(result.sends) <= 12
    again = loadgen.LoadResult.from_dict(result.to_dict())
    assert again.summary() == result.summary()


def test_messages_pass_the_outgoing_gate():
    msg = loadgen.message("a@example.org", "b@example.org", loadgen.new_token())
    assert check_outgoing(msg, "a@example.org", ["b@example.org"]).accept


@pytest.fixture
def mailboxes(monkeypatch):
    """Debian's Dovecot with two accounts; loadgen speaks IMAP to it without TLS."""
    monkeypatch.setattr(loadgen.imaplib, "IMAP4_SSL", lambda host, port, **kw: imaplib.IMAP4(
        host, port, timeout=kw.get("timeout")))  # fmt: skip
    with DovecotInstance() as dovecot:
        rcpts = loadgen.accounts(DOMAIN, 2)
        assert loadgen.create_accounts("127.0.0.1", rcpts, port=dovecot.imap_port) == []
        yield dovecot, rcpts


def deliver(dovecot, pairs) -> None:
    """LMTP delivery of one loadgen message per (token, account)."""
    with smtplib.LMTP("127.0.0.1", dovecot.lmtp_port) as lmtp:
        for tok, rcpt in pairs:
            lmtp.sendmail("s@example.org", [rcpt.addr],
                          loadgen.message("s@example.org", rcpt.addr, tok))  # fmt: skip


def test_delivery_counts_each_token_and_sees_duplicates(mailboxes):
    dovecot, rcpts = mailboxes
    port = dovecot.imap_port
    tokens = [loadgen.new_token() for _ in range(4)]
    deliver(dovecot, [(tok, rcpts[i % 2]) for i, tok in enumerate(tokens + tokens[:1])])
    got = loadgen.wait_delivered("127.0.0.1", rcpts, tokens, timeout=20, settle=0.5, port=port)
    assert got.missing(tokens) == []
    assert got.duplicated() == [tokens[0]]
    assert got.last_seen is not None
    absent = loadgen.wait_delivered("127.0.0.1", rcpts, ["f" * 24], timeout=1, port=port)
    assert absent.missing(["f" * 24]) == ["f" * 24]


def test_arrivals_are_timed_while_mail_comes_in_and_the_watch_stops_on_request(mailboxes):
    dovecot, rcpts = mailboxes
    stop, out = threading.Event(), {}
    watch = threading.Thread(target=lambda: out.update(loadgen.watch_arrivals(
        "127.0.0.1", rcpts, duration=60, stop=stop, port=dovecot.imap_port, interval=0.1)))  # fmt: skip
    watch.start()
    time.sleep(0.5)
    tokens = [loadgen.new_token() for _ in range(2)]
    sent = time.time()
    deliver(dovecot, zip(tokens, rcpts, strict=True))
    time.sleep(1.5)
    stop.set()
    watch.join(timeout=5)
    assert not watch.is_alive()
    assert set(out["first_seen"]) == set(tokens)
    assert all(sent <= t <= sent + 1.5 for t in out["first_seen"].values())
