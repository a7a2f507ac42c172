"""``cmdeploy test`` and ``cmdeploy bench``: pytest suites against a deployed relay."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent / "tests" / "online"


def _run_pytest(args, target: list[str]) -> int:
    from cmdeploy.cli import load_config

    config = load_config(args)
    env = {
        **os.environ,
        "CHATMAIL_ONLINE": "1",
        "CHATMAIL_INI": str(Path(args.config).resolve()),
        "CHATMAIL_SSH": args.ssh_host or config.mail_domain,
    }
    if args.ssh_config:
        env["CHATMAIL_SSH_CONFIG"] = str(Path(args.ssh_config).resolve())
    if getattr(args, "relay2", None):
        env["CHATMAIL_DOMAIN2"] = args.relay2
        env["CHATMAIL_SSH2"] = args.ssh_host2 or args.relay2
    if getattr(args, "floor", None):
        env["CHATMAIL_FLOOR"] = args.floor
    argv = [sys.executable, "-m", "pytest", *target, "-rs", "-p", "no:cacheprovider"]
    argv += ["-v"] if args.verbose else ["-q"]
    argv += args.pytest_args
    if args.netns:
        # Lab relays are reachable (and resolvable) only inside the lab's client namespace.
        argv = ["ip", "netns", "exec", args.netns, *argv]
    return subprocess.run(argv, env=env).returncode


def test_cmd(args) -> int:
    return _run_pytest(args, [str(TESTS), "--ignore", str(TESTS / "benchmark.py")])


def bench_cmd(args) -> int:
    return _run_pytest(args, [str(TESTS / "benchmark.py"), "-s"])


def _common(p) -> None:
    p.add_argument("--ssh-host", help="SSH host of the relay (default: its mail_domain)")
    p.add_argument("--relay2", help="domain of a second relay, for tests across relays")
    p.add_argument("--ssh-host2", help="SSH host of the second relay (default: its domain)")
    p.add_argument(
        "--netns", help="run the clients in this network namespace (the lab: cmlab-client)"
    )
    p.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")


def register(subparsers) -> None:
    p = subparsers.add_parser("test", help="run the online test suite against the relay")
    _common(p)
    p.set_defaults(func=test_cmd)
    p = subparsers.add_parser("bench", help="measure the relay (and two relays) with real clients")
    p.add_argument(
        "--floor",
        metavar="HOST[,HOST2]",
        help="stock Postfix + Dovecot hosts to measure the same throughput against "
        "(the lab: python -m cmdeploy.lab.stock relay3 relay4, with this relay's bench-password)",
    )
    _common(p)
    p.set_defaults(func=bench_cmd)
