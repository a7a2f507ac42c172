"""Killing a lab relay's components and timing their return, for the supervision and fault tests.

The relay runs ``DRIVER`` with the probes of ``cmdeploy status`` (installed by
:func:`install_probe`): it SIGKILLs one main process and polls until the component answers
again, so the time measured is the relay's, not the SSH round trips'.
"""

from __future__ import annotations

import json
import shlex

from cmdeploy import status

PROBE_MODULE = "/root/chatmail_status_probe.py"
POSTFIX_MASTER_PID = "/var/spool/postfix/pid/master.pid"

# component (as cmdeploy status names it) -> (unit whose main process dies, PID file or None)
TARGETS = {
    "postfix": ("postfix@-", POSTFIX_MASTER_PID),
    "dovecot": ("dovecot", None),
    "opendkim": ("opendkim", None),
    "nginx": ("nginx", None),
    "unbound": ("unbound", None),
    "doveauth": ("doveauth", None),
    "lastlogin": ("lastlogin", None),
    "chatmail-metadata": ("chatmail-metadata", None),
    "filtermail": ("filtermail", None),
    "filtermail-incoming": ("filtermail-incoming", None),
    "chatmail-mxtransport": ("chatmail-mxtransport", None),
    "chatmail-saslproxy": ("chatmail-saslproxy", None),
    # Socket-activated: the service behind fcgiwrap.socket is what crashes.
    "fcgiwrap": ("fcgiwrap.service", None),
    "mtail": ("chatmail-mtail", None),
    "echobot": ("echobot", None),
}

# Runs on the relay: kill one main process, then poll until the component answers again.
DRIVER = """
import json, os, signal, subprocess, sys, time
sys.path.insert(0, os.path.dirname(%(module)r))
import chatmail_status_probe as probe

spec = json.loads(sys.argv[1])

def main_pid():
    if spec["pidfile"]:
        try:
            return int(open(spec["pidfile"]).read().split()[0])
        except (OSError, ValueError, IndexError):
            return 0
    out = subprocess.run(["systemctl", "show", "-P", "MainPID", spec["kill_unit"]],
                         capture_output=True, text=True).stdout.strip()
    return int(out or 0)

def answering():
    if probe.unit_states([spec["unit"]])[spec["unit"]] != "active":
        return False
    return all(probe.run_check(c)[0] for c in spec["checks"])

deadline = time.monotonic() + 30
while not (answering() and main_pid()) and time.monotonic() < deadline:
    time.sleep(0.2)
before = main_pid()
if not before:
    print(json.dumps({"error": "not running before the kill"}))
    sys.exit(0)
# The Postfix master leads its own session: its children are the session's processes.
session = subprocess.run(["ps", "-o", "pid=", "-s", str(before)], capture_output=True,
                         text=True).stdout.split() if spec["pidfile"] else []
started = time.monotonic()
os.kill(before, signal.SIGKILL)
seconds = None
while time.monotonic() - started < spec["timeout"]:
    pid = main_pid()
    if pid and pid != before and answering():
        seconds = time.monotonic() - started
        break
    time.sleep(0.1)
left = [p for p in session if int(p) != before and os.path.exists("/proc/" + p)]
print(json.dumps({"before": before, "after": main_pid(), "seconds": seconds,
                  "children_left": left, "children_before": len(session)}))
"""


def install_probe(lab, relay) -> None:
    """Put the probes of ``cmdeploy status`` where ``DRIVER`` imports them from."""
    lab.ssh_run(relay.name, f"cat > {PROBE_MODULE}", input=status.PROBE_SOURCE.read_text())


def kill_and_wait(lab, relay, comp: status.Component, kill_unit: str, pidfile: str | None) -> dict:
    """SIGKILL ``kill_unit``'s main process (or the one in ``pidfile``) on ``relay``; the
    driver's JSON report (``seconds`` until ``comp`` answered again, or an ``error``)."""
    spec = {"unit": comp.unit, "checks": list(comp.checks), "kill_unit": kill_unit,
            "pidfile": pidfile, "timeout": 30}  # fmt: skip
    driver = DRIVER % {"module": PROBE_MODULE}
    out = lab.ssh_run(
        relay.name, f"python3 - {shlex.quote(json.dumps(spec))}", input=driver, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
