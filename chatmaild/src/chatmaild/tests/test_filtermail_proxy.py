"""Black-box: the real ``filtermail`` console script between smtplib and a reinject sink."""

from __future__ import annotations

import random
import shutil
import smtplib
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatmaild.testkit.filtermail import Filtermail, SinkHandler, rcpt_reply
from chatmaild.testkit.mailgen import (
    ALICE,
    BOB,
    armor,
    packet,
    partial_packet,
    pgp_mime,
    plain,
    read,
)
from chatmaild.testkit.procs import free_port

ENC = b"Encryption Needed: Invalid Unencrypted Mail"


@pytest.fixture
def outgoing(start_filtermail, sink):
    return start_filtermail("outgoing", sink.port)


@pytest.fixture
def incoming(start_filtermail, sink):
    return start_filtermail("incoming", sink.port)


def test_encrypted_mail_is_reinjected_unchanged_with_the_same_envelope(outgoing, sink):
    data = read("encrypted.eml")
    rcpts = [BOB, "carol@example.org", "dave@example.net"]
    assert outgoing.send(data, rcpts=rcpts) == {}
    assert sink.received == [(ALICE, rcpts, data)]
    assert outgoing.logged("Outgoing: Filtering encrypted mail.")


def test_mail_that_stays_here_goes_to_the_local_listener(start_filtermail, sink):
    """Only mail with a recipient elsewhere goes through the DKIM-signing listener."""
    local = SinkHandler()
    controller = Controller(local, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        fm = start_filtermail("outgoing", sink.port, postfix_reinject_port_local=controller.port)
        data = read("encrypted.eml")
        assert fm.send(data, rcpts=[BOB, "Carol@Example.ORG"]) == {}
        assert fm.send(data, rcpts=[BOB, "dave@example.net"]) == {}
        assert fm.send(data, rcpts=["eve@sub.example.org"]) == {}
    finally:
        controller.stop()
    assert [r[1] for r in local.received] == [[BOB, "Carol@Example.ORG"]]
    assert [r[1] for r in sink.received] == [[BOB, "dave@example.net"], ["eve@sub.example.org"]]


def test_plain_mail_to_other_domain_is_refused_523(outgoing, sink):
    with pytest.raises(smtplib.SMTPDataError) as e:
        outgoing.send(read("plain.eml"), rcpts=["someone@example.net"])
    assert (e.value.smtp_code, e.value.smtp_error) == (523, ENC)
    assert sink.received == []
    assert outgoing.logged("Outgoing: Rejected unencrypted mail.")


def test_plain_mail_to_same_domain_and_self_is_refused_523(outgoing, sink):
    for rcpts in ([BOB], [ALICE], [ALICE, BOB]):
        with pytest.raises(smtplib.SMTPDataError) as e:
            outgoing.send(read("plain.eml"), rcpts=rcpts)
        assert e.value.smtp_code == 523
    assert sink.received == []


def test_securejoin_and_self_sent_setup_message_pass_outgoing(outgoing, sink):
    outgoing.send(read("securejoin-vc.eml"), rcpts=[BOB])
    outgoing.send(read("asm.eml"), rcpts=[ALICE])
    assert [r[1] for r in sink.received] == [[BOB], [ALICE]]


def test_forged_from_header_is_refused_500(outgoing, sink):
    with pytest.raises(smtplib.SMTPDataError) as e:
        outgoing.send(read("encrypted.eml"), mail_from=BOB)
    assert e.value.smtp_code == 500
    assert e.value.smtp_error == f"Invalid FROM <{ALICE}> for <{BOB}>".encode()
    assert sink.received == []


def test_mail_from_without_one_at_sign_is_refused_500(outgoing):
    with pytest.raises(smtplib.SMTPSenderRefused) as e:
        outgoing.send(read("encrypted.eml"), mail_from="alice")
    assert (e.value.smtp_code, e.value.smtp_error) == (500, b"Invalid from address <alice>")


def test_rate_limit_applies_across_connections(start_filtermail, sink):
    fm = start_filtermail(
        "outgoing", sink.port, max_user_send_per_minute=1, max_user_send_burst_size=3
    )
    data = read("encrypted.eml")
    for _ in range(3):
        fm.send(data)
    with pytest.raises(smtplib.SMTPSenderRefused) as e:
        fm.send(data)
    assert e.value.smtp_code == 450
    assert e.value.smtp_error == f"4.7.1: Too much mail from {ALICE}".encode()
    fm.send(
        read("encrypted.eml").replace(ALICE.encode(), b"erin@example.org"),
        mail_from="erin@example.org",
    )
    assert len(sink.received) == 4


def test_rate_limit_exempt_senders_are_not_limited(start_filtermail, sink):
    fm = start_filtermail(
        "outgoing", sink.port, max_user_send_per_minute=1, max_user_send_burst_size=1,
        rate_limit_exempt=f"{ALICE.upper()} other@example.org",
    )  # fmt: skip
    for _ in range(5):
        fm.send(read("encrypted.eml"))
    erin = read("encrypted.eml").replace(ALICE.encode(), b"erin@example.org")
    fm.send(erin, mail_from="erin@example.org")
    with pytest.raises(smtplib.SMTPSenderRefused):
        fm.send(erin, mail_from="erin@example.org")
    assert len(sink.received) == 6


def test_reinject_down_never_answers_250(start_filtermail):
    fm = start_filtermail("outgoing", free_port())
    with pytest.raises(smtplib.SMTPDataError) as e:
        fm.send(read("encrypted.eml"))
    assert e.value.smtp_code == 451


def test_reinject_refusal_code_and_text_are_passed_on(outgoing, sink):
    sink.refuse_data = "554 5.7.1 Rejected by policy"
    with pytest.raises(smtplib.SMTPDataError) as e:
        outgoing.send(read("encrypted.eml"))
    assert (e.value.smtp_code, e.value.smtp_error) == (554, b"5.7.1 Rejected by policy")


def test_message_after_a_refused_one_passes_on_the_same_reinject_session(outgoing, sink):
    sink.refuse_data = "451 4.3.0 Queue file write error"
    with pytest.raises(smtplib.SMTPDataError):
        outgoing.send(read("encrypted.eml"))
    sink.refuse_data = None
    outgoing.send(read("encrypted.eml"))
    assert len(sink.received) == 1


def test_reinject_reconnects_once_postfix_closed_the_idle_connection(outgoing, sink):
    outgoing.send(read("encrypted.eml"))
    # Restart the listener on the same port: the pooled connection is now dead.
    sink.controller.stop()
    sink.controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    sink.controller.start()
    outgoing.send(read("encrypted.eml"))
    assert len(sink.received) == 2


def test_refused_recipient_at_reinject_refuses_the_whole_message(outgoing, sink):
    sink.refuse_rcpt["carol@example.org"] = "452 4.5.3 Too many recipients"
    with pytest.raises(smtplib.SMTPDataError) as e:
        outgoing.send(read("encrypted.eml"), rcpts=[BOB, "carol@example.org"])
    assert e.value.smtp_code == 452
    assert sink.received == []


def test_incoming_cleartext_is_refused_only_for_enforcing_recipients(incoming, sink):
    incoming.enforce(BOB)
    incoming.account("carol@example.org")
    plain_mail = read("plain.eml")
    incoming.send(plain_mail, mail_from="someone@example.net", rcpts=["carol@example.org"])
    for rcpts in ([BOB], ["carol@example.org", BOB], ["Bob+tag@example.org"]):
        with pytest.raises(smtplib.SMTPDataError) as e:
            incoming.send(plain_mail, mail_from="someone@example.net", rcpts=rcpts)
        assert (e.value.smtp_code, e.value.smtp_error) == (523, ENC)
    incoming.send(read("encrypted-armor-version.eml"), mail_from="x@example.net", rcpts=[BOB])
    assert [r[1] for r in sink.received] == [["carol@example.org"], [BOB]]
    assert incoming.logged("Incoming: Rejected unencrypted mail.")


def test_incoming_bounce_with_null_sender_passes(incoming, sink):
    incoming.enforce(ALICE)
    incoming.send(read("mailer-daemon.eml"), mail_from="", rcpts=[ALICE])
    assert sink.received[0][0] in ("", "<>")
    assert sink.received[0][2] == read("mailer-daemon.eml")
    assert incoming.logged(
        "Incoming: Filtering mailer-daemon message from MAILER-DAEMON@example.net"
    )


def test_oversize_message_is_refused_552(start_filtermail, sink):
    fm = start_filtermail("outgoing", sink.port, max_message_size=20000)
    big = pgp_mime(armor(packet(1, bytes(100)) + packet(18, bytes(30000))))
    # Announced with SIZE (RFC 1870): refused at MAIL FROM already.
    with pytest.raises(smtplib.SMTPSenderRefused) as e:
        fm.send(big)
    assert e.value.smtp_code == 552
    # Not announced: refused at the end of DATA, and the session stays usable.
    with smtplib.SMTP("127.0.0.1", fm.port, timeout=30) as client:
        client.ehlo()
        client.mail(ALICE)
        client.rcpt(BOB)
        code, text = client.data(big)
        assert (code, text) == (552, b"5.3.4 Message exceeds maximum size")
        assert client.noop()[0] == 250
    assert sink.received == []
    fm.send(read("encrypted.eml"))
    assert len(sink.received) == 1


def test_rcpt_parameters_are_accepted_and_ignored(outgoing, sink):
    with smtplib.SMTP("127.0.0.1", outgoing.port, timeout=30) as client:
        client.ehlo()
        assert client.mail(ALICE, ["BODY=8BITMIME"])[0] == 250
        assert (
            client.rcpt(BOB, ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob@example.org"])[0] == 250
        )
        assert client.data(read("encrypted.eml"))[0] == 250
    assert sink.received[0][1] == [BOB]


def test_dsn_parameters_are_accepted_and_ignored(outgoing, sink):
    with smtplib.SMTP("127.0.0.1", outgoing.port, timeout=30) as client:
        client.ehlo()
        assert client.mail(ALICE, ["RET=HDRS", "ENVID=QQ314159", "BODY=8BITMIME"])[0] == 250
        assert client.rcpt(BOB, ["NOTIFY=NEVER"])[0] == 250
        assert client.data(read("encrypted.eml"))[0] == 250
    assert sink.received[0][:2] == (ALICE, [BOB])


def test_lines_starting_with_a_dot_survive_unchanged(incoming, sink):
    incoming.account("carol@example.org")
    data = plain(".\n..\n.hidden\nend", to="carol@example.org")
    incoming.send(data, mail_from="x@example.net", rcpts=["carol@example.org"])
    assert sink.received[0][2] == data


def test_large_encrypted_message_passes_unchanged(outgoing, sink):
    rng = random.Random(7)
    payload = packet(1, rng.randbytes(270)) + partial_packet(
        18, rng.randbytes(3 << 20), chunk_power=13
    )
    data = pgp_mime(armor(payload, crc=False))
    outgoing.send(data)
    assert sink.received[0][2] == data


def test_several_messages_in_one_session(outgoing, sink):
    with smtplib.SMTP("127.0.0.1", outgoing.port, timeout=30) as client:
        client.sendmail(ALICE, [BOB], read("encrypted.eml"))
        with pytest.raises(smtplib.SMTPDataError):
            client.sendmail(ALICE, [BOB], read("plain.eml"))
        client.sendmail(ALICE, [BOB], read("securejoin-vg.eml"))
    assert len(sink.received) == 2


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    handler = SinkHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    fm = Filtermail(
        tmp,
        "outgoing",
        controller.port,
        max_user_send_per_minute=100000,
        max_user_send_burst_size=100000,
    )
    try:
        yield fm, handler
    finally:
        fm.stop()
        controller.stop()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=3000))
