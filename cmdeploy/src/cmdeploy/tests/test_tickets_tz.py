"""No TLS 1.3 session tickets on Postfix's implicit-TLS services; TZ for Dovecot's processes.

The lab checks both on a deployed relay (online test_1_implicit_tls.py, lab
test_relay_dovecot.py); these check the rendered files and OpenSSL's reading of ours.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from cmdeploy.deployer_base import DeployOptions
from cmdeploy.dovecot.deployer import DovecotDeployer
from cmdeploy.postfix.deployer import OPENSSL_CONF, PostfixDeployer
from cmdeploy.tests.test_supervision import config_with, effective
from cmdeploy.tests.test_templates import doveconf_n, need

# A TLS 1.3 server (Python's ssl, this machine's OpenSSL) and a client on loopback; prints
# whether the client got a session ticket before the server's first bytes.
TICKET_PROBE = textwrap.dedent("""
    import socket, ssl, sys, threading
    srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv.load_cert_chain(sys.argv[1], sys.argv[2])
    listener = socket.create_server(("127.0.0.1", 0))
    def serve():
        conn, _ = listener.accept()
        with srv.wrap_socket(conn, server_side=True) as s:
            s.sendall(b"220 x\\r\\n")
            s.recv(1)
    threading.Thread(target=serve, daemon=True).start()
    cli = ssl._create_unverified_context()
    with cli.wrap_socket(socket.create_connection(listener.getsockname())) as s:
        s.recv(100)
        print(s.version(), s.session.has_ticket)
""")


def postfix_files(tmp_path):
    p = PostfixDeployer(config_with(), DeployOptions())
    (tmp_path / "main.cf").write_text(p.render("main.cf.j2"))
    (tmp_path / "master.cf").write_text(p.render("master.cf.j2"))
    return tmp_path


def test_only_the_implicit_tls_services_turn_tickets_off(tmp_path):
    need("postconf")
    out = subprocess.run(["postconf", "-c", postfix_files(tmp_path), "-P"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    no_ticket = sorted(line.split("/")[0] for line in out.splitlines()
                       if line.endswith("/tls_ssl_options = NO_TICKET"))  # fmt: skip
    assert no_ticket == ["127.0.0.1:8465", "smtps"]
    assert "tls_ssl_options" not in (tmp_path / "main.cf").read_text()


def test_postfix_passes_openssl_conf_and_its_defaults(tmp_path):
    need("postconf")
    conf = postfix_files(tmp_path)
    ours = subprocess.run(["postconf", "-c", conf, "-h", "import_environment"],
                          capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    default = subprocess.run(["postconf", "-c", conf, "-d", "-h", "import_environment"],
                             capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert ours == default + [f"OPENSSL_CONF={OPENSSL_CONF}"]


def test_openssl_conf_stops_tls13_tickets(tmp_path):
    need("openssl")
    key, crt = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-noenc", "-days", "2", "-subj", "/CN=x", "-keyout", key, "-out", crt],
        check=True, capture_output=True,
    )  # fmt: skip

    def probe(env: dict) -> str:
        argv = [sys.executable, "-c", TICKET_PROBE, str(crt), str(key)]
        return subprocess.run(argv, env=env, capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()  # fmt: skip

    env = {k: v for k, v in os.environ.items() if k != "OPENSSL_CONF"}
    cnf = PostfixDeployer.templates / "openssl.cnf"
    assert probe(env) == "TLSv1.3 True"  # OpenSSL's default: tickets
    assert probe({**env, "OPENSSL_CONF": str(cnf)}) == "TLSv1.3 False"


def test_dovecot_children_get_tz(tmp_path):
    out = doveconf_n(config_with(), tmp_path)
    assert out.returncode == 0, out.stderr
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("import_environment")]
    default = subprocess.run(["doveconf", "-d", "-h", "import_environment"],
                             capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    # Dovecot's default list, with TZ given its value.
    assert line.split("=", 1)[1].split() == [
        "TZ=:/etc/localtime" if e == "TZ" else e for e in default
    ]


def test_dovecot_dropin_sets_tz():
    text = DovecotDeployer(config_with(), DeployOptions()).render("supervise.conf")
    env = [e for v in effective(text, "Service", "Environment") for e in v.split()]
    assert "TZ=:/etc/localtime" in env
