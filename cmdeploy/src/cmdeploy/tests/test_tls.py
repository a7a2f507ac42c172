"""TLS settings: the ACME server and extra CAs, the acmetool files, and the lab's pebble."""

from __future__ import annotations

import json
import subprocess

import pytest
from chatmaild.config import LETSENCRYPT_DIRECTORY, parse_config, read_config, render_initial_config

from cmdeploy.deployer_base import DeployError, DeployOptions
from cmdeploy.dnsrecords import records
from cmdeploy.lab import acme
from cmdeploy.tests.test_dnsrecords import facts
from cmdeploy.tls.deployer import (
    LETSENCRYPT_TERMS,
    TLSDeployer,
    acme_names,
    ca_file_path,
    terms_of_service,
    trusted_pems,
)


def pem(tmp_path, name: str) -> str:
    crt = tmp_path / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-noenc", "-days", "2", "-subj", f"/CN={name}",
                    "-keyout", str(tmp_path / f"{name}.key"), "-out", str(crt)],
                   check=True, capture_output=True)  # fmt: skip
    return crt.read_text()


def test_defaults_are_lets_encrypt_and_the_system_cas():
    config = parse_config(render_initial_config("chat.example.org"))
    assert config.tls_cert_mode == "acme"
    assert config.acme_directory_url == LETSENCRYPT_DIRECTORY
    assert config.acme_ca_file == ""
    assert trusted_pems(config) == []
    # Let's Encrypt's terms are known: a deploy does not ask the network for them.
    assert terms_of_service(config) == LETSENCRYPT_TERMS


def test_the_directory_url_must_be_a_url():
    with pytest.raises(ValueError, match="acme_directory_url"):
        parse_config(render_initial_config("chat.example.org", {"acme_directory_url": "pebble"}))


def test_acme_files_name_the_configured_server(tmp_path):
    config = parse_config(render_initial_config(
        "chat.example.org", {"acme_directory_url": "https://10.77.0.1:14000/dir"}))  # fmt: skip
    d = TLSDeployer(config, DeployOptions())
    assert "  provider: https://10.77.0.1:14000/dir\n" in d.render("acme-target.j2")
    responses = d.render("acme-responses.j2", terms_url="data:text/plain,ok")
    assert '"acme-agreement:data:text/plain,ok": true' in responses
    assert acme_names(config) == ["chat.example.org", "www.chat.example.org",
                                  "mta-sts.chat.example.org"]  # fmt: skip
    hook = d.render("acme-reload-hook.j2")
    assert "live-updated" in hook and "nginx dovecot postfix" in hook


def test_ca_file_is_relative_to_the_ini_and_split_into_certificates(tmp_path):
    bundle = tmp_path / "cas.pem"
    bundle.write_text("junk before\n" + pem(tmp_path, "one") + pem(tmp_path, "two"))
    ini = tmp_path / "chatmail.ini"
    ini.write_text(render_initial_config("chat.example.org", {"acme_ca_file": "cas.pem"}))
    config = read_config(ini)
    assert ca_file_path(config) == bundle
    pems = trusted_pems(config)
    assert len(pems) == 2
    assert all(p.startswith("-----BEGIN CERTIFICATE-----") for p in pems)
    assert all(p.endswith("-----END CERTIFICATE-----\n") for p in pems)


def test_a_missing_or_empty_ca_file_stops_the_deploy(tmp_path):
    ini = tmp_path / "chatmail.ini"
    ini.write_text(render_initial_config("chat.example.org", {"acme_ca_file": "absent.pem"}))
    with pytest.raises(DeployError, match="cannot read"):
        trusted_pems(read_config(ini))
    (tmp_path / "absent.pem").write_text("no certificate here\n")
    with pytest.raises(DeployError, match="no PEM certificate"):
        trusted_pems(read_config(ini))


def test_caa_record_only_for_lets_encrypt():
    le = parse_config(render_initial_config("chat.example.org"))
    assert "CAA" in {r.rtype for r in records(le, facts())}
    other = parse_config(render_initial_config(
        "chat.example.org", {"acme_directory_url": "https://ca.example/dir"}))  # fmt: skip
    assert "CAA" not in {r.rtype for r in records(other, facts())}
    # MTA-STS is needed with any ACME server.
    assert "_mta-sts.chat.example.org." in {r.name for r in records(other, facts())}


def test_pebble_validates_on_the_standard_ports_through_the_lab_dns(tmp_path):
    argv = acme.pebble_argv(tmp_path, "10.77.0.1")
    assert argv[:2] == ["env", "-i"]  # none of this machine's proxy settings
    assert argv[-2:] == ["-dnsserver", "10.77.0.1:53"]
    conf = json.loads((tmp_path / "pebble.json").read_text())["pebble"]
    assert (conf["httpPort"], conf["tlsPort"]) == (80, 443)
    assert conf["listenAddress"] == "10.77.0.1:14000"
    assert conf["certificateValidityPeriod"] == acme.VALIDITY_SECONDS
    assert acme.directory_url("10.77.0.1") == "https://10.77.0.1:14000/dir"


def test_pebble_api_certificate_names_the_bridge_address(tmp_path):
    acme.make_api_cert(tmp_path, "10.77.0.1")
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", tmp_path / "api-ca.pem", "-verify_ip", "10.77.0.1",
         tmp_path / "api.pem"], capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr + out.stdout


def test_status_shows_ports_that_serve_another_certificate():
    from cmdeploy.status import served_lines

    cert = "Dec  8 16:00:00 2026 GMT"
    text = served_lines(cert, {443: cert, 993: cert, 143: "Dec  1 16:00:00 2026 GMT",
                               25: "not served (timed out)"})  # fmt: skip
    assert text.splitlines() == [
        "  served on ports 443, 993",
        "  port 143 serves a certificate expiring Dec  1 16:00:00 2026 GMT",
        "  port 25: not served (timed out)",
    ]


def test_status_probe_reads_the_served_certificate_after_imap_starttls(tmp_path):
    import socket
    import ssl
    import threading

    from cmdeploy import status_probe

    pem(tmp_path, "srv")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "srv.pem", tmp_path / "srv.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        conn.sendall(b"* OK ready\r\n")
        conn.recv(100)
        conn.sendall(b"s OK begin TLS\r\n")
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    threading.Thread(target=serve, daemon=True).start()
    got = status_probe.served_cert_expiry(port, "imap", "srv")
    listener.close()
    want = subprocess.run(["openssl", "x509", "-enddate", "-noout", "-in", tmp_path / "srv.pem"],
                          capture_output=True, text=True).stdout.strip().partition("=")[2]  # fmt: skip
    assert got == want and got
