"""chatmail-metrics: account counts in the Prometheus text format (served at /metrics).

An account is a directory whose name contains ``@``; the notification queue
(``pending_notifications``) and other non-accounts are not counted. CI accounts are
the ones test suites create, named ``ci-…`` or ``ac_…``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import read_config
from .fsutil import remove_stale_temporary_files, write_atomic

CI_PREFIXES = ("ci-", "ac_")
DEFAULT_INI = "/usr/local/lib/chatmaild/chatmail.ini"


def count_accounts(mailboxes_dir: Path) -> tuple[int, int]:
    """(all accounts, CI accounts) in ``mailboxes_dir``."""
    total = ci = 0
    for entry in os.scandir(mailboxes_dir):
        if "@" not in entry.name or not entry.is_dir(follow_symlinks=False):
            continue
        total += 1
        if entry.name.startswith(CI_PREFIXES):
            ci += 1
    return total, ci


def render(total: int, ci: int) -> str:
    return (
        "# HELP accounts total number of accounts\n"
        "# TYPE accounts gauge\n"
        f"accounts {total}\n"
        "# HELP ci_accounts number of CI accounts\n"
        "# TYPE ci_accounts gauge\n"
        f"ci_accounts {ci}\n"
        "# HELP nonci_accounts number of non-CI accounts\n"
        "# TYPE nonci_accounts gauge\n"
        f"nonci_accounts {total - ci}\n"
    )


def main(argv: list[str] | None = None) -> None:
    """``chatmail-metrics [ini or mailboxes dir] [OUTPUT | --output OUTPUT]``"""
    parser = argparse.ArgumentParser(prog="chatmail-metrics", description=__doc__.split("\n")[0])
    parser.add_argument(
        "source",
        nargs="?",
        default=DEFAULT_INI,
        help="chatmail.ini, or the mailboxes directory itself (the seed's form)",
    )
    parser.add_argument(
        "output", nargs="?", type=Path, help="write here atomically instead of stdout"
    )
    parser.add_argument("--output", dest="output_opt", type=Path, help="same as OUTPUT")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    source = Path(args.source)
    mailboxes_dir = source if source.is_dir() else read_config(source).mailboxes_dir
    text = render(*count_accounts(mailboxes_dir))
    output = args.output or args.output_opt
    if output:
        # nginx serves it: never a half-written page, readable by the web server.
        write_atomic(output, text, mode=0o644)
        # What an earlier run killed in the middle of its write left beside it.
        remove_stale_temporary_files(output.parent, prefix=output.name)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
