"""Temporary failures of each chatmaild service path stay temporary.

While a dict service is down, or cannot read its storage, Dovecot must answer
``NO [UNAVAILABLE]`` to IMAP and a ``temp_fail`` to SASL clients (Postfix), never
"authentication failed" for an existing account; filtermail must answer 451, never 5xx
or 250. Storage failures are made real for root too: a file replaced by a symlink to
itself cannot be opened (ELOOP), whoever asks.
"""

from __future__ import annotations

import asyncio
import base64
import imaplib
import os
import smtplib
import socket
import subprocess
import threading
from pathlib import Path

import pytest

import chatmaild
from chatmaild.dictproxy import DictProxyServer
from chatmaild.doveauth import AuthDict
from chatmaild.filtermail import direction as directions
from chatmaild.filtermail.handler import FilterHandler
from chatmaild.lastlogin import LastLoginDict
from chatmaild.metadata import MetadataDict, MetadataStore
from chatmaild.saslproxy import SaslProxy, is_temporary_failure
from chatmaild.testkit.dovecot_instance import DOMAIN, DovecotInstance
from chatmaild.testkit.filtermail import rcpt_reply
from chatmaild.testkit.mailgen import BOB, read
from chatmaild.testkit.procs import free_port
from chatmaild.testkit.waiting import wait_until

PASSWORD = "password-1234"
ALICE = f"tempfail1@{DOMAIN}"
LUA = Path(chatmaild.__file__).parent / "push_notification.lua"


def loop_symlink(path: Path) -> None:
    """Make ``path`` unreadable for everyone, root included (ELOOP on open)."""
    path.unlink(missing_ok=True)
    path.symlink_to(path.name)


# --- the dict handlers on their own: storage errors answer F --------------------------


# ``config``: the test kit's fixture (mailboxes in tmp_path/mail).


def account(config, addr=ALICE):
    user = config.get_user(addr)
    user.maildir.mkdir(parents=True)
    user.password_path.write_text("{SHA512-CRYPT}$6$x$" + "x" * 86)
    return user


def test_doveauth_answers_F_not_N_when_the_password_file_cannot_be_read(config):
    user = account(config)
    loop_symlink(user.password_path)
    server = DictProxyServer(AuthDict(config), config.mailboxes_dir / "s")
    for key in (f'shared/passdb/{PASSWORD}"{ALICE}"10.0.0.1', f"shared/userdb/{ALICE}"):
        assert server._reply_lookup(key, None).startswith("F")
    # A whole mailbox directory that cannot be entered is the same.
    user.password_path.unlink()
    os.rmdir(user.maildir)
    loop_symlink(user.maildir)
    assert server._reply_lookup(f"shared/userdb/{ALICE}", None).startswith("F")
    # Nothing was created in its place.
    assert user.maildir.is_symlink()


def test_lastlogin_storage_error_fails_the_commit(config):
    user = account(config)
    loop_symlink(user.password_path)
    server = DictProxyServer(LastLoginDict(config), config.mailboxes_dir / "s")
    tx = type("Tx", (), {"user": ALICE, "ops": [(f"shared/last-login/{ALICE}", "1700000000")],
                         "failed": False})()  # fmt: skip
    assert server._reply_commit("1", tx) == "F1\n"


def test_metadata_storage_error_answers_F_and_keeps_the_file(config):
    user = account(config)
    loop_symlink(user.metadata_path)
    handler = MetadataDict(config, MetadataStore(config), notifier=None)
    server = DictProxyServer(handler, config.mailboxes_dir / "s")
    assert server._reply_lookup("priv/guid/devicetoken", ALICE).startswith("F")
    # Writes fail instead of replacing tokens they could not read.
    assert not handler.set(ALICE, "priv/guid/devicetoken", "tok-1")
    assert not handler.set(ALICE, "priv/guid/messagenew", "")
    assert user.metadata_path.is_symlink()


