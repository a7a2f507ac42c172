"""SMTP client for Postfix's reinject listener, with a small pool of idle connections.

A message the gate accepted goes out with the same envelope and unchanged bytes; our
client gets 250 only after Postfix answered 250 to the data (RFC 5321 §4.1.1.4), so a
failed reinject is never an accepted-and-lost message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

log = logging.getLogger("filtermail")

REINJECT_TIMEOUT = 120.0
_WRITE_CHUNK = 1 << 16


class ReinjectError(Exception):
    """Downstream refused; ``reply`` is what our client gets instead of 250."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class _Connection:
    """One SMTP client connection to the reinject listener."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def close(self) -> None:
        self.writer.close()


class Reinjector:
    """Hands accepted messages to Postfix, reusing idle connections.

    A reused connection that turns out closed (Postfix's idle timeout) is replaced by
    a fresh one, but only when nothing of the transaction has been accepted yet, so a
    retry can never deliver twice.
    """

    def __init__(
        self,
        host: str,
        port: int,
        max_idle: int = 20,
        idle_timeout: float = 30.0,
        timeout: float = REINJECT_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.timeout = timeout
        self._idle: list[_Connection] = []

    async def send(
        self,
        mail_from: str,
        rcpt_tos: Sequence[str],
        data: bytes | bytearray,
        mail_options: Sequence[str] = (),
    ) -> str:
        """The reply for our client: "250 OK" only if Postfix answered 250 to the data.

        A refusal returns Postfix's own code and text (a refused recipient aborts the
        whole transaction before DATA, so nothing is delivered when the client
        retries); a broken connection or timeout returns 451.
        """
        try:
            return await asyncio.wait_for(
                self._send(mail_from, rcpt_tos, data, mail_options), self.timeout
            )
        except ReinjectError as e:
            log.warning("Reinject refused: %s", e.reply)
            return e.reply
        except (
            TimeoutError,
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
        ) as e:
            log.warning("Reinject failed: %s", e.__class__.__name__)
            return f"451 4.4.2 Reinject failed ({e.__class__.__name__}), try again later"

    async def _send(self, mail_from, rcpt_tos, data, mail_options) -> str:
        params = "".join(" " + o for o in mail_options)
        mail_cmd = f"MAIL FROM:<{mail_from}>{params}".encode()
        conn = self._take_idle()
        if conn is not None:
            # A dropped idle connection or a 421: nothing was accepted, start afresh.
            try:
                await _command(conn, mail_cmd, 250)
            except (OSError, asyncio.IncompleteReadError):
                conn.close()
                conn = None
            except ReinjectError as e:
                conn.close()
                if not e.reply.startswith("421"):
                    raise
                conn = None
            except BaseException:
                conn.close()
                raise
        if conn is None:
            conn = await self._connect()
            try:
                await _command(conn, mail_cmd, 250)
            except BaseException:
                conn.close()
                raise
        try:
            for rcpt in rcpt_tos:
                await _command(conn, f"RCPT TO:<{rcpt}>".encode(), 250, 251)
            await _command(conn, b"DATA", 354)
            await _write_dot_stuffed(conn.writer, data)
            await _expect(conn.reader, 250)
        except ReinjectError:
            # The transaction failed but the session is intact: reset and keep it.
            try:
                await _command(conn, b"RSET", 250)
            except BaseException:
                conn.close()
            else:
                self._put_idle(conn)
            raise
        except BaseException:
            conn.close()
            raise
        self._put_idle(conn)
        return "250 OK"

    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        conn = _Connection(reader, writer)
        try:
            await _expect(reader, 220)
            await _command(conn, b"EHLO localhost", 250)
        except BaseException:
            conn.close()
            raise
        return conn

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since < self.idle_timeout and not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    def _put_idle(self, conn: _Connection) -> None:
        if len(self._idle) >= self.max_idle:
            conn.writer.write(b"QUIT\r\n")
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


async def _command(conn: _Connection, line: bytes, *ok: int) -> None:
    conn.writer.write(line + b"\r\n")
    await conn.writer.drain()
    await _expect(conn.reader, *ok)


async def _expect(reader: asyncio.StreamReader, *ok: int) -> None:
    first = None
    for _ in range(100):
        line = await reader.readuntil(b"\n")
        if first is None:
            first = line
        if line[3:4] != b"-":
            break
    else:
        raise ValueError("endless multi-line reply")
    text = first.rstrip(b"\r\n").decode("utf-8", "replace")
    code = text[:3]
    if not code.isdigit():
        raise ValueError("reply without a code")
    if int(code) not in ok:
        raise ReinjectError(text if len(text) > 3 else f"{code} refused by Postfix")


async def _write_dot_stuffed(writer: asyncio.StreamWriter, data: bytes | bytearray) -> None:
    # RFC 5321 §4.5.2; stuffing after every LF (not only CRLF) means no bare-LF
    # sequence can end our transmission early at Postfix (SMTP smuggling).
    # Fixed-size chunks, whatever the line lengths: a 30 MiB line costs no extra copy.
    # A chunk starts a line when the byte before it is a LF.
    pos, n = 0, len(data)
    while pos < n:
        stop = min(n, pos + _WRITE_CHUNK)
        chunk = bytes(data[pos:stop]).replace(b"\n.", b"\n..")
        if chunk[:1] == b"." and (pos == 0 or data[pos - 1] == 0x0A):
            chunk = b"." + chunk
        writer.write(chunk)
        await writer.drain()
        pos = stop
    if n and not data.endswith(b"\r\n"):
        writer.write(b"\r\n")
    writer.write(b".\r\n")
    await writer.drain()
