"""The ``cmdeploy`` command line: argument parsing, one function per subcommand."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from chatmaild.config import ConfigError, is_valid_domain, read_config, render_initial_config


def _red(text: str) -> str:
    return f"\x1b[31m{text}\x1b[0m" if sys.stderr.isatty() else text


def fail(message: str) -> int:
    print(_red(message), file=sys.stderr)
    return 1


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


def load_config(args):
    """The parsed config named by --config, or exit with a one-line error."""
    try:
        config = read_config(args.config)
    except ConfigError as e:
        sys.exit(fail(str(e)))
    for key in config.unknown_keys:
        print(_red(f"warning: {args.config}: unknown key {key!r} is ignored"), file=sys.stderr)
    return config


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
        importlib.import_module(module).register(sub)
    return parser


# Each module adds its subcommands with register(subparsers); keeping them apart lets
# every component own its command without touching this file.
SUBCOMMAND_MODULES = [
    "cmdeploy.run",
    "cmdeploy.dnsrecords",
    "cmdeploy.status",
    "cmdeploy.online",
    "cmdeploy.www",
    "cmdeploy.lab.cli",
]


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
