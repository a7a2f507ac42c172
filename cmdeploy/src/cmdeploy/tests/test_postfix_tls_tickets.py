"""Postfix's OpenSSL config: a TLS 1.3 handshake under it gives the client no session ticket
(the ticket, unacknowledged, made Nagle hold the 465 greeting ~42 ms; postfix/openssl.conf)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cmdeploy.postfix.deployer import PostfixDeployer

OPENSSL_CONF = Path(PostfixDeployer.templates) / "openssl.conf"

HANDSHAKE = """
import socket, ssl, sys, threading
cert, key = sys.argv[1], sys.argv[2]
server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server.load_cert_chain(cert, key)
client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
client.check_hostname = False
client.verify_mode = ssl.CERT_NONE
a, b = socket.socketpair()
def serve():
    s = server.wrap_socket(a, server_side=True)
    s.sendall(b"220 greeting\\r\\n")
    s.recv(1)
t = threading.Thread(target=serve)
t.start()
c = client.wrap_socket(b)
assert c.recv(100) == b"220 greeting\\r\\n"
print(c.version(), c.session.has_ticket)
c.sendall(b"x")
t.join()
"""


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("cert")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(crt),
                    "-subj", "/CN=relay", "-days", "1"], check=True, capture_output=True)  # fmt: skip
    return str(crt), str(key)


def handshake(cert, conf: Path | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OPENSSL_CONF"}
    if conf is not None:
        env["OPENSSL_CONF"] = str(conf)
    out = subprocess.run([sys.executable, "-c", HANDSHAKE, *cert], env=env, check=True,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    return out.stdout.strip()


def test_postfix_openssl_config_sends_no_tls13_tickets(cert):
    assert handshake(cert, OPENSSL_CONF) == "TLSv1.3 False"


def test_without_it_openssl_sends_tickets(cert):
    # The contrast: OpenSSL's default, what Postfix did before.
    assert handshake(cert, None) == "TLSv1.3 True"
