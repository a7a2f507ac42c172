"""What every ``cmdeploy`` subcommand shares: errors in red, the config, the relay's SSH host.

Subcommand modules import this at their top; it imports no subcommand, so the CLI's
imports run one way (``cli`` -> subcommand -> ``cmdline``).
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from chatmaild.config import Config, ConfigError, read_config

from cmdeploy.remote import Remote


def red(text: str, stream: TextIO | None = None) -> str:
    """``text`` in red when ``stream`` (default stderr) is a terminal, else unchanged."""
    stream = stream if stream is not None else sys.stderr
    return f"\x1b[31m{text}\x1b[0m" if stream.isatty() else text


def fail(message: str) -> int:
    """Print an error for the operator and return the exit code 1."""
    print(red(message), file=sys.stderr)
    return 1


def load_config(args: argparse.Namespace) -> Config:
    """The parsed config named by --config, or exit with a one-line error.

    Keys the parser does not know are named here, once, as a warning.
    """
    try:
        config = read_config(args.config)
    except ConfigError as e:
        sys.exit(fail(str(e)))
    for key in config.unknown_keys:
        message = (
            f"warning: {args.config}: unknown key {key!r} is ignored (misspelled or outdated?)"
        )
        print(red(message), file=sys.stderr)
    return config


def add_ssh_host(parser: argparse.ArgumentParser) -> None:
    """The ``--ssh-host`` option of every subcommand that talks to the relay."""
    parser.add_argument("--ssh-host", help="SSH host of the relay (default: its mail_domain)")


def remote_for(args: argparse.Namespace, config: Config) -> Remote:
    """The relay as SSH reaches it: ``--ssh-host`` or the mail domain, with ``--ssh-config``."""
    return Remote(args.ssh_host or config.mail_domain, ssh_config=args.ssh_config)
