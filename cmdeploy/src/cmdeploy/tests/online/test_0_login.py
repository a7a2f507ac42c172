"""Accounts: create-on-login over IMAP and SMTP, capabilities, VRFY, nocreate."""

from __future__ import annotations

import imaplib
import smtplib
import threading

import pytest


def imap_login(imap, addr, password) -> bool:
    try:
        imap().login(addr, password)
        return True
    except imaplib.IMAP4.error:
        return False


def smtp_login(smtp, addr, password) -> bool:
    try:
        smtp().login(addr, password)
        return True
    except smtplib.SMTPAuthenticationError:
        return False


LOGINS = {"imap": imap_login, "smtp": smtp_login}


def test_capabilities_announce_chatmail_and_push(imap, creds):
    conn = imap()
    conn.login(creds.addr(), creds.password())
    assert "XCHATMAIL" in conn.capabilities
    assert "XDELTAPUSH" in conn.capabilities


@pytest.mark.parametrize("proto", ["imap", "smtp"])
def test_login_basic_functioning(proto, imap, smtp, creds):
    login = LOGINS[proto]
    client = imap if proto == "imap" else smtp
    addr, password = creds.addr(), creds.password()
    assert login(client, addr, password), "the first login creates the account"
    assert login(client, addr, password), "the same password works again"
    assert not login(client, addr, password + "x"), "another password is refused"
    assert not login(client, creds.addr(), "admin"), "a too short password creates nothing"


@pytest.mark.parametrize("proto", ["imap", "smtp"])
def test_two_accounts_may_share_a_password(proto, imap, smtp, creds):
    client = imap if proto == "imap" else smtp
    password = creds.password()
    assert LOGINS[proto](client, creds.addr(), password)
    assert LOGINS[proto](client, creds.addr(), password)


def test_concurrent_logins_of_one_account(imap, smtp, creds):
    addr, password = creds.addr(), creds.password()
    assert imap_login(imap, addr, password)
    conns = [imap() for _ in range(10)] + [smtp() for _ in range(2)]
    results = []

    def login(conn):
        try:
            conn.login(addr, password)
            results.append(True)
        except (imaplib.IMAP4.error, smtplib.SMTPException):
            results.append(False)

    threads = [threading.Thread(target=login, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * len(conns)


def test_bad_local_parts_are_refused(imap, creds, domain):
    for localpart in ("short", "x" * 40, "with+plus", "sp ace1234"):
        assert not imap_login(imap, f"{localpart}@{domain}", creds.password())


def test_vrfy_does_not_reveal_accounts(imap, creds, smtp25):
    existing = creds.addr()
    assert imap_login(imap, existing, creds.password())
    conn = smtp25()
    codes = [conn.verify(a)[0] for a in (existing, creds.addr(), existing.split("@")[0])]
    assert codes == [252, 252, 252]


def test_nocreate_file_blocks_new_accounts_only(imap, creds, remote, config):
    existing, password = creds.addr(), creds.password()
    assert imap_login(imap, existing, password)
    remote.run(f"touch {config.nocreate_file}")
    try:
        assert not imap_login(imap, creds.addr(), password)
        assert imap_login(imap, existing, password)
    finally:
        remote.run(f"rm -f {config.nocreate_file}")
    assert imap_login(imap, creds.addr(), password)
