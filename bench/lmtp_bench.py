"""What LMTP's plugins cost Dovecot per delivery, on a lab relay.

Delivers ``--messages`` distinct messages over the relay's own LMTP socket (as Postfix does,
``--per-session`` messages per LMTP session, to fresh recipients in turn), and reads how much
CPU time the dovecot and chatmail-metadata units used meanwhile (``usage_usec`` in their
cgroups' ``cpu.stat``; the push hook's dict writes are served by chatmail-metadata). It does
so in rounds over four LMTP plugin sets: as deployed (dedup.sieve and the push hook), without
Sieve, without the push hook (mail_lua notify push_notification push_notification_lua), and
without both. It prints CPU ms per message and messages/s for each round and their medians.
The deployed config is put back at the end.

Not part of CI. Needs root and the lab; hold the lab lock and tear the lab down after:

    flock /tmp/chatmail-lab.lock bash -c \\
        'venv/bin/python bench/lmtp_bench.py; venv/bin/cmdeploy lab down'
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
SAVED = "/root/dovecot.conf.lmtp-bench"
TEMPLATE = "/root/lmtp-bench.eml"
PUSH = "mail_lua notify push_notification push_notification_lua"
# mode -> the plugins taken out of LMTP's mail_plugins
MODES = {"deployed": (), "no sieve": ("sieve",), "no push": tuple(PUSH.split()),
         "neither": ("sieve", *PUSH.split())}  # fmt: skip

# Runs on the relay: deliver the messages over LMTP and measure the CPU time of the units.
DRIVER = r"""
import json, os, socket, subprocess, sys, time

spec = json.loads(sys.argv[1])
template = open(spec["template"], "rb").read()

def cpu_ns():
    return sum(unit_cpu_ns(u) for u in ("dovecot", "chatmail-metadata"))

def unit_cpu_ns(unit):
    # The unit's cgroup counts every process, also those that ended meanwhile
    # (systemd's CPUUsageNSec needs CPUAccounting, which the lab hosts do not have).
    cg = subprocess.run(["systemctl", "show", "-P", "ControlGroup", unit],
                        capture_output=True, text=True).stdout.strip()
    # cgroup v2, or the unified part of a hybrid (v1) host such as the lab's.
    for top in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if os.path.exists(f"{top}{cg}/cpu.stat"):
            for line in open(f"{top}{cg}/cpu.stat"):
                key, value = line.split()
                if key == "usage_usec":
                    return int(value) * 1000
    raise RuntimeError(f"no cgroup cpu.stat with usage_usec for {unit}")

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
    mid = f"<{spec['prefix']}{i}@lmtpbench>".encode()
    msgs.append((spec["rcpts"][i % len(spec["rcpts"])], template.replace(b"@@MID@@", mid)))
time.sleep(1)  # let the restart's own work settle
before, t0 = cpu_ns(), time.monotonic()
for i in range(0, n, per):
    session(msgs[i:i + per])
seconds = time.monotonic() - t0
used = cpu_ns() - before
print(json.dumps({"cpu_ms_per_msg": used / 1e6 / n, "msgs_per_s": n / seconds}))
"""


def set_mode(lab: Lab, relay: LabRelay, mode: str) -> None:
    """The deployed config without the mode's LMTP plugins; Dovecot restarted."""
    drop = MODES[mode]
    expr = "".join(f" -e '/^protocol lmtp/,/^}}/ s/ {p}( |$)/\\1/'" for p in drop)
    cmd = f"sed -E{expr} {SAVED} > {CONF}" if drop else f"cp {SAVED} {CONF}"
    check = "doveconf -h -f protocol=lmtp mail_plugins"
    out = lab.ssh_run(relay.name, f"{cmd} && systemctl restart dovecot && {check}").stdout.split()
    assert not set(drop) & set(out) and "zlib" in out, (mode, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=600, help="per round")
    p.add_argument("--per-session", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3, help="of each mode")
    p.add_argument("--recipients", type=int, default=8)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/chatmail-lmtp-bench"))
    p.add_argument("--no-deploy", action="store_true",
                   help="use the relay1 already deployed from WORKDIR/relay1")  # fmt: skip
    args = p.parse_args(argv)

    lab = Lab()
    if args.no_deploy:
        relay = deployed_relay(lab, "relay1", args.workdir.resolve())
    else:
        relay = lab_relay(lab, "relay1", args.workdir.resolve(), {"max_load_1m": 1000})
    sender = f"benchsender@{relay.domain}"
    lab.ssh_run(relay.name, f"cp {CONF} {SAVED}")
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    try:
        for r in range(args.rounds):
            for i, mode in enumerate(MODES):
                # Fresh recipients per round: a Maildir that grows makes each delivery dearer.
                rcpts = loadgen.accounts(relay.domain, args.recipients, prefix=f"lb{r}{i}")
                created = loadgen.run_in_lab(lab, "create", {"host": relay.domain,
                                                             "recipients": rcpts})  # fmt: skip
                if created["errors"]:
                    print("account creation failed:", created["errors"][:3], file=sys.stderr)
                    return 1
                template = loadgen.message(sender, rcpts[0].addr, "t" * 24)
                template = template.replace(b"<" + b"t" * 24 + b"@loadgen>", b"@@MID@@")
                assert b"@@MID@@" in template
                lab.ssh_run(relay.name, f"cat > {TEMPLATE}", input=template.decode())
                set_mode(lab, relay, mode)
                spec = {"messages": args.messages, "per_session": args.per_session,
                        "rcpts": [a.addr for a in rcpts], "sender": sender,
                        "prefix": f"{r}x{i}x", "template": TEMPLATE}  # fmt: skip
                out = lab.ssh_run(relay.name, f"python3 - {shlex.quote(json.dumps(spec))}",
                                  input=DRIVER, timeout=600)  # fmt: skip
                results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
                got = results[mode][-1]
                print(f"round {r + 1} {mode:8}: {got['cpu_ms_per_msg']:.2f} ms CPU/msg, "
                      f"{got['msgs_per_s']:.0f} msg/s", flush=True)  # fmt: skip
    finally:
        lab.ssh_run(relay.name, f"cp {SAVED} {CONF} && systemctl restart dovecot")
    print(
        f"Dovecot LMTP + chatmail-metadata, {args.messages} msgs x {args.rounds} rounds, "
        f"{args.per_session} per session (medians):"
    )
    med = {m: statistics.median(x["cpu_ms_per_msg"] for x in v) for m, v in results.items()}
    for mode, v in results.items():
        rate = statistics.median(x["msgs_per_s"] for x in v)
        print(f"  {mode:8}  {med[mode]:.2f} ms CPU/msg, {rate:.0f} msg/s")
    print(f"  cost of dedup.sieve:  {med['deployed'] - med['no sieve']:+.2f} ms CPU/msg")
    print(f"  cost of the push hook: {med['deployed'] - med['no push']:+.2f} ms CPU/msg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