def test_dictproxy_handler_exception_answers_F_and_keeps_the_connection(served):
    handler, connect = served
    c = connect()
    assert c.request("Lshared/crash") == "F"
    assert c.request("Lshared/answer") == "O42"
    failing = handler.set

    def set_raising(user, key, value):
        if key == "shared/oserror":
            raise OSError(5, "Input/output error")
        return failing(user, key, value)

    handler.set = set_raising
    c.send("B1\tuser")
    c.send("S1\tshared/oserror\tx")
    assert c.request("C1") == "F1"
    assert c.request("Lshared/answer") == "O42"


# --- real Dovecot: what IMAP and SASL clients get -------------------------------------


@pytest.fixture(scope="module")
def dovecot():
    with DovecotInstance(
        metadata=True, push_lua=LUA, ini_overrides={"notification_url": "http://127.0.0.1:9/"}
    ) as instance:
        assert imap(instance, ALICE, PASSWORD)[0][0] == "OK"  # creates the account
        yield instance


def imap(inst, addr, password, *commands) -> list[tuple[str, bytes]]:
    """LOGIN, then each (command, args...) tuple: the (status, text) of every command."""
    conn = imaplib.IMAP4("127.0.0.1", inst.imap_port, timeout=60)
    try:
        typ, data = conn._simple_command("LOGIN", conn._quote(addr), conn._quote(password))
        results = [(typ, data[-1])]
        if typ == "OK":
            conn.state = "AUTH"
            for name, *args in commands:
                conn.untagged_responses.clear()
                typ, data = conn.xatom(name, *args) if name not in ("NOOP",) else conn.noop()
                results.append((typ, data[-1] if data else b""))
        return results
    finally:
        try:
            conn.logout()
        except (imaplib.IMAP4.abort, OSError):
            pass


def sasl(inst, addr, password, service="smtp", path=None) -> str:
    """One AUTH PLAIN over Dovecot's auth-client protocol, as Postfix's smtpd does it;
    the OK or FAIL line, or '' when the server closed the connection instead."""
    resp = base64.b64encode(f"\0{addr}\0{password}".encode()).decode()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(str(path or inst.dir / "run" / "auth-client"))
        s.sendall(f"VERSION\t1\t2\nCPID\t{os.getpid()}\n"
                  f"AUTH\t1\tPLAIN\tservice={service}\tnologin\tresp={resp}\n".encode())  # fmt: skip
        f = s.makefile("rb")
        while True:
            line = f.readline().decode()
            if not line or line.startswith(("OK\t", "FAIL\t")):
                return line.rstrip("\n")


def unavailable(results) -> bool:
    typ, text = results[0]
    return typ == "NO" and text.startswith(b"[UNAVAILABLE]")


@pytest.mark.parametrize("how", ["killed, socket left", "socket gone", "answers F"])
def test_login_while_doveauth_is_down_is_a_temporary_failure(dovecot, how):
    dovecot.signal_service("doveauth")
    if how == "socket gone":
        dovecot.auth_socket.unlink()
    elif how == "answers F":
        # doveauth running, but the account's storage cannot be read.
        dovecot.restart_service("doveauth")
        user = dovecot.config.get_user(ALICE)
        os.rename(user.maildir, f"{user.maildir}.away")
        loop_symlink(user.maildir)
    try:
        assert unavailable(imap(dovecot, ALICE, PASSWORD))
        assert unavailable(imap(dovecot, ALICE, "not-the-password"))
        reply = sasl(dovecot, ALICE, PASSWORD)
        assert reply.startswith("FAIL\t1\t") and "code=temp_fail" in reply.split("\t"), reply
    finally:
        if how == "answers F":
            user.maildir.unlink()
            os.rename(f"{user.maildir}.away", user.maildir)
        dovecot.restart_service("doveauth")

    # No negative cache: the right password works again, the wrong one fails. Dovecot's
    # dict client may answer one more temporary failure while it reconnects (seen under
    # load), but never a wrong-password one.
    def answered():
        results = imap(dovecot, ALICE, PASSWORD)
        return None if unavailable(results) else results

    results = wait_until(answered, "a login that is no temporary failure", 10, interval=0.2)
    assert results[0][0] == "OK", results
    assert sasl(dovecot, ALICE, PASSWORD).startswith("OK\t1\t")
    wrong = sasl(dovecot, ALICE, "not-the-password")
    assert wrong.startswith("FAIL\t1\t") and "code=temp_fail" not in wrong


