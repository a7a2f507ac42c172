"""``cmdeploy lab`` subcommands (filled in by the lab work)."""


def register(subparsers) -> None:
    """Add the ``lab`` subcommand."""
