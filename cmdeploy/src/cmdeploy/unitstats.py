"""CPU time and memory of each systemd service on a relay, read over SSH in one call.

Used by ``cmdeploy bench`` (where the CPU goes during a throughput run) and ``bench/soak.py``
(memory growth over time). Per unit: the cgroup's ``cpu.stat`` usage (which also counts
processes that already exited, like Postfix's short-lived smtpd), ``memory.current`` when the
memory controller is there (cgroup v2), and RSS/PSS summed over the unit's live processes.
"""

from __future__ import annotations

import json

from .remote import Remote

# Runs on the relay (its python3); prints {"units": {unit: {...}}, "processes": {...}} as JSON.
SAMPLER = r"""
import glob, json, os
units = {}
procs = {}
tick = os.sysconf("SC_CLK_TCK")
def unit_of(pid):
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            path = f.read().strip().split("::", 1)[-1]
    except OSError:
        return None
    parts = [p for p in path.split("/") if p.endswith((".service", ".scope"))]
    return parts[-1] if parts else None
# cgroup v2, or its unified part on a hybrid (v1) machine, where there is no memory.current.
# Template units (postfix@-.service) sit one level down, in their own slice.
dirs = []
for top in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
    dirs += glob.glob(top + "/system.slice/*.service")
    dirs += glob.glob(top + "/system.slice/*.slice/*.service")
for d in dirs:
    name = os.path.basename(d)
    rec = units.setdefault(name, {"rss_kb": 0, "pss_kb": 0, "procs": 0})
    try:
        with open(d + "/cpu.stat") as f:
            for line in f:
                k, v = line.split()
                if k == "usage_usec":
                    rec["cpu_usec"] = int(v)
    except OSError:
        pass
    try:
        with open(d + "/memory.current") as f:
            rec["memory_current"] = int(f.read())
    except OSError:
        pass
for pid in filter(str.isdigit, os.listdir("/proc")):
    name = unit_of(pid)
    if name is None:
        continue
    rec = units.setdefault(name, {"rss_kb": 0, "pss_kb": 0, "procs": 0})
    try:
        with open(f"/proc/{pid}/stat") as f:
            head, _, rest = f.read().rpartition(")")
        comm = head.split("(", 1)[1]
        fields = rest.split()
        key = name + " " + comm
        procs[key] = procs.get(key, 0) + (int(fields[11]) + int(fields[12])) / tick
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Rss:", "Pss:")):
                    key = "rss_kb" if line.startswith("Rss") else "pss_kb"
                    rec[key] += int(line.split()[1])
    except OSError:
        continue
    rec["procs"] += 1
print(json.dumps({"units": units, "processes": procs}))
"""

# Units summed under one name: Debian runs Postfix as postfix@-.service (plus postfix.service).
GROUPS = {
    "postfix": ("postfix",),
    "dovecot": ("dovecot",),
    "filtermail": ("filtermail",),
    "opendkim": ("opendkim",),
    "nginx": ("nginx",),
    "unbound": ("unbound",),
}


def sample(remote: Remote) -> dict[str, dict]:
    """Counters of the relay right now: ``units`` (unit name -> fields) and ``processes``
    ("unit comm" -> CPU seconds of the live processes with that name)."""
    proc = remote.run("python3 -c " + _quote(SAMPLER), timeout=60)
    return json.loads(proc.stdout)


def group_name(unit: str) -> str:
    """The component a unit belongs to: ``postfix@-.service`` -> ``postfix``."""
    base = unit.rsplit(".", 1)[0]
    for group, prefixes in GROUPS.items():
        if base.startswith(prefixes):
            return group
    return base


def grouped(units: dict[str, dict]) -> dict[str, dict]:
    """Sum the fields of units that belong to one component."""
    out: dict[str, dict] = {}
    for unit, rec in units.items():
        acc = out.setdefault(group_name(unit), {})
        for key, value in rec.items():
            acc[key] = acc.get(key, 0) + value
    return out


def cpu_seconds(before: dict[str, dict], after: dict[str, dict]) -> dict[str, float]:
    """CPU seconds each component used between two samples' ``units``, busiest first."""
    b, a = grouped(before), grouped(after)
    used = {
        name: (rec.get("cpu_usec", 0) - b.get(name, {}).get("cpu_usec", 0)) / 1e6
        for name, rec in a.items()
    }
    return dict(sorted(((k, v) for k, v in used.items() if v > 0), key=lambda kv: -kv[1]))


def process_cpu(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds per "unit comm" between two samples' ``processes``, busiest first.

    Only processes alive at the second sample count; the cgroup figure covers all."""
    used = {k: v - before.get(k, 0.0) for k, v in after.items()}
    return dict(sorted(((k, v) for k, v in used.items() if v > 0.005), key=lambda kv: -kv[1]))


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"
