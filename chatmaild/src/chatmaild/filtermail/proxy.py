"""SMTP in and out: ``filtermail <ini> outgoing|incoming``.

Postfix hands every message to this before-queue proxy (``smtpd_proxy_filter``); the
verdict of :mod:`gate` decides whether it is re-injected unchanged, with the same
envelope, into Postfix's reinject listener. The client sees 250 only after Postfix took
the message, so a failed reinject is never an accepted-and-lost message.

This module starts the process; :mod:`direction` says what differs between outgoing and
incoming, :mod:`smtpserver` speaks SMTP to Postfix, :mod:`handler` applies the rules and
:mod:`reinject` hands accepted mail back.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from .. import sdnotify
from ..config import Config, ConfigError, read_config
from . import direction as directions
from . import mxdeliv
from .handler import HOST, FilterHandler
from .smtpserver import GateSMTP, MemoryBudget

log = logging.getLogger("filtermail")

# DATA all sessions of one process may buffer together, in units of max_message_size.
# Postfix runs up to max_smtp_connections sessions through the proxy at once, so without
# a shared cap a burst of large messages could take gigabytes. Each buffered message can
# cost about twice its size while the gate parses and reinject sends it, so four of them
# fit the unit's MemoryHigh (192 MiB + 8 x max_message_size, cmdeploy services/deployer.py)
# instead of the kernel throttling or killing the gate. Chat messages are mostly far
# smaller, so this still covers hundreds of ordinary transfers; beyond it a message gets
# 452 4.3.1 and the sending MTA retries later.
DATA_BUDGET_MESSAGES = 4


def data_budget(config: Config) -> int:
    """Bytes of DATA one filtermail process may buffer across all its sessions."""
    return DATA_BUDGET_MESSAGES * config.max_message_size


def make_smtp(handler: FilterHandler, budget: MemoryBudget) -> GateSMTP:
    return GateSMTP(
        handler,
        budget=budget,
        data_size_limit=handler.config.max_message_size,
        enable_SMTPUTF8=True,
        decode_data=False,
        hostname="filtermail",
        ident="filtermail",
        loop=asyncio.get_running_loop(),
    )


async def start(
    config: Config, name: str, port: int | None = None, http_port: int | None = None
) -> asyncio.Server:
    """Listen on 127.0.0.1 (the direction's port unless given); returns the server.

    With ``http_port``, ``/mxdeliv`` is served there too, by the same handler and
    within the same memory budget (incoming only).
    """
    direction = directions.for_name(config, name)
    handler = FilterHandler(direction)
    budget = MemoryBudget(data_budget(config))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: make_smtp(handler, budget),
        host=HOST,
        port=direction.listen_port if port is None else port,
    )
    if http_port is not None:
        try:
            await mxdeliv.start(handler, budget, http_port)
        except BaseException:
            server.close()
            raise
    return server


async def serve(config: Config, name: str) -> None:
    # Relay-to-relay mail over HTTPS (nginx /mxdeliv) gets the checks of port 25.
    http_port = config.filtermail_http_port_incoming if name == "incoming" else None
    try:
        server = await start(config, name, http_port=http_port)
    except OSError as e:
        raise SystemExit(f"filtermail: cannot listen on {HOST} ({name}): {e}") from None
    await sdnotify.ready_until_stopped()
    # Not waiting for open sessions: one cut mid-transaction never got a 250, so
    # Postfix answers its client with a temporary error and the client retries.
    server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="filtermail", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="path to chatmail.ini")
    parser.add_argument("mode", choices=directions.NAMES)
    args = parser.parse_args(argv)
    # aiosmtpd logs every command at INFO ("mail.log"); only our counting lines go out.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    try:
        config = read_config(args.config)
    except ConfigError as e:
        print(f"filtermail: {e}", file=sys.stderr)
        return 2
    asyncio.run(serve(config, args.mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
