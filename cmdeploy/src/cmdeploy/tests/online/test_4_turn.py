"""TURN credentials and app versions from the relay's IMAP METADATA, and a TURN allocation.

What Delta Chat does before a call: GETMETADATA "" /shared/vendor/deltachat/turn after
login, then a TURN Allocate on UDP 3478 with the published username and password.
"""

from __future__ import annotations

import imaplib
import json
import time

from chatmaild.metadata import appversions_problem

from cmdeploy.tests.lab.turn_client import allocate

imaplib.Commands.setdefault("GETMETADATA", ("AUTH", "SELECTED"))


def server_metadata(imap, creds, key: str) -> bytes | None:
    conn = imap()
    conn.login(creds.addr(), creds.password())
    typ, data = conn._simple_command("GETMETADATA", '""', key)
    assert typ == "OK", data
    for item in conn.untagged_responses.get("METADATA", []):
        # A literal arrives as the second item of a tuple, a quoted string inline.
        if isinstance(item, tuple):
            return item[1]
        if isinstance(item, bytes) and item.endswith(b")"):
            last = item.rsplit(b" ", 1)[-1][:-1]
            return None if last == b"NIL" else last.strip(b'"')
    return None


def test_turn_value_and_allocation(imap, creds, domain):
    value = server_metadata(imap, creds, "/shared/vendor/deltachat/turn")
    assert value, "no TURN entry"
    host, port, expiry, password = value.decode().split(":", 3)
    assert host == domain and port == "3478"
    assert expiry.isdigit() and 4 * 86400 < int(expiry) - time.time() <= 5 * 86400 + 60
    got = allocate(host, 3478, expiry, password)
    assert got["ok"], got
    wrong = allocate(host, 3478, expiry, password[:-4] + "AAA=")
    assert not wrong["ok"] and wrong["code"] == 401, wrong


def test_appversions_fit_the_schema(imap, creds):
    value = server_metadata(imap, creds, "/shared/vendor/deltachat/appversions")
    assert value and b"\n" not in value
    assert appversions_problem(json.loads(value)) is None
