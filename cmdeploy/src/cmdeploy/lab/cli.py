"""``cmdeploy lab`` subcommands: up, status, ssh, load-zone, reboot, down."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import relay
from .errors import LabError
from .lab import Lab


def register(subparsers) -> None:
    """Add the ``lab`` subcommand."""
    p = subparsers.add_parser(
        "lab",
        help="run Debian 12 relay hosts as local containers (needs root)",
        description="A local lab of Debian 12 hosts with systemd, a lab DNS and a package proxy.",
    )
    sub = p.add_subparsers(dest="lab_command", required=True, metavar="LAB_COMMAND")

    up = sub.add_parser("up", help="start the lab (idempotent)")
    up.add_argument("--hosts", type=int, default=2, help="number of hosts (default 2)")
    up.set_defaults(func=up_cmd)

    sub.add_parser("status", help="show the lab's hosts and services").set_defaults(func=status_cmd)

    ssh = sub.add_parser("ssh", help="open a root shell (or run a command) on a lab host")
    ssh.add_argument("name", help="host name, e.g. relay1 or _relay1.lab")
    ssh.add_argument("remote", nargs=argparse.REMAINDER, help="command to run instead of a shell")
    ssh.set_defaults(func=ssh_cmd)

    zone = sub.add_parser(
        "load-zone", help="serve a zone file (cmdeploy dns --zonefile) in the lab DNS"
    )
    zone.add_argument("domain", help="the zone, e.g. _relay1.lab")
    zone.add_argument("zonefile", type=Path, help="BIND zone text")
    zone.set_defaults(func=load_zone_cmd)

    reboot = sub.add_parser("reboot", help="reboot a lab host (--hard: cut its power)")
    reboot.add_argument("name", help="host name, e.g. relay1 or _relay1.lab")
    reboot.add_argument("--hard", action="store_true",
                        help="SIGKILL every process of the host, then boot it again")  # fmt: skip
    reboot.set_defaults(func=reboot_cmd)

    sub.add_parser("down", help="stop and remove everything the lab created").set_defaults(
        func=down_cmd
    )
    relay.register(sub)


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


def up_cmd(args) -> int:
    lab = Lab()
    try:
        info = lab.up(hosts=args.hosts)
    except LabError as e:
        return _fail(f"lab up failed: {e}\n(`cmdeploy lab down` removes what was started)")
    base = "built the Debian base" if info["base_built"] else "reused the cached Debian base"
    print(f"lab up in {info['seconds']:.1f} s ({base})")
    for name, state in info["boot"].items():
        if state != "running":
            print(f"{name}: {state}; `cmdeploy lab ssh {name} journalctl -b` tells why")
    _print_status(lab)
    return 0


def status_cmd(args) -> int:
    lab = Lab()
    if os.geteuid() != 0:
        return _fail("the lab needs root: run it with sudo")
    _print_status(lab)
    return 0


def _print_status(lab: Lab) -> None:
    st = lab.status()
    if not st["up"]:
        print("the lab is down")
        return
    for key, svc in st["services"].items():
        print(f"{key:10} pid {svc['pid']:<8} {'running' if svc['alive'] else 'STOPPED'}")
    print(
        f"client netns {lab.netns} ({lab.client_ip}), lab DNS {lab.dns_ip}, proxy {lab.proxy_url}"
    )
    for h in st["hosts"]:
        state = h.get("systemd", "running" if h["alive"] else "STOPPED")
        print(f"{h['name']:8} {h['domain']:14} {h['ip']:12} pid {h['pid']:<8} {state}")
    print(f"ssh: ssh -F {lab.ssh_config} <name>, or cmdeploy lab ssh <name>")


def ssh_cmd(args) -> int:
    lab = Lab()
    try:
        argv = lab.ssh_argv(args.name)
    except LabError as e:
        return _fail(str(e))
    # Interactive use: hand the terminal to ssh.
    os.execvp(argv[0], [*argv, *args.remote])


def load_zone_cmd(args) -> int:
    try:
        Lab().load_zone(args.domain, args.zonefile.read_text())
    except (LabError, OSError) as e:
        return _fail(f"could not load the zone: {e}")
    print(f"lab DNS now serves {args.domain} from {args.zonefile}")
    return 0


def reboot_cmd(args) -> int:
    if os.geteuid() != 0:
        return _fail("the lab needs root: run it with sudo")
    try:
        info = Lab().reboot(args.name, hard=args.hard)
    except LabError as e:
        return _fail(f"reboot of {args.name} failed: {e}")
    how = "power cut" if args.hard else "clean reboot"
    print(f"{args.name}: {how}, down after {info['down_seconds']:.1f} s, "
          f"booted again after {info['seconds']:.1f} s: {info['boot']}")  # fmt: skip
    return 0


def down_cmd(args) -> int:
    if os.geteuid() != 0:
        return _fail("the lab needs root: run it with sudo")
    try:
        Lab().down()
    except LabError as e:
        return _fail(f"lab down incomplete: {e}")
    print("lab is down")
    return 0