def test_login_works_while_lastlogin_is_down(dovecot):
    dovecot.signal_service("lastlogin")
    try:
        results = imap(dovecot, ALICE, PASSWORD, ("SELECT", "INBOX"))
        assert [typ for typ, _ in results] == ["OK", "OK"], results
        assert sasl(dovecot, ALICE, PASSWORD).startswith("OK\t1\t")
    finally:
        dovecot.restart_service("lastlogin")


def test_user_listing_that_fails_is_a_failure_not_an_empty_list(dovecot):
    listing = ["doveadm", "-c", str(dovecot.dir / "dovecot.conf"), "user", "*"]
    ok = subprocess.run(listing, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ALICE in ok.stdout.split(), ok
    away = dovecot.mailboxes_dir.with_name("mail.away")
    os.rename(dovecot.mailboxes_dir, away)
    loop_symlink(dovecot.mailboxes_dir)
    try:
        failed = subprocess.run(listing, capture_output=True, text=True, timeout=60)
    finally:
        dovecot.mailboxes_dir.unlink()
        os.rename(away, dovecot.mailboxes_dir)
    # 75 = EX_TEMPFAIL
    assert failed.returncode == 75 and "returned failure" in failed.stderr, failed


def lmtp_deliver(inst, rcpt: str, subject: str) -> dict:
    msg = f"From: <other1234@{DOMAIN}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n\r\nbody\r\n"
    with smtplib.LMTP("127.0.0.1", inst.lmtp_port) as lmtp:
        return lmtp.sendmail(f"other1234@{DOMAIN}", [rcpt], msg)


def test_metadata_down_fails_only_metadata_commands_and_not_delivery(dovecot):
    token = '(/private/devicetoken "tok-tempfail")'
    new = dovecot.mailboxes_dir / ALICE / "new"
    before = len(os.listdir(new)) if new.exists() else 0
    dovecot.signal_service("metadata")
    try:
        results = imap(dovecot, ALICE, PASSWORD, ("SELECT", "INBOX"),
                       ("SETMETADATA", "INBOX", token),
                       ("GETMETADATA", "INBOX", "/private/devicetoken"), ("NOOP",))  # fmt: skip
        assert [typ for typ, _ in results] == ["OK", "OK", "NO", "NO", "OK"], results
        # Delivery with the push hook (which writes /private/messagenew) still works.
        assert lmtp_deliver(dovecot, ALICE, "while metadata is down") == {}
        assert len(os.listdir(new)) == before + 1
    finally:
        dovecot.restart_service("metadata")
    results = imap(dovecot, ALICE, PASSWORD, ("SELECT", "INBOX"), ("SETMETADATA", "INBOX", token))
    assert [typ for typ, _ in results] == ["OK", "OK", "OK"], results
    # No imap process died of the failed dict.
    crashes = [ln for ln in dovecot.dovecot_log().splitlines() if "Fatal" in ln or "Panic" in ln]
    assert crashes == []


def test_lmtp_to_an_account_while_doveauth_is_down_is_deferred(dovecot):
    dovecot.signal_service("doveauth")
    try:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            lmtp_deliver(dovecot, ALICE, "while doveauth is down")
        ((code, text),) = e.value.recipients.values()
        assert 400 <= code < 500, (code, text)
    finally:
        dovecot.restart_service("doveauth")
    assert lmtp_deliver(dovecot, ALICE, "after doveauth is back") == {}


# --- filtermail: 451 when what it depends on is unavailable ---------------------------


def test_incoming_recipient_lookup_failure_is_451_not_550(start_filtermail, sink):
    fm = start_filtermail("incoming", sink.port)
    fm.account(BOB)
    maildir = fm.mailboxes / BOB
    os.rename(maildir, f"{maildir}.away")
    loop_symlink(maildir)
    code, text = rcpt_reply(fm, BOB)
    assert code == 451, (code, text)
    assert fm.logged("Recipient lookup at RCPT failed: Too many levels of symbolic links")
    maildir.unlink()
    os.rename(f"{maildir}.away", maildir)
    assert rcpt_reply(fm, BOB)[0] == 250


class HalfSink:
    """An SMTP listener that takes DATA and hangs up before the final reply."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", free_port()))
        self.port = self.sock.getsockname()[1]
        self.got = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        f = conn.makefile("rb")
        conn.sendall(b"220 half\r\n")
        for reply in (b"250 hi\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"):
            f.readline()
            conn.sendall(reply)
        self.got = f.read(1000)
        conn.close()
        self.sock.close()


def test_reinject_cut_off_during_data_is_451_and_is_delivered_once_on_retry(
    start_filtermail,
    sink,
):
    half = HalfSink()
    fm = start_filtermail("outgoing", half.port)
    with pytest.raises(smtplib.SMTPDataError) as e:
        fm.send(read("encrypted.eml"))
    assert e.value.smtp_code == 451
    assert half.got  # the message was on its way when the connection broke
    fm.stop()
    fm = start_filtermail("outgoing", sink.port)
    fm.send(read("encrypted.eml"))
    assert len(sink.received) == 1


def test_filtermail_internal_error_in_a_session_is_451(config):
    # aiosmtpd would answer "500 Error: (...)" for an exception no hook caught.
    handler = FilterHandler(directions.for_name(config, "incoming"))
    reply = asyncio.run(handler.handle_exception(RuntimeError("unforeseen")))
    assert reply.startswith("451 4.3.0 ")


# --- saslproxy: what Postfix gets instead of a temporary FAIL ---------------------------


@pytest.fixture
def saslproxy(dovecot, tmp_path):
    proxy = SaslProxy(tmp_path / "auth", dovecot.dir / "run" / "auth-client")
    loop = asyncio.new_event_loop()
    started = asyncio.Event()
    task = loop.create_task(proxy.serve(started))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    assert asyncio.run_coroutine_threadsafe(started.wait(), loop).result(10) is True
    yield proxy.listen

    async def shutdown():
        # The server task and any connection it still serves.
        others = {task, *asyncio.all_tasks()} - {asyncio.current_task()}
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_saslproxy_passes_answers_and_closes_on_a_temporary_failure(dovecot, saslproxy):
    assert sasl(dovecot, ALICE, PASSWORD, path=saslproxy).startswith("OK\t1\tuser=")
    wrong = sasl(dovecot, ALICE, "not-the-password", path=saslproxy)
    assert wrong.startswith("FAIL\t1\t") and "code=temp_fail" not in wrong
    dovecot.signal_service("doveauth")
    try:
        # Postfix answers "454 4.7.0 Temporary authentication failure" to a lost connection.
        assert sasl(dovecot, ALICE, PASSWORD, path=saslproxy) == ""
    finally:
        dovecot.restart_service("doveauth")
    assert sasl(dovecot, ALICE, PASSWORD, path=saslproxy).startswith("OK\t1\t")


@pytest.mark.parametrize(
    "line, temporary",
    [
        (b"FAIL\t1\tuser=a@b\tcode=temp_fail\n", True),
        (b"FAIL\t7\ttemp\n", True),
        (b"FAIL\t1\tuser=a@b\n", False),
        (b"FAIL\t1\tuser=a@b\tcode=authz_fail\n", False),
        (b"OK\t1\tuser=code=temp_fail\n", False),
        (b"FAIL\t1\tuser=temp\n", False),
    ],
)
def test_only_dovecot_temporary_failures_count(line, temporary):
    assert is_temporary_failure(line) is temporary
