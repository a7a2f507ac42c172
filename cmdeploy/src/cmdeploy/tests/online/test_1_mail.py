"""Sending and receiving through the relay: the policies a sender meets."""

from __future__ import annotations

import email
import email.utils
import random
import smtplib
import socket
import time

import pytest
from chatmaild.testkit import mailgen


def encrypted(from_addr: str, to: str, subject: str = "secret subject") -> bytes:
    payload = mailgen.encrypted_payload(random.Random())
    return mailgen.pgp_mime(
        mailgen.armor(payload),
        from_addr=from_addr,
        to=to,
        subject=subject,
        message_id=f"<{random.getrandbits(64):x}@lab.test>",
    )


@pytest.fixture
def account(imap, creds):
    """A fresh account (created by its first login): (addr, password)."""
    addr, password = creds.addr(), creds.password()
    imap().login(addr, password)
    return addr, password


def wait_for_messages(imap, addr, password, count=1, timeout=30) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while True:
        conn = imap()
        conn.login(addr, password)
        conn.select("INBOX")
        nums = conn.search(None, "ALL")[1][0].split()
        if len(nums) >= count or time.monotonic() > deadline:
            return [conn.fetch(n, "(RFC822)")[1][0][1] for n in nums]
        conn.logout()
        time.sleep(0.5)


def send(smtp, addr, password, msg: bytes, mail_from: str, rcpts: list[str]):
    conn = smtp()
    conn.login(addr, password)
    return conn.sendmail(mail_from, rcpts, msg)


def test_encrypted_mail_is_delivered_with_subject_hidden(smtp, imap, account, creds):
    sender, password = account
    rcpt, rcpt_pw = creds.addr(), creds.password()
    imap().login(rcpt, rcpt_pw)
    send(smtp, sender, password, encrypted(sender, rcpt), sender, [rcpt])
    (raw,) = wait_for_messages(imap, rcpt, rcpt_pw)
    msg = email.message_from_bytes(raw)
    assert msg["Subject"] == "[...]"
    assert b"secret subject" not in raw


def test_cleartext_is_refused(smtp, account, creds):
    sender, password = account
    for rcpt in (creds.addr(), sender, "someone@example.org"):
        with pytest.raises(smtplib.SMTPDataError) as e:
            send(smtp, sender, password, mailgen.plain(from_addr=sender, to=rcpt), sender, [rcpt])
        assert e.value.smtp_code == 523
        assert b"Encryption Needed: Invalid Unencrypted Mail" in e.value.smtp_error


@pytest.mark.parametrize("forged", ["internal", "someone@example.org"])
def test_forged_from_header_is_refused(forged, smtp, account, creds):
    sender, password = account
    from_addr = creds.addr() if forged == "internal" else forged
    rcpt = creds.addr()
    with pytest.raises(smtplib.SMTPDataError) as e:
        send(smtp, sender, password, encrypted(from_addr, rcpt), sender, [rcpt])
    assert e.value.smtp_code == 500
    assert b"Invalid FROM" in e.value.smtp_error


