"""Exactly once on a deployed lab relay: a second copy of a stored message is dropped at delivery.

Mail goes in through the relay's real Postfix (submission 465, authenticated), through
filtermail and LMTP, and is read back over IMAP. A resend with the same Message-ID from the
same sender (what a Postfix retry after a crash, or a client's resend after a lost reply,
looks like at delivery) reaches each recipient once; everything else is delivered as before.
"""

from __future__ import annotations

import base64
import re
import time

import pytest

from cmdeploy import loadgen
from cmdeploy.lab.relay import lab_relay
from cmdeploy.tests.lab import probes

pytestmark = pytest.mark.lab

SCRIPT = "/etc/dovecot/chatmail/dedup.sieve"
DISCARDED = "discard action: "


@pytest.fixture(scope="module")
def relay(lab, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dedup-relays")
    return lab_relay(lab, "relay1", workdir, overrides={"max_load_1m": 1000})


@pytest.fixture(scope="module")
def accts(lab, relay):
    """Two senders (each stays within the send burst of 10) and three recipients, created by
    logging in."""
    made = loadgen.accounts(relay.domain, 5, "dd")
    for a in made:
        assert probes.call(lab, "imap_login", host=relay.domain, user=a.addr,
                           password=a.password)["ok"]  # fmt: skip
    return made


def submit(lab, relay, sender, rcpts, msg: bytes) -> dict:
    return probes.call(lab, "smtp_send", host=relay.domain,
                       msg_b64=base64.b64encode(msg).decode(), mail_from=sender.addr,
                       rcpts=[r.addr for r in rcpts], user=sender.addr,
                       password=sender.password)  # fmt: skip


def inbox(lab, relay, acct, until, wait: float = 60.0) -> list[bytes]:
    """The messages in ``acct``'s INBOX once ``until(messages)`` holds (or ``wait`` s have
    passed), read again 3 s later so that a late second copy is counted too."""
    deadline = time.monotonic() + wait
    while True:
        got = probes.call(lab, "imap_messages", host=relay.domain, user=acct.addr,
                          password=acct.password)  # fmt: skip
        msgs = [base64.b64decode(m) for m in got["messages"]]
        if until(msgs) or time.monotonic() > deadline:
            break
        time.sleep(1)
    time.sleep(3)
    got = probes.call(lab, "imap_messages", host=relay.domain, user=acct.addr,
                      password=acct.password)  # fmt: skip
    return [base64.b64decode(m) for m in got["messages"]]


def copies(msgs: list[bytes], token: str) -> int:
    """How many of ``msgs`` carry the loadgen Message-ID of ``token``."""
    mid = re.compile(rb"(?im)^Message-ID: <" + token.encode() + rb"@loadgen>")
    return sum(bool(mid.search(m)) for m in msgs)


def has(*tokens: str):
    return lambda msgs: all(copies(msgs, t) for t in tokens)


def without_message_id(msg: bytes) -> bytes:
    """``msg`` without its Message-ID: nothing to tell a resend by, so each is delivered
    (also if Postfix adds a Message-ID of its own on the way)."""
    head, sep, body = msg.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"message-id:")]
    return b"\r\n".join(lines) + sep + body


def discarded(lab, relay, since: float) -> int:
    out = lab.ssh_run(relay.name, f"journalctl -u dovecot --since @{int(since)} -o cat "
                      f"--no-pager | grep -c {DISCARDED!r} || true", check=False)  # fmt: skip
    return int(out.stdout.strip() or 0)


def test_the_script_is_compiled_and_the_home_is_a_subdirectory(lab, relay, accts):
    out = lab.ssh_run(relay.name, f"doveconf -n; [ {SCRIPT[:-6]}.svbin -nt {SCRIPT} ] && "
                      f"echo compiled; doveadm user -f home {accts[2].addr}")  # fmt: skip
    assert f"sieve_before = {SCRIPT}" in out.stdout
    assert "compiled" in out.stdout.splitlines()
    assert out.stdout.strip().endswith(f"/{accts[2].addr}/home")


def test_a_resend_with_the_same_message_id_is_stored_once(lab, relay, accts):
    sender, _, a, _, _ = accts
    since = time.time()
    token = loadgen.new_token()
    for _ in range(3):
        msg = loadgen.message(sender.addr, a.addr, token)
        assert submit(lab, relay, sender, [a], msg)["code"] == 250
    assert copies(inbox(lab, relay, a, has(token)), token) == 1
    assert discarded(lab, relay, since) == 2
    # Dovecot's duplicate database is not shown to clients as folders.
    listing = probes.call(lab, "imap_commands", host=relay.domain, user=a.addr,
                          password=a.password, commands=['LIST "" "*"'])  # fmt: skip
    folders = [line for line in listing["untagged"] if line.startswith("* LIST")]
    assert folders and all("dovecot" not in line for line in folders), folders


def test_the_same_message_to_two_recipients_reaches_both_once(lab, relay, accts):
    sender, _, a, b, _ = accts
    token = loadgen.new_token()
    for _ in range(2):
        msg = loadgen.message(sender.addr, a.addr, token)
        assert submit(lab, relay, sender, [a, b], msg)["code"] == 250
    for rcpt in (a, b):
        assert copies(inbox(lab, relay, rcpt, has(token)), token) == 1


def test_different_messages_and_messages_without_message_id_are_all_delivered(lab, relay, accts):
    _, sender, _, b, c = accts
    distinct = [loadgen.new_token() for _ in range(5)]
    for token in distinct:
        msg = loadgen.message(sender.addr, b.addr, token)
        assert submit(lab, relay, sender, [b], msg)["code"] == 250
    msgs = inbox(lab, relay, b, has(*distinct))
    assert [copies(msgs, t) for t in distinct] == [1] * 5
    bare = without_message_id(loadgen.message(sender.addr, c.addr, loadgen.new_token()))
    for _ in range(2):
        assert submit(lab, relay, sender, [c], bare)["code"] == 250
    assert len(inbox(lab, relay, c, lambda msgs: len(msgs) >= 2)) == 2
