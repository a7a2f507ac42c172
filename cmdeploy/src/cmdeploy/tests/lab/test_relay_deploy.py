"""``cmdeploy run`` into real Debian 12 lab hosts, and what the deployed relays do.

Runs after test_lab.py (whose last test restarts the lab), so the hosts are fresh.
"""

from __future__ import annotations

import base64
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from chatmaild.testkit import mailgen

from cmdeploy.lab.relay import (
    cmdeploy,
    copy_paths,
    deploy,
    how_to_connect,
    lab_relay,
    publish_zone,
    repoint_zone,
)
from cmdeploy.tests.lab.probes import call

pytestmark = pytest.mark.lab

PASSWORD = "password123"


@pytest.fixture(scope="module")
def relays(lab, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lab-relays")
    return lab_relay(lab, "relay1", workdir), lab_relay(lab, "relay2", workdir)


def user(relay, name: str) -> str:
    return f"{name}@{relay.domain}"


def new_user(relay) -> str:
    return user(relay, "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(9)))


def encrypted(from_addr: str, to: str, subject: str = "secret subject") -> str:
    payload = mailgen.encrypted_payload(random.Random())
    msg = mailgen.pgp_mime(
        mailgen.armor(payload),
        from_addr=from_addr,
        to=to,
        subject=subject,
        message_id=f"<{random.getrandbits(64):x}@lab.test>",
    )
    return base64.b64encode(msg).decode()


def cleartext(from_addr: str, to: str) -> str:
    return base64.b64encode(mailgen.plain("Hi!", from_addr=from_addr, to=to)).decode()


def submit(lab, relay, login: str, msg_b64: str, mail_from: str, rcpts: list[str]) -> dict:
    return call(lab, "smtp_send", host=relay.domain, msg_b64=msg_b64, mail_from=mail_from,
                rcpts=rcpts, user=login, password=PASSWORD)  # fmt: skip


def inbox(lab, relay, addr: str, wait: float = 30, min_count: int = 1) -> list[bytes]:
    out = call(lab, "imap_messages", host=relay.domain, user=addr, password=PASSWORD,
               wait=wait, min_count=min_count)  # fmt: skip
    return [base64.b64decode(m) for m in out["messages"]]


def changed_operations(log: str) -> list[str]:
    """Operations pyinfra reports as changed (the Success column of its results table)."""
    table = log.split("--> Results:", 1)[-1]
    changed = []
    for line in table.splitlines():
        m = re.match(r"\s+(.+?)\s{2,}\d+\s+(\d+|-)\s+(\d+|-)\s+(\d+|-)\s*$", line)
        if m and m.group(2) != "-" and m.group(1).strip() != "Grand total":
            changed.append(m.group(1).strip())
    return changed


def test_second_run_changes_nothing_and_is_faster(lab, relays):
    for relay in relays:
        deploy(lab, relay)
        first, second = relay.deploy_seconds[0], relay.deploy_seconds[-1]
        print(f"\n{relay.domain}: first deploy {first:.0f}s, second deploy {second:.0f}s")
        assert changed_operations(relay.deploy_logs[-1]) == []
        assert changed_operations(relay.deploy_logs[0]), "the first run must have changed things"
        assert second < first


def test_dns_records_are_all_correct_after_loading_the_zone(lab, relays):
    for relay in relays:
        out = cmdeploy(lab, relay, "dns", "--dns-server", lab.dns_ip).stdout
        assert "Great! All your DNS entries are verified and correct." in out


def test_dns_check_reports_a_missing_record(lab, relays):
    relay = relays[0]
    zone = (relay.workdir / "zone.txt").read_text()
    lab.load_zone(relay.domain, "\n".join(line for line in zone.splitlines() if " MX " not in line))
    try:
        proc = cmdeploy(lab, relay, "dns", "--dns-server", lab.dns_ip, check=False)
        assert proc.returncode == 1
        assert "Please set required DNS entries" in proc.stdout
        assert f"MX    10 {relay.domain}." in proc.stdout
    finally:
        lab.load_zone(relay.domain, zone)


def test_status_shows_every_service_running(lab, relays):
    for relay in relays:
        out = cmdeploy(lab, relay, "status").stdout
        services = dict(re.findall(r"^  (\S+)\s+(\S+)$", out, re.M))
        assert len(services) >= 10
        assert set(services.values()) == {"active"}, services
        assert "mail queue: 0 message(s)" in out


def test_encrypted_mail_crosses_relays_with_dkim_verified(lab, relays):
    relay1, relay2 = relays
    sender, rcpt = new_user(relay1), new_user(relay2)
    inbox(lab, relay2, rcpt, wait=0, min_count=0)  # creates the account
    since = lab.ssh_run(relay2.name, "date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    result = submit(lab, relay1, sender, encrypted(sender, rcpt), sender, [rcpt])
    assert result["code"] == 250, result
    (msg,) = inbox(lab, relay2, rcpt)
    assert b"\r\nSubject: [...]\r\n" in msg and b"secret subject" not in msg
    # Verified on arrival, then stripped before delivery into the mailbox.
    for header in (b"DKIM-Signature:", b"Authentication-Results:", b"Received:"):
        assert header not in msg
    journal = lab.ssh_run(
        relay2.name, f"journalctl -u opendkim --since '{since}' --no-pager"
    ).stdout
    assert "DKIM verification successful" in journal
    assert f"d={relay1.domain}" in journal


def test_unsigned_mail_on_port_25_is_refused_571(lab, relays):
    relay1, relay2 = relays
    rcpt = new_user(relay2)
    inbox(lab, relay2, rcpt, wait=0, min_count=0)
    forged = user(relay1, "forger123")
    result = call(lab, "smtp_send", host=relay2.domain, port=25, starttls=True, helo="lab.test",
                  msg_b64=encrypted(forged, rcpt), mail_from=forged, rcpts=[rcpt])  # fmt: skip
    assert result["code"] == 554, result
    assert "5.7.1 No valid DKIM signature found" in result["text"]
    assert inbox(lab, relay2, rcpt, wait=0, min_count=0) == []


def test_port_25_requires_starttls(lab, relays):
    relay2 = relays[1]
    rcpt = new_user(relay2)
    result = call(lab, "smtp_send", host=relay2.domain, port=25, helo="lab.test",
                  msg_b64=encrypted(rcpt, rcpt), mail_from=rcpt, rcpts=[rcpt])  # fmt: skip
    assert result["code"] == 530, result


def test_cleartext_is_refused_523_when_sent(lab, relays):
    relay1, relay2 = relays
    sender = new_user(relay1)
    for rcpt in (new_user(relay2), new_user(relay1), sender):
        result = submit(lab, relay1, sender, cleartext(sender, rcpt), sender, [rcpt])
        assert result["code"] == 523, result
        assert "Encryption Needed: Invalid Unencrypted Mail" in result["text"]


def test_cleartext_is_refused_523_when_received(lab, relays):
    relay1, relay2 = relays
    rcpt = new_user(relay2)
    inbox(lab, relay2, rcpt, wait=0, min_count=0)  # the account exists: it enforces E2EE
    sender = user(relay1, "someone12")
    result = call(lab, "smtp_send", host=relay2.domain, port=25, starttls=True, helo="lab.test",
                  msg_b64=cleartext(sender, rcpt), mail_from=sender, rcpts=[rcpt])  # fmt: skip
    assert result["code"] == 523, result


def test_forged_from_header_is_refused_500(lab, relays):
    relay1, relay2 = relays
    sender, rcpt = new_user(relay1), new_user(relay2)
    for forged in (user(relay1, "otheruser"), "someone@example.org"):
        result = submit(lab, relay1, sender, encrypted(forged, rcpt), sender, [rcpt])
        assert result["code"] == 500, result
        assert "Invalid FROM" in result["text"]


def test_envelope_sender_must_be_the_login_553(lab, relays):
    relay1, relay2 = relays
    sender, other, rcpt = new_user(relay1), new_user(relay1), new_user(relay2)
    result = submit(lab, relay1, sender, encrypted(other, rcpt), other, [rcpt])
    assert result["code"] == 553, result


def test_vrfy_does_not_reveal_accounts(lab, relays):
    relay2 = relays[1]
    existing = new_user(relay2)
    inbox(lab, relay2, existing, wait=0, min_count=0)
    code = (
        "import smtplib, ssl, sys\n"
        "c = smtplib.SMTP(sys.argv[1], 25, timeout=20); c.ehlo('lab.test')\n"
        "ctx = ssl.create_default_context(); ctx.check_hostname = False\n"
        "ctx.verify_mode = ssl.CERT_NONE; c.starttls(context=ctx); c.ehlo('lab.test')\n"
        "for a in sys.argv[2:]: print(c.verify(a)[0])\n"
    )
    out = lab.client_ns_run(["python3", "-c", code, relay2.domain, existing,
                             user(relay2, "nobody123"), "nobody123"], check=True)  # fmt: skip
    assert out.stdout.split() == ["252"] * 3


def test_port_443_carries_imap_smtp_and_https_by_alpn(lab, relays):
    relay1 = relays[0]
    greet = {alpn: call(lab, "alpn_greeting", host=relay1.domain, alpn=alpn)["greeting"]
             for alpn in ("imap", "smtp", None)}  # fmt: skip
    assert greet["imap"].startswith("* OK"), greet
    assert greet["smtp"].startswith("220 "), greet
    assert greet[None].startswith("HTTP/1.1 200"), greet


def test_new_account_url_redirects_browsers_to_the_app(lab, relays):
    relay1 = relays[0]
    out = call(lab, "http_get", url=f"https://{relay1.domain}/new")
    assert out == {"status": 301, "location": f"dcaccount:https://{relay1.domain}/new"}


def test_the_app_on_this_machine_uses_the_relay_through_loopback_forwards(lab, relays, tmp_path):
    """What `cmdeploy lab relay` prints lets a Delta Chat outside the lab namespace chat."""
    from deltachat_rpc_client import DeltaChat, Rpc

    from cmdeploy.tests.online.dcutil import wait_text

    relay1 = relays[0]
    ports = lab.forward("relay1")
    assert lab.forward("relay1") == ports  # idempotent
    listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout.split("\n")
    for port in ports.values():
        binds = [line.split()[3] for line in listening if line.split()[3:4] and
                 line.split()[3].endswith(f":{port}")]  # fmt: skip
        assert binds == [f"127.0.0.1:{port}"], "a forward must not listen beyond loopback"
    # Another machine (the lab's client namespace stands in for one) cannot use them.
    probe = f"import socket; socket.create_connection(('{lab.dns_ip}', {ports['imap']}), 3)"
    outside = lab.client_ns_run(["python3", "-c", probe])
    assert outside.returncode != 0 and "refused" in outside.stderr.lower(), outside
    links = []
    for _ in range(2):
        text = how_to_connect(lab, relay1)
        links += [line.strip() for line in text.splitlines() if line.strip().startswith("dclogin:")]
    assert len(links) == 2 and links[0] != links[1], links
    server = Path(sys.executable).parent / "deltachat-rpc-server"
    with Rpc(accounts_dir=str(tmp_path / "dc"), rpc_server_path=str(server)) as rpc:
        dc = DeltaChat(rpc)
        accounts = []
        for link in links:
            account = dc.add_account()
            account.add_transport_from_qr(link)
            account.bring_online()
            accounts.append(account)
        ac1, ac2 = accounts
        ac1.create_chat(ac2).send_text("hello through the loopback forwards")
        assert wait_text(ac2, "hello through the loopback forwards").show_padlock


def test_port_conflict_stops_the_run_before_anything_changes(lab, relays):
    relay2 = relays[1]
    lab.ssh_run(relay2.name, "systemctl stop filtermail")
    squatter = "python3 -m http.server --bind 127.0.0.1 10080"
    lab.ssh_run(relay2.name, f"systemd-run --unit squatter {squatter}")
    try:
        proc = cmdeploy(lab, relay2, "run", check=False)
        assert proc.returncode == 1
        assert (
            "nothing was changed" in proc.stderr and "port 10080 is used by python3" in proc.stderr
        )
        assert (
            lab.ssh_run(relay2.name, "systemctl is-active filtermail", check=False).stdout.strip()
            == "inactive"
        )
    finally:
        lab.ssh_run(relay2.name, "systemctl stop squatter; systemctl start filtermail")


def test_missing_address_record_stops_the_run(lab, relays, tmp_path):
    relay2 = relays[1]
    ini = tmp_path / "chatmail.ini"
    ini.write_text(
        (relay2.workdir / "chatmail.ini").read_text().replace(relay2.domain, "_nodns.lab")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "cmdeploy.cli", "--config", str(ini), "--ssh-config", str(lab.ssh_config),
         "run", "--ssh-host", relay2.name], capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "_nodns.lab has no A/AAAA record" in proc.stderr and "nothing was changed" in proc.stderr


def test_disable_mail_stops_postfix_and_dovecot_until_next_run(lab, relays):
    relay2 = relays[1]
    deploy(lab, relay2, "--disable-mail")
    for service in ("postfix", "dovecot"):
        state = lab.ssh_run(relay2.name, f"systemctl is-active {service}; systemctl is-enabled {service}",
                            check=False).stdout.split()  # fmt: skip
        assert state == ["inactive", "disabled"], (service, state)
    deploy(lab, relay2)
    for service in ("postfix", "dovecot"):
        state = lab.ssh_run(relay2.name, f"systemctl is-active {service}; systemctl is-enabled {service}",
                            check=False).stdout.split()  # fmt: skip
        assert state == ["active", "enabled"], (service, state)
    assert inbox(lab, relay2, new_user(relay2), wait=0, min_count=0) == []


def test_migration_to_a_new_host_keeps_accounts_mail_and_dkim_key(lab, relays):
    relay1, relay2 = relays
    lab.up(hosts=3)
    new_host = lab.host("relay3")
    # Before: an account on relay1 with mail in it.
    old_user, sender = new_user(relay1), new_user(relay2)
    inbox(lab, relay1, old_user, wait=0, min_count=0)
    assert (
        submit(lab, relay2, sender, encrypted(sender, old_user), sender, [old_user])["code"] == 250
    )
    assert len(inbox(lab, relay1, old_user)) == 1
    key = "sha256sum /etc/dkimkeys/opendkim.private"
    old_key = lab.ssh_run(relay1.name, key).stdout.split()[0]

    # The seed's steps, with the lab DNS standing in for the DNS provider.
    copy_paths(
        lab,
        relay1.name,
        new_host.name,
        "/etc/ssl/certs/mailserver.pem /etc/ssl/private/mailserver.key",
    )
    copy_paths(lab, relay1.name, new_host.name, "/etc/dkimkeys")
    lab.ssh_run(new_host.name, "chown root: -R /etc/dkimkeys")
    deploy(lab, relay1, "--disable-mail", "--ssh-host", new_host.name)
    repoint_zone(lab, relay1, new_host.ip)
    deploy(lab, relay1, "--disable-mail", "--ssh-host", relay1.name)
    copy_paths(lab, relay1.name, new_host.name, "/home/vmail/mail")
    lab.ssh_run(new_host.name, "chown vmail: -R /home/vmail")
    deploy(lab, relay1, "--ssh-host", new_host.name)

    # After: the same account logs in at the new host with its password and finds its mail.
    resolved = lab.client_ns_run(["getent", "hosts", relay1.domain]).stdout.split()[0]
    assert resolved == new_host.ip
    assert len(inbox(lab, relay1, old_user, wait=0)) == 1
    assert lab.ssh_run(new_host.name, key).stdout.split()[0] == old_key
    assert lab.ssh_run(new_host.name, "systemctl is-active postfix dovecot").stdout.split() == [
        "active", "active"
    ]  # fmt: skip
    # relay2 learns the new address once its cached record expires (restart = expiry).
    lab.ssh_run(relay2.name, "systemctl restart unbound")
    assert (
        submit(lab, relay2, sender, encrypted(sender, old_user), sender, [old_user])["code"] == 250
    )
    assert len(inbox(lab, relay1, old_user, min_count=2)) == 2
    publish_zone(lab, relay1, ssh_host=new_host.name)
    out = cmdeploy(
        lab, relay1, "dns", "--dns-server", lab.dns_ip, "--ssh-host", new_host.name
    ).stdout
    assert "Great!" in out
