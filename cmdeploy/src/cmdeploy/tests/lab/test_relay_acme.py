"""Relays with ordinary domain names and real certificates, in the lab.

Two relays (``relay1.lab``, ``relay2.lab`` in the hosts relay1 and relay2) get their
certificates from the lab's ACME CA (pebble, lab.acme) through the deploy code a real
server runs; only ``acme_directory_url`` and ``acme_ca_file`` point at the lab. Then relay2
switches to an operator-supplied certificate (``tls_external_cert_and_key``).
"""

from __future__ import annotations

import base64
import random
import re
import subprocess
import time
from datetime import UTC, datetime

import pytest
from chatmaild.testkit import mailgen
from chatmaild.testkit.waiting import wait_until

from cmdeploy.lab.relay import (
    acme_lab_relay,
    cmdeploy,
    copy_paths,
    deploy,
    repoint_zone,
    write_config,
)
from cmdeploy.relaypaths import VENV
from cmdeploy.tests.lab.probes import call
from cmdeploy.tests.lab.test_relay_hostile import mail_log, since

pytestmark = pytest.mark.lab

PASSWORD = "password123"
# Every TLS port of a relay: (port, STARTTLS protocol or None).
PORTS = [(443, None), (465, None), (587, "smtp"), (993, None), (143, "imap")]


@pytest.fixture(scope="module")
def acme(lab):
    return lab.acme_server()


@pytest.fixture(scope="module")
def root_file(acme, tmp_path_factory):
    """Pebble's issuing root alone: what a verifying client needs (the relay sends the rest)."""
    path = tmp_path_factory.mktemp("acme") / "pebble-root.pem"
    path.write_text(acme.root_pem)
    return str(path)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("acme-relays")


# Separate fixtures, so that the tests of one relay do not wait for the second deploy.
@pytest.fixture(scope="module")
def relay1(lab, acme, workdir):
    return acme_lab_relay(lab, "relay1", workdir)


@pytest.fixture(scope="module")
def relay2(lab, acme, workdir):
    return acme_lab_relay(lab, "relay2", workdir)


def served(lab, relay, cafile: str) -> dict[int, dict]:
    return {
        port: call(lab, "served_cert", host=relay.domain, port=port, cafile=cafile, starttls=tls)
        for port, tls in PORTS
    }


def serials(result: dict[int, dict]) -> set[str]:
    return {r.get("serial", r.get("error")) for r in result.values()}


def wait_for_new_serial(lab, relay, cafile: str, old: set[str], timeout: float = 90) -> dict:
    """Poll every port until none serves a serial of ``old``; return what they serve."""
    return wait_until(lambda: served(lab, relay, cafile), f"new serials on {relay.domain}",
                      timeout, interval=1,
                      until=lambda now: all(r.get("serial") and r["serial"] not in old
                                            for r in now.values()))  # fmt: skip


def ssh(lab, relay, command: str) -> str:
    return lab.ssh_run(relay.name, command).stdout


def check_every_port(lab, relay, root_file: str) -> None:
    result = served(lab, relay, root_file)
    assert all("serial" in r for r in result.values()), result
    assert len(serials(result)) == 1, result  # one certificate on every port
    assert all(r["issuer"].startswith("Pebble Intermediate CA") for r in result.values())
    # The web aliases are in the certificate too (HTTPS with their names).
    for alias in (f"www.{relay.domain}", f"mta-sts.{relay.domain}"):
        alias_cert = call(lab, "served_cert", host=relay.domain, port=443, cafile=root_file,
                          server_name=alias)  # fmt: skip
        assert alias_cert.get("serial") in serials(result), alias_cert
    print(f"{relay.domain}: deploy with issuance {relay.deploy_seconds[0]:.0f}s")


def test_certificate_is_issued_and_served_verified_on_every_port(lab, relay1, root_file):
    check_every_port(lab, relay1, root_file)


def test_an_untrusted_ca_does_not_verify(lab, relay1):
    """The check above can fail: the system CAs of this machine do not know the lab CA."""
    result = call(lab, "served_cert", host=relay1.domain, port=993,
                  cafile="/etc/ssl/certs/ca-certificates.crt")  # fmt: skip
    assert "CERTIFICATE_VERIFY_FAILED" in result.get("error", ""), result


