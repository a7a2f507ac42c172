"""``cmdeploy status`` probes chatmail-mxtransport as Postfix talks to it: LMTP greeting, LHLO.

The real transport runs here (``python -m chatmaild.mxtransport``) on a free loopback port.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

from chatmaild.config import parse_config, render_initial_config

from cmdeploy import status, status_probe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lmtp_check(port: int) -> dict:
    return {"kind": "lmtp", "host": "127.0.0.1", "port": port}


def test_status_probes_the_transport_port_with_lmtp():
    config = parse_config(
        render_initial_config("chat.example.org", {"mxdeliv_transport_port": "11083"})
    )
    (comp,) = [c for c in status.components(config) if c.name == "chatmail-mxtransport"]
    assert comp.unit == "chatmail-mxtransport"
    assert [(ch["kind"], ch["port"]) for ch in comp.checks] == [("lmtp", 11083)]


def test_lmtp_probe_against_the_real_transport(tmp_path):
    port = free_port()
    ini = tmp_path / "chatmail.ini"
    ini.write_text(
        f"[params]\nmail_domain = here.test\nmailboxes_dir = {tmp_path}\n"
        f"mxdeliv_transport_port = {port}\n"
    )
    proc = subprocess.Popen([sys.executable, "-m", "chatmaild.mxtransport", str(ini)],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            ok, seen = status_probe.run_check(lmtp_check(port))
            if ok or time.monotonic() > deadline or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert ok, seen
        assert seen.startswith("LHLO: 250 "), seen
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def one_session(replies: list[bytes]) -> int:
    """A server that greets, then answers each line it reads with the next reply."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def run():
        conn, _ = srv.accept()
        with conn:
            conn.sendall(replies[0])
            for reply in replies[1:]:
                if not conn.recv(4096):
                    break
                conn.sendall(reply)
        srv.close()

    threading.Thread(target=run, daemon=True).start()
    return srv.getsockname()[1]


def test_lmtp_probe_wants_250_to_lhlo_after_the_greeting():
    port = one_session([b"220 x ESMTP\r\n", b"502 5.5.2 Error: command not recognized\r\n"])
    assert status_probe.run_check(lmtp_check(port)) == (
        False, "LHLO: 502 5.5.2 Error: command not recognized"
    )  # fmt: skip
    port = one_session([b"220 x LMTP\r\n", b"250-x\r\n250-PIPELINING\r\n250 8BITMIME\r\n"])
    assert status_probe.run_check(lmtp_check(port)) == (True, "LHLO: 250 8BITMIME")
    port = one_session([b"421 4.3.2 busy\r\n"])
    assert status_probe.run_check(lmtp_check(port)) == (False, "421 4.3.2 busy")
