"""Just enough RFC 5322 / RFC 2045 / RFC 2046 parsing for the encryption gate, on raw bytes.

The message is never decoded as a whole and never copied: parts are ``(start, end)``
offsets into the received buffer. The parser is bounded: every limit below is checked
while scanning and the scan stops at the first violation (``LimitError``), so a hostile
30 MiB message costs a few KiB of Python objects, not one object per line or part.
Syntax that other parsers read differently (obs-syntax field names, bare CR or LF, NUL,
lines that look like a delimiter but are not one) raises ``ParseError``.

The parser never recurses: only the top-level body of a message is split into parts
(``MAX_NESTING``); a part that is itself a multipart does not fit any shape the gate
accepts and is refused without being parsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Buffer = bytes | bytearray


class ParseError(ValueError):
    """Malformed or ambiguous structure; the message is refused (500)."""


class LimitError(ParseError):
    """A size or count limit was exceeded while parsing; the message is refused (552)."""


# Limits, with margin over real mail:
# - Delta Chat writes 10-20 top-level fields; mail arriving on port 25 adds Received,
#   DKIM-Signature, ARC-* and Authentication-Results, a few dozen at most.
MAX_HEADER_FIELDS = 200
# - The largest real field is an Autocrypt header with an RSA-4096 key and subkey: about
#   4-8 KiB once unfolded (RFC 5322 §2.2.3). A whole top-level section stays far below.
MAX_FIELD_SIZE = 64 * 1024
MAX_HEADER_SECTION = 256 * 1024
# - MIME part headers of the shapes we accept: 1-4 short fields (RFC 3156 §4 parts,
#   RFC 6522 report parts).
MAX_PART_HEADER_FIELDS = 16
MAX_PART_HEADER_SECTION = 16 * 1024
# - Parts of a multipart: encrypted 2, securejoin 1, reports 2-3, setup message 2.
MAX_PARTS = 8
# - Only the top-level body is split (see module docstring).
MAX_NESTING = 1
# - RFC 5322 §2.1.1: at most 998 characters per line; used for delimiter and armor lines.
MAX_LINE = 998

# RFC 5322 §3.6.8 field-name: printable US-ASCII except ':' (and no SP).
_FIELD_NAME = re.compile(rb"^[\x21-\x39\x3b-\x7e]+$")


@dataclass
class Headers:
    """Header fields in order; names lowercased, values unfolded raw bytes."""

    fields: list[tuple[str, bytes]]

    def get_all(self, name: str) -> list[bytes]:
        return [value for key, value in self.fields if key == name]

    def get_one(self, name: str) -> bytes | None:
        """The value if the field occurs exactly once, else None (absent or ambiguous)."""
        values = self.get_all(name)
        return values[0] if len(values) == 1 else None

    def count(self, name: str) -> int:
        return sum(1 for key, _ in self.fields if key == name)

    def names(self) -> set[str]:
        return {key for key, _ in self.fields}

    def require_unique(self, names: tuple[str, ...]) -> None:
        """Refuse a duplicated structural field: parsers disagree on which one counts."""
        for name in names:
            if self.count(name) > 1:
                raise ParseError(f"duplicated {name} header field")


def split_header_section(
    data: Buffer,
    start: int,
    end: int,
    max_fields: int = MAX_HEADER_FIELDS,
    max_size: int = MAX_HEADER_SECTION,
) -> tuple[Headers, int]:
    """Parse header fields in ``data[start:end]``; returns them and the body offset.

    Every line must end in CRLF (RFC 5322 §2.1); a bare LF, a bare CR or a NUL is
    refused, since Postfix, MUAs and Python's ``email`` split such lines differently.
    The section ends at the first empty line, or at ``end`` (a part without a body).
    """
    fields: list[tuple[str, bytes]] = []
    limit = min(end, start + max_size)
    pos = start
    name: str | None = None
    value_parts: list[bytes] = []
    value_size = 0
    while True:
        if pos >= end:
            body_start = end
            break
        nl = data.find(b"\n", pos, limit)
        if nl < 0:
            if limit < end:
                raise LimitError(f"header section larger than {max_size} bytes")
            line_end = end
            next_pos = end
        else:
            if nl == pos or data[nl - 1] != 0x0D:
                raise ParseError("bare LF in header section")
            line_end = nl - 1
            next_pos = nl + 1
        line = bytes(data[pos:line_end])
        if not line:
            body_start = next_pos
            break
        if b"\r" in line or b"\x00" in line:
            raise ParseError("bare CR or NUL in header section")
        if line[:1] in (b" ", b"\t"):
            # RFC 5322 §2.2.3: unfolding removes the line break before WSP.
            if name is None:
                raise ParseError("continuation line before the first header field")
            value_parts.append(line)
            value_size += len(line)
        else:
            if name is not None:
                fields.append((name, b"".join(value_parts)))
            if len(fields) >= max_fields:
                raise LimitError(f"more than {max_fields} header fields")
            colon = line.find(b":")
            if colon <= 0:
                raise ParseError("header line without a field name")
            raw_name = line[:colon]
            if raw_name[-1:] in (b" ", b"\t"):
                # RFC 5322 §4.5 obs-optional allows WSP before the colon, but Postfix
                # header_checks (^Subject:) and Python's email do not see such a field.
                raise ParseError("whitespace before ':' in a header field name")
            if not _FIELD_NAME.match(raw_name):
                raise ParseError("invalid header field name")
            name = raw_name.decode("ascii").lower()
            value_parts = [line[colon + 1 :]]
            value_size = len(value_parts[0])
        if value_size > MAX_FIELD_SIZE:
            raise LimitError(f"a header field larger than {MAX_FIELD_SIZE} bytes")
        pos = next_pos
    if name is not None:
        fields.append((name, b"".join(value_parts)))
    return Headers(fields), body_start


@dataclass(frozen=True)
class ContentType:
    """RFC 2045 §5.1 Content-Type: lowercased ``type/subtype`` and parameters."""

    mime_type: str
    params: dict[str, str]

    @property
    def is_multipart(self) -> bool:
        return self.mime_type.startswith("multipart/")

    @property
    def has_extended_params(self) -> bool:
        """RFC 2231 ``name*=`` / ``name*0=`` parameters, which parsers combine differently."""
        return any("*" in key for key in self.params)


_TOKEN = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"
_CT_HEAD = re.compile(rf"^[ \t]*({_TOKEN})/({_TOKEN})[ \t]*")
_DISPOSITION_HEAD = re.compile(rf"^[ \t]*({_TOKEN})[ \t]*")
_PARAM = re.compile(
    rf'[ \t]*;[ \t]*({_TOKEN})[ \t]*=[ \t]*(?:({_TOKEN})|"((?:[^"\\\r\n]|\\[^\r\n])*)")[ \t]*'
)
_TRAILING_SEMI = re.compile(r"[ \t]*;?[ \t]*$")

DEFAULT_CONTENT_TYPE = ContentType("text/plain", {"charset": "us-ascii"})


def _parse_params(text: str, pos: int) -> dict[str, str] | None:
    params: dict[str, str] = {}
    while True:
        pm = _PARAM.match(text, pos)
        if not pm:
            break
        key = pm.group(1).lower()
        if key in params:
            return None
        value = pm.group(2) if pm.group(2) is not None else pm.group(3)
        if "=?" in value:
            # Python's email (policy.default) decodes RFC 2047 words even inside quoted
            # parameters, so boundary="=?utf-8?q?B?=" would be "B" there.
            return None
        if pm.group(2) is not None:
            params[key] = pm.group(2)
        elif "\\" in pm.group(3):
            # RFC 5322 quoted-pair: Python's email undoes only \\ and \", so "\B" would
            # be "B" here and "\B" there; no value we need contains one.
            return None
        else:
            params[key] = pm.group(3)
        pos = pm.end()
    if not _TRAILING_SEMI.fullmatch(text, pos):
        return None
    return params


def parse_content_type(value: bytes) -> ContentType | None:
    """Parse a Content-Type value; None for anything malformed or ambiguous.

    No comments (RFC 5322 CFWS) and no duplicated parameters: both are read differently
    by different parsers.
    """
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    m = _CT_HEAD.match(text)
    if not m:
        return None
    params = _parse_params(text, m.end())
    if params is None:
        return None
    return ContentType(f"{m.group(1)}/{m.group(2)}".lower(), params)


def parse_disposition(value: bytes) -> tuple[str, dict[str, str]] | None:
    """RFC 2183 Content-Disposition: lowercased type and parameters, or None."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    m = _DISPOSITION_HEAD.match(text)
    if not m:
        return None
    params = _parse_params(text, m.end())
    if params is None:
        return None
    return m.group(1).lower(), params


