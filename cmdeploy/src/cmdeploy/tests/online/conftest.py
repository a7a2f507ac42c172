"""Fixtures of the online suite: the relay under test (from ``cmdeploy test``) and clients.

Environment set by ``cmdeploy test``: CHATMAIL_INI, CHATMAIL_SSH, CHATMAIL_SSH_CONFIG and,
for tests across two relays, CHATMAIL_DOMAIN2 and CHATMAIL_SSH2; ``cmdeploy bench --floor``
sets CHATMAIL_FLOOR (stock Postfix + Dovecot hosts the throughput bench compares against).
"""

from __future__ import annotations

import imaplib
import os
import random
import smtplib
import ssl
import string
import sys
from pathlib import Path

import pytest
from chatmaild.config import read_config

from cmdeploy.remote import Remote


@pytest.fixture(scope="session")
def config():
    return read_config(os.environ["CHATMAIL_INI"])


@pytest.fixture(scope="session")
def domain(config) -> str:
    return config.mail_domain


@pytest.fixture(scope="session")
def domain2() -> str:
    d = os.environ.get("CHATMAIL_DOMAIN2")
    if not d:
        pytest.skip("needs a second relay: cmdeploy test --relay2 DOMAIN")
    return d


def _ssh_config() -> Path | None:
    path = os.environ.get("CHATMAIL_SSH_CONFIG")
    return Path(path) if path else None


@pytest.fixture(scope="session")
def remote(domain) -> Remote:
    return Remote(os.environ.get("CHATMAIL_SSH") or domain, ssh_config=_ssh_config())


@pytest.fixture(scope="session")
def remote2(domain2) -> Remote:
    return Remote(os.environ.get("CHATMAIL_SSH2") or domain2, ssh_config=_ssh_config())


@pytest.fixture(scope="session")
def ssl_context(config) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if config.tls_cert_mode == "self":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Credentials:
    """Fresh account names and passwords that satisfy the relay's creation rules."""

    def __init__(self, config):
        self.config = config

    def localpart(self) -> str:
        n = self.config.username_max_length
        return "".join(random.choices(string.ascii_lowercase + string.digits, k=n))

    def addr(self, domain: str | None = None) -> str:
        return f"{self.localpart()}@{domain or self.config.mail_domain}"

    def password(self) -> str:
        n = max(self.config.password_min_length, 12)
        return "".join(random.choices(string.ascii_letters + string.digits, k=n))


@pytest.fixture(scope="session")
def creds(config) -> Credentials:
    return Credentials(config)


@pytest.fixture
def imap(domain, ssl_context):
    """Connect to the relay's IMAPS port; connections are logged out at the end."""
    conns = []

    def connect(host=None):
        conn = imaplib.IMAP4_SSL(host or domain, 993, ssl_context=ssl_context, timeout=30)
        conns.append(conn)
        return conn

    yield connect
    for conn in conns:
        try:
            conn.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


@pytest.fixture
def smtp(domain, ssl_context):
    """Connect to the relay's SMTPS port (465)."""
    conns = []

    def connect(host=None):
        conn = smtplib.SMTP_SSL(host or domain, 465, context=ssl_context, timeout=30)
        conns.append(conn)
        return conn

    yield connect
    for conn in conns:
        try:
            conn.quit()
        except (smtplib.SMTPException, OSError):
            pass


@pytest.fixture
def smtp25(domain, ssl_context):
    """Connect to the relay's port 25 as another relay would (STARTTLS)."""
    conns = []

    def connect():
        conn = smtplib.SMTP(domain, 25, timeout=30)
        conns.append(conn)
        conn.ehlo("test.invalid")
        conn.starttls(context=ssl_context)
        conn.ehlo("test.invalid")
        return conn

    yield connect
    for conn in conns:
        conn.close()


@pytest.fixture
def fill_quota(remote, config):
    """Make an account of relay 1 look full to Dovecot, so its next delivery fails."""

    def fill(addr: str) -> None:
        maildir = f"{config.mailboxes_dir}/{addr}"
        size = config.max_mailbox_size
        # A message file claiming the whole quota, named as Dovecot names them (S=<size>).
        fake = f"{maildir}/cur/1700000000.M1P1.fake,S={size},W={size}:2,"
        remote.run(f"install -o vmail -g vmail -d {maildir}/cur && touch '{fake}' && "
                   f"chown vmail: '{fake}' && doveadm quota recalc -u {addr}")  # fmt: skip

    return fill


@pytest.fixture(scope="module")
def dc(tmp_path_factory):
    """Real Delta Chat core (deltachat-rpc-server from this venv), one per test module."""
    from deltachat_rpc_client import DeltaChat, Rpc

    server = Path(sys.executable).parent / "deltachat-rpc-server"
    accounts = tmp_path_factory.mktemp("deltachat") / "accounts"
    with Rpc(accounts_dir=str(accounts), rpc_server_path=str(server)) as rpc:
        yield DeltaChat(rpc)