def test_random_bytes_never_pass_and_never_crash_the_proxy(fuzz_target, data):
    fm, handler = fuzz_target
    with smtplib.SMTP("127.0.0.1", fm.port, timeout=30) as client:
        with pytest.raises(smtplib.SMTPDataError) as e:
            client.sendmail(ALICE, [BOB], data)
        assert e.value.smtp_code in (500, 523)
        assert client.noop()[0] == 250
    assert handler.received == []
    assert fm.proc.poll() is None


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_30_mib_message_costs_the_proxy_little_more_than_its_size(outgoing, sink):
    rng = random.Random(30)
    payload = packet(1, rng.randbytes(270)) + partial_packet(
        18, rng.randbytes(21 << 20), chunk_power=13
    )
    data = pgp_mime(armor(payload, crc=False))
    assert len(data) > 28 << 20
    before = vm_hwm(outgoing.proc.pid)
    outgoing.send(data)
    assert sink.received[0][2] == data
    assert vm_hwm(outgoing.proc.pid) - before < 1.5 * len(data)


def test_sigterm_stops_the_proxy_cleanly(outgoing):
    outgoing.proc.terminate()
    assert outgoing.proc.wait(10) == 0


def test_missing_config_is_reported_in_one_line(tmp_path):
    script = shutil.which("filtermail", path=str(Path(sys.executable).parent))
    cmd = [script] if script else [sys.executable, "-m", "chatmaild.filtermail.proxy"]
    res = subprocess.run(
        [*cmd, str(tmp_path / "nope.ini"), "outgoing"], capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 2
    assert "does not exist" in res.stderr and "Traceback" not in res.stderr


def test_busy_port_is_reported_without_traceback(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        ini = tmp_path / "busy.ini"
        ini.write_text(
            f"[params]\nmail_domain = example.org\nfiltermail_smtp_port = {s.getsockname()[1]}\n"
        )
        script = shutil.which("filtermail", path=str(Path(sys.executable).parent))
        cmd = [script] if script else [sys.executable, "-m", "chatmaild.filtermail.proxy"]
        res = subprocess.run(
            [*cmd, str(ini), "outgoing"], capture_output=True, text=True, timeout=30
        )
    assert res.returncode != 0
    assert "cannot listen" in res.stderr and "Traceback" not in res.stderr


# Recipients at RCPT time (incoming), SMTP limits and the shared DATA memory budget.

UNKNOWN = b"5.1.1 <{}>: Recipient address rejected: User unknown"


def test_incoming_unknown_recipient_is_refused_550_at_rcpt(incoming, sink):
    incoming.account(BOB)
    for rcpt in ("carol@example.org", "nobody@example.org", BOB.replace("example.org", "ex.net")):
        assert rcpt_reply(incoming, rcpt) == (550, UNKNOWN.replace(b"{}", rcpt.encode()))
    assert rcpt_reply(incoming, "Bob+chat@example.org")[0] == 250
    assert incoming.logged("Incoming: Rejected unknown recipient.")
    # Also when the mail would be encrypted: nothing is taken for an unknown recipient.
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        incoming.send(read("encrypted.eml"), mail_from="x@example.net", rcpts=["carol@example.org"])
    assert sink.received == []


def test_percent_hack_and_bang_path_are_refused_at_rcpt(incoming, sink):
    incoming.account(BOB)
    incoming.account("relay@example.org")
    for rcpt in (
        "bob%example.org@example.org",
        "example.org!bob@example.org",
        "relay!bob@example.org",
        "bob%relay@example.org",
    ):
        code, text = rcpt_reply(incoming, rcpt)
        assert (code, text[:6]) == (550, b"5.1.1 "), rcpt
    # Also when a client sends one of them alongside a real recipient.
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        incoming.send(read("plain.eml"), mail_from="x@example.net", rcpts=["bob%x@example.org"])
    incoming.send(
        read("plain.eml"), mail_from="x@example.net", rcpts=[BOB, "example.org!bob@example.org"]
    )
    assert [r[1] for r in sink.received] == [[BOB]]


def test_cleartext_to_existing_account_without_enforce_file_passes(incoming, sink):
    incoming.account("carol@example.org")
    incoming.send(read("plain.eml"), mail_from="x@example.net", rcpts=["Carol@example.org"])
    assert sink.received[0][1] == ["Carol@example.org"]
    # A maildir without a password file is no account (fail closed).
    (incoming.mailboxes / "dave@example.org").mkdir(parents=True)
    assert rcpt_reply(incoming, "dave@example.org")[0] == 550


def test_outgoing_rcpt_is_not_checked_against_accounts(outgoing, sink):
    rcpts = ["nobody@example.org", "bob%x@example.org", "someone@example.net"]
    assert outgoing.send(read("encrypted.eml"), rcpts=rcpts) == {}
    assert sink.received[0][1] == rcpts


def test_more_than_1000_recipients_get_452_and_the_first_1000_are_kept(outgoing, sink):
    rcpts = [f"r{i}@example.net" for i in range(1001)]
    with smtplib.SMTP("127.0.0.1", outgoing.port, timeout=60) as client:
        client.ehlo()
        client.mail(ALICE)
        replies = [client.rcpt(r)[0] for r in rcpts]
        assert replies[:1000] == [250] * 1000
        assert client.rcpt(rcpts[1000]) == (452, b"4.5.3 Too many recipients")
        assert replies[1000] == 452
        assert client.data(read("encrypted.eml"))[0] == 250
    assert sink.received[0][1] == rcpts[:1000]


def test_overlong_command_lines_get_500_and_the_session_goes_on(outgoing, sink):
    with smtplib.SMTP("127.0.0.1", outgoing.port, timeout=30) as client:
        client.ehlo()
        client.mail(ALICE)
        # RFC 5321 §4.5.3.1.4: 512 octets per command line.
        assert client.docmd("RCPT", "TO:<" + "a" * 600 + "@example.net>")[0] == 500
        assert client.docmd("NOOP", "x" * 300_000) == (500, b"Command line too long")
        assert client.noop()[0] == 250
        assert client.rcpt(BOB)[0] == 250
        assert client.data(read("encrypted.eml"))[0] == 250
    assert sink.received[0][1] == [BOB]
    assert outgoing.proc.poll() is None


def smtp_reply(sock: socket.socket) -> bytes:
    """One (possibly multi-line) reply; the last line."""
    buf = b""
    while True:
        while b"\r\n" not in buf:
            more = sock.recv(4096)
            if not more:
                raise ConnectionError("closed")
            buf += more
        line, buf = buf.split(b"\r\n", 1)
        if line[3:4] != b"-":
            assert not buf
            return line


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_parallel_large_messages_beyond_the_memory_budget_get_452(start_filtermail, sink):
    size_limit = 4 << 20  # the process may buffer 4 such messages (DATA_BUDGET_MESSAGES)
    fm = start_filtermail(
        "outgoing",
        sink.port,
        max_message_size=size_limit,
        max_user_send_per_minute=10000,
        max_user_send_burst_size=10000,
    )
    rng = random.Random(4)
    payload = packet(1, rng.randbytes(270)) + partial_packet(
        18, rng.randbytes(5 << 19), chunk_power=13
    )
    data = pgp_mime(armor(payload, crc=False))
    assert size_limit * 3 // 4 < len(data) < size_limit and data.endswith(b"\r\n")
    fm.send(data)  # warm up: threads, imports, one full message through the gate
    before = vm_hwm(fm.proc.pid)

    n = 30
    socks = []
    try:
        for _ in range(n):
            sock = socket.create_connection(("127.0.0.1", fm.port), timeout=60)
            socks.append(sock)
            smtp_reply(sock)
            for cmd in (b"EHLO t", f"MAIL FROM:<{ALICE}>".encode(), f"RCPT TO:<{BOB}>".encode()):
                sock.sendall(cmd + b"\r\n")
                assert smtp_reply(sock)[:1] == b"2"
            sock.sendall(b"DATA\r\n")
            assert smtp_reply(sock)[:3] == b"354"
        # All transfers are open at once before any of them ends.
        for sock in socks:
            sock.sendall(data)
        for sock in socks:
            sock.sendall(b".\r\n")
        codes = [smtp_reply(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    ok = [c for c in codes if c.startswith(b"250")]
    refused = [c for c in codes if c.startswith(b"452 ")]
    assert len(ok) + len(refused) == n, codes
    assert refused and refused[0] == b"452 4.3.1 Insufficient system resources, try again later"
    assert 1 <= len(ok) <= 4 and len(refused) >= n - 4
    growth = vm_hwm(fm.proc.pid) - before
    # Unbounded, the transfers alone would hold n * len(data) = 108 MB, before the gate's
    # working copies; bounded: 4 messages (16 MiB), the gate's work on those and buffers.
    assert growth < 14 * len(data), (growth, len(data), len(ok))
    # Once they are done the budget is free again.
    fm.send(data)
    assert len(sink.received) == 2 + len(ok)