def refusal(exc) -> tuple[int, bytes]:
    """Code and text of a refused MAIL or RCPT. Postfix talks to the before-queue filter
    only from the first RCPT on, so the filter's answer to MAIL arrives there."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return next(iter(exc.recipients.values()))
    return exc.smtp_code, exc.smtp_error


def test_envelope_sender_must_be_the_login(smtp, account, creds):
    sender, password = account
    other, rcpt = creds.addr(), creds.addr()
    conn = smtp()
    conn.login(sender, password)
    with pytest.raises((smtplib.SMTPSenderRefused, smtplib.SMTPRecipientsRefused)) as e:
        conn.sendmail(other, [rcpt], encrypted(other, rcpt))
    assert refusal(e.value)[0] == 553


def test_mail_without_dkim_signature_is_refused_on_port_25(smtp25, domain, account):
    rcpt, _ = account
    for forger in (f"fake@{domain}", "fake@example.org"):
        with pytest.raises(smtplib.SMTPDataError) as e:
            smtp25().sendmail(forger, [rcpt], encrypted(forger, rcpt))
        assert e.value.smtp_code == 554
        assert b"No valid DKIM signature found" in e.value.smtp_error


def test_rate_limit_refuses_after_the_burst(smtp, account, creds, config):
    sender, password = account
    rcpt = creds.addr()
    conn = smtp()
    conn.login(sender, password)
    limit = config.max_user_send_burst_size
    for i in range(limit + 30):
        try:
            conn.sendmail(sender, [rcpt], encrypted(sender, rcpt))
        except (smtplib.SMTPSenderRefused, smtplib.SMTPRecipientsRefused) as e:
            code, text = refusal(e)
            assert code == 450
            assert b"4.7.1: Too much mail from" in text
            assert i >= limit, f"refused after only {i} messages"
            return
    pytest.fail(f"{limit + 30} messages in a row were all accepted")


def test_delivered_mail_has_no_dkim_or_received_headers_and_no_sender_ip(
    smtp, imap, account, creds, domain
):
    sender, password = account
    rcpt, rcpt_pw = creds.addr(), creds.password()
    imap().login(rcpt, rcpt_pw)
    with socket.create_connection((domain, 465), timeout=10) as s:
        my_ip = s.getsockname()[0]
    send(smtp, sender, password, encrypted(sender, rcpt), sender, [rcpt])
    (raw,) = wait_for_messages(imap, rcpt, rcpt_pw)
    headers = raw.split(b"\r\n\r\n", 1)[0]
    for name in (b"DKIM-Signature:", b"Authentication-Results:", b"Received:"):
        assert name not in headers
    assert my_ip.encode() not in raw


def test_mail_from_another_relay_arrives_without_its_relay_headers(
    smtp, imap, creds, domain, domain2
):
    """Mail from relay 2 comes with relay 2's DKIM signature, our Authentication-Results and
    the Received lines of port 25; none of them reaches the mailbox."""
    rcpt, rcpt_pw = creds.addr(domain), creds.password()
    imap().login(rcpt, rcpt_pw)
    sender, password = creds.addr(domain2), creds.password()
    imap(domain2).login(sender, password)
    send(lambda: smtp(domain2), sender, password, encrypted(sender, rcpt), sender, [rcpt])
    (raw,) = wait_for_messages(imap, rcpt, rcpt_pw, timeout=60)
    headers = raw.split(b"\r\n\r\n", 1)[0]
    for name in (b"DKIM-Signature:", b"Authentication-Results:", b"Received:"):
        assert name not in headers
    assert socket.gethostbyname(domain2).encode() not in headers


def test_old_messages_are_expunged(remote, config):
    days = config.delete_mails_after + 1
    out = remote.run(
        f"find {config.mailboxes_dir} -path '*/cur/*' -mtime +{days} -type f | head -5; "
        f"find {config.mailboxes_dir} -path '*/new/*' -mtime +{days} -type f | head -5"
    ).stdout
    assert out.strip() == ""


def test_cleartext_from_other_relays_is_refused(smtp25, account):
    rcpt, _ = account  # an existing account: it only accepts encrypted mail
    sender = "someone@example.org"
    with pytest.raises(smtplib.SMTPDataError) as e:
        smtp25().sendmail(sender, [rcpt], mailgen.plain(from_addr=sender, to=rcpt))
    assert e.value.smtp_code == 523


def test_bounces_are_dkim_signed(smtp, imap, creds, domain, domain2, fill_quota):
    """A delivery that fails on relay 1 after it took the mail (a full mailbox) bounces to
    the sender on relay 2, which takes mail from other relays only with a valid DKIM
    signature of the sending domain, and bounces only from the null sender."""
    rcpt, rcpt_pw = creds.addr(domain), creds.password()
    imap().login(rcpt, rcpt_pw)
    fill_quota(rcpt)
    sender, password = creds.addr(domain2), creds.password()
    imap(domain2).login(sender, password)
    send(lambda: smtp(domain2), sender, password, encrypted(sender, rcpt), sender, [rcpt])
    (raw,) = wait_for_messages(lambda: imap(domain2), sender, password, timeout=60)
    bounce = email.message_from_bytes(raw)
    assert email.utils.parseaddr(bounce["From"])[1].lower() == f"mailer-daemon@{domain}"
    assert bounce.get_content_type() == "multipart/report"


def test_unknown_recipient_is_refused_before_relay_1_takes_the_mail(
    smtp, imap, creds, domain, domain2, remote
):
    """Relay 1 refuses an unknown address at RCPT time, so it never makes a bounce
    (no backscatter); the sending relay tells its own user."""
    sender, password = creds.addr(domain2), creds.password()
    imap(domain2).login(sender, password)
    nobody = creds.addr(domain)  # never logged in: no such account
    send(lambda: smtp(domain2), sender, password, encrypted(sender, nobody), sender, [nobody])
    (raw,) = wait_for_messages(lambda: imap(domain2), sender, password, timeout=60)
    bounce = email.message_from_bytes(raw)
    assert email.utils.parseaddr(bounce["From"])[1].lower() == f"mailer-daemon@{domain2}"
    assert b"5.1.1" in raw and b"User unknown" in raw
    assert nobody.encode() not in remote.run("postqueue -p", check=False).stdout.encode()