def content_type_of(headers: Headers) -> ContentType:
    """The entity's Content-Type; RFC 2045 §5.2 default if absent.

    A duplicated or unparsable Content-Type is refused rather than guessed at.
    """
    values = headers.get_all("content-type")
    if not values:
        return DEFAULT_CONTENT_TYPE
    if len(values) > 1:
        raise ParseError("duplicated content-type header field")
    ct = parse_content_type(values[0])
    if ct is None:
        raise ParseError("malformed Content-Type")
    return ct


def structural_content_type(headers: Headers) -> ContentType:
    """Content-Type of an entity whose type decides the shape (multipart, PGP/MIME parts).

    RFC 2231 parameters are refused here: Python's ``email`` prefers ``boundary*=`` over
    ``boundary=``, so the two would split the body at different lines.
    """
    ct = content_type_of(headers)
    if ct.has_extended_params:
        raise ParseError(f"RFC 2231 parameter on {ct.mime_type}")
    return ct


_IDENTITY_ENCODINGS = {"7bit", "8bit", "binary"}


def has_identity_encoding(headers: Headers) -> bool:
    """True if the body is not transfer-encoded (RFC 2045 §6.1 identity encodings)."""
    values = headers.get_all("content-transfer-encoding")
    if not values:
        return True
    if len(values) > 1:
        raise ParseError("duplicated content-transfer-encoding header field")
    return values[0].strip(b" \t").lower().decode("ascii", "replace") in _IDENTITY_ENCODINGS


