"""The ``cmdeploy`` command line: argument parsing, one function per subcommand."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from chatmaild.config import is_valid_domain, render_initial_config

from cmdeploy import cmd_bench, cmd_run, cmd_tests, dnsrecords, status
from cmdeploy.cmdline import fail
from cmdeploy.lab import cli as lab_cli
from cmdeploy.website import webdev

# Each module adds its subcommands with register(subparsers); keeping them apart lets
# every component own its command without touching this file.
SUBCOMMAND_MODULES = (cmd_run, dnsrecords, status, cmd_tests, cmd_bench, webdev, lab_cli)


def init_cmd(args) -> int:
    """Write a commented chatmail.ini for a domain."""
    domain = args.domain.strip().lower().rstrip(".")
    if not is_valid_domain(domain):
        return fail(
            f"{args.domain!r} is not a valid domain name: use letters, digits, '-' and '_' "
            "in dot-separated labels, e.g. chat.example.org"
        )
    path: Path = args.config
    if path.exists() and not args.force:
        return fail(f"{path} exists, not modifying it (use --force to overwrite)")
    path.write_text(render_initial_config(domain))
    print(f"wrote {path} for {domain}; review it, then run 'cmdeploy run'")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmdeploy", description="Set up and operate chatmail relays."
    )
    parser.add_argument(
        "--config",
        type=Path,
        action="append",
        help="path to chatmail.ini (default: $CHATMAIL_INI or ./chatmail.ini); repeat it to "
        "run, check (status) or list DNS for several relays at once",
    )
    parser.add_argument(
        "--ssh-config",
        type=Path,
        default=os.environ.get("CHATMAIL_SSH_CONFIG") or None,
        help="ssh_config file for reaching the relay (the lab writes one)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="write a new chatmail.ini for a domain")
    p.add_argument("domain", help="the relay's mail domain, e.g. chat.example.org")
    p.add_argument("--force", action="store_true", help="overwrite an existing chatmail.ini")
    p.set_defaults(func=init_cmd)

    for module in SUBCOMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configs = args.config or [Path(os.environ.get("CHATMAIL_INI", "chatmail.ini"))]
    if len(configs) > 1:
        from cmdeploy.inventory import FAN_OUT, fan_out

        if args.command not in FAN_OUT:
            return fail(f"several --config work with {', '.join(FAN_OUT)}, not {args.command}")
        return fan_out(configs, sys.argv[1:] if argv is None else argv, args.command)
    args.config = configs[0]
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
