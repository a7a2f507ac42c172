"""Just enough RFC 5322 / RFC 2045 parsing for the encryption gate, on raw bytes.

The message is never decoded as a whole and never copied: parts are ``(start, end)``
offsets into the received buffer. Anything ambiguous (a duplicated header the gate relies
on, a malformed parameter list) reads as "absent", which makes the gate refuse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Buffer = bytes | bytearray


class ParseError(ValueError):
    """The header section is not RFC 5322 shaped; the message is refused."""


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


def split_header_section(data: Buffer, start: int, end: int) -> tuple[Headers, int]:
    """Parse header fields in ``data[start:end]``; returns them and the body offset.

    Lines may end in CRLF or LF (Postfix treats a bare LF as a line end too, so we
    must see the same lines). A bare CR or NUL in the header section is refused.
    """
    fields: list[tuple[str, bytes]] = []
    pos = start
    body_start = end
    name: str | None = None
    value_parts: list[bytes] = []
    while pos < end:
        nl = data.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl
        next_pos = end if nl < 0 else nl + 1
        line = bytes(data[pos:line_end])
        if line.endswith(b"\r"):
            line = line[:-1]
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
        else:
            if name is not None:
                fields.append((name, b"".join(value_parts)))
            colon = line.find(b":")
            if colon <= 0:
                raise ParseError("header line without a field name")
            # RFC 5322 §4.5 obs-optional allows WSP before the colon; normalize it so
            # "From :" and "From:" count as the same field.
            raw_name = line[:colon].rstrip(b" \t")
            if not _FIELD_NAME.match(raw_name):
                raise ParseError("invalid header field name")
            name = raw_name.decode("ascii").lower()
            value_parts = [line[colon + 1 :]]
        pos = next_pos
    else:
        body_start = end
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


_TOKEN = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"
_CT_HEAD = re.compile(rf"^\s*({_TOKEN})/({_TOKEN})\s*")
_CT_PARAM = re.compile(rf'\s*;\s*({_TOKEN})\s*=\s*(?:({_TOKEN})|"((?:[^"\\\r\n]|\\[^\r\n])*)")\s*')
_CT_TRAILING_SEMI = re.compile(r"\s*;?\s*$")

DEFAULT_CONTENT_TYPE = ContentType("text/plain", {"charset": "us-ascii"})


def parse_content_type(value: bytes) -> ContentType | None:
    """Parse a Content-Type value; None for anything malformed or ambiguous."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    m = _CT_HEAD.match(text)
    if not m:
        return None
    mime_type = f"{m.group(1)}/{m.group(2)}".lower()
    params: dict[str, str] = {}
    pos = m.end()
    while True:
        pm = _CT_PARAM.match(text, pos)
        if not pm:
            break
        key = pm.group(1).lower()
        if key in params:
            return None
        if pm.group(2) is not None:
            params[key] = pm.group(2)
        else:
            params[key] = re.sub(r"\\(.)", r"\1", pm.group(3))
        pos = pm.end()
    if not _CT_TRAILING_SEMI.fullmatch(text, pos):
        return None
    return ContentType(mime_type, params)


def content_type_of(headers: Headers) -> ContentType | None:
    """The entity's Content-Type; RFC 2045 §5.2 default if absent, None if ambiguous."""
    values = headers.get_all("content-type")
    if not values:
        return DEFAULT_CONTENT_TYPE
    if len(values) > 1:
        return None
    return parse_content_type(values[0])


_IDENTITY_ENCODINGS = {"7bit", "8bit", "binary"}


def has_identity_encoding(headers: Headers) -> bool:
    """True if the body is not transfer-encoded (RFC 2045 §6.1 identity encodings)."""
    values = headers.get_all("content-transfer-encoding")
    if not values:
        return True
    if len(values) > 1:
        return False
    return values[0].strip().lower().decode("ascii", "replace") in _IDENTITY_ENCODINGS


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


def split_multipart(data: Buffer, start: int, end: int, boundary: str) -> Multipart | None:
    """Split a multipart body into parts; None if delimiters are missing or ambiguous.

    A delimiter line is exactly ``--boundary`` plus optional linear whitespace
    (RFC 2046 §5.1.1). Any other line starting with ``--boundary`` (which lenient
    parsers may still take for a delimiter) or text after the close delimiter that
    looks like one makes the structure ambiguous, so it is refused.
    """
    if not _BOUNDARY.match(boundary):
        return None
    dash = b"--" + boundary.encode("ascii")
    delimiters: list[tuple[int, int, bool]] = []  # (line start, next line start, is close)
    closed = False
    at = start if data.startswith(dash, start, end) else _find_dash_line(data, dash, start, end)
    while at >= 0:
        if closed:
            return None
        nl = data.find(b"\n", at, end)
        line_end = end if nl < 0 else nl
        rest = bytes(data[at + len(dash) : line_end]).rstrip(b"\r")
        if rest.startswith(b"--") and not rest[2:].strip(b" \t"):
            closed = True
        elif rest.strip(b" \t"):
            return None
        delimiters.append((at, end if nl < 0 else nl + 1, closed))
        at = _find_dash_line(data, dash, line_end, end)
    if not closed or len(delimiters) < 2:
        return None
    parts = []
    for (_, body_from, _), (next_at, _, _) in zip(delimiters, delimiters[1:], strict=False):
        part_end = _strip_one_line_break(data, body_from, next_at)
        headers, body_start = split_header_section(data, body_from, part_end)
        parts.append(Entity(headers, body_start, part_end))
    preamble_end = _strip_one_line_break(data, start, delimiters[0][0])
    return Multipart(parts, (start, preamble_end), (delimiters[-1][1], end))


def _find_dash_line(data: Buffer, dash: bytes, start: int, end: int) -> int:
    nl = data.find(b"\n" + dash, start, end)
    return -1 if nl < 0 else nl + 1


def _strip_one_line_break(data: Buffer, start: int, end: int) -> int:
    # RFC 2046 §5.1.1: the line break before a delimiter belongs to the delimiter.
    if end - 2 >= start and data[end - 2 : end] == b"\r\n":
        return end - 2
    if end - 1 >= start and data[end - 1 : end] == b"\n":
        return end - 1
    return end


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
