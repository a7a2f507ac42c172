"""Real Delta Chat clients (deltachat-rpc-server) against the relay, and across two relays."""

from __future__ import annotations

import imaplib
import json
import urllib.request

import pytest
from chatmaild.testkit.waiting import wait_until
from deltachat_rpc_client.const import EventType

from cmdeploy.tests.online.dcutil import addr_of, online_account, wait_for, wait_text

# imaplib knows no METADATA commands (RFC 5464).
imaplib.Commands.setdefault("SETMETADATA", ("AUTH", "SELECTED"))
imaplib.Commands.setdefault("GETMETADATA", ("AUTH", "SELECTED"))


@pytest.fixture
def make_account(dc, creds):
    """An online Delta Chat account on ``domain``; ``account.test_password`` is its password."""
    return lambda domain: online_account(dc, creds.addr(domain), creds.password(), domain)


def test_one_on_one_chat_on_one_relay(make_account, domain):
    ac1, ac2 = make_account(domain), make_account(domain)
    ac1.create_chat(ac2).send_text("hello on one relay")
    msg = wait_text(ac2, "hello on one relay")
    assert msg.show_padlock


def test_one_on_one_chat_across_relays(make_account, domain, domain2):
    ac1, ac2 = make_account(domain), make_account(domain2)
    ac1.create_chat(ac2).send_text("hello across relays")
    assert wait_text(ac2, "hello across relays").show_padlock
    ac2.create_chat(ac1).send_text("and back")
    assert wait_text(ac1, "and back").show_padlock


def test_securejoin_across_relays(make_account, domain, domain2):
    inviter, joiner = make_account(domain), make_account(domain2)
    joiner.secure_join(inviter.get_qr_code())
    inviter.wait_for_securejoin_inviter_success()
    joiner.wait_for_securejoin_joiner_success()
    # Both success events above mean the handshake crossed the relays both ways.
    contact = inviter.get_contact_by_addr(addr_of(joiner))
    assert contact.get_snapshot().e2ee_avail


def test_read_receipts_across_relays(make_account, domain, domain2):
    ac1, ac2 = make_account(domain), make_account(domain2)
    for ac in (ac1, ac2):
        ac.set_config("mdns_enabled", "1")
    ac2.create_chat(ac1)  # accepted: no read receipts are sent for contact requests
    msg = ac1.create_chat(ac2).send_text("read me")
    incoming = wait_text(ac2, "read me")
    ac2.mark_seen_messages([ac2.get_message_by_id(incoming.id)])

    def read_or_error(event):
        assert event.kind != EventType.ERROR, f"error while waiting for the receipt: {event.msg}"
        return event.msg_id == msg.id

    wait_for(ac1, EventType.MSG_READ, 60, read_or_error)


def test_configure_from_dcaccount_new_url(dc, domain):
    for _ in range(3):
        account = dc.add_account()
        account.add_transport_from_qr(f"dcaccount:https://{domain}/new")
        assert account.is_configured()
        assert addr_of(account).endswith(f"@{domain}")


def test_configure_from_dcaccount_domain(dc, domain):
    account = dc.add_account()
    account.add_transport_from_qr(f"dcaccount:{domain}")
    assert account.is_configured()
    assert addr_of(account).endswith(f"@{domain}")


def test_echobot_replies(make_account, domain, remote):
    invite = remote.run("cat /var/lib/echobot/invite").stdout.strip()
    ac = make_account(domain)
    ac.secure_join(invite)
    ac.wait_for_securejoin_joiner_success()
    chat = ac.get_contact_by_addr(f"echo@{domain}").create_chat()
    chat.send_text("/help")

    def is_help(event):
        return "echo" in ac.get_message_by_id(event.msg_id).get_snapshot().text.lower()

    wait_for(ac, EventType.INCOMING_MSG, 60, is_help)
    chat.send_text("ping from the test")
    assert wait_text(ac, "ping from the test").text == "ping from the test"


def test_metadata_device_tokens_accumulate(imap, creds):
    conn = imap()
    conn.login(creds.addr(), creds.password())
    for token in ("1111", "2222"):
        typ, data = conn._simple_command(
            "SETMETADATA", "INBOX", f'(/private/devicetoken "{token}")'
        )
        assert typ == "OK", data
    typ, data = conn._simple_command("GETMETADATA", "INBOX", "/private/devicetoken")
    assert typ == "OK"
    # The value arrives as a literal: imaplib keeps it as the second item of a tuple.
    values = [
        item[1] for item in conn.untagged_responses.get("METADATA", []) if isinstance(item, tuple)
    ]
    assert values == [b"1111 2222"]


def test_push_notification_reaches_the_notification_server(make_account, imap, domain, config):
    """The relay POSTs a registered device token when mail arrives (lab push server).

    Core 2.65 offers no JSON-RPC call to register a token; the test registers it the way
    core does, with SETMETADATA on the recipient's INBOX."""
    from chatmaild.testkit.pushserver import PushServer

    server = PushServer.for_url(config.notification_url)
    if server is None:
        pytest.skip(f"{config.notification_url} is not served from this machine")
    with server:
        recipient, sender = make_account(domain), make_account(domain)
        conn = imap()
        conn.login(addr_of(recipient), recipient.test_password)
        typ, _ = conn._simple_command(
            "SETMETADATA", "INBOX", '(/private/devicetoken "test-token-77")'
        )
        assert typ == "OK"
        sender.create_chat(recipient).send_text("wake up")
        assert server.wait_for("test-token-77", timeout=60)


def test_quota_exceeded_is_reported(make_account, remote, fill_quota, domain):
    recipient, sender = make_account(domain), make_account(domain)
    fill_quota(addr_of(recipient))
    since = remote.run("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    sender.create_chat(recipient).send_text("does not fit")
    wait_until(lambda: "Quota exceeded" in remote.run(
                   f"journalctl -u dovecot --since '{since}' --no-pager", check=False).stdout,
               "'Quota exceeded' in the Dovecot log", 60, interval=1)  # fmt: skip


def test_new_endpoint_json_is_usable_by_core(dc, domain, ssl_context):
    req = urllib.request.Request(f"https://{domain}/new", method="POST")
    creds = json.loads(urllib.request.urlopen(req, context=ssl_context, timeout=30).read())
    account = dc.add_account()
    account.add_or_update_transport({"addr": creds["email"], "password": creds["password"]})
    assert account.is_configured()
