"""Which recipients are accounts of the relay (fail closed), as a pure function."""

from __future__ import annotations

import pytest

from chatmaild.filtermail.recipients import local_account, recipient_enforces_e2ee
from chatmaild.testkit.config import make_config
from chatmaild.testkit.mailgen import BOB, DOMAIN


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path, DOMAIN)


def make_account(config, addr: str, enforce: bool = False) -> None:
    user = config.get_user(addr)
    user.maildir.mkdir(parents=True, exist_ok=True)
    user.password_path.write_text("x")
    if enforce:
        user.enforce_e2ee_path.touch()


def test_enforce_file_is_found_despite_case_and_plus_extension(config):
    make_account(config, BOB, enforce=True)
    make_account(config, "carol@example.org")
    for rcpt in (BOB, "BOB@example.org", "bob+chat@example.org", "Bob+x@EXAMPLE.org"):
        assert local_account(config, rcpt) == config.get_user(BOB), rcpt
        assert recipient_enforces_e2ee(config, rcpt), rcpt
    assert not recipient_enforces_e2ee(config, "carol@example.org")
    assert not recipient_enforces_e2ee(config, "Carol+list@example.org")


def test_recipients_that_are_no_account_count_as_enforcing(config):
    make_account(config, BOB)
    make_account(config, "relay@example.org")
    rcpts = [
        "",
        "bob",
        "bob@",
        "@example.org",
        "+x@example.org",
        "bob@example.net",
        "bob@example.org.",
        "bob@sub.example.org",
        "carol@example.org",  # never created: no password file
        "bob%example.org@example.org",  # percent hack
        "example.org!bob@example.org",  # bang path
        "relay!bob@example.org",
        '"bob"@example.org',
        "bob@example.org@example.org",
        "../bob@example.org",
        "a/b@example.org",
        ".bob@example.org",
        "b..ob@example.org",
        "\u212abob@example.org",  # KELVIN SIGN lowercases to "k" with str.lower()
        "bob\x00@example.org",
    ]
    for rcpt in rcpts:
        assert local_account(config, rcpt) is None, rcpt
        assert recipient_enforces_e2ee(config, rcpt), rcpt
    assert not recipient_enforces_e2ee(config, BOB)


def test_maildir_without_password_file_is_no_account(config):
    config.get_user(BOB).maildir.mkdir(parents=True)
    assert local_account(config, BOB) is None
    assert recipient_enforces_e2ee(config, BOB)
