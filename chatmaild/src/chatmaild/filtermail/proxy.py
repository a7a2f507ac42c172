"""SMTP in and out: ``filtermail <ini> outgoing|incoming``.

Postfix hands every message to this before-queue proxy (``smtpd_proxy_filter``); the
verdict of :mod:`gate` decides whether it is re-injected unchanged, with the same
envelope, into Postfix's reinject listener. The client sees 250 only after Postfix took
the message, so a failed reinject is never an accepted-and-lost message.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys
import time
from collections.abc import Sequence

from aiosmtpd.smtp import SMTP, Envelope, Session

from ..config import Config, ConfigError, read_config
from . import gate, mime
from .ratelimit import RateLimiter
from .recipients import recipient_enforces_e2ee

log = logging.getLogger("filtermail")

HOST = "127.0.0.1"
# Lines read from the client while collecting DATA; longer ones arrive in pieces.
READ_LIMIT = 1 << 16
# Large messages are checked in a worker thread so other connections keep moving.
THREAD_THRESHOLD = 1 << 18
REINJECT_TIMEOUT = 120.0
_WRITE_CHUNK = 1 << 16


_PLAIN_PATH = re.compile(r"^\s*<([A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+)>\s*(.*)$")


_KNOWN_MAIL_PARAM = re.compile(r"^(SIZE=|BODY=|SMTPUTF8$)", re.IGNORECASE)


class GateSMTP(SMTP):
    """aiosmtpd's SMTP with a DATA reader that keeps one buffer per message.

    aiosmtpd 1.4.6 keeps every DATA line as its own object and then joins them, which
    costs about three times the message size; here data is read in bulk into one
    bytearray. DSN parameters (RFC 3461 NOTIFY, ORCPT, RET, ENVID) are accepted and
    dropped, since Postfix passes them through and the reinject hop does not need them.
    Relies on aiosmtpd internals (``_reader``, ``_getaddr``), hence the pinned version.
    """

    line_length_limit = READ_LIMIT

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # The common "<local@domain> PARAMS" without quoting or comments needs no
        # RFC 5322 parser (aiosmtpd's costs more than the whole gate for small mail).
        m = _PLAIN_PATH.match(arg)
        if m:
            return m.group(1), m.group(2)
        return super()._getaddr(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        # Keep what aiosmtpd knows (SIZE, BODY, SMTPUTF8); drop DSN's RET and ENVID
        # (RFC 3461) and anything else Postfix passes through, instead of a 555.
        if arg:
            stripped = self._strip_command_keyword("FROM:", arg)
            if stripped is not None:
                address, params = self._getaddr(stripped)
                if address and params:
                    kept = [p for p in params.split() if _KNOWN_MAIL_PARAM.match(p)]
                    path = "<>" if address == "<>" else f"<{address}>"
                    arg = " ".join([f"FROM:{path}", *kept])
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if arg:
            stripped = self._strip_command_keyword("TO:", arg)
            if stripped is not None:
                address, params = self._getaddr(stripped)
                if address and params:
                    arg = f"TO:<{address}>"
        await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        content = await self._read_content()
        if content is None:
            self._set_post_data_state()
            await self.push("552 5.3.4 Message exceeds maximum size")
            return
        self.envelope.content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    async def _read_content(self) -> bytearray | None:
        """Read up to the lone dot, undoing dot-stuffing (RFC 5321 §4.5.2).

        Only CRLF.CRLF ends the data. Reads in bulk up to each ".CRLF" (rare in mail,
        absent from base64) or 64 KiB. None if the data exceeded ``data_size_limit``;
        the rest is still read and discarded so the session stays in sync.
        """
        content = bytearray()
        limit = self.data_size_limit
        too_big = False
        line_start = True  # the next unprocessed byte begins a line
        pending = b""  # a trailing CR held back so CRLF "." is never split
        reader = self._reader
        while True:
            try:
                raw = pending + await reader.readuntil(b".\r\n")
                found = True
            except asyncio.LimitOverrunError as e:
                raw = pending + await reader.readexactly(e.consumed)
                found = False
            pending = b""
            if found:
                before = raw[:-3]
                if before.endswith(b"\r\n") or (not before and line_start):
                    raw, done = before, True
                else:
                    done = False
            else:
                done = False
                if raw.endswith(b"\r"):
                    raw, pending = raw[:-1], b"\r"
            if raw:
                seg = raw[1:] if line_start and raw[:1] == b"." else raw
                seg = seg.replace(b"\r\n.", b"\r\n")
                line_start = raw.endswith(b"\r\n")
                if not too_big:
                    if limit and len(content) + len(seg) > limit:
                        too_big = True
                        content = bytearray()
                    else:
                        content += seg
            if done:
                return None if too_big else content


class FilterHandler:
    """aiosmtpd handler: rate limit at MAIL FROM, gate and reinject at DATA."""

    def __init__(self, config: Config, mode: str) -> None:
        if mode not in ("outgoing", "incoming"):
            raise ValueError(f"mode must be outgoing or incoming, not {mode!r}")
        self.config = config
        self.mode = mode
        self.reinject_port = (
            config.postfix_reinject_port
            if mode == "outgoing"
            else config.postfix_reinject_port_incoming
        )
        self.reinjector = Reinjector(HOST, self.reinject_port)
        self.limiter = RateLimiter(config.max_user_send_per_minute, config.max_user_send_burst_size)
        self.exempt = config.rate_limit_exempt

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options
    ) -> str:
        if self.mode == "outgoing":
            verdict = gate.check_mail_from(address)
            if not verdict.accept:
                return verdict.reply
            sender = mime.ascii_lower(address)
            # The exemption is the operator's, for benchmark accounts (chatmail.ini).
            if sender not in self.exempt and not self.limiter.allow(sender):
                log.info("Outgoing: Rate limited %s", address)
                return f"450 4.7.1: Too much mail from {address}"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        try:
            return await self._filter_and_forward(envelope)
        except Exception:
            log.exception("Refusing mail after an internal error")
            return gate.INTERNAL_ERROR

    async def _filter_and_forward(self, envelope: Envelope) -> str:
        data = envelope.content
        mail_from = "" if envelope.mail_from == "<>" else envelope.mail_from
        rcpt_tos = list(envelope.rcpt_tos)
        if len(data) > THREAD_THRESHOLD:
            verdict = await asyncio.to_thread(self._check, data, mail_from, rcpt_tos)
        else:
            verdict = self._check(data, mail_from, rcpt_tos)
        if not verdict.accept:
            return verdict.reply
        options = [o for o in envelope.mail_options if o.startswith("BODY=") or o == "SMTPUTF8"]
        return await self.reinjector.send(mail_from, rcpt_tos, data, options)

    def _check(self, data, mail_from: str, rcpt_tos: list[str]) -> gate.Verdict:
        if self.mode == "outgoing":
            return gate.check_outgoing(data, mail_from, rcpt_tos)
        return gate.check_incoming(
            data, mail_from, rcpt_tos, lambda rcpt: recipient_enforces_e2ee(self.config, rcpt)
        )


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
    pos, n = 0, len(data)
    while pos < n:
        stop = min(n, pos + _WRITE_CHUNK)
        if stop < n:
            nl = data.find(b"\n", stop)
            stop = n if nl < 0 else nl + 1
        chunk = bytes(data[pos:stop])
        if chunk[:1] == b".":
            chunk = b"." + chunk
        writer.write(chunk.replace(b"\n.", b"\n.."))
        await writer.drain()
        pos = stop
    if n and not data.endswith(b"\r\n"):
        writer.write(b"\r\n")
    writer.write(b".\r\n")
    await writer.drain()


def make_smtp(handler: FilterHandler) -> GateSMTP:
    return GateSMTP(
        handler,
        data_size_limit=handler.config.max_message_size,
        enable_SMTPUTF8=True,
        decode_data=False,
        hostname="filtermail",
        ident="filtermail",
        loop=asyncio.get_running_loop(),
    )


async def start(config: Config, mode: str, port: int | None = None) -> asyncio.Server:
    """Listen on 127.0.0.1 (the configured port unless given); returns the server."""
    handler = FilterHandler(config, mode)
    if port is None:
        port = (
            config.filtermail_smtp_port
            if mode == "outgoing"
            else config.filtermail_smtp_port_incoming
        )
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: make_smtp(handler), host=HOST, port=port)


async def serve(config: Config, mode: str) -> None:
    try:
        server = await start(config, mode)
    except OSError as e:
        raise SystemExit(f"filtermail: cannot listen on {HOST} ({mode}): {e}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("entering serving loop", file=sys.stderr, flush=True)
    await stop.wait()
    # Not waiting for open sessions: one cut mid-transaction never got a 250, so
    # Postfix answers its client with a temporary error and the client retries.
    server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="filtermail", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="path to chatmail.ini")
    parser.add_argument("mode", choices=["outgoing", "incoming"])
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
