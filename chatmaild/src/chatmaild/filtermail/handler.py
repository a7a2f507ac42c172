"""aiosmtpd handler: the direction's rules at MAIL FROM and RCPT TO, gate and reinject at DATA."""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.smtp import SMTP, Envelope, Session

from . import gate
from .direction import Direction
from .reinject import Reinjector

log = logging.getLogger("filtermail")

HOST = "127.0.0.1"
# Large messages are checked in a worker thread so other connections keep moving.
THREAD_THRESHOLD = 1 << 18
TEMPORARY_ERROR = "451 4.3.0 Internal error, try again later"


class FilterHandler:
    """One per process; every SMTP session of the direction shares it."""

    def __init__(self, direction: Direction) -> None:
        self.direction = direction
        self.config = direction.config
        self.reinjectors: dict[int, Reinjector] = {}

    def reinjector(self, rcpt_tos) -> Reinjector:
        port = self.direction.reinject_port_for(rcpt_tos)
        if port not in self.reinjectors:
            self.reinjectors[port] = Reinjector(HOST, port)
        return self.reinjectors[port]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options
    ) -> str:
        refusal = self.direction.mail_from_refusal(address)
        if refusal is not None:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options
    ) -> str:
        refusal = self.direction.rcpt_refusal(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_exception(self, error: Exception) -> str:
        """Any other failure in a session is temporary for the client (aiosmtpd says 500)."""
        log.error("Internal error in an SMTP session: %r", error)
        return TEMPORARY_ERROR

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
        check = self.direction.check
        if len(data) > THREAD_THRESHOLD:
            verdict = await asyncio.to_thread(check, data, mail_from, rcpt_tos)
        else:
            verdict = check(data, mail_from, rcpt_tos)
        if not verdict.accept:
            return verdict.reply
        options = [o for o in envelope.mail_options if o.startswith("BODY=") or o == "SMTPUTF8"]
        return await self.reinjector(rcpt_tos).send(mail_from, rcpt_tos, data, options)
