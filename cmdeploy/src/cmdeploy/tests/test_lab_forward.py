"""Loopback forwards of a lab relay: ports, socat command lines, the dclogin link."""

from __future__ import annotations

import string
import urllib.parse

from cmdeploy.lab import forward


def test_each_host_and_service_gets_its_own_loopback_port():
    ports = {forward.local_port(i, s) for i in range(1, 5) for s in forward.PORTS}
    assert len(ports) == 4 * len(forward.PORTS)
    assert forward.local_port(1, "imap") == 20193
    assert all(1024 < p < 65536 for p in ports)


def test_socat_listens_on_loopback_only():
    argv = forward.socat_argv(2, "smtp", "10.77.0.12")
    assert argv[0] == "socat"
    assert "bind=127.0.0.1" in argv[1].split(",")
    assert argv[1].startswith("TCP4-LISTEN:20265,")
    assert argv[2].startswith("TCP4:10.77.0.12:465,")


def test_dclogin_link_names_the_forwards_and_keeps_every_password_character():
    password = string.punctuation + "Aa0"
    url = forward.dclogin_url("abc123def@_relay1.lab", password, 1)
    scheme, rest = url.split(":", 1)
    addr, query = rest.split("?", 1)
    assert scheme == "dclogin" and addr == "abc123def@_relay1.lab"
    assert "+" not in query  # a '+' could be read as a space
    q = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    assert q["p"] == password
    assert (q["ih"], q["ip"], q["is"]) == ("127.0.0.1", "20193", "ssl")
    assert (q["sh"], q["sp"], q["ss"]) == ("127.0.0.1", "20165", "ssl")
    assert q["ic"] == "3" and q["v"] == "1"
