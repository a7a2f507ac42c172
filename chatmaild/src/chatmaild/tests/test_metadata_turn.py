"""The TURN credentials chatmail-metadata publishes for Delta Chat calls."""

from __future__ import annotations

import base64
import hashlib

import pytest

from chatmaild.metadata import (
    TURN_LIFETIME,
    MetadataDict,
    MetadataStore,
    turn_password,
    turn_value,
)

DOMAIN = "chat.example.org"
TURN_KEY = "shared/0123456789abcdef/vendor/vendor.dovecot/pvt/server/vendor/deltachat/turn"
NOW = 1_800_000_000.0


def hmac_sha1_by_hand(key: bytes, msg: bytes) -> bytes:
    """RFC 2104 spelled out with hashlib.sha1, so the test does not share code with hmac."""
    block = 64
    if len(key) > block:
        key = hashlib.sha1(key).digest()
    key = key.ljust(block, b"\0")
    inner = hashlib.sha1(bytes(b ^ 0x36 for b in key) + msg).digest()
    return hashlib.sha1(bytes(b ^ 0x5C for b in key) + inner).digest()


def handler(config, secret_path, now=NOW):
    return MetadataDict(config, MetadataStore(config), None, turn_secret_path=secret_path,
                        clock=lambda: now)  # fmt: skip


def test_password_matches_the_example_in_delta_chat_core():
    # core's calls.rs documents this pair for chatmail-turn's secret "north".
    assert turn_password("north", "1758650868") == "8Dqkyyu11MVESBqjbIylmB06rv8="


@pytest.mark.parametrize("secret", ["0f" * 32, "k" * 100, "short"])
def test_password_is_base64_of_hmac_sha1_of_the_username(secret):
    expected = base64.b64encode(hmac_sha1_by_hand(secret.encode(), b"1800432000")).decode()
    assert turn_password(secret, "1800432000") == expected


def test_value_is_host_port_expiry_password(config, tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("ab" * 32 + "\n")
    value = handler(config, secret_file).lookup(TURN_KEY, None)
    host, port, expiry, password = value.split(":", 3)
    assert (host, port) == (DOMAIN, "3478")
    # A bare integer: core takes it as username and expiry at once.
    assert expiry == str(int(NOW) + TURN_LIFETIME) == "1800432000"
    assert TURN_LIFETIME == 5 * 86400
    expected = hmac_sha1_by_hand(("ab" * 32).encode(), expiry.encode())
    assert base64.b64decode(password, validate=True) == expected
    assert "\n" not in value and "\t" not in value


def test_value_is_asked_for_at_each_lookup(config, tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("first")
    first = handler(config, secret_file).lookup(TURN_KEY, None)
    secret_file.write_text("second")
    later = handler(config, secret_file, now=NOW + 60)
    second = later.lookup(TURN_KEY, None)
    assert first != second
    assert second == turn_value(DOMAIN, "second", NOW + 60)


@pytest.mark.parametrize("content", [None, "", "  \n"])
def test_missing_or_empty_secret_gives_no_value(config, tmp_path, content, caplog):
    secret_file = tmp_path / "secret"
    if content is not None:
        secret_file.write_text(content)
    assert handler(config, secret_file).lookup(TURN_KEY, None) is None
    assert "TURN secret" in caplog.text
