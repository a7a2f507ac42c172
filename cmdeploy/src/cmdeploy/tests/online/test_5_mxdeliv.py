"""Relay-to-relay delivery over HTTPS ``/mxdeliv`` (issue 15): mail to the second relay
leaves this one through chatmail-mxtransport's HTTPS path, not SMTP on port 25."""

from __future__ import annotations

import time

import pytest

from cmdeploy.tests.online.test_1_mail import encrypted, send, wait_for_messages


def journal_since(remote, start: str, unit: str | None = None) -> str:
    only = f"-u {unit} " if unit else ""
    return remote.run(f"journalctl {only}--since '{start}' --no-pager -o cat").stdout


def test_mail_to_another_relay_goes_over_https(smtp, imap, creds, config, domain, domain2, remote):
    if not config.mxdeliv_outgoing:
        pytest.skip("mxdeliv_outgoing = false: Postfix delivers by SMTP itself")
    sender, password = creds.addr(domain), creds.password()
    imap().login(sender, password)
    rcpt, rcpt_pw = creds.addr(domain2), creds.password()
    imap(domain2).login(rcpt, rcpt_pw)
    start = remote.run("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    send(smtp, sender, password, encrypted(sender, rcpt), sender, [rcpt])
    (raw,) = wait_for_messages(lambda: imap(domain2), rcpt, rcpt_pw, timeout=60)
    assert b"-----BEGIN PGP MESSAGE-----" in raw
    # Postfix logs the transport's per-recipient reply; the journal may trail the IMAP arrival.
    deadline = time.monotonic() + 20
    while True:
        postfix = [line for line in journal_since(remote, start).splitlines()
                   if f"to=<{rcpt}>" in line and "status=" in line]  # fmt: skip
        if postfix or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert postfix and all("status=sent (250 OK (HTTPS))" in line for line in postfix), postfix
    transport = journal_since(remote, start, "chatmail-mxtransport")
    assert f"Delivered via HTTPS to {domain2}: 1 recipients" in transport
    assert f"Delivered via SMTP to {domain2}" not in transport
