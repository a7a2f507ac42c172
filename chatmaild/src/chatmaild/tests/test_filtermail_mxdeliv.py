"""``/mxdeliv``: HTTP requests to a real filtermail-incoming process, reinjecting to an SMTP sink."""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
import time

import pytest

from chatmaild.filtermail import direction as directions
from chatmaild.filtermail import mxdeliv
from chatmaild.filtermail.handler import FilterHandler
from chatmaild.filtermail.smtpserver import MemoryBudget
from chatmaild.testkit.config import make_config
from chatmaild.testkit.mailgen import ALICE, BOB, read
from chatmaild.testkit.procs import free_port

CAROL = "carol@example.org"


def stuff(data: bytes) -> bytes:
    """SMTP DATA bytes of ``data`` as a sender posts them: dot-stuffed, no final dot."""
    out = data.replace(b"\r\n.", b"\r\n..")
    return b"." + out if out.startswith(b".") else out


def post(port: int, body: bytes, rcpts=(BOB,), mail_from: str | None = ALICE, method="POST",
         extra: dict | None = None) -> tuple[int, str]:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, "/mxdeliv", skip_accept_encoding=True)
        if mail_from is not None:
            conn.putheader("X-MAIL-FROM", mail_from)
        for rcpt in rcpts:
            conn.putheader("X-MAIL-TO", rcpt)
        for key, value in (extra or {}).items():
            conn.putheader(key, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


@pytest.fixture
def http_port():
    return free_port()


@pytest.fixture
def incoming(start_filtermail, sink, http_port):
    fm = start_filtermail("incoming", sink.port, filtermail_http_port_incoming=http_port,
                          max_message_size=200_000)  # fmt: skip
    fm.http_port = http_port
    fm.account(BOB)
    fm.enforce(CAROL)
    return fm


def test_encrypted_mail_is_reinjected_unstuffed_with_its_envelope(incoming, sink):
    data = read("encrypted.eml")
    # Lines starting with a dot arrive stuffed and must reach Postfix as they were.
    data = b".X-Dot: 1\r\n..X-Dots: 2\r\n" + data
    assert stuff(data) != data
    status, text = post(incoming.http_port, stuff(data), rcpts=[BOB, CAROL])
    assert (status, text) == (200, "250 OK")
    assert sink.received == [(ALICE, [BOB, CAROL], data)]
    assert incoming.logged("Incoming: Filtering encrypted mail.")
    assert incoming.logged("mxdeliv: 200 250 from 127.0.0.1 rcpts=2")


def test_null_sender_when_x_mail_from_is_absent(incoming, sink):
    data = read("encrypted.eml")
    assert post(incoming.http_port, stuff(data), mail_from=None) == (200, "250 OK")
    assert [r[0] for r in sink.received] == ["<>"]


def test_the_client_address_from_nginx_is_logged(incoming):
    post(incoming.http_port, b"", extra={"X-Real-IP": "192.0.2.7"}, method="GET")
    assert incoming.logged("mxdeliv: 405 - from 192.0.2.7 rcpts=1")


@pytest.mark.parametrize("method", ["GET", "PUT", "HEAD"])
def test_anything_but_post_is_405(incoming, sink, method):
    status, _ = post(incoming.http_port, b"", method=method)
    assert status == 405
    assert sink.received == []


def test_cleartext_is_refused_523(incoming, sink):
    status, text = post(incoming.http_port, stuff(read("plain.eml")), rcpts=[CAROL])
    assert (status, text) == (400, "523 Encryption Needed: Invalid Unencrypted Mail")
    assert sink.received == []
    assert incoming.logged("Incoming: Rejected unencrypted mail.")


def test_unknown_recipient_is_refused_before_the_body_counts(incoming, sink):
    unknown = "nobody@example.org"
    status, text = post(incoming.http_port, stuff(read("encrypted.eml")), rcpts=[BOB, unknown])
    assert status == 400
    assert text == f"550 5.1.1 <{unknown}>: Recipient address rejected: User unknown"
    # One refused recipient: nothing is delivered, also not to the known one.
    assert sink.received == []


@pytest.mark.parametrize("rcpt", ["bob@example.net", "bob@sub.example.org", "bob@example.org.evil"])
def test_other_domains_are_not_relayed(incoming, sink, rcpt):
    status, text = post(incoming.http_port, stuff(read("encrypted.eml")), rcpts=[rcpt])
    assert (status, text) == (400, f"554 5.7.1 <{rcpt}>: Relay access denied")
    assert sink.received == []


@pytest.mark.parametrize("rcpts", [[], ["bob@example.org> NOTIFY=NEVER"], ["<>"], ["bob"]])
def test_missing_or_malformed_recipients_are_refused(incoming, sink, rcpts):
    status, text = post(incoming.http_port, stuff(read("encrypted.eml")), rcpts=rcpts)
    assert status == 400
    assert text[:3] in ("554", "501")
    assert sink.received == []


def test_malformed_sender_is_refused(incoming, sink):
    status, text = post(incoming.http_port, stuff(read("encrypted.eml")), mail_from="a@b> X=1")
    assert (status, text) == (400, "501 5.1.7 Bad sender address syntax")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d[:-2],  # not ending in CRLF
        lambda d: d + b".\r\n",  # a final dot line
        lambda d: d.replace(b"\r\n\r\n", b"\r\n\r\n.\r\nmore\r\n", 1),  # a lone dot inside
        lambda d: d.replace(b"\r\n", b"\n", 3),  # bare LF
        lambda d: d.replace(b"\r\n", b"\r", 1),  # bare CR
        lambda d: b"",
    ],
)
def test_malformed_dot_stuffing_is_invalid_data(incoming, sink, mangle):
    body = mangle(stuff(read("encrypted.eml")))
    assert post(incoming.http_port, body) == (400, "500 Invalid DATA")
    assert sink.received == []


