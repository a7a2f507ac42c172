"""``POST /mxdeliv``: relay-to-relay delivery over HTTPS, the same checks as port 25.

Other relays whose outgoing port 25 is blocked post mail here (newest-reference §1):
``X-MAIL-FROM`` (absent: the null sender), one ``X-MAIL-TO`` per recipient, the body
the DATA bytes as SMTP sends them (CRLF, dot-stuffed, no final dot line). nginx passes
``/mxdeliv`` from its HTTPS server to this plain-HTTP listener on 127.0.0.1, which runs
in the filtermail-incoming process and drives its :class:`FilterHandler` exactly as an
SMTP session on port 25 does: the RCPT rule, the incoming gate, then reinjection into
Postfix's 10026 listener where OpenDKIM verifies; Postfix's reply becomes ours.

Statuses: 200 ``250 OK``; 400 with the SMTP reply line for a refusal (a 4xx line there
is still a temporary refusal); 503 with a 4xx line when this side cannot take mail right
now (Postfix unreachable, memory budget or request cap full, internal error), so that
even a sender that reads only the status retries or falls back to SMTP instead of
bouncing; 405 for anything but POST; 408 when the body is too slow; 413 ``552 ...``
above ``max_message_size``.

Stricter than the reference: unknown local recipients (550 5.1.1) and recipients of
other domains (554 5.7.1, no relaying) are refused before anything is read, and a
request with any refused recipient delivers nothing: per-recipient results need SMTP,
which a sender falls back to on any non-2xx.

One log line per request, for the mtail counter (``chatmail.mtail``):
``mxdeliv: <http status> <smtp code> from <client ip> rcpts=<n>``.
"""

from __future__ import annotations

import asyncio
import logging
import re

from aiohttp import web
from aiosmtpd.smtp import Envelope

from . import gate
from .direction import RECIPIENT_LOOKUP_FAILED
from .handler import HOST, TEMPORARY_ERROR, FilterHandler
from .mime import ascii_lower
from .smtpserver import MAX_RECIPIENTS, NO_MEMORY, TOO_BIG, TOO_MANY_RECIPIENTS, MemoryBudget

log = logging.getLogger("filtermail")
# The one line per request (chatmail.mtail counts them by status and reply code).
LOG_FORMAT = "mxdeliv: %d %s from %s rcpts=%d"

PATH = "/mxdeliv"
# Whole body, from the first byte to the last. nginx buffers the body before it passes
# it on (a slow sender is nginx's problem), so this only bounds local clients and a
# stalled nginx; a 30 MiB body over loopback takes well under a second.
BODY_TIMEOUT = 60.0
# Requests in progress at once in this process; each may hold a message in memory, the
# shared MemoryBudget is the real cap, this one bounds the parsing work queued up.
MAX_CONCURRENT = 32
READ_CHUNK = 1 << 16
# Header limits of the HTTP parser: an address is at most 320 bytes (RFC 5321 §4.5.3.1),
# and one header per recipient plus nginx's few.
MAX_FIELD_SIZE = 1024
MAX_HEADERS = MAX_RECIPIENTS + 32

OK = gate.OK
INVALID_DATA = "500 Invalid DATA"
BAD_SENDER = "501 5.1.7 Bad sender address syntax"
BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"
NO_RECIPIENTS = "554 5.5.1 Error: no valid recipients"
BUSY = "421 4.3.2 Too many concurrent deliveries, try again later"
BODY_TOO_SLOW = "451 4.4.2 Timeout while reading the message, try again later"
# What the Reinjector answers when Postfix could not be reached or did not answer.
_REINJECT_FAILED = "451 4.4.2 Reinject failed"
# Replies meaning "this relay cannot take mail right now", not "this message is refused".
_UNAVAILABLE = (NO_MEMORY, BUSY, TEMPORARY_ERROR, gate.INTERNAL_ERROR, RECIPIENT_LOOKUP_FAILED)

# One address without brackets, parameters, comments or white space; non-ASCII is
# allowed (SMTPUTF8). Anything the Reinjector would put inside MAIL FROM:<...> must match.
_ADDRESS = re.compile(r"^[^\s<>()\[\]\\,;:\"@\x00-\x1f\x7f]+@[^\s<>()\[\]\\,;:\"@\x00-\x1f\x7f]+$")


def body_limit(max_message_size: int) -> int:
    """Bytes of (dot-stuffed) body accepted; nginx's ``client_max_body_size`` is the same.

    Dot-stuffing adds one byte to each line starting with a dot; 1/16 on top plus 64 KiB
    covers any real message, and the unstuffed size is then checked exactly.
    """
    return max_message_size + max_message_size // 16 + (1 << 16)


def unstuff(raw: bytes | bytearray) -> bytes | None:
    """The message in ``raw`` SMTP DATA bytes with dot-stuffing undone; None if malformed.

    Malformed is what SMTP DATA could not carry: not ending in CRLF, a CR or LF that is
    not part of a CRLF, or a line that is a lone dot (it would end the data).
    """
    if not raw.endswith(b"\r\n"):
        return None
    crlf = raw.count(b"\r\n")
    if raw.count(b"\r") != crlf or raw.count(b"\n") != crlf:
        return None
    if raw.startswith(b".\r\n") or b"\r\n.\r\n" in raw:
        return None
    # A leading dot of every line is the stuffing (RFC 5321 §4.5.2), as Postfix strips it.
    data = bytes(raw).replace(b"\r\n.", b"\r\n")
    return data[1:] if data.startswith(b".") else data