@dataclass(frozen=True)
class Entity:
    """A MIME entity inside the message buffer: parsed headers, body offsets."""

    headers: Headers
    body_start: int
    body_end: int


@dataclass(frozen=True)
class Multipart:
    """RFC 2046 §5.1.1 body parts; preamble/epilogue as offset ranges."""

    parts: list[Entity]
    preamble: tuple[int, int]
    epilogue: tuple[int, int]


# RFC 2046 §5.1.1: boundary is 1-70 bchars, not ending in space.
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")


def split_multipart(
    data: Buffer, start: int, end: int, boundary: str, max_parts: int = MAX_PARTS
) -> Multipart:
    """Split a multipart body into parts, stopping at ``max_parts`` (``LimitError``).

    A delimiter line is exactly ``--boundary`` plus optional linear whitespace
    (RFC 2046 §5.1.1), preceded by CRLF. Any other line starting with ``--boundary``
    (which lenient parsers may still take for a delimiter) is refused, and so is a
    body without a close delimiter. Nothing after the close delimiter is scanned: the
    epilogue belongs to the caller's shape check, which bounds it.
    """
    if not _BOUNDARY.match(boundary):
        raise ParseError("invalid multipart boundary")
    dash = b"--" + boundary.encode("ascii")
    delimiters: list[tuple[int, int]] = []  # (line start, next line start)
    closed = False
    at = start if data.startswith(dash, start, end) else _find_dash_line(data, dash, start, end)
    while at >= 0:
        if at > start and data[at - 2 : at] != b"\r\n":
            raise ParseError("bare LF before a multipart delimiter")
        window = min(end, at + MAX_LINE + 2)
        nl = data.find(b"\n", at, window)
        if nl < 0:
            if window < end:
                raise LimitError(f"a delimiter line longer than {MAX_LINE} bytes")
            line_end = next_at = end
        else:
            if data[nl - 1] != 0x0D:
                raise ParseError("bare LF after a multipart delimiter")
            line_end, next_at = nl - 1, nl + 1
        rest = bytes(data[at + len(dash) : line_end])
        if rest.startswith(b"--") and not rest[2:].strip(b" \t"):
            closed = True
        elif rest.strip(b" \t"):
            raise ParseError("a line starts like the delimiter but is not one")
        delimiters.append((at, next_at))
        if closed:
            break
        if len(delimiters) > max_parts:
            raise LimitError(f"more than {max_parts} MIME parts")
        at = _find_dash_line(data, dash, line_end, end)
    if not closed:
        raise ParseError("multipart body without a close delimiter")
    if len(delimiters) < 2:
        raise ParseError("multipart body without parts")
    parts = []
    for (_, body_from), (next_at, _) in zip(delimiters, delimiters[1:], strict=False):
        part_end = _strip_one_line_break(data, body_from, next_at)
        headers, body_start = split_header_section(
            data, body_from, part_end, MAX_PART_HEADER_FIELDS, MAX_PART_HEADER_SECTION
        )
        parts.append(Entity(headers, body_start, part_end))
    preamble_end = _strip_one_line_break(data, start, delimiters[0][0])
    return Multipart(parts, (start, preamble_end), (delimiters[-1][1], end))