def test_status_shows_the_certificate_expiry(lab, relay1, root_file):
    for relay in [relay1]:
        # Right after a deploy a Type=notify unit (echobot) may still be starting: status
        # then exits 1 naming it; it must come to exit 0 within seconds.
        proc = wait_until(lambda r=relay: cmdeploy(lab, r, "status", "--ssh-host", r.name,
                                                   check=False),
                          "cmdeploy status to exit 0", 30, interval=2,
                          until=lambda proc: proc.returncode == 0)  # fmt: skip
        out = proc.stdout
        m = re.search(r"^certificate expires: (.+)$", out, re.M)
        assert m, out
        shown = datetime.strptime(m.group(1).strip(), "%b %d %H:%M:%S %Y %Z")
        served_993 = call(lab, "served_cert", host=relay.domain, port=993, cafile=root_file)
        expected = datetime.strptime(served_993["not_after"], "%b %d %H:%M:%S %Y %Z")
        assert shown == expected
        # Every TLS port serves the certificate file.
        assert "  served on ports 443, 465, 587, 993, 143, 25\n" in out, out
        # The lab CA issues for a week (lab.acme.VALIDITY_SECONDS).
        days = (expected.replace(tzinfo=UTC) - datetime.now(UTC)).days
        assert 5 <= days <= 7


def test_dns_lists_mta_sts_and_all_records_are_found(lab, relay1):
    for relay in [relay1]:
        zone = (relay.workdir / "zone.txt").read_text()
        d = relay.domain
        assert re.search(rf"^mta-sts\.{d}\.\s.*CNAME\s+{d}\.$", zone, re.M), zone
        assert re.search(rf'^_mta-sts\.{d}\.\s.*TXT\s+"v=STSv1; id=\d+"$', zone, re.M), zone
        # CAA names the CA: known for Let's Encrypt only, so none for the lab CA.
        assert " CAA " not in zone
        out = cmdeploy(lab, relay, "dns", "--dns-server", lab.dns_ip, "--ssh-host", relay.name)
        assert "Great! All your DNS entries are verified and correct." in out.stdout


def issued_count(lab) -> int:
    """Certificates named in the lab CA's log (appended across its starts: compare counts)."""
    return (lab.log_dir / "pebble.log").read_text().count("Issued certificate serial")


def test_renewal_is_picked_up_by_every_service(lab, relay1, root_file):
    """The renewal timer's service gets a new certificate and the hook reloads every service.

    acmetool renews a certificate in the last third of its validity (checked with pebble and
    a 90-second certificate: renewed after 60 s); a lab certificate lives a week, so the test
    makes the current one unusable in acmetool's own terms: a ``revoked`` mark in its state
    directory. (``acmetool revoke`` of Debian's 0.2.2 only writes a ``revoke`` wish that its
    reconcile never acts on: no request reaches the CA and the certificate still satisfies
    the target, which is why this test once saw the old certificate everywhere.)
    """
    relay = relay1
    old = serials(served(lab, relay, root_file))
    live = f"/var/lib/acme/live/{relay.domain}"
    old_dir = ssh(lab, relay, f"readlink -f {live}").strip()
    ssh(lab, relay, f"touch {old_dir}/revoked")
    issued = issued_count(lab)
    t0 = time.monotonic()
    ssh(lab, relay, "systemctl start acmetool.service")  # what acmetool.timer starts
    reconciled = time.monotonic() - t0
    assert issued_count(lab) == issued + 1
    assert ssh(lab, relay, f"readlink -f {live}").strip() != old_dir
    after = wait_for_new_serial(lab, relay, root_file, old)
    picked_up = time.monotonic() - t0
    assert len(serials(after)) == 1, after
    file_serial = ssh(lab, relay, f"openssl x509 -noout -serial -in {live}/cert").strip()
    assert file_serial.partition("=")[2].upper() in serials(after)
    print(
        f"renewal: acmetool.service {reconciled:.1f}s, every port serves it after {picked_up:.1f}s"
    )


def new_address(relay) -> str:
    return f"{''.join(random.choices('abcdefghijkmnopqrstuvwxyz', k=9))}@{relay.domain}"


