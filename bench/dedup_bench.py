"""What dedup.sieve costs Dovecot per delivery, on a lab relay.

Delivers ``--messages`` distinct messages over the relay's own LMTP socket (as Postfix does,
``--per-session`` messages per LMTP session, to the recipients in turn), and reads how much
CPU time the dovecot.service cgroup used meanwhile (``usage_usec`` in its ``cpu.stat``). It
does so in rounds that alternate between the relay as deployed (Sieve with the duplicate
filter) and the same relay with ``sieve`` taken out of LMTP's ``mail_plugins``, and prints
CPU ms per message and messages/s for each round and their medians. The deployed config is
put back at the end.

Not part of CI. Needs root and the lab; hold the lab lock and tear the lab down after:

    flock /tmp/chatmail-lab.lock bash -c \\
        'venv/bin/python bench/dedup_bench.py; venv/bin/cmdeploy lab down'
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

from cmdeploy.lab.lab import Lab
from cmdeploy.lab.relay import LabRelay, deployed_relay, lab_relay

from cmdeploy import loadgen

CONF = "/etc/dovecot/dovecot.conf"
SAVED = "/root/dovecot.conf.dedup-bench"
TEMPLATE = "/root/dedup-bench.eml"

# Runs on the relay: deliver the messages over LMTP and measure dovecot.service's CPU time.
DRIVER = r"""
import json, os, socket, subprocess, sys, time

spec = json.loads(sys.argv[1])
template = open(spec["template"], "rb").read()

def cpu_ns():
    # The unit's cgroup counts every Dovecot process, also those that ended meanwhile
    # (systemd's CPUUsageNSec needs CPUAccounting, which the lab hosts do not have).
    cg = subprocess.run(["systemctl", "show", "-P", "ControlGroup", "dovecot"],
                        capture_output=True, text=True).stdout.strip()
    try:
        for line in open(f"/sys/fs/cgroup{cg}/cpu.stat"):
            key, value = line.split()
            if key == "usage_usec":
                return int(value) * 1000
    except FileNotFoundError:
        pass
    # Else from /proc: the master's own and its reaped children's times, plus those of
    # the children still running (all Dovecot processes are the master's children).
    tick = os.sysconf("SC_CLK_TCK")
    master = subprocess.run(["systemctl", "show", "-P", "MainPID", "dovecot"],
                            capture_output=True, text=True).stdout.strip()
    total = 0
    for pid in [master] + open(f"/proc/{master}/task/{master}/children").read().split():
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        # utime, stime (and for the master cutime, cstime): fields 14-17 of proc(5).
        times = fields[11:15] if pid == master else fields[11:13]
        total += sum(int(t) for t in times)
    return total * 10**9 // tick

def reply(f):
    while True:
        line = f.readline()
        if not line:
            raise RuntimeError("LMTP connection closed")
        if line[3:4] != b"-":
            return int(line[:3]), line

def session(msgs):
    s = socket.socket(socket.AF_UNIX)
    s.connect("/var/spool/postfix/private/dovecot-lmtp")
    f = s.makefile("rb")
    reply(f)
    s.sendall(b"LHLO bench\r\n")
    reply(f)
    for rcpt, data in msgs:
        s.sendall(b"MAIL FROM:<" + spec["sender"].encode() + b">\r\n")
        assert reply(f)[0] == 250
        s.sendall(b"RCPT TO:<" + rcpt.encode() + b">\r\n")
        code, line = reply(f)
        assert code == 250, line
        s.sendall(b"DATA\r\n")
        assert reply(f)[0] == 354
        s.sendall(data + b"\r\n.\r\n")
        code, line = reply(f)
        assert code == 250, line
    s.sendall(b"QUIT\r\n")
    s.close()

n, per = spec["messages"], spec["per_session"]
msgs = []
for i in range(n):
    mid = f"<{spec['prefix']}{i}@dedupbench>".encode()
    msgs.append((spec["rcpts"][i % len(spec["rcpts"])], template.replace(b"@@MID@@", mid)))
