"""The encryption gate as a pure function: message bytes + envelope -> Verdict.

Newest reference semantics (reference-behaviour §3.2-3.4): only PGP/MIME encrypted mail
passes, with three narrow exceptions (a securejoin request to one recipient, a self-sent
Autocrypt Setup Message outgoing, a delivery status notification from a mailer daemon
incoming). Every uncertainty refuses the message, and parsing is bounded (``mime``'s
limits), so hostile input costs little and never reaches an internal error.

Accepted shapes (everything else is refused):

- Encrypted (RFC 3156 §4): ``multipart/encrypted`` with ``protocol`` equal to
  ``application/pgp-encrypted`` (ASCII case-insensitive), identity transfer encoding,
  preamble and epilogue empty or one printable ASCII line of at most 200 octets that is
  neither header-like nor starts with "-", and exactly two parts. Part header fields are
  limited to Content-Type, Content-Transfer-Encoding (7bit/8bit/binary),
  Content-Disposition (``inline``/``attachment``, optional short ``filename``) and
  Content-Description with one of the labels PGP/MIME writers use ("PGP/MIME version
  identification", "PGP/MIME Versions Identification", "OpenPGP encrypted message",
  "Encrypted message"). The control part has no parameters and says ``Version: 1``; the
  payload part may carry a short ``name`` and holds one armored PKESK/SKESK* SEIPD message.
- Securejoin ``vc-request``/``vg-request`` to exactly one recipient: ``multipart/mixed``,
  no preamble or epilogue text, one ``text/plain`` part with only Content-Type and
  Content-Transfer-Encoding, body ``Secure-Join: <the header's step>``.
- Autocrypt Setup Message (outgoing, to oneself only): ``Autocrypt-Setup-Message: v1``,
  ``multipart/mixed``, an optional short ``text/plain`` description, then one
  ``application/autocrypt-setup`` part whose (identity or base64) body is the armored
  SKESK+SEIPD message with ``Passphrase-*`` armor headers, at most wrapped in a short
  HTML page as Delta Chat writes it.
- Delivery status notification (incoming): null envelope sender, ``Auto-Submitted`` not
  ``no``, From ``mailer-daemon@…``, ``multipart/report; report-type=delivery-status``
  with ``text/plain``, ``message/delivery-status`` and optionally ``message/rfc822``,
  ``text/rfc822-headers`` or ``message/global-headers``; no bare CR/LF/NUL.
- Any other mail incoming, if no recipient enforces E2EE; the top-level header section,
  From and Content-Type checks still apply to it.

Replies:

- ``250 OK``: accepted, handed on unchanged.
- ``523 Encryption Needed: Invalid Unencrypted Mail``: well-formed, but not one of the
  accepted shapes (not encrypted, a part beyond the shape, a header field the shape does
  not allow, a wrong ``protocol=``, a preamble that is more than a one-line notice).
- ``500 Failed to parse message: <reason>``: malformed or ambiguous structure that
  parsers read differently: obs-syntax field names (``Subject : x``), bare CR/LF or NUL
  in header sections or around delimiters, duplicated structural header fields, an
  unparsable Content-Type, RFC 2231 parameters on a structural Content-Type, a line that
  looks like a delimiter but is not one, a missing close delimiter.
- ``552 5.3.4 Message structure exceeds limits: <what>``: a header, part or line limit of
  ``mime`` was exceeded (checked while parsing; parsing stops there).
- ``500 Invalid FROM header: <reason>``: not exactly one From field with one plain
  address (both directions); ``500 Invalid FROM <from> for <mail from>`` outgoing.
- ``451 4.3.0 Internal error ...``: a bug; the message is refused, never passed.
"""

from __future__ import annotations

import binascii
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import mime, openpgp

log = logging.getLogger("filtermail")

Buffer = bytes | bytearray

