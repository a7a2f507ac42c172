"""``cmdeploy run``'s port check with real listeners on this machine (``ss`` as on a relay).

A process is named as the kernel names it: a console script (``#!`` line) by its file name
cut to 15 characters, which is how chatmail-mxtransport shows in ``ss -p`` on a relay.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from chatmaild.config import parse_config, render_initial_config

from cmdeploy.cmd_run import port_conflicts
from cmdeploy.remote import Remote

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ss -p and @local need root")

LISTENER = """import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("ready", flush=True)
time.sleep(60)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listen_as(tmp_path, name: str, port: int) -> subprocess.Popen:
    """A listener on 127.0.0.1:port whose process name is that of a script called ``name``."""
    script = tmp_path / name
    script.write_text(f"#!{sys.executable}\n{LISTENER}")
    script.chmod(0o755)
    proc = subprocess.Popen([str(script), str(port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def problems_of(port: int) -> list[str]:
    config = parse_config(
        render_initial_config("chat.example.org", {"mxdeliv_transport_port": str(port)})
    )
    return [p for p in port_conflicts(Remote("@local"), config) if p.startswith(f"port {port} ")]


@pytest.mark.parametrize(
    ("name", "conflict"), [("chatmail-mxtransport", False), ("other-daemon", True)]
)
def test_the_transport_port_may_be_held_only_by_chatmail_mxtransport(tmp_path, name, conflict):
    port = free_port()
    proc = listen_as(tmp_path, name, port)
    try:
        problems = problems_of(port)
    finally:
        proc.kill()
        proc.wait()
    if conflict:
        assert problems == [f"port {port} is used by other-daemon (expected chatmail-mxtran)"]
    else:
        assert problems == []
