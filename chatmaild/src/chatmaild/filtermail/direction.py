"""The two directions of the gate: what differs between outgoing and incoming mail.

Outgoing (submission -> ``filtermail_smtp_port`` -> reinject ``postfix_reinject_port``,
which DKIM-signs, or ``postfix_reinject_port_local`` when every recipient is an account
here): the sender is one of our users, so MAIL FROM is checked and rate limited;
recipients are anywhere. Incoming (port 25 -> ``filtermail_smtp_port_incoming`` -> reinject
``postfix_reinject_port_incoming``): the sender is another relay, and every recipient
must be an existing account here, refused at RCPT otherwise (no backscatter).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..config import Config
from . import gate, mime
from .ratelimit import RateLimiter
from .recipients import local_account, recipient_enforces_e2ee

log = logging.getLogger("filtermail")

RECIPIENT_LOOKUP_FAILED = "451 4.3.0 Recipient lookup failed, try again later"


class Direction:
    """Ports, SMTP rules and gate check of one direction; one instance per process."""

    name: str = ""
    log_prefix: str = ""
    # Whether MAIL FROM is rate limited per sender (only our own users are).
    rate_limited: bool = False

    def __init__(self, config: Config, listen_port: int, reinject_port: int) -> None:
        self.config = config
        self.listen_port = listen_port
        self.reinject_port = reinject_port

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.listen_port} -> {self.reinject_port}>"

    def reinject_port_for(self, rcpt_tos: Sequence[str]) -> int:
        """The Postfix listener that takes mail for these recipients."""
        return self.reinject_port

    def mail_from_refusal(self, address: str) -> str | None:
        """The reply refusing MAIL FROM ``address``, or None to accept it."""
        return None

    def rcpt_refusal(self, address: str) -> str | None:
        """The reply refusing RCPT TO ``address``, or None to accept it."""
        return None

    def check(self, data: gate.Buffer, mail_from: str, rcpt_tos: Sequence[str]) -> gate.Verdict:
        """The gate's verdict on a complete message."""
        raise NotImplementedError


class Outgoing(Direction):
    """Mail our users submit."""

    name = "outgoing"
    log_prefix = "Outgoing"
    rate_limited = True

    def __init__(self, config: Config, listen_port: int, reinject_port: int) -> None:
        super().__init__(config, listen_port, reinject_port)
        self.limiter = RateLimiter(config.max_user_send_per_minute, config.max_user_send_burst_size)
        # The operator's exemption, meant for benchmark accounts (chatmail.ini).
        self.exempt = config.rate_limit_exempt

    def mail_from_refusal(self, address: str) -> str | None:
        verdict = gate.check_mail_from(address)
        if not verdict.accept:
            return verdict.reply
        sender = mime.ascii_lower(address)
        if sender not in self.exempt and not self.limiter.allow(sender):
            log.info("Outgoing: Rate limited %s", address)
            return f"450 4.7.1: Too much mail from {address}"
        return None

    def check(self, data: gate.Buffer, mail_from: str, rcpt_tos: Sequence[str]) -> gate.Verdict:
        return gate.check_outgoing(data, mail_from, rcpt_tos)

    def reinject_port_for(self, rcpt_tos: Sequence[str]) -> int:
        # Mail that stays on this relay is not DKIM-signed: the signature would be
        # stripped before delivery (lmtp_header_cleanup) and signing is the costliest
        # step of a message. The local listener refuses any other domain, so a message
        # for another relay can never leave unsigned.
        domain = "@" + self.config.mail_domain
        if all(mime.ascii_lower(r).endswith(domain) for r in rcpt_tos):
            return self.config.postfix_reinject_port_local
        return self.reinject_port


class Incoming(Direction):
    """Mail other relays deliver to our users."""

    name = "incoming"
    log_prefix = "Incoming"

    def rcpt_refusal(self, address: str) -> str | None:
        # Refusing here, while the sending relay still holds the message, means an
        # unknown recipient never makes Postfix queue a bounce to a forged sender.
        try:
            account = local_account(self.config, address)
        except OSError as e:
            # The mailbox storage cannot be read: maybe an account, so no 550.
            log.warning("Recipient lookup at RCPT failed: %s", e.strerror)
            return RECIPIENT_LOOKUP_FAILED
        if account is None:
            log.info("Incoming: Rejected unknown recipient.")
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        return None

    def check(self, data: gate.Buffer, mail_from: str, rcpt_tos: Sequence[str]) -> gate.Verdict:
        return gate.check_incoming(
            data, mail_from, rcpt_tos, lambda rcpt: recipient_enforces_e2ee(self.config, rcpt)
        )


def for_name(config: Config, name: str) -> Direction:
    """The direction ``outgoing`` or ``incoming`` with its ports from ``config``."""
    if name == "outgoing":
        return Outgoing(config, config.filtermail_smtp_port, config.postfix_reinject_port)
    if name == "incoming":
        return Incoming(
            config, config.filtermail_smtp_port_incoming, config.postfix_reinject_port_incoming
        )
    raise ValueError(f"direction must be outgoing or incoming, not {name!r}")


NAMES = ("outgoing", "incoming")