ENCRYPTION_NEEDED = "523 Encryption Needed: Invalid Unencrypted Mail"
OK = "250 OK"
INTERNAL_ERROR = "451 4.3.0 Internal error, message refused; try again later"
LIMIT_EXCEEDED = "552 5.3.4 Message structure exceeds limits"
UNPARSABLE = "500 Failed to parse message"

# RFC 2046 §5.1.1 tells MUAs to ignore preamble and epilogue. Writers put at most one
# notice line there ("This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)",
# Postfix's "This is a MIME-encapsulated message."); anything else is a cleartext
# carrier or a second structure for lenient parsers.
MAX_NOTICE = 200
_NOTICE = re.compile(rb"(?:\r\n)*(?:[\x20-\x7e]{1,%d}(?:\r\n)*)?" % MAX_NOTICE)
_NOT_A_NOTICE = re.compile(rb"[ \t]*-|[\x21-\x39\x3b-\x7e]+[ \t]*:")
_BLANK = re.compile(rb"(?:\r\n)*")

# Header fields whose duplicates would make the gate and the MUA see different mail.
# From is left to ``Message.from_address`` for its own reply text.
_STRUCTURAL_FIELDS = (
    "content-type",
    "content-transfer-encoding",
    "mime-version",
    "subject",
    "secure-join",
    "auto-submitted",
    "autocrypt-setup-message",
)
_PART_FIELDS = (
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "content-description",
)


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
        self.headers.require_unique(_STRUCTURAL_FIELDS)
        self.content_type = mime.content_type_of(self.headers)
        if self.content_type.is_multipart and self.content_type.has_extended_params:
            raise mime.ParseError(f"RFC 2231 parameter on {self.content_type.mime_type}")

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

    def multipart(self, subtype: str) -> mime.Multipart | None:
        """The top-level parts if the message is ``multipart/<subtype>`` and not encoded.

        RFC 2045 §6.4: a multipart entity is never transfer-encoded.
        """
        ct = self.content_type
        if ct.mime_type != f"multipart/{subtype}" or "boundary" not in ct.params:
            return None
        if not mime.has_identity_encoding(self.headers):
            return None
        return mime.split_multipart(
            self.data, self.body_start, len(self.data), ct.params["boundary"]
        )

    def region(self, start: int, end: int, limit: int) -> bytes | None:
        """A copy of ``data[start:end]`` if it is at most ``limit`` bytes, else None."""
        if end - start > limit:
            return None
        return bytes(self.data[start:end])


def _is_notice(msg: Message, region: tuple[int, int]) -> bool:
    text = msg.region(*region, MAX_NOTICE + 16)
    if text is None or not _NOTICE.fullmatch(text):
        return False
    return not _NOT_A_NOTICE.match(text.lstrip(b"\r\n"))


def _is_blank(msg: Message, region: tuple[int, int]) -> bool:
    text = msg.region(*region, 16)
    return text is not None and _BLANK.fullmatch(text) is not None


def _part_fields_allowed(part: mime.Entity, allowed: set[str]) -> bool:
    part.headers.require_unique(_PART_FIELDS)
    return part.headers.names() <= allowed


def _short_params(ct_params: dict[str, str], allowed: set[str], size: int = 64) -> bool:
    return set(ct_params) <= allowed and all(
        len(v) <= size and v.isascii() and v.isprintable() for v in ct_params.values()
    )


# What RFC 3156 writers (Delta Chat, Thunderbird, GnuPG-based MUAs) put in the part
# headers of the encrypted shape. Content-Description is a short fixed label; a free-form
# value would carry cleartext past the gate.
_PGP_PART_FIELDS = {
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "content-description",
}
_PGP_DESCRIPTIONS = {
    b"pgp/mime version identification",
    b"pgp/mime versions identification",
    b"openpgp encrypted message",
    b"encrypted message",
}
_FILENAME = re.compile(r"[A-Za-z0-9._ -]{1,64}")
# Delta Chat 2.65 labels both PGP/MIME parts `charset="utf-8"` (seen on the wire in the lab).
_CHARSETS = {"us-ascii", "utf-8"}
_CONTROL_BODY = re.compile(rb"(?:[ \t]*\r\n)*Version: 1[ \t]*(?:\r\n[ \t]*)*")