time.sleep(1)  # let the restart's own work settle
before, t0 = cpu_ns(), time.monotonic()
for i in range(0, n, per):
    session(msgs[i:i + per])
seconds = time.monotonic() - t0
used = cpu_ns() - before
print(json.dumps({"cpu_ms_per_msg": used / 1e6 / n, "msgs_per_s": n / seconds}))
"""


def set_mode(lab: Lab, relay: LabRelay, dedup: bool) -> None:
    """The deployed config, or the same without Sieve in LMTP; Dovecot restarted."""
    if dedup:
        cmd = f"cp {SAVED} {CONF}"
    else:
        cmd = (f"sed -E '/^protocol lmtp/,/^}}/ s/^(  mail_plugins = .*) sieve$/\\1/' "
               f"{SAVED} > {CONF} && ! grep -A2 '^protocol lmtp' {CONF} | grep -q ' sieve$'")  # fmt: skip
    lab.ssh_run(relay.name, f"{cmd} && systemctl restart dovecot && doveconf -n >/dev/null")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=1500, help="per round")
    p.add_argument("--per-session", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3, help="of each mode")
    p.add_argument("--recipients", type=int, default=8)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/chatmail-dedup-bench"))
    p.add_argument("--no-deploy", action="store_true",
                   help="use the relay1 already deployed from WORKDIR/relay1")  # fmt: skip
    args = p.parse_args(argv)

    lab = Lab()
    if args.no_deploy:
        relay = deployed_relay(lab, "relay1", args.workdir.resolve())
    else:
        relay = lab_relay(lab, "relay1", args.workdir.resolve(), {"max_load_1m": 1000})
    rcpts = loadgen.accounts(relay.domain, args.recipients, prefix="db")
    created = loadgen.run_in_lab(lab, "create", {"host": relay.domain, "recipients": rcpts})
    if created["errors"]:
        print("account creation failed:", created["errors"][:3], file=sys.stderr)
        return 1
    sender = f"benchsender@{relay.domain}"
    template = loadgen.message(sender, rcpts[0].addr, "t" * 24)
    template = template.replace(b"<" + b"t" * 24 + b"@loadgen>", b"@@MID@@")
    assert b"@@MID@@" in template
    lab.ssh_run(relay.name, f"cp {CONF} {SAVED} && cat > {TEMPLATE}", input=template.decode())
    results: dict[str, list[dict]] = {"dedup": [], "none": []}
    try:
        for r in range(args.rounds):
            for mode in ("none", "dedup"):
                set_mode(lab, relay, dedup=mode == "dedup")
                spec = {"messages": args.messages, "per_session": args.per_session,
                        "rcpts": [a.addr for a in rcpts], "sender": sender,
                        "prefix": f"{mode}{r}x", "template": TEMPLATE}  # fmt: skip
                out = lab.ssh_run(relay.name, f"python3 - {shlex.quote(json.dumps(spec))}",
                                  input=DRIVER, timeout=600)  # fmt: skip
                results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
                got = results[mode][-1]
                print(f"round {r + 1} {mode:5}: {got['cpu_ms_per_msg']:.2f} ms CPU/msg, "
                      f"{got['msgs_per_s']:.0f} msg/s", flush=True)  # fmt: skip
    finally:
        set_mode(lab, relay, dedup=True)
    med = {m: (statistics.median(x["cpu_ms_per_msg"] for x in v),
               statistics.median(x["msgs_per_s"] for x in v)) for m, v in results.items()}  # fmt: skip
    print(
        f"Dovecot LMTP, {args.messages} msgs x {args.rounds} rounds, "
        f"{args.per_session} per session (medians):"
    )
    print(f"  without Sieve:     {med['none'][0]:.2f} ms CPU/msg, {med['none'][1]:.0f} msg/s")
    print(f"  with dedup.sieve:  {med['dedup'][0]:.2f} ms CPU/msg, {med['dedup'][1]:.0f} msg/s")
    print(
        f"  cost of dedup:     {med['dedup'][0] - med['none'][0]:+.2f} ms CPU/msg "
        f"({(med['dedup'][0] / med['none'][0] - 1) * 100:+.0f} %)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
