"""Soak a lab relay: steady encrypted load at a fraction of its capacity, memory sampled.

Deploys (or reuses) the lab relay relay1 with rate-limit-exempt bench senders, measures its
capacity with a short burst, then sends at ``--fraction`` of it for ``--minutes`` while the
memory of every service (PSS and RSS summed over its processes, and the cgroup's
``memory.current`` where present) is sampled every ``--interval`` seconds. Prints a table of
start, peak and end per component, and whether every accepted message was delivered.

Not part of CI. Needs root and the lab; hold the lab lock and tear the lab down after:

    flock /tmp/chatmail-lab.lock bash -c \\
        'venv/bin/python bench/soak.py --minutes 15; venv/bin/cmdeploy lab down'
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from chatmaild.config import read_config
from cmdeploy.lab.lab import Lab
from cmdeploy.lab.relay import LabRelay, lab_relay
from cmdeploy.lab.stock import bench_password
from cmdeploy.remote import Remote

from cmdeploy import loadgen, unitstats

SENDERS = 16
RECIPIENTS = 32
# Components shown first; any other unit of the relay follows.
ORDER = ["postfix", "dovecot", "opendkim", "nginx", "unbound", "filtermail", "doveauth"]


def _mib(kb_or_bytes: float, unit: str) -> float:
    return kb_or_bytes / 1024 if unit == "kb" else kb_or_bytes / 2**20


def memory_table(samples: list[tuple[float, dict]]) -> list[str]:
    """Start, middle, peak and end (MiB) per component over the samples, with growth; and
    the whole series for components that grew, to tell a plateau from a leak."""
    per: dict[str, list[dict]] = {}
    for _, units in samples:
        for name, rec in unitstats.grouped(units).items():
            per.setdefault(name, []).append(rec)
    names = [n for n in ORDER if n in per]
    names += sorted(n for n in per if n not in names and per[n][-1].get("procs"))
    lines = [
        f"{'component (MiB)':22} {'PSS start':>9} {'middle':>7} {'peak':>7} {'end':>7} "
        f"{'growth':>7}  {'RSS end':>7} {'procs':>5}  {'cgroup start':>12} {'peak':>7} {'end':>7}"
    ]
    series = []
    for name in names:
        recs = per[name]
        pss = [_mib(r.get("pss_kb", 0), "kb") for r in recs]
        cg = [_mib(r["memory_current"], "b") for r in recs if "memory_current" in r]
        cg_text = f"{cg[0]:12.1f} {max(cg):7.1f} {cg[-1]:7.1f}" if cg else f"{'-':>12}"
        lines.append(
            f"{name:22} {pss[0]:9.1f} {pss[len(pss) // 2]:7.1f} {max(pss):7.1f} {pss[-1]:7.1f} "
            f"{pss[-1] - pss[0]:+7.1f}  {_mib(recs[-1].get('rss_kb', 0), 'kb'):7.1f} "
            f"{recs[-1].get('procs', 0):5}  " + cg_text
        )
        if pss[-1] - pss[0] > 5:
            series.append(f"  {name}: " + " ".join(f"{v:.0f}" for v in pss))
    if series:
        lines += ["PSS series (MiB, one value per sample) of components that grew:", *series]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--fraction", type=float, default=0.5, help="of the measured capacity")
    p.add_argument("--rate", type=float, help="msg/s to send instead of a fraction of capacity")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/chatmail-soak"))
    p.add_argument("--no-deploy", action="store_true",
                   help="use the relay1 already deployed from WORKDIR/relay1/chatmail.ini")  # fmt: skip
    args = p.parse_args(argv)

    lab = Lab()
    domain = "_relay1.lab"
    senders = [f"benchs{i:03d}@{domain}" for i in range(SENDERS)]
    if args.no_deploy:
        # A relay1 deployed before (e.g. by the bench) with these senders exempt.
        h = lab.host("relay1")
        relay = LabRelay(h.name, h.domain, h.ip, args.workdir.resolve() / h.name)
        exempt = read_config(relay.ini).rate_limit_exempt
        assert set(senders) <= exempt, f"{relay.ini}: rate_limit_exempt lacks {senders[0]}..."
    else:
        relay = lab_relay(lab, "relay1", args.workdir.resolve(),
                          {"rate_limit_exempt": " ".join(senders), "max_load_1m": 1000})  # fmt: skip
    password = bench_password(relay.workdir / "bench-password")
    remote = Remote(relay.name, ssh_config=lab.ssh_config)
    send_accts = [loadgen.Account(a, password) for a in senders]
    rcpts = loadgen.accounts(domain, RECIPIENTS, prefix="sk", password=password)
    created = loadgen.run_in_lab(lab, "create", {"host": domain, "recipients": send_accts + rcpts})
    if created["errors"]:
        print("account creation failed:", created["errors"][:3], file=sys.stderr)
        return 1

    rate = args.rate
    if rate is None:
        burst = loadgen.run_in_lab(lab, "send", dict(host=domain, senders=send_accts,
                                   recipients=rcpts, duration=6, concurrency=8,
                                   reuse_sessions=False, retry_for=10.0))  # fmt: skip
        capacity = loadgen.LoadResult.from_dict(burst).submitted_per_s
        rate = capacity * args.fraction
        # Measured the way the soak sends (a new session per message), so that the
        # fraction is of the capacity the soak itself could reach.
        print(f"capacity (6 s, 8 senders, new sessions): {capacity:.1f} msg/s submitted")
    duration = args.minutes * 60
    print(f"soak: {rate:.1f} msg/s for {args.minutes:g} min, memory every {args.interval:g} s",
          flush=True)  # fmt: skip

    samples = [(time.time(), unitstats.sample(remote)["units"])]
    run = loadgen.run_in_lab(lab, "send", dict(host=domain, senders=send_accts, recipients=rcpts,
                             duration=duration, rate=rate, concurrency=8, reuse_sessions=False,
                             retry_for=60.0), background=True)  # fmt: skip
    t0 = time.time()
    while run.proc.poll() is None:
        time.sleep(min(args.interval, max(0.0, t0 + duration + 5 - time.time())) or 1.0)
        samples.append((time.time(), unitstats.sample(remote)["units"]))
        elapsed = samples[-1][0] - t0
        pss = sum(r.get("pss_kb", 0) for r in samples[-1][1].values()) / 1024
        print(f"  {elapsed:6.0f} s  services PSS {pss:7.1f} MiB", flush=True)
    load = loadgen.LoadResult.from_dict(run.wait())
    tokens = [s.token for s in load.accepted]
    delivered = loadgen.run_in_lab(lab, "delivered", dict(host=domain, recipients=rcpts,
                                   tokens=tokens, timeout=180))  # fmt: skip
    samples.append((time.time(), unitstats.sample(remote)["units"]))
    counts = delivered["counts"]
    missing = sum(1 for t in tokens if not counts.get(t))
    twice = sum(1 for t in tokens if counts.get(t, 0) > 1)

    print("\nsoak results")
    print(f"load: {load.summary()}")
    print(f"delivered: {len(tokens) - missing} of {len(tokens)} accepted, {twice} twice")
    print(f"samples: {len(samples)} over {(samples[-1][0] - samples[0][0]) / 60:.1f} min "
          "(first before the load, last after delivery)")  # fmt: skip
    print("\n".join(memory_table(samples)))
    return 0 if missing == 0 and twice == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