def _pgp_part_ok(part: mime.Entity, mime_type: str, params: set[str]) -> bool:
    if not _part_fields_allowed(part, _PGP_PART_FIELDS):
        return False
    ct = mime.structural_content_type(part.headers)
    if ct.mime_type != mime_type or not set(ct.params) <= params:
        return False
    charset = ct.params.get("charset")
    if charset is not None and charset.lower() not in _CHARSETS:
        return False
    if not all(_FILENAME.fullmatch(v) for k, v in ct.params.items() if k != "charset"):
        return False
    if not mime.has_identity_encoding(part.headers):
        return False
    description = part.headers.get_one("content-description")
    if description is not None and description.strip(b" \t").lower() not in _PGP_DESCRIPTIONS:
        return False
    disposition = part.headers.get_one("content-disposition")
    if disposition is not None:
        parsed = mime.parse_disposition(disposition)
        if parsed is None or parsed[0] not in ("inline", "attachment"):
            return False
        if set(parsed[1]) - {"filename"}:
            return False
        if "filename" in parsed[1] and not _FILENAME.fullmatch(parsed[1]["filename"]):
            return False
    return True


def is_encrypted(msg: Message, incoming: bool) -> bool:
    """RFC 3156 §4 PGP/MIME with an encrypted OpenPGP message inside (reference §3.3)."""
    ct = msg.content_type
    if ct.mime_type != "multipart/encrypted":
        return False
    # RFC 3156 §4: protocol="application/pgp-encrypted" is required.
    if ct.params.get("protocol", "").lower() != "application/pgp-encrypted":
        return False
    mp = msg.multipart("encrypted")
    if mp is None or len(mp.parts) != 2:
        return False
    if not (_is_notice(msg, mp.preamble) and _is_notice(msg, mp.epilogue)):
        return False
    control, payload = mp.parts
    if not _pgp_part_ok(control, "application/pgp-encrypted", {"charset"}):
        return False
    if not _pgp_part_ok(payload, "application/octet-stream", {"name", "charset"}):
        return False
    # RFC 3156 §4: the control part says "Version: 1".
    body = msg.region(control.body_start, control.body_end, 64)
    if body is None or not _CONTROL_BODY.fullmatch(body):
        return False
    return openpgp.is_armored_message(
        msg.data, payload.body_start, payload.body_end, allow_version=incoming
    )


_SECUREJOIN_STEPS = ("vc-request", "vg-request")
_SECUREJOIN_BODY = re.compile(rb"(?:\r\n)*secure-join: (v[cg]-request)(?:\r\n)*", re.IGNORECASE)
_TEXT_PARAMS = {"charset", "format", "delsp", "protected-headers"}


def is_securejoin(msg: Message, rcpt_tos: Sequence[str]) -> bool:
    """A Delta Chat securejoin request to one peer, which must travel before keys are known.

    Shape (reference §3.4, narrowed): one recipient, ``multipart/mixed`` with exactly one
    ``text/plain`` part whose body is ``Secure-Join: <step>`` for the header's step.
    """
    step = msg.header_text("secure-join")
    if step not in _SECUREJOIN_STEPS or len(rcpt_tos) != 1:
        return False
    mp = msg.multipart("mixed")
    if mp is None or len(mp.parts) != 1:
        return False
    if not (_is_blank(msg, mp.preamble) and _is_blank(msg, mp.epilogue)):
        return False
    (part,) = mp.parts
    if not _part_fields_allowed(part, {"content-type", "content-transfer-encoding"}):
        return False
    ct = mime.structural_content_type(part.headers)
    if ct.mime_type != "text/plain" or not _short_params(ct.params, _TEXT_PARAMS, 32):
        return False
    if not mime.has_identity_encoding(part.headers):
        return False
    body = msg.region(part.body_start, part.body_end, 64)
    m = None if body is None else _SECUREJOIN_BODY.fullmatch(body)
    return m is not None and m.group(1).lower().decode() == step


