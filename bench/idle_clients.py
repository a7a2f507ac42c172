"""Hold many IMAP IDLE clients on one lab relay: memory, connect rate, delivery latency.

Deploys (or reuses) the lab relay relay1, then runs ``python -m cmdeploy.idleclients hold``
in the lab client namespace: ``--clients`` TLS connections of as many new accounts (created
on login), each in IDLE on INBOX; with all of them held, a message to ``--sample`` of them
is timed from the 250 after DATA to ``* N EXISTS``. Meanwhile this script samples the relay
host's memory from this machine: the PSS of every process in the host's cgroup (the lab
machine has no memory controller for the hosts, so there is no cgroup memory.current), by
process name. Prints a table: before, when all are held, after the latency sample, after
``--hold`` s (hibernation, idle imap processes' exit), and the per-connection figure.

Not part of CI. Needs root and the lab; hold the lab lock and tear the lab down after:

    flock /tmp/chatmail-lab.lock bash -c \\
        'venv/bin/python bench/idle_clients.py --clients 10000; venv/bin/cmdeploy lab down'
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cmdeploy.lab.host import cgroup_pids
from cmdeploy.lab.lab import Lab
from cmdeploy.lab.relay import deployed_relay, lab_relay
from cmdeploy.lab.stock import bench_password

from cmdeploy import loadgen

# Processes shown on their own; the rest of the host is summed as "other".
SHOWN = ("imap", "imap-login", "imap-hibernate", "dovecot", "auth", "anvil", "doveauth")


def host_memory(machine: str) -> dict[str, list[int]]:
    """{process name: [processes, PSS kB]} over every process of the lab host, read here."""
    out: dict[str, list[int]] = {}
    for pid in cgroup_pids(machine):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue  # exited meanwhile
        pss = next((int(line.split()[1]) for line in rollup.splitlines()
                    if line.startswith("Pss:")), 0)  # fmt: skip
        rec = out.setdefault(comm, [0, 0])
        rec[0] += 1
        rec[1] += pss
    return out


def total_mib(mem: dict[str, list[int]]) -> float:
    return sum(pss for _, pss in mem.values()) / 1024


def memory_rows(samples: list[tuple[str, dict[str, list[int]]]]) -> list[str]:
    """One column per sample: MiB (and process count) per shown process name, then total."""
    head = f"{'relay host PSS (MiB)':22}" + "".join(f" {label:>16}" for label, _ in samples)
    lines = [head]
    for name in (*SHOWN, "other"):
        cells = []
        for _, mem in samples:
            if name == "other":
                procs = sum(n for k, (n, _) in mem.items() if k not in SHOWN)
                kb = sum(p for k, (_, p) in mem.items() if k not in SHOWN)
            else:
                procs, kb = mem.get(name, [0, 0])
            cells.append(f"{kb / 1024:9.1f} ({procs:4})")
        lines.append(f"{name:22}" + "".join(f" {c:>16}" for c in cells))
    lines.append(f"{'total':22}" + "".join(f" {total_mib(m):16.1f}" for _, m in samples))
    return lines


def per_connection_kib(base: dict, held: dict, clients: int) -> float:
    """Memory the held clients added, per client (KiB)."""
    return (total_mib(held) - total_mib(base)) * 1024 / max(clients, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=40, help="connections opened at once")
    p.add_argument("--sample", type=int, default=20, help="held clients a message is timed to")
    p.add_argument("--hold", type=float, default=60.0, help="seconds to hold after the sample")
    p.add_argument("--deadline", type=float, default=900.0, help="the generator gives up then")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between memory samples")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/chatmail-idle"))
    p.add_argument("--no-deploy", action="store_true",
                   help="use the relay1 already deployed from WORKDIR/relay1/chatmail.ini")  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra chatmail.ini setting for the deploy")  # fmt: skip
    args = p.parse_args(argv)

    lab = Lab()
    if args.no_deploy:
        relay = deployed_relay(lab, "relay1", args.workdir.resolve())
    else:
        # Every account comes from the client namespace's one IP, under this machine's load.
        overrides = {"max_new_accounts_per_ip_burst": args.clients + 1000, "max_load_1m": 1000,
                     **dict(item.split("=", 1) for item in args.set)}  # fmt: skip
        t = time.monotonic()
        relay = lab_relay(lab, "relay1", args.workdir.resolve(), overrides)
        print(f"deployed {relay.domain} in {time.monotonic() - t:.0f} s", flush=True)
    machine = lab.host("relay1").machine
    password = bench_password(relay.workdir / "bench-password")
    accounts = loadgen.accounts(relay.domain, args.clients, prefix="ic", password=password)
    senders = loadgen.accounts(relay.domain, -(-args.sample // 9), prefix="is", password=password)
    created = loadgen.run_in_lab(lab, "create", {"host": relay.domain, "recipients": senders})
    if created["errors"]:
        print("sender creation failed:", created["errors"][:3], file=sys.stderr)
        return 1

    samples = [("before", host_memory(machine))]
    timeline: list[tuple[float, float]] = []
    done = threading.Event()

    def sample_periodically(t0: float) -> None:
        while not done.wait(args.interval):
            timeline.append((time.monotonic() - t0, total_mib(host_memory(machine))))

    spec = {"host": relay.domain, "accounts": accounts, "senders": senders,
            "concurrency": args.concurrency, "sample": args.sample, "hold": args.hold,
            "deadline": args.deadline}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="idleclients-") as tmp:
        spec_path, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(loadgen.jsonable(spec)))
        argv = lab.client_ns_cmd([sys.executable, "-m", "cmdeploy.idleclients", "hold",
                                  str(spec_path), str(out)])  # fmt: skip
        t0 = time.monotonic()
        sampler = threading.Thread(target=sample_periodically, args=(t0,), daemon=True)
        sampler.start()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        try:
            for line in proc.stdout:
                record = json.loads(line)
                name = record.pop("phase")
                print(f"  {time.monotonic() - t0:6.1f} s  {name}: {record}", flush=True)
                if name in ("held", "sampled", "releasing"):
                    label = "after hold" if name == "releasing" else name
                    samples.append((label, host_memory(machine)))
            proc.wait(timeout=args.deadline + 120)
        finally:
            done.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            print(f"generator failed ({proc.returncode})", file=sys.stderr)
            return 1
        result = json.loads(out.read_text())
    samples.append(("released", host_memory(machine)))

    held = result.get("held", 0)
    print("\nidle clients results")
    print(f"clients: {held} of {result['requested']} held, {result['errors']} failed "
          f"({result['first_errors'][:2]}); dropped while held: "
          f"{result.get('dropped_while_held')}, by the end of the hold: "
          f"{result.get('dropped_at_end')}")  # fmt: skip
    print(f"connect+login+SELECT+IDLE: {result['connect_per_s']}/s "
          f"({result['connect_seconds']} s, {args.concurrency} at once)")  # fmt: skip
    print(
        f"SMTP 250 -> EXISTS to {args.sample} held clients (ms): {result['latency_ms']}"
        + (f"; failures: {result['latency_failures']}" if result["latency_failures"] else "")
    )
    print("\n".join(memory_rows(samples)))
    by = dict(samples)
    for label in ("held", "sampled", "after hold"):
        if label in by:
            print(f"per connection ({label}): "
                  f"{per_connection_kib(by['before'], by[label], held):.0f} KiB")  # fmt: skip
    print("relay host PSS over time (s: MiB): " + " ".join(f"{t:.0f}:{m:.0f}" for t, m in timeline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
