"""``POST https://<relay>/mxdeliv`` against a deployed lab relay, from the client namespace.

The client plays another relay whose port 25 is blocked: it posts what that relay's
transport would post (newest-reference §1). A properly signed encrypted message lands in
the INBOX once; everything port 25 refuses is refused here with the same reply line.
Messages carry a DKIM signature made with relay1's own key (what its OpenDKIM would add
for one of its users), or with a key that is in no DNS record.

Also run as ``python -m cmdeploy.tests.lab.test_relay_mxdeliv post JSON`` inside the
client namespace: the HTTPS client the tests call there.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import sys
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cmdeploy.lab.relay import lab_relay
from cmdeploy.tests.lab.probes import CTX, call_in_client_ns
from cmdeploy.tests.lab.test_relay_hostile import (
    account,
    dkim_sign,
    encrypted,
    inbox,
    mail_log,
    name,
    since,
)

pytestmark = pytest.mark.lab

MAX_MESSAGE_SIZE = 31457280  # the default; nginx's limit is the backend's body_limit
TOO_BIG = "552 5.3.4 Message exceeds maximum size"


def post(host, headers, body_b64="", pad_to=0, method="POST") -> dict:
    """One request to ``https://host/mxdeliv``; status and body of the answer.

    ``pad_to`` > 0 posts a message of that many bytes (made here: too large for argv).
    """
    body = base64.b64decode(body_b64)
    if pad_to:
        line = b"X-Pad: " + b"a" * 990 + b"\r\n"
        body = line * (pad_to // len(line) + 1) + body
    conn = http.client.HTTPSConnection(host, 443, context=CTX, timeout=120)
    try:
        conn.putrequest(method, "/mxdeliv", skip_accept_encoding=True)
        for key, value in headers:
            conn.putheader(key, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        try:
            conn.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the whole body was sent: the answer is still there
        resp = conn.getresponse()
        return {"status": resp.status, "text": resp.read().decode(errors="replace")}
    finally:
        conn.close()


def mxdeliv(lab, relay, msg: bytes = b"", mail_from: str | None = None, rcpts=(), **kw) -> dict:
    """Post ``msg`` (dot-stuffed here, as SMTP DATA) from the lab client."""
    headers = [("X-MAIL-FROM", mail_from)] if mail_from else []
    headers += [("X-MAIL-TO", r) for r in rcpts]
    stuffed = msg.replace(b"\r\n.", b"\r\n..")
    body_b64 = base64.b64encode(stuffed).decode()
    kwargs = {"host": relay.domain, "headers": headers, "body_b64": body_b64, **kw}
    return call_in_client_ns(lab, "cmdeploy.tests.lab.test_relay_mxdeliv", "post", kwargs)


@pytest.fixture(scope="module")
def relay(lab, tmp_path_factory):
    return lab_relay(lab, "relay1", tmp_path_factory.mktemp("mxdeliv-relays"))


@pytest.fixture(scope="module")
def key(lab, relay):
    pem = lab.ssh_run(relay.name, "cat /etc/dkimkeys/opendkim.private").stdout
    return serialization.load_pem_private_key(pem.encode(), password=None)


def signed(relay, key, to: str) -> tuple[str, bytes]:
    """An encrypted message from a new address of ``relay``, signed with ``key``."""
    sender = f"{name()}@{relay.domain}"
    msg = encrypted(sender, to, f"{name(16)}@{relay.domain}")
    return sender, dkim_sign(msg, relay.domain, key)


def test_signed_encrypted_mail_is_delivered_once(lab, relay, key):
    rcpt = account(lab, relay)
    sender, msg = signed(relay, key, rcpt)
    start = since(lab, relay)
    assert mxdeliv(lab, relay, msg, sender, [rcpt]) == {"status": 200, "text": "250 OK"}
    (got,) = inbox(lab, relay, rcpt, wait=30, min_count=1)
    assert msg.split(b"\r\n\r\n", 1)[1] in got
    time.sleep(3)
    assert len(inbox(lab, relay, rcpt)) == 1
    # The backend logged the lab client's address (nginx's X-Real-IP), not 127.0.0.1.
    assert f"mxdeliv: 200 250 from {lab.client_ip} rcpts=1" in mail_log(lab, relay, start)


def test_cleartext_is_refused_523(lab, relay, key):
    rcpt = account(lab, relay)
    sender = f"{name()}@{relay.domain}"
    msg = (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: hi\r\nMessage-ID: <{name(16)}@x>\r\n"
           f"Date: Tue, 01 Dec 2026 20:00:00 +0000\r\n\r\nHello\r\n").encode()  # fmt: skip
    got = mxdeliv(lab, relay, dkim_sign(msg, relay.domain, key), sender, [rcpt])
    assert got == {"status": 400, "text": "523 Encryption Needed: Invalid Unencrypted Mail"}
    assert inbox(lab, relay, rcpt) == []


def test_forged_or_missing_dkim_signature_is_refused_554(lab, relay, key):
    rcpt = account(lab, relay)
    sender = f"{name()}@{relay.domain}"
    msg = encrypted(sender, rcpt, f"{name(16)}@{relay.domain}")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for body in (dkim_sign(msg, relay.domain, other), msg):
        got = mxdeliv(lab, relay, body, sender, [rcpt])
        assert got["status"] == 400, got
        assert re.match(r"554 5\.7\.1 No (valid )?DKIM signature found", got["text"]), got
    assert inbox(lab, relay, rcpt, wait=5) == []


def test_unknown_and_foreign_recipients_are_refused(lab, relay, key):
    unknown = f"{name()}@{relay.domain}"
    sender, msg = signed(relay, key, unknown)
    got = mxdeliv(lab, relay, msg, sender, [unknown])
    assert got["status"] == 400
    assert got["text"] == f"550 5.1.1 <{unknown}>: Recipient address rejected: User unknown"
    foreign = f"{name()}@example.org"
    got = mxdeliv(lab, relay, msg, sender, [foreign])
    assert got == {"status": 400, "text": f"554 5.7.1 <{foreign}>: Relay access denied"}


def test_get_is_405(lab, relay):
    assert mxdeliv(lab, relay, method="GET")["status"] == 405


def test_too_large_is_413(lab, relay, key):
    rcpt = account(lab, relay)
    sender, msg = signed(relay, key, rcpt)
    # Above max_message_size, within nginx's limit: the backend measures and refuses it.
    got = mxdeliv(lab, relay, msg, sender, [rcpt], pad_to=MAX_MESSAGE_SIZE + 1000)
    assert got == {"status": 413, "text": TOO_BIG}
    # Above nginx's limit too: nginx refuses it with the same line.
    got = mxdeliv(lab, relay, msg, sender, [rcpt], pad_to=MAX_MESSAGE_SIZE * 17 // 16 + 70_000)
    assert got == {"status": 413, "text": TOO_BIG}
    assert inbox(lab, relay, rcpt) == []


def main(argv: list[str]) -> None:
    name_, kwargs = argv[0], json.loads(argv[1])
    print(json.dumps({"post": post}[name_](**kwargs)))


if __name__ == "__main__":
    main(sys.argv[1:])