def test_body_above_max_message_size_is_413(incoming, sink):
    data = read("encrypted.eml")
    pad = b"X-Pad: " + b"a" * 990 + b"\r\n"
    big = pad * (200_000 // len(pad) + 1) + data
    assert mxdeliv.body_limit(200_000) > len(big) > 200_000
    assert post(incoming.http_port, stuff(big)) == (413, "552 5.3.4 Message exceeds maximum size")
    # Above nginx's limit too: refused from Content-Length, before the body is read.
    huge = pad * (mxdeliv.body_limit(200_000) // len(pad) + 1)
    assert post(incoming.http_port, huge)[0] == 413
    assert sink.received == []


def test_reinject_refusals_come_back_as_400_with_postfix_line(incoming, sink):
    data = stuff(read("encrypted.eml"))
    sink.refuse_data = "554 5.7.1 No valid DKIM signature found"
    assert post(incoming.http_port, data) == (400, "554 5.7.1 No valid DKIM signature found")
    sink.refuse_data = "451 4.7.1 Please try again later"
    assert post(incoming.http_port, data) == (400, "451 4.7.1 Please try again later")
    assert sink.received == []


def test_postfix_unreachable_is_503_with_a_temporary_line(start_filtermail, http_port):
    fm = start_filtermail("incoming", free_port(), filtermail_http_port_incoming=http_port)
    fm.account(BOB)
    status, text = post(http_port, stuff(read("encrypted.eml")))
    assert status == 503
    assert text.startswith("451 4.4.2 Reinject failed")


def raw_request(port: int, head: bytes, body: bytes = b"", pause: float = 0.0) -> bytes:
    """Send ``head`` and ``body`` (after ``pause`` s) on one connection; the raw answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head)
        if pause:
            time.sleep(pause)
        s.sendall(body)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    version, status, _ = answer.split(b" ", 2)
    assert version in (b"HTTP/1.0", b"HTTP/1.1")
    return int(status)


def test_oversized_headers_are_refused(incoming, sink):
    body = stuff(read("encrypted.eml"))
    long_rcpt = "b" * 2000 + "@example.org"
    head = (f"POST /mxdeliv HTTP/1.1\r\nHost: x\r\nX-MAIL-TO: {long_rcpt}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
    # The body is not sent: the refusal comes after the headers, and a body the server
    # never reads would turn its close into a reset that can beat the 400 to the client.
    assert status_of(raw_request(incoming.http_port, head)) == 400
    many = "".join(f"X-Filler: {i}\r\n" for i in range(mxdeliv.MAX_HEADERS + 1))
    head = (f"POST /mxdeliv HTTP/1.1\r\nHost: x\r\nX-MAIL-TO: {BOB}\r\n{many}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
    assert status_of(raw_request(incoming.http_port, head)) == 400
    assert sink.received == []


class InProcess:
    """mxdeliv in a thread's event loop, for timeouts too short for the real process."""

    def __init__(self, tmp_path, sink_port: int, **options) -> None:
        config = make_config(tmp_path, "example.org", postfix_reinject_port_incoming=sink_port)
        (config.mailboxes_dir / BOB).mkdir()
        (config.mailboxes_dir / BOB / "password").write_text("x")
        handler = FilterHandler(directions.for_name(config, "incoming"))
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        budget = MemoryBudget(None)
        started = mxdeliv.start(handler, budget, self.port, **options)
        self.runner = asyncio.run_coroutine_threadsafe(started, self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_a_body_slower_than_the_timeout_is_408(tmp_path, sink):
    server = InProcess(tmp_path, sink.port, body_timeout=0.5)
    try:
        body = stuff(read("encrypted.eml"))
        head = (f"POST /mxdeliv HTTP/1.1\r\nHost: x\r\nX-MAIL-TO: {BOB}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
        answer = raw_request(server.port, head + body[:100], body[100:], pause=1.5)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert answer.endswith(mxdeliv.BODY_TOO_SLOW.encode())
        # The same body without the pause is delivered.
        assert raw_request(server.port, head + body).startswith(b"HTTP/1.1 200 ")
    finally:
        server.stop()
    assert len(sink.received) == 1


def test_requests_beyond_the_cap_get_503(tmp_path, sink):
    server = InProcess(tmp_path, sink.port, max_concurrent=1, body_timeout=5)
    try:
        body = stuff(read("encrypted.eml"))
        head = (f"POST /mxdeliv HTTP/1.1\r\nHost: x\r\nX-MAIL-TO: {BOB}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as slow:
            slow.sendall(head + body[:10])  # holds the only slot while its body is missing
            time.sleep(0.3)
            answer = raw_request(server.port, head + body)
            assert answer.startswith(b"HTTP/1.1 503 ")
            assert answer.endswith(mxdeliv.BUSY.encode())
            slow.sendall(body[10:])
            assert slow.recv(100).startswith(b"HTTP/1.1 200 ")
    finally:
        server.stop()


@pytest.mark.parametrize(
    "raw, data",
    [
        (b"a\r\n", b"a\r\n"),
        (b"..\r\n", b".\r\n"),
        (b"..a\r\n.b\r\n", b".a\r\nb\r\n"),
        (b"a\r\n...\r\n", b"a\r\n..\r\n"),
        (b"a.\r\n", b"a.\r\n"),
    ],
)
def test_unstuff(raw, data):
    assert mxdeliv.unstuff(raw) == data


@pytest.mark.parametrize("raw", [b"", b"a", b".\r\n", b"a\r\n.\r\n", b"a\nb\r\n", b"a\r\rb\r\n"])
def test_unstuff_refuses_what_smtp_data_cannot_carry(raw):
    assert mxdeliv.unstuff(raw) is None