# Autocrypt Level 1 §4.4.3: Delta Chat wraps the armored setup data in a short HTML
# page (title, heading, one paragraph, <pre>); the armor is the only payload.
MAX_SETUP_PART = 256 * 1024
MAX_SETUP_WRAPPER = 4 * 1024
MAX_SETUP_DESCRIPTION = 4 * 1024
_ARMOR_BEGIN = b"-----BEGIN PGP MESSAGE-----"
_ARMOR_END = b"-----END PGP MESSAGE-----"
_SETUP_ARMOR_HEADERS = (b"Passphrase-Format", b"Passphrase-Begin")


def _is_setup_payload(body: bytes) -> bool:
    begin = body.find(_ARMOR_BEGIN)
    if begin < 0 or begin > MAX_SETUP_WRAPPER:
        return False
    end = body.find(_ARMOR_END, begin)
    if end < 0:
        return False
    end += len(_ARMOR_END)
    after = body[end:]
    if len(after) > MAX_SETUP_WRAPPER or b"-----" in after or b"-----" in body[:begin]:
        return False
    armored = body[begin:end] + b"\r\n"
    return openpgp.is_armored_message(
        armored,
        0,
        len(armored),
        allow_version=False,
        allowed_headers=_SETUP_ARMOR_HEADERS,
        symmetric_only=True,
    )


def _setup_part_body(msg: Message, part: mime.Entity) -> bytes | None:
    body = msg.region(part.body_start, part.body_end, MAX_SETUP_PART)
    if body is None:
        return None
    if mime.has_identity_encoding(part.headers):
        return body
    cte = part.headers.get_one("content-transfer-encoding") or b""
    if cte.strip(b" \t").lower() != b"base64":
        return None
    try:
        return binascii.a2b_base64(body.replace(b"\r\n", b""), strict_mode=True)
    except binascii.Error:
        return None


def is_autocrypt_setup_message(msg: Message, from_addr: str, rcpt_tos: Sequence[str]) -> bool:
    """Autocrypt §4.4 setup message, sent to oneself only.

    ``multipart/mixed`` with one ``application/autocrypt-setup`` part holding the
    passphrase-encrypted armor (SKESK then SEIPD; ``Passphrase-Format`` and
    ``Passphrase-Begin`` armor headers), plus at most one short ``text/plain``
    description part.
    """
    if not (
        len(rcpt_tos) == 1
        and mime.ascii_lower(rcpt_tos[0]) == mime.ascii_lower(from_addr)
        and msg.header_text("subject") == "Autocrypt Setup Message"
        and msg.header_text("autocrypt-setup-message") == "v1"
    ):
        return False
    mp = msg.multipart("mixed")
    if mp is None or not 1 <= len(mp.parts) <= 2:
        return False
    if not (_is_notice(msg, mp.preamble) and _is_blank(msg, mp.epilogue)):
        return False
    if mime.has_bare_cr_lf_or_nul(msg.data, msg.body_start, len(msg.data)):
        raise mime.ParseError("bare CR, LF or NUL in a setup message")
    # Autocrypt §4.4.3: the description (if any) first, the setup data last.
    *text, setup = mp.parts
    if mime.structural_content_type(setup.headers).mime_type != "application/autocrypt-setup":
        return False
    allowed = {"content-type", "content-transfer-encoding", "content-disposition"}
    for part in mp.parts:
        if not _part_fields_allowed(part, allowed):
            return False
    if text:
        (desc,) = text
        ct = mime.structural_content_type(desc.headers)
        if ct.mime_type != "text/plain" or desc.body_end - desc.body_start > MAX_SETUP_DESCRIPTION:
            return False
    payload = _setup_part_body(msg, setup)
    return payload is not None and _is_setup_payload(payload)


# RFC 6522 §3: multipart/report, first part human-readable, second the report.
_REPORT_LAST_PARTS = {"message/rfc822", "text/rfc822-headers", "message/global-headers"}