def _address(value: str) -> str | None:
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return value if _ADDRESS.match(value) else None


def _status(reply: str) -> int:
    if reply.startswith("2"):
        return 200
    if reply.startswith(_REINJECT_FAILED) or reply in _UNAVAILABLE:
        return 503
    return 400


class MxDeliv:
    """The ``/mxdeliv`` endpoint of one filtermail-incoming process."""

    def __init__(
        self,
        handler: FilterHandler,
        budget: MemoryBudget,
        body_timeout: float = BODY_TIMEOUT,
        max_concurrent: int = MAX_CONCURRENT,
    ) -> None:
        self.handler = handler
        self.config = handler.config
        self.budget = budget
        self.body_timeout = body_timeout
        self.max_concurrent = max_concurrent
        self.active = 0
        self.limit = body_limit(self.config.max_message_size)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limit)
        app.router.add_route("*", PATH, self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        """One request: the reply and its log line."""
        client = request.headers.get("X-Real-IP") or request.remote or "?"
        rcpts = request.headers.getall("X-MAIL-TO", [])
        if request.method != "POST":
            return self._reply(405, "Method Not Allowed", client, rcpts, allow="POST")
        if self.active >= self.max_concurrent:
            return self._reply(503, BUSY, client, rcpts)
        self.active += 1
        try:
            status, reply = await self._deliver(request, rcpts)
        except Exception:
            log.exception("mxdeliv: internal error")
            status, reply = 503, gate.INTERNAL_ERROR
        finally:
            self.active -= 1
        return self._reply(status, reply, client, rcpts)

    def _reply(self, status: int, text: str, client: str, rcpts, allow: str = "") -> web.Response:
        code = text[:3] if text[:3].isdigit() else "-"
        log.info(LOG_FORMAT, status, code, client, len(rcpts))
        headers = {"Allow": allow} if allow else None
        if status == 503:
            headers = {"Retry-After": "60"}
        return web.Response(status=status, text=text, headers=headers)

    async def _deliver(self, request: web.Request, rcpts: list[str]) -> tuple[int, str]:
        if request.content_length is not None and request.content_length > self.limit:
            return 413, TOO_BIG
        # The envelope first, as SMTP has it before DATA: a refusal reads no body.
        envelope = Envelope()
        sender = request.headers.get("X-MAIL-FROM", "").strip()
        if sender in ("", "<>"):
            mail_from = "<>"
        else:
            mail_from = _address(sender)
            if mail_from is None:
                return 400, BAD_SENDER
        reply = await self.handler.handle_MAIL(None, None, envelope, mail_from, [])
        if not reply.startswith("250"):
            return _status(reply), reply
        if not rcpts:
            return 400, NO_RECIPIENTS
        if len(rcpts) > MAX_RECIPIENTS:
            return 400, TOO_MANY_RECIPIENTS
        domain = "@" + self.config.mail_domain
        for value in rcpts:
            rcpt = _address(value)
            if rcpt is None:
                return 400, BAD_RECIPIENT
            if not ascii_lower(rcpt).endswith(domain):
                # Postfix's words for reject_unauth_destination on port 25.
                return 400, f"554 5.7.1 <{rcpt}>: Relay access denied"
            reply = await self.handler.handle_RCPT(None, None, envelope, rcpt, [])
            if not reply.startswith("250"):
                return _status(reply), reply
        body = _Body(self.budget)
        try:
            try:
                async with asyncio.timeout(self.body_timeout):
                    refusal = await body.read(request, self.limit)
            except TimeoutError:
                return 408, BODY_TOO_SLOW
            if refusal is not None:
                return refusal
            data = unstuff(body.raw)
            body.raw = bytearray()
            if data is None:
                return 400, INVALID_DATA
            if len(data) > self.config.max_message_size:
                return 413, TOO_BIG
            envelope.content = data
            if any(ord(c) > 127 for c in mail_from + "".join(envelope.rcpt_tos)):
                envelope.mail_options.append("SMTPUTF8")
            if not data.isascii():
                envelope.mail_options.append("BODY=8BITMIME")
            reply = await self.handler.handle_DATA(None, None, envelope)
            return _status(reply), reply
        finally:
            body.release()


class _Body:
    """A request body read into memory against the process's shared DATA budget.

    The unstuffed copy made from it is not counted: it lives only while the gate and
    the reinject run, like the parse overhead the SMTP side does not count either.
    """

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.raw = bytearray()
        self.held = 0

    async def read(self, request: web.Request, limit: int) -> tuple[int, str] | None:
        """Read the whole body; the refusal if it exceeds ``limit`` or the budget."""
        while True:
            chunk = await request.content.read(READ_CHUNK)
            if not chunk:
                return None
            if len(self.raw) + len(chunk) > limit:
                return 413, TOO_BIG
            if not self.budget.take(len(chunk)):
                return 503, NO_MEMORY
            self.held += len(chunk)
            self.raw += chunk

    def release(self) -> None:
        self.raw = bytearray()
        self.budget.give_back(self.held)
        self.held = 0


async def start(
    handler: FilterHandler, budget: MemoryBudget, port: int, host: str = HOST, **options
) -> web.AppRunner:
    """Serve ``/mxdeliv`` on ``host:port``; ``options`` go to :class:`MxDeliv`."""
    runner = web.AppRunner(
        MxDeliv(handler, budget, **options).app(),
        access_log=None,
        max_field_size=MAX_FIELD_SIZE,
        max_line_size=MAX_FIELD_SIZE + 64,
        max_headers=MAX_HEADERS,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
