"""The mtail unit's own command line counts journal lines it gets through its pipe.

The unit's ExecStart runs here with journalctl replaced by a short writer of journal lines
and mtail listening on a free loopback port; the counters are read from its /metrics.
(mtail 3.0.0~rc50 reads ``--logs -`` as a file named "-" and counted nothing on the lab
relays; test_mtail.py in chatmaild feeds mtail a file, which never showed that.)
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from importlib.resources import files as package_files

import pytest
from chatmaild.config import parse_config, render_initial_config

from cmdeploy.deployer_base import DeployOptions
from cmdeploy.mtail.deployer import MtailDeployer

JOURNAL_CMD = "journalctl -f -o short-iso -n 0"
LINES = [
    "2026-11-25T13:00:00+0000 relay1 chatmail-mxtransport[4242]: "
    "Delivered via HTTPS to relay2.example.org: 1 recipients",
    "2026-11-25T13:00:01+0000 relay1 chatmail-mxtransport[4242]: "
    "Delivered via HTTPS to relay2.example.org: 2 recipients",
    "2026-11-25T13:00:02+0000 relay1 doveauth[77]: Created address: abc@chat.example.org",
]

pytestmark = pytest.mark.skipif(not shutil.which("mtail"), reason="mtail is not installed")


def exec_start() -> str:
    config = parse_config(render_initial_config("chat.example.org", {"mtail_address": "127.0.0.1"}))
    unit = MtailDeployer(config, DeployOptions()).render("chatmail-mtail.service.j2")
    (line,) = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    # systemd turns "$$" into "$" (systemd.service, "Command lines").
    argv = shlex.split(line.removeprefix("ExecStart=").replace("$$", "$"))
    assert argv[:2] == ["/bin/sh", "-c"]
    return argv[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r"^(\w+)\{[^}]*\} (\S+)$", text, re.M)}


def test_unit_command_counts_lines_from_its_pipe_and_ends_with_journalctl(tmp_path):
    progs = tmp_path / "progs"
    progs.mkdir()
    (progs / "chatmail.mtail").write_text(
        package_files("chatmaild").joinpath("chatmail.mtail").read_text()
    )
    (tmp_path / "lines").write_text("".join(line + "\n" for line in LINES))
    port = free_port()
    cmd = exec_start()
    assert JOURNAL_CMD in cmd and "--port=3903 " in cmd and "--progs /etc/mtail " in cmd
    # The writer stays a few seconds, as journalctl -f would, then ends as a dead journalctl.
    cmd = (cmd.replace(JOURNAL_CMD, f"cat {tmp_path}/lines; sleep 4")
              .replace("--port=3903 ", f"--port={port} ")
              .replace("--progs /etc/mtail ", f"--progs {progs} "))  # fmt: skip
    # Run from tmp_path: a file "-" there must not matter (the old "--logs -" read it).
    proc = subprocess.Popen(["/bin/sh", "-c", cmd], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline, found = time.monotonic() + 20, {}
        while time.monotonic() < deadline:
            try:
                found = metrics(port)
            except OSError:
                found = {}
            if found.get("outgoing_https_delivery_count") == 2:
                break
            time.sleep(0.2)
        assert found.get("outgoing_https_delivery_count") == 2, found
        assert found.get("created_accounts") == 1
        assert found.get("outgoing_smtp_delivery_count") == 0
        # journalctl's end ends the shell, systemd's main process, so Restart= applies.
        assert proc.wait(timeout=20) != 0
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
