"""The SMTP server side of the proxy: aiosmtpd's SMTP with a bulk DATA reader.

aiosmtpd 1.4.6 keeps every DATA line as its own object and then joins them, which costs
about three times the message size and one Python iteration per line; here DATA is read
in chunks into one bytearray per message, and all concurrent transfers of the process
share one :class:`MemoryBudget`. Relies on aiosmtpd internals (``_reader``,
``_getaddr``) and on asyncio's ``StreamReader._buffer``, hence the pinned version.
"""

from __future__ import annotations

import asyncio
import re

from aiosmtpd.smtp import SMTP

# Lines read from the client outside DATA; longer ones are answered "500 Command line
# too long" by aiosmtpd, after it read and dropped the rest of the line.
READ_LIMIT = 1 << 16
# How much DATA one read takes from the connection at most.
DATA_CHUNK = 1 << 17
# Postfix's smtpd_recipient_limit default; Postfix never passes more to the proxy.
MAX_RECIPIENTS = 1000

TOO_BIG = "552 5.3.4 Message exceeds maximum size"
NO_MEMORY = "452 4.3.1 Insufficient system resources, try again later"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"

_END = b"\r\n.\r\n"
# Proper prefixes of _END, longest first: the tail of a chunk that may still become the
# end of data (or a dot-stuffed line start) once the next chunk arrives.
_END_PREFIXES = (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")

_PLAIN_PATH = re.compile(r"^\s*<([A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+)>\s*(.*)$")
_KNOWN_MAIL_PARAM = re.compile(r"^(SIZE=|BODY=|SMTPUTF8$)", re.IGNORECASE)


class MemoryBudget:
    """Bytes of DATA that all sessions of one process may hold at the same time.

    Each message is capped at ``max_message_size`` already, but Postfix runs up to
    ``max_smtp_connections`` sessions through the proxy at once; without a shared cap a
    burst of large messages could take gigabytes. ``limit`` None means no cap.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        """Reserve ``n`` bytes; False (and nothing reserved) if that exceeds the limit."""
        if self.limit is not None and self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give_back(self, n: int) -> None:
        self.used -= n


class GateSMTP(SMTP):
    """aiosmtpd's SMTP with a bulk DATA reader and a shared DATA memory budget.

    DSN parameters (RFC 3461 NOTIFY, ORCPT, RET, ENVID) are accepted and dropped, since
    Postfix passes them through and the reinject hop does not need them.
    """

    line_length_limit = READ_LIMIT

    def __init__(self, handler, *args, budget: MemoryBudget | None = None, **kwargs) -> None:
        super().__init__(handler, *args, **kwargs)
        self.budget = budget if budget is not None else MemoryBudget(None)
        # Why the last _read_content returned None: TOO_BIG or NO_MEMORY.
        self.data_refusal: str | None = None
        self._held = 0  # bytes of the budget the current message holds

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
        # RFC 5321 §4.5.3.1.10: more recipients than we take get 452, and the client
        # sends the rest in another transaction.
        if self.envelope is not None and len(self.envelope.rcpt_tos) >= MAX_RECIPIENTS:
            await self.push(TOO_MANY_RECIPIENTS)
            return
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
        try:
            content = await self._read_content()
            if content is None:
                self._set_post_data_state()
                await self.push(self.data_refusal or TOO_BIG)
                return
            self.envelope.content = content
            status = await self._call_handler_hook("DATA")
            # Drop our reference before the budget is given back.
            self._set_post_data_state()
            del content
        finally:
            self._release()
        await self.push(status)

    def _release(self) -> None:
        self.budget.give_back(self._held)
        self._held = 0

    async def _read_content(self) -> bytearray | None:
        """Read up to the lone dot, undoing dot-stuffing (RFC 5321 §4.5.2).

        Only CRLF.CRLF ends the data. None if the message exceeds ``data_size_limit``
        (``data_refusal`` is then TOO_BIG) or the process's memory budget (NO_MEMORY);
        the rest is still read and discarded so the session stays in sync. The budget
        this message holds is given back by the caller, or here on any error.
        """
        try:
            return await self._read_chunks()
        except BaseException:
            self._release()
            raise

    async def _read_chunks(self) -> bytearray | None:
        reader = self._reader
        limit = self.data_size_limit
        content = bytearray()
        size = 0  # unstuffed bytes seen, also while discarding
        discard = False
        self.data_refusal = None
        # The data starts at a line start: a virtual CRLF in front lets the same search
        # find a lone dot (and a stuffed one) on the first line; it is cut off below.
        tail = b"\r\n"
        virtual = 2
        while True:
            chunk = await reader.read(DATA_CHUNK)
            if not chunk:
                raise asyncio.IncompleteReadError(tail, None)
            # aiosmtpd's timeout (300 s) counts from the DATA command; restart it on
            # progress so a large message on a slow link is not cut off mid-transfer.
            self._reset_timeout()
            window = tail + chunk if tail else chunk
            end = window.find(_END)
            if end >= 0:
                seg, tail = window[: end + 2], b""
                # Whatever the client pipelined after the dot is the next command.
                _unread(reader, window[end + 5 :])
            else:
                keep = _pending_end(window)
                seg, tail = (window[:-keep], window[-keep:]) if keep else (window, b"")
            if seg:
                # No "\r\n." is ever split between seg and tail (tail starts with CR).
                seg = seg.replace(b"\r\n.", b"\r\n")
                if virtual:
                    seg, virtual = seg[virtual:], 0
                size += len(seg)
                if not discard:
                    if limit and size > limit:
                        discard, self.data_refusal = True, TOO_BIG
                    elif not self.budget.take(len(seg)):
                        discard, self.data_refusal = True, NO_MEMORY
                    else:
                        self._held += len(seg)
                        content += seg
                    if discard:
                        content = bytearray()
                        self._release()
                elif limit and size > limit:
                    # Permanent beats temporary: retrying a too-big message is useless.
                    self.data_refusal = TOO_BIG
            if end >= 0:
                return None if discard else content


def _pending_end(window: bytes) -> int:
    """Length of the longest tail of ``window`` that is a proper prefix of CRLF.CRLF."""
    for prefix in _END_PREFIXES:
        if window.endswith(prefix):
            return len(prefix)
    return 0


def _unread(reader: asyncio.StreamReader, data: bytes) -> None:
    # asyncio has no public unread; its buffer has been this bytearray since 3.4
    # (aiosmtpd clears it the same way for STARTTLS).
    if data:
        reader._buffer[:0] = data  # type: ignore[attr-defined]