def send_encrypted(lab, relay, sender: str, rcpt: str) -> None:
    payload = mailgen.encrypted_payload(random.Random())
    msg = mailgen.pgp_mime(mailgen.armor(payload), from_addr=sender, to=rcpt,
                           message_id=f"<{random.getrandbits(64):x}@lab.test>")  # fmt: skip
    result = call(lab, "smtp_send", host=relay.domain, msg_b64=base64.b64encode(msg).decode(),
                  mail_from=sender, rcpts=[rcpt], user=sender, password=PASSWORD)  # fmt: skip
    assert result["code"] == 250, result


def inbox_count(lab, relay, addr: str, **wait) -> int:
    got = call(lab, "imap_messages", host=relay.domain, user=addr, password=PASSWORD, **wait)
    return len(got["messages"])


def test_mail_between_the_relays_uses_verified_tls(lab, relay1, relay2, root_file):
    check_every_port(lab, relay2, root_file)
    sender, rcpt = new_address(relay1), new_address(relay2)
    assert inbox_count(lab, relay2, rcpt, wait=0, min_count=0) == 0  # creates the account
    start = since(lab, relay1)
    send_encrypted(lab, relay1, sender, rcpt)
    assert inbox_count(lab, relay2, rcpt, wait=30) == 1
    # With mxdeliv_outgoing it left through chatmail-mxtransport over HTTPS, whose client
    # verifies with Router.verified_tls: that context verifies relay2's 443.
    if ssh(lab, relay1, "postconf -h default_transport").startswith("mxdeliv:"):
        log = mail_log(lab, relay1, start)
        assert any(f"to=<{rcpt}>" in line and "status=sent (250 OK (HTTPS))" in line
                   for line in log.splitlines()), log[-3000:]  # fmt: skip
        verify = (f"{VENV}/bin/python3 -c 'import socket; from chatmaild.mxtransport import Router; "
                  f"Router(\"x\").verified_tls.wrap_socket(socket.create_connection("
                  f"(\"{relay2.domain}\", 443), 10), server_hostname=\"{relay2.domain}\"); print(\"ok\")'")  # fmt: skip
        assert ssh(lab, relay1, verify).strip() == "ok"
    # With mxdeliv_outgoing = false Postfix delivers, at its "verify" level (no policy entry
    # relaxes it for this domain), so relay2's certificate is verified, with the name;
    # Postfix logs no TLS line at its default log level: its own TLS probe shows it.
    assert ssh(lab, relay1, "postconf -h smtp_tls_security_level").strip() == "verify"
    policy = "postmap -q {d} regexp:/etc/postfix/smtp_tls_policy_map || true"
    assert ssh(lab, relay1, policy.format(d=relay2.domain)).strip() == ""
    finger = ssh(lab, relay1, f"posttls-finger -c -l verify -P /etc/ssl/certs {relay2.domain} 2>&1")
    assert f"Verified TLS connection established to {relay2.domain}" in finger, finger


def make_ca(tmp_path, name: str) -> tuple[str, str]:
    key, crt = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-noenc", "-days", "2", "-subj", f"/CN={name}",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)  # fmt: skip
    return str(key), str(crt)


def make_leaf(tmp_path, ca: tuple[str, str], domain: str, tag: str) -> tuple[str, str]:
    """A certificate for the relay's names, signed by ``ca``: (certificate, key) as PEM."""
    key, csr, crt = (tmp_path / f"{tag}.{ext}" for ext in ("key", "csr", "pem"))
    ext = tmp_path / f"{tag}.ext"
    ext.write_text(f"subjectAltName=DNS:{domain},DNS:www.{domain},DNS:mta-sts.{domain}\n")
    subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-noenc", "-subj", f"/CN={domain}", "-keyout", str(key), "-out", str(csr)],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", ca[1], "-CAkey", ca[0],
                    "-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", str(crt)],
                   check=True, capture_output=True)  # fmt: skip
    return crt.read_text(), key.read_text()


def install_files(lab, relay, cert: str, key: str) -> None:
    """As an operator replaces them: the key first, then the certificate, each atomically."""
    for path, text in (("/etc/chatmail-tls/key.pem", key), ("/etc/chatmail-tls/cert.pem", cert)):
        command = f"mkdir -p /etc/chatmail-tls && cat > {path}.new && chmod 600 {path}.new"
        lab.ssh_run(relay.name, f"{command} && mv {path}.new {path}", input=text)


