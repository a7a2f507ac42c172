"""``cmdeploy test``: the online test suite (pytest) against a deployed relay.

Named cmd_tests, not cmd_test: pytest would collect a ``*_test.py`` module as tests.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from cmdeploy.cmdline import add_ssh_host, load_config

TESTS = Path(__file__).parent / "tests" / "online"


def run_pytest(args: argparse.Namespace, target: list[str]) -> int:
    """Run pytest on ``target`` with the relay's config and SSH host in the environment."""
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


def add_suite_options(p: argparse.ArgumentParser) -> None:
    """Options of ``test`` and ``bench``: the relays, the clients' namespace, pytest's own."""
    add_ssh_host(p)
    p.add_argument("--relay2", help="domain of a second relay, for tests across relays")
    p.add_argument("--ssh-host2", help="SSH host of the second relay (default: its domain)")
    p.add_argument(
        "--netns", help="run the clients in this network namespace (the lab: cmlab-client)"
    )
    p.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")


def test_cmd(args: argparse.Namespace) -> int:
    return run_pytest(args, [str(TESTS), "--ignore", str(TESTS / "benchmark.py")])


def register(subparsers) -> None:
    p = subparsers.add_parser("test", help="run the online test suite against the relay")
    add_suite_options(p)
    p.set_defaults(func=test_cmd)
