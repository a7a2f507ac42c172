"""Building the relay's web page (filled in by the web page work)."""


def register(subparsers) -> None:
    """Add the ``webdev`` subcommand."""