def is_mailer_daemon_report(msg: Message, mail_from: str, from_addr: str) -> bool:
    """An RFC 3464 delivery status notification from a mailer daemon.

    Null envelope sender (RFC 5321 §4.5.5), ``Auto-Submitted`` other than ``no``
    (RFC 3834 §5), From ``mailer-daemon@…``, and ``multipart/report;
    report-type=delivery-status`` (RFC 6522) with a ``text/plain`` notification, one
    ``message/delivery-status`` part (RFC 3464 §2) and optionally the returned message
    or its headers. No bare CR/LF/NUL anywhere in the body, so every MIME parser sees
    the same parts.
    """
    if mail_from != "":
        return False
    auto = msg.header_text("auto-submitted")
    if not auto or auto.split(";", 1)[0].strip().lower() == "no":
        return False
    if not mime.ascii_lower(from_addr).startswith("mailer-daemon@"):
        return False
    ct = msg.content_type
    if ct.params.get("report-type", "").lower() != "delivery-status":
        return False
    mp = msg.multipart("report")
    if mp is None or len(mp.parts) not in (2, 3):
        return False
    if not (_is_notice(msg, mp.preamble) and _is_notice(msg, mp.epilogue)):
        return False
    if mime.has_bare_cr_lf_or_nul(msg.data, msg.body_start, len(msg.data)):
        raise mime.ParseError("bare CR, LF or NUL in a report")
    types = [mime.structural_content_type(p.headers).mime_type for p in mp.parts]
    for part in mp.parts:
        part.headers.require_unique(_PART_FIELDS)
    if types[0] != "text/plain" or types[1] != "message/delivery-status":
        return False
    return len(types) == 2 or types[2] in _REPORT_LAST_PARTS


def check_mail_from(mail_from: str) -> Verdict:
    """Outgoing MAIL FROM must be a plain address with exactly one '@'."""
    if mail_from.count("@") != 1 or mail_from in ("<>", ""):
        return Verdict(False, f"500 Invalid from address <{mail_from}>")
    return ACCEPT


def _fail_closed(check):
    def wrapper(*args, **kwargs) -> Verdict:
        try:
            return check(*args, **kwargs)
        except mime.LimitError as e:
            return Verdict(False, f"{LIMIT_EXCEEDED}: {e}")
        except mime.ParseError as e:
            return Verdict(False, f"{UNPARSABLE}: {e}")
        except Exception:
            log.exception("Refusing mail after an internal error")
            return Verdict(False, INTERNAL_ERROR)

    wrapper.__doc__ = check.__doc__
    wrapper.__name__ = check.__name__
    return wrapper


@_fail_closed
def check_outgoing(data: Buffer, mail_from: str, rcpt_tos: Sequence[str]) -> Verdict:
    """Verdict for mail a local user submits (reference §3.2 outgoing)."""
    msg = Message(data)
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
    if is_securejoin(msg, rcpt_tos):
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

    ``mail_from`` is "" for the null sender. ``enforces_e2ee(rcpt)`` says whether a
    recipient refuses cleartext; it must answer True for anything that is not a local
    account, so unknown means refused.
    """
    msg = Message(data)
    try:
        from_addr = msg.from_address()
    except mime.AddressError as e:
        return Verdict(False, f"500 Invalid FROM header: {e}")
    if is_encrypted(msg, incoming=True):
        log.info("Incoming: Filtering encrypted mail.")
        return ACCEPT
    log.info("Incoming: Filtering unencrypted mail.")
    if is_securejoin(msg, rcpt_tos):
        return ACCEPT
    if is_mailer_daemon_report(msg, mail_from, from_addr):
        log.info("Incoming: Filtering mailer-daemon message from %s", from_addr)
        return ACCEPT
    if any(enforces_e2ee(rcpt) for rcpt in rcpt_tos):
        log.info("Incoming: Rejected unencrypted mail.")
        return Verdict(False, ENCRYPTION_NEEDED)
    return ACCEPT