def test_external_certificate_served_and_replaced_without_deploy(lab, relay2, acme, tmp_path):
    relay = relay2
    ca = make_ca(tmp_path, "operator test CA")
    cafile = ca[1]
    install_files(lab, relay, *make_leaf(tmp_path, ca, relay.domain, "first"))
    write_config(lab, relay, {
        "acme_ca_file": str(acme.ca_file),
        "privacy_mail": f"privacy@{relay.domain}",
        "privacy_postal": "Lab Relay Operator, 1 Test Street, Testtown",
        "tls_external_cert_and_key": "/etc/chatmail-tls/cert.pem /etc/chatmail-tls/key.pem",
    })  # fmt: skip
    deploy(lab, relay, "--ssh-host", relay.name)
    first = served(lab, relay, cafile)
    assert all("serial" in r for r in first.values()), first
    assert len(serials(first)) == 1, first
    assert all(r["issuer"] == "operator test CA" for r in first.values())
    assert ssh(lab, relay, "systemctl is-enabled acmetool.timer || true").strip() == "disabled"

    t0 = time.monotonic()
    install_files(lab, relay, *make_leaf(tmp_path, ca, relay.domain, "second"))
    second = wait_for_new_serial(lab, relay, cafile, serials(first), timeout=60)
    print(f"external certificate replaced: every port serves it after {time.monotonic() - t0:.1f}s")
    assert len(serials(second)) == 1, second


def test_migration_serves_the_same_acme_certificate_without_a_new_issuance(
    lab, relay1, relay2, root_file
):
    """The operator docs' move with an ACME certificate: a fresh lab host relay3 takes over
    relay1.lab. The docs' steps, but for the old host's ``--disable-mail`` run (step 4, which
    test_relay_deploy's migration test covers; here it is the certificate)."""
    lab.up(hosts=3)
    new_host = lab.host("relay3")
    user, sender = new_address(relay1), new_address(relay2)
    assert inbox_count(lab, relay1, user, wait=0, min_count=0) == 0  # creates the account
    send_encrypted(lab, relay2, sender, user)
    assert inbox_count(lab, relay1, user, wait=30) == 1
    before = served(lab, relay1, root_file)
    cert_ids = "ls /var/lib/acme/certs"
    old_ids = ssh(lab, relay1, cert_ids).split()
    dkim = "sha256sum /etc/dkimkeys/opendkim.private"
    old_dkim = ssh(lab, relay1, dkim).split()[0]
    issued = issued_count(lab)

    copy_paths(lab, relay1.name, new_host.name, "/var/lib/acme /etc/dkimkeys")
    lab.ssh_run(new_host.name, "chown root: -R /var/lib/acme /etc/dkimkeys")
    deploy(lab, relay1, "--disable-mail", "--ssh-host", new_host.name)
    repoint_zone(lab, relay1, new_host.ip)
    # The accounts' owner exists on the new host only after its first deploy.
    copy_paths(lab, relay1.name, new_host.name, "/home/vmail/mail")
    lab.ssh_run(new_host.name, "chown vmail: -R /home/vmail")
    deploy(lab, relay1, "--ssh-host", new_host.name)
    # The renewal service on the new host finds the copied certificate good as well.
    lab.ssh_run(new_host.name, "systemctl start acmetool.service")

    resolved = lab.client_ns_run(["getent", "hosts", relay1.domain]).stdout.split()[0]
    assert resolved == new_host.ip
    after = served(lab, relay1, root_file)
    assert serials(after) == serials(before), (before, after)
    assert issued_count(lab) == issued
    assert lab.ssh_run(new_host.name, cert_ids).stdout.split() == old_ids
    assert lab.ssh_run(new_host.name, dkim).stdout.split()[0] == old_dkim
    assert inbox_count(lab, relay1, user, wait=0) == 1
    # relay2 learns the new address once its cached record expires (restart = expiry), and
    # delivers there at its "verify" TLS level: the new host's certificate is the right one.
    lab.ssh_run(relay2.name, "systemctl restart unbound")
    send_encrypted(lab, relay2, sender, user)
    assert inbox_count(lab, relay1, user, wait=30, min_count=2) == 2
    first, second = relay1.deploy_seconds[-2:]
    print(f"migration: deploys on the new host {first:.0f}s and {second:.0f}s, no new certificate")
