"""Duplicate suppression at final delivery (dovecot/dedup.sieve) in Debian's Dovecot + Pigeonhole.

The relay's own script is compiled and run by LMTP as ``sieve_before``, with the relay's home
layout (``<maildir>/home``, see dovecot.conf.j2). Every delivery goes in over LMTP, as from
Postfix, and is looked for over IMAP. The failure cases show that a broken script, a missing
or unwritable duplicate database never drop or bounce a message.
"""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import smtplib
import subprocess
import time
from pathlib import Path

import pytest
from chatmaild.testkit import dovecot_instance
from chatmaild.testkit.dovecot_instance import DOMAIN, DovecotInstance

from cmdeploy import loadgen

SCRIPT = Path(__file__).parent.parent / "dovecot" / "dedup.sieve"
TEMPLATE = Path(__file__).parent.parent / "dovecot" / "dovecot.conf.j2"
DISCARDED = "discard action: "

pytestmark = pytest.mark.skipif(
    not shutil.which("sievec"), reason="dovecot-sieve is not installed (scripts/test-packages.txt)"
)

# As in dovecot.conf.j2 (test_the_relay_template_has_these_settings checks that).
SIEVE_CONF = """
protocol lmtp {{
  mail_plugins = $mail_plugins sieve
}}
plugin {{
  sieve_before = {script}
  sieve =
}}
"""
HOME_OVERRIDE = "  override_fields = home={mailboxes_dir}/%u/home\n"


