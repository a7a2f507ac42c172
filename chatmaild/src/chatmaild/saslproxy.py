"""Between Postfix and Dovecot's auth: a temporary authentication failure stays temporary.

Postfix's Dovecot SASL client (3.7, ``xsasl_dovecot_server.c``) answers every ``FAIL``
from Dovecot with ``535 5.7.8 Error: authentication failed``, including the
``FAIL <id> ... code=temp_fail`` that Dovecot sends when its passdb lookup failed
(doveauth down or hung, a mailbox it cannot read). Clients then tell the user that the
password is wrong. Postfix answers ``454 4.7.0 Temporary authentication failure`` only
when it loses the connection to the auth server.

So this passes Dovecot's auth-client protocol through unchanged, except that a temporary
``FAIL`` closes the connection instead of being passed on: Postfix answers 454, and
connects again for the next AUTH. ``chatmail-saslproxy LISTEN_SOCKET DOVECOT_SOCKET``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

from . import sdnotify
from .dictproxy import setup_logging

log = logging.getLogger("saslproxy")

# Auth-client lines are short (the longest is AUTH with a base64 response); Dovecot's own
# limit for them is 8 KiB (AUTH_CLIENT_MAX_LINE_LENGTH).
MAX_LINE = 64 * 1024
# Dovecot marks a failure that is not the user's fault with one of these fields.
TEMPORARY = {b"code=temp_fail", b"temp"}


def is_temporary_failure(line: bytes) -> bool:
    """Whether a line from Dovecot is a ``FAIL`` the client is not to blame for."""
    if not line.startswith(b"FAIL\t"):
        return False
    return any(field in TEMPORARY for field in line.rstrip(b"\r\n").split(b"\t")[2:])


class SaslProxy:
    """Listen on ``listen`` (unix socket) and relay each connection to ``upstream``."""

    def __init__(self, listen, upstream) -> None:
        self.listen = Path(listen)
        self.upstream = Path(upstream)

    async def _client_to_dovecot(self, reader, writer) -> None:
        while chunk := await reader.read(MAX_LINE):
            writer.write(chunk)
            await writer.drain()

    async def _dovecot_to_client(self, reader, writer) -> None:
        while line := await reader.readline():
            if is_temporary_failure(line):
                # Whatever else the line says, Postfix would turn it into a 535.
                log.warning("temporary authentication failure: closing the connection")
                return
            writer.write(line)
            await writer.drain()

    async def _serve(self, client_reader, client_writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(
                str(self.upstream), limit=MAX_LINE
            )
        except OSError as e:
            # Postfix sees the connection end, which it reports as temporary.
            log.error("cannot reach Dovecot auth at %s: %s", self.upstream, e)
            client_writer.close()
            return
        tasks = [
            asyncio.ensure_future(self._client_to_dovecot(client_reader, up_writer)),
            asyncio.ensure_future(self._dovecot_to_client(up_reader, client_writer)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                try:
                    await task
                except (asyncio.CancelledError, OSError, ValueError):
                    # ValueError: a line longer than MAX_LINE ends the connection.
                    pass
            up_writer.close()
            client_writer.close()

    async def serve(self, started: asyncio.Event | None = None) -> None:
        """Listen until cancelled."""
        self.listen.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(self._serve, path=str(self.listen), limit=MAX_LINE)
        # Postfix's smtpd (user postfix) connects; the directory's group is postfix.
        os.chmod(self.listen, 0o660)
        log.info("listening on %s, relaying to %s", self.listen, self.upstream)
        sdnotify.ready()
        if started is not None:
            started.set()
        async with server:
            await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    """``chatmail-saslproxy LISTEN_SOCKET DOVECOT_AUTH_SOCKET``"""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.exit("usage: chatmail-saslproxy LISTEN_SOCKET DOVECOT_AUTH_SOCKET")
    setup_logging()
    try:
        asyncio.run(SaslProxy(args[0], args[1]).serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
