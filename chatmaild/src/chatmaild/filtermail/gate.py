"""The encryption gate as a pure function: message bytes + envelope -> Verdict.

Newest reference semantics (reference-behaviour §3.2-3.4): only PGP/MIME encrypted mail
passes, with three narrow exceptions (securejoin requests, a self-sent Autocrypt Setup
Message outgoing, mailer-daemon reports incoming). Every uncertainty refuses the message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import mime, openpgp

log = logging.getLogger("filtermail")

Buffer = bytes | bytearray

ENCRYPTION_NEEDED = "523 Encryption Needed: Invalid Unencrypted Mail"
OK = "250 OK"
INTERNAL_ERROR = "451 4.3.0 Internal error, message refused; try again later"

# RFC 2046 §5.1.1 tells MUAs to ignore preamble and epilogue; PGP/MIME writers put at
# most a one-line notice there, so anything bigger is a cleartext carrier.
MAX_PREAMBLE = 1024


@dataclass(frozen=True)
class Verdict:
    """What to answer; ``accept`` means hand the message on unchanged."""

    accept: bool
    reply: str


ACCEPT = Verdict(True, OK)


class Message:
    """A received message: top-level headers parsed, the body left in place."""

    def __init__(self, data: Buffer) -> None:
        self.data = data
        self.headers, self.body_start = mime.split_header_section(data, 0, len(data))
        self.content_type = mime.content_type_of(self.headers)

    def from_address(self) -> str:
        """The single From: address (RFC 5322 §3.6: exactly one From field)."""
        values = self.headers.get_all("from")
        if len(values) != 1:
            raise mime.AddressError(f"{len(values)} From: header fields")
        return mime.parse_single_address(values[0])

    def header_text(self, name: str) -> str | None:
        value = self.headers.get_one(name)
        if value is None:
            return None
        return value.decode("utf-8", "replace").strip()

    def multipart(self) -> mime.Multipart | None:
        ct = self.content_type
        if ct is None or not ct.is_multipart or "boundary" not in ct.params:
            return None
        try:
            return mime.split_multipart(
                self.data, self.body_start, len(self.data), ct.params["boundary"]
            )
        except mime.ParseError:
            return None


def _part_type(part: mime.Entity) -> str | None:
    ct = mime.content_type_of(part.headers)
    return None if ct is None else ct.mime_type


def _region_size(region: tuple[int, int]) -> int:
    return region[1] - region[0]


def _region_is_blank(data: Buffer, region: tuple[int, int]) -> bool:
    return not bytes(data[region[0] : region[1]]).strip()


def is_encrypted(msg: Message, incoming: bool) -> bool:
    """RFC 3156 §4 PGP/MIME with an encrypted OpenPGP message inside (reference §3.3)."""
    if msg.content_type is None or msg.content_type.mime_type != "multipart/encrypted":
        return False
    # RFC 2045 §6.4: a multipart entity is never transfer-encoded.
    if not mime.has_identity_encoding(msg.headers):
        return False
    mp = msg.multipart()
    if mp is None or len(mp.parts) != 2:
        return False
    if _region_size(mp.preamble) > MAX_PREAMBLE or _region_size(mp.epilogue) > MAX_PREAMBLE:
        return False
    control, payload = mp.parts
    if _part_type(control) != "application/pgp-encrypted":
        return False
    if _part_type(payload) != "application/octet-stream":
        return False
    if not (
        mime.has_identity_encoding(control.headers) and mime.has_identity_encoding(payload.headers)
    ):
        return False
    # RFC 3156 §4: the control part says "Version: 1".
    if bytes(msg.data[control.body_start : control.body_end]).strip() != b"Version: 1":
        return False
    return openpgp.is_armored_message(
        msg.data, payload.body_start, payload.body_end, allow_version=incoming
    )


_SECUREJOIN_STEPS = ("vc-request", "vg-request")


def is_securejoin(msg: Message) -> bool:
    """A Delta Chat securejoin request, which must travel before keys are known."""
    if msg.header_text("secure-join") not in _SECUREJOIN_STEPS:
        return False
    mp = msg.multipart()
    if mp is None or len(mp.parts) != 1:
        return False
    if not (_region_is_blank(msg.data, mp.preamble) and _region_is_blank(msg.data, mp.epilogue)):
        return False
    (part,) = mp.parts
    if _part_type(part) != "text/plain" or not mime.has_identity_encoding(part.headers):
        return False
    body = bytes(msg.data[part.body_start : part.body_end]).strip().lower()
    return body in (b"secure-join: vc-request", b"secure-join: vg-request")


def is_autocrypt_setup_message(msg: Message, from_addr: str, rcpt_tos: Sequence[str]) -> bool:
    """Autocrypt §4.4 setup message, sent to oneself only."""
    return (
        len(rcpt_tos) == 1
        and mime.ascii_lower(rcpt_tos[0]) == mime.ascii_lower(from_addr)
        and msg.header_text("subject") == "Autocrypt Setup Message"
        and msg.content_type is not None
        and msg.content_type.mime_type == "multipart/mixed"
    )


def is_mailer_daemon_report(msg: Message) -> str | None:
    """The From address of an RFC 3464 bounce by a mailer daemon, else None."""
    auto_submitted = msg.header_text("auto-submitted")
    if not auto_submitted:
        return None
    if msg.content_type is None or msg.content_type.mime_type != "multipart/report":
        return None
    try:
        addr = msg.from_address()
    except mime.AddressError:
        return None
    if not mime.ascii_lower(addr).startswith("mailer-daemon@"):
        return None
    return addr


def check_mail_from(mail_from: str) -> Verdict:
    """Outgoing MAIL FROM must be a plain address with exactly one '@'."""
    if mail_from.count("@") != 1 or mail_from in ("<>", ""):
        return Verdict(False, f"500 Invalid from address <{mail_from}>")
    return ACCEPT


def _parse(data: Buffer) -> Message | Verdict:
    try:
        return Message(data)
    except mime.ParseError as e:
        return Verdict(False, f"500 Failed to parse message: {e}")


def _fail_closed(check):
    def wrapper(*args, **kwargs) -> Verdict:
        try:
            return check(*args, **kwargs)
        except Exception:
            log.exception("Refusing mail after an internal error")
            return Verdict(False, INTERNAL_ERROR)

    wrapper.__doc__ = check.__doc__
    wrapper.__name__ = check.__name__
    return wrapper


@_fail_closed
def check_outgoing(data: Buffer, mail_from: str, rcpt_tos: Sequence[str]) -> Verdict:
    """Verdict for mail a local user submits (reference §3.2 outgoing)."""
    msg = _parse(data)
    if isinstance(msg, Verdict):
        return msg
    try:
        from_addr = msg.from_address()
    except mime.AddressError as e:
        return Verdict(False, f"500 Invalid FROM header: {e}")
    if mime.ascii_lower(from_addr) != mime.ascii_lower(mail_from):
        return Verdict(False, f"500 Invalid FROM <{from_addr}> for <{mail_from}>")
    if is_encrypted(msg, incoming=False):
        log.info("Outgoing: Filtering encrypted mail.")
        return ACCEPT
    log.info("Outgoing: Filtering unencrypted mail.")
    if is_securejoin(msg):
        return ACCEPT
    if is_autocrypt_setup_message(msg, from_addr, rcpt_tos):
        return ACCEPT
    log.info("Outgoing: Rejected unencrypted mail.")
    return Verdict(False, ENCRYPTION_NEEDED)


@_fail_closed
def check_incoming(
    data: Buffer,
    mail_from: str,
    rcpt_tos: Sequence[str],
    enforces_e2ee: Callable[[str], bool],
) -> Verdict:
    """Verdict for mail arriving on port 25 (reference §3.2 incoming).

    ``enforces_e2ee(rcpt)`` says whether a recipient refuses cleartext; it must answer
    True for anything that is not a local account, so unknown means refused.
    """
    msg = _parse(data)
    if isinstance(msg, Verdict):
        return msg
    if is_encrypted(msg, incoming=True):
        log.info("Incoming: Filtering encrypted mail.")
        return ACCEPT
    log.info("Incoming: Filtering unencrypted mail.")
    if is_securejoin(msg):
        return ACCEPT
    daemon = is_mailer_daemon_report(msg)
    if daemon is not None:
        log.info("Incoming: Filtering mailer-daemon message from %s", daemon)
        return ACCEPT
    if any(enforces_e2ee(rcpt) for rcpt in rcpt_tos):
        log.info("Incoming: Rejected unencrypted mail.")
        return Verdict(False, ENCRYPTION_NEEDED)
    return ACCEPT