class DedupDovecot(DovecotInstance):
    """The throw-away Dovecot with the relay's dedup script and home layout."""

    def __init__(self, script_text: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.script_text = script_text or SCRIPT.read_text()
        self.script = self.dir / "sieve" / "dedup.sieve"

    def _extra_conf(self) -> str:
        self.script.parent.mkdir(exist_ok=True)
        self.script.write_text(self.script_text)
        # As at deploy: compiled beside the script, so LMTP never needs to write there.
        subprocess.run(
            ["sievec", "-c", "/dev/null", str(self.script)], check=True, capture_output=True
        )
        for path in (self.script.parent, *self.script.parent.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        return super()._extra_conf() + SIEVE_CONF.format(script=self.script)

    def home(self, acct: loadgen.Account) -> Path:
        return self.mailboxes_dir / acct.addr / "home"


@pytest.fixture
def relay_home(monkeypatch):
    """The relay's userdb: every account's home is ``<maildir>/home``."""
    userdb = "userdb {{\n  driver = dict\n  args = {d}/auth.conf\n"
    assert userdb in dovecot_instance.DOVECOT_CONF
    monkeypatch.setattr(dovecot_instance, "DOVECOT_CONF",
                        dovecot_instance.DOVECOT_CONF.replace(userdb, userdb + HOME_OVERRIDE))  # fmt: skip


def start(script_text: str | None = None, n: int = 2) -> tuple[DedupDovecot, list]:
    dv = DedupDovecot(script_text).start()
    accts = loadgen.accounts(DOMAIN, n)
    for a in accts:
        with imaplib.IMAP4("127.0.0.1", dv.imap_port) as c:
            c.login(a.addr, a.password)
    return dv, accts


@pytest.fixture
def relay(relay_home):
    dv, accts = start()
    yield dv, accts
    dv.stop()


def message(mid: str | None, body: str = "hello") -> bytes:
    head = "From: <s@example.org>\r\nSubject: test\r\n"
    if mid is not None:
        head += f"Message-ID: {mid}\r\n"
    return f"{head}\r\n{body}\r\n".encode()


def lmtp(dv: DovecotInstance, rcpts: list, msg: bytes, sender: str = "s@example.org") -> list:
    """One LMTP transaction; the reply code for each recipient (LMTP answers per recipient)."""
    with smtplib.LMTP("127.0.0.1", dv.lmtp_port) as conn:
        conn.ehlo("test")
        conn.mail(sender)
        for r in rcpts:
            assert conn.rcpt(r.addr)[0] == 250
        codes = [conn.data(msg)[0]]
        codes += [conn.getreply()[0] for _ in rcpts[1:]]
    return codes


def inbox(dv: DovecotInstance, acct) -> list[bytes]:
    """The bodies in the account's INBOX, oldest first."""
    with imaplib.IMAP4("127.0.0.1", dv.imap_port) as c:
        c.login(acct.addr, acct.password)
        _, data = c.select("INBOX", readonly=True)
        if int(data[0]) == 0:
            return []
        _, parts = c.fetch("1:*", "(BODY.PEEK[TEXT])")
    return [p[1].strip() for p in parts if isinstance(p, tuple)]


def discards(dv: DovecotInstance) -> int:
    return dv.dovecot_log().count(DISCARDED)


def test_same_message_id_twice_to_one_account_is_stored_once(relay):
    dv, (a, _) = relay
    assert lmtp(dv, [a], message("<m1@x>", "first")) == [250]
    # A retry after a crash: the same message again, accepted (so the sender stops) and dropped.
    assert lmtp(dv, [a], message("<m1@x>", "retry")) == [250]
    assert inbox(dv, a) == [b"first"]
    assert discards(dv) == 1
    assert (dv.home(a) / ".dovecot.lda-dupes").exists()
    # doveauth made the home with the account: not even the first delivery logs an error.
    assert [line for line in dv.dovecot_log().splitlines() if "Error" in line] == []


def test_same_message_id_reaches_two_accounts_in_one_transaction_and_in_two(relay):
    dv, (a, b) = relay
    assert lmtp(dv, [a, b], message("<m2@x>", "both")) == [250, 250]
    assert lmtp(dv, [a, b], message("<m2@x>", "both again")) == [250, 250]
    assert inbox(dv, a) == [b"both"] and inbox(dv, b) == [b"both"]
    assert lmtp(dv, [a], message("<m3@x>", "to a")) == [250]
    assert lmtp(dv, [b], message("<m3@x>", "to b")) == [250]
    assert inbox(dv, a)[-1] == b"to a" and inbox(dv, b)[-1] == b"to b"


def test_different_message_ids_are_all_delivered(relay):
    dv, (a, _) = relay
    for i in range(20):
        assert lmtp(dv, [a], message(f"<n{i}@x>", f"n{i}")) == [250]
    assert inbox(dv, a) == [f"n{i}".encode() for i in range(20)]
    assert discards(dv) == 0


def test_a_message_without_or_with_an_empty_message_id_is_always_delivered(relay):
    dv, (a, _) = relay
    for body in ("none 1", "none 2"):
        assert lmtp(dv, [a], message(None, body)) == [250]
    for body in ("empty 1", "empty 2"):
        assert lmtp(dv, [a], message("", body)) == [250]
    assert inbox(dv, a) == [b"none 1", b"none 2", b"empty 1", b"empty 2"]


def test_the_same_message_id_from_another_sender_is_delivered(relay):
    """Nobody can suppress another sender's message by sending its Message-ID first."""
    dv, (a, _) = relay
    assert lmtp(dv, [a], message("<m4@x>", "forged"), sender="mallory@example.org") == [250]
    assert lmtp(dv, [a], message("<m4@x>", "real"), sender="alice@example.org") == [250]
    assert lmtp(dv, [a], message("<m4@x>", "retry"), sender="alice@example.org") == [250]
    assert inbox(dv, a) == [b"forged", b"real"]


def test_tracking_ends_after_the_period_and_the_database_drops_old_entries(relay_home):
    """The relay's script with a 2 s period instead of two hours."""
    text = SCRIPT.read_text()
    assert ":seconds 7200" in text
    dv, (a,) = start(text.replace(":seconds 7200", ":seconds 2"), n=1)
    try:
        for i in range(30):
            assert lmtp(dv, [a], message(f"<old{i}@x>", f"old{i}")) == [250]
        db = dv.home(a) / ".dovecot.lda-dupes"
        full = db.stat().st_size
        time.sleep(3)
        assert lmtp(dv, [a], message("<old0@x>", "old0 again")) == [250]
        assert inbox(dv, a)[-1] == b"old0 again"
        # Rewritten at that delivery with only the unexpired entry left.
        assert db.stat().st_size < full / 10
    finally:
        dv.stop()


# A failure of the dedup machinery must deliver (or at worst defer), never drop or bounce.


def test_a_missing_home_directory_delivers(relay):
    dv, (a, _) = relay
    shutil.rmtree(dv.home(a), ignore_errors=True)
    assert lmtp(dv, [a], message("<h1@x>", "no home")) == [250]
    assert inbox(dv, a) == [b"no home"]


def test_an_unwritable_duplicate_database_delivers(relay):
    dv, (a, _) = relay
    assert lmtp(dv, [a], message("<w0@x>", "before")) == [250]
    home = dv.home(a)
    shutil.rmtree(home)
    home.mkdir()
    # A directory where the database file should be: it can be neither read nor replaced.
    (home / ".dovecot.lda-dupes").mkdir()
    shutil.chown(home, "root", "root")
    home.chmod(0o555)
    for body in ("w1", "w1 again"):
        assert lmtp(dv, [a], message("<w1@x>", body)) == [250]
    assert inbox(dv, a) == [b"before", b"w1", b"w1 again"]


@pytest.mark.parametrize("damage", ["syntax error", "missing script"])
def test_a_broken_or_missing_script_delivers(relay, damage):
    dv, (a, _) = relay
    if damage == "syntax error":
        dv.script.write_text('require ["duplicate"];\nif duplicate :seconds { discard\n')
        future = time.time() + 5
        os.utime(dv.script, (future, future))  # newer than its binary: compiled anew
    else:
        dv.script.unlink()
        dv.script.with_suffix(".svbin").unlink()
    for body in ("d1", "d1 again"):
        assert lmtp(dv, [a], message("<d1@x>", body)) == [250]
    assert inbox(dv, a) == [b"d1", b"d1 again"]


def test_a_damaged_binary_is_compiled_again_from_the_script(relay):
    dv, (a, _) = relay
    dv.script.with_suffix(".svbin").write_bytes(b"\0not a sieve binary" * 10)
    for body in ("d2", "d2 again"):
        assert lmtp(dv, [a], message("<d2@x>", body)) == [250]
    assert inbox(dv, a) == [b"d2"]


QUOTA_CONF = """
mail_plugins = $mail_plugins quota
plugin {
  quota = maildir:User quota
  quota_rule = *:storage=2K
  quota_grace = 0
}
"""


class FullDedupDovecot(DedupDovecot):
    def _extra_conf(self) -> str:
        return QUOTA_CONF + super()._extra_conf()


def test_a_full_mailbox_gets_the_same_reply_as_without_sieve(relay_home):
    """The script changes no other outcome: over quota is still Dovecot's 552."""
    dv = FullDedupDovecot().start()
    try:
        (a,) = loadgen.accounts(DOMAIN, 1)
        with imaplib.IMAP4("127.0.0.1", dv.imap_port) as c:
            c.login(a.addr, a.password)
        with smtplib.LMTP("127.0.0.1", dv.lmtp_port) as conn:
            conn.ehlo("test")
            conn.mail("s@example.org")
            conn.rcpt(a.addr)
            code, text = conn.data(message("<q@x>", "y" * 5000))
        assert code == 552 and b"Quota exceeded" in text, (code, text)
    finally:
        dv.stop()


def test_the_relay_template_has_these_settings():
    text = TEMPLATE.read_text()
    lmtp_plugins = re.search(r"protocol lmtp \{\n  mail_plugins = ([^\n]*)", text)
    assert lmtp_plugins and "sieve" in lmtp_plugins.group(1).split()
    assert re.search(r"^  sieve_before = /etc/dovecot/chatmail/dedup\.sieve$", text, re.M)
    assert re.search(r"^  sieve =$", text, re.M)
    assert "override_fields = uid=vmail gid=vmail home={{ config.mailboxes_dir }}/%u/home" in text