def _find_dash_line(data: Buffer, dash: bytes, start: int, end: int) -> int:
    nl = data.find(b"\n" + dash, start, end)
    return -1 if nl < 0 else nl + 1


def _strip_one_line_break(data: Buffer, start: int, end: int) -> int:
    # RFC 2046 §5.1.1: the CRLF before a delimiter belongs to the delimiter.
    if end - 2 >= start and data[end - 2 : end] == b"\r\n":
        return end - 2
    return end


def has_bare_cr_lf_or_nul(data: Buffer, start: int, end: int) -> bool:
    """True if ``data[start:end]`` has a CR or LF outside CRLF, or a NUL.

    Python's ``email`` ends a line at a lone CR as well, so a body with one could hold
    a delimiter that only Python sees. Counting (C speed) instead of a regex: every CR
    is in a CRLF exactly when the three counts agree.
    """
    pairs = data.count(b"\r\n", start, end)
    return (
        data.count(b"\r", start, end) != pairs
        or data.count(b"\n", start, end) != pairs
        or data.find(b"\x00", start, end) >= 0
    )


class AddressError(ValueError):
    """A From: header that does not name exactly one plain address."""


_ATEXT_ADDR = re.compile(
    r"^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.\x80-\U0010ffff]+@[A-Za-z0-9._\-\[\]:]+$"
)


def parse_single_address(value: bytes) -> str:
    """The one addr-spec in a From: value (RFC 5322 §3.4), comments and phrase removed.

    Refuses groups, lists, quoted local parts and encoded-words outside the display
    name (RFC 2047 §5: an encoded-word must not appear in an addr-spec).
    """
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise AddressError("From: header is not valid UTF-8") from None
    tokens = _tokenize_address(text)
    # RFC 5322 CFWS: comments may surround the address; they never carry it.
    while tokens and tokens[-1][0] == "comment":
        tokens.pop()
    angles = [i for i, (kind, _) in enumerate(tokens) if kind == "angle"]
    if len(angles) > 1:
        raise AddressError("more than one angle address")
    if angles:
        i = angles[0]
        if i != len(tokens) - 1:
            raise AddressError("text after the angle address")
        for kind, tok in tokens[:i]:
            if kind == "atom" and any(c in tok for c in "@,;:<>[]\\"):
                raise AddressError("special characters in the display name")
        addr = tokens[i][1].strip()
    else:
        atoms = [tok for kind, tok in tokens if kind != "comment"]
        if len(atoms) != 1 or tokens[0][0] == "quoted":
            raise AddressError("not a single address")
        addr = atoms[0]
    if "=?" in addr or not _ATEXT_ADDR.match(addr) or addr.count("@") != 1:
        raise AddressError(f"not a plain address: {addr!r}")
    local = addr.split("@", 1)[0]
    if not local or local.startswith(".") or local.endswith(".") or ".." in local:
        raise AddressError(f"invalid local part: {addr!r}")
    return addr


def _tokenize_address(text: str) -> list[tuple[str, str]]:
    """Split into ("atom"|"quoted"|"angle"|"comment", text); comments may nest."""
    tokens: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == '"':
            j = i + 1
            buf = []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(text[j])
                j += 1
            if j >= n:
                raise AddressError("unterminated quoted string")
            tokens.append(("quoted", "".join(buf)))
            i = j + 1
        elif c == "(":
            depth, j = 1, i + 1
            while j < n and depth:
                if text[j] == "\\":
                    j += 1
                elif text[j] == "(":
                    depth += 1
                elif text[j] == ")":
                    depth -= 1
                j += 1
            if depth:
                raise AddressError("unterminated comment")
            tokens.append(("comment", text[i:j]))
            i = j
        elif c == "<":
            j = text.find(">", i + 1)
            if j < 0:
                raise AddressError("unterminated angle address")
            inner = text[i + 1 : j]
            if any(ch in inner for ch in '<"(),;\\ \t'):
                raise AddressError("unexpected characters in angle address")
            tokens.append(("angle", inner))
            i = j + 1
        elif c in ">),;":
            raise AddressError(f"unexpected {c!r}")
        else:
            j = i
            while j < n and text[j] not in ' \t\r\n"(<>),;':
                j += 1
            tokens.append(("atom", text[i:j]))
            i = j
    return tokens


def ascii_lower(addr: str) -> str:
    """Lowercase only A-Z: Unicode case folding would equate e.g. KELVIN SIGN and 'k'."""
    return addr.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
