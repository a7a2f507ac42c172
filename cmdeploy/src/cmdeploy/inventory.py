"""Many relays in one command: ``cmdeploy --config a.ini --config b.ini run|status|dns``.

Each relay's command runs as its own ``cmdeploy`` process, all in parallel; their output
lines are prefixed with the relay's domain, and a summary names each relay's result. The
exit status is 0 only when every relay's command succeeded. ``{domain}`` in an argument is
replaced by each relay's domain (``dns --zonefile {domain}.zone``).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from chatmaild.config import ConfigError, read_config

# Subcommands that work over an inventory; the others act on one relay.
FAN_OUT = ("run", "status", "dns")


@dataclass
class Outcome:
    domain: str
    returncode: int
    seconds: float


def strip_configs(argv: list[str]) -> list[str]:
    """``argv`` without its ``--config`` options (each relay gets its own)."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--config":
            skip = True
        elif not arg.startswith("--config="):
            rest.append(arg)
    return rest


def domains(configs: list[Path]) -> list[str]:
    """The mail domain of each ini; a broken or repeated one is an error before anything runs."""
    seen = []
    for path in configs:
        try:
            domain = read_config(path).mail_domain
        except ConfigError as e:
            raise SystemExit(f"{path}: {e}") from None
        if domain in seen:
            raise SystemExit(f"{path}: {domain} is already in the inventory")
        seen.append(domain)
    return seen


def _pump(stream, prefix: str, out, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            out.write(f"{prefix} {line}")
            out.flush()


def fan_out(configs: list[Path], argv: list[str], command: str) -> int:
    """Run ``cmdeploy <argv>`` once per ini in ``configs``, in parallel; print a summary."""
    names = domains(configs)
    rest = strip_configs(argv)
    if "--ssh-host" in rest or any(a.startswith("--ssh-host=") for a in rest):
        raise SystemExit("--ssh-host names one host; it cannot apply to several relays")
    zonefiles = [b for a, b in zip(rest, rest[1:], strict=False) if a == "--zonefile"]
    zonefiles += [a.split("=", 1)[1] for a in rest if a.startswith("--zonefile=")]
    if any("{domain}" not in z for z in zonefiles):
        raise SystemExit(
            "with several relays, --zonefile must contain {domain}, e.g. {domain}.zone"
        )
    width = max(len(n) for n in names)
    lock = threading.Lock()
    started = time.monotonic()
    procs = []
    for path, name in zip(configs, names, strict=True):
        own = [arg.replace("{domain}", name) for arg in rest]
        cmd = [sys.executable, "-m", "cmdeploy.cli", "--config", str(path), *own]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        prefix = f"[{name:<{width}}]"
        pumps = [
            threading.Thread(target=_pump, args=(proc.stdout, prefix, sys.stdout, lock)),
            threading.Thread(target=_pump, args=(proc.stderr, prefix, sys.stderr, lock)),
        ]
        for t in pumps:
            t.start()
        procs.append((name, proc, pumps))
    outcomes = []
    for name, proc, pumps in procs:
        code = proc.wait()
        for t in pumps:
            t.join()
        outcomes.append(Outcome(name, code, time.monotonic() - started))
    print(summary(command, outcomes))
    return 0 if all(o.returncode == 0 for o in outcomes) else 1


def summary(command: str, outcomes: list[Outcome]) -> str:
    """One line per relay: ok or the exit status, and when it finished."""
    lines = [f"cmdeploy {command} over {len(outcomes)} relays:"]
    for o in outcomes:
        result = "ok" if o.returncode == 0 else f"FAILED (exit {o.returncode})"
        lines.append(f"  {o.domain}: {result} after {o.seconds:.0f}s")
    return "\n".join(lines)
