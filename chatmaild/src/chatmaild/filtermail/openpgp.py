"""Structural check of an ASCII-armored OpenPGP message (RFC 4880 §6.2, §4.2).

No cryptography: the armor is base64-decoded in bounded chunks and only packet headers
are read, so a 30 MiB message costs a few hundred KiB extra, not another 30 MiB.
"""

from __future__ import annotations

import binascii
import re

Buffer = bytes | bytearray

BEGIN = b"-----BEGIN PGP MESSAGE-----\r\n"
END = b"-----END PGP MESSAGE-----"

# RFC 4880 §5.1, §5.3, §5.13 packet tags.
PKESK = 1
SKESK = 3
SEIPD = 18

# Real messages carry one PKESK per recipient key plus a few hundred partial-length
# chunks per MiB; a stream of 2-byte packets must not keep the event loop busy.
MAX_HEADERS = 200_000

_DECODE_CHUNK = 1 << 18

# RFC 4880 §6.3: armor lines are at most 76 characters; RFC 5322 §2.1.1's 998 leaves
# margin and keeps a single 30 MiB "line" from being copied whole.
MAX_ARMOR_LINE = 998

# RFC 4880 §6.2 armor header line: "Key: Value". Short, printable, one line.
_ARMOR_HEADER = re.compile(rb"([A-Za-z][A-Za-z0-9-]{0,40}): ([\x20-\x7e]{0,200})\r\n")


class PacketWalker:
    """Feed decoded bytes; ``finish()`` says whether they were PKESK/SKESK* then one SEIPD.

    RFC 4880 §4.2: only new-format headers (bit 6 set) are accepted. Body lengths are
    one-, two- or five-octet; partial lengths (§4.2.2.4) only for the SEIPD data packet,
    the first chunk at least 512 octets and the last length a regular one.
    ``symmetric_only`` narrows the session key packets to SKESK and requires at least
    one (an Autocrypt Setup Message, Autocrypt §4.4: passphrase-encrypted).
    """

    def __init__(self, symmetric_only: bool = False) -> None:
        self._leading = (SKESK,) if symmetric_only else (PKESK, SKESK)
        self._need_leading = symmetric_only
        self.failed = False
        self._skip = 0
        self._want_tag = True
        self._len_octets = bytearray()
        self._type = -1
        self._first_chunk = True
        self._in_partial = False
        self._last_complete = -1
        self._headers = 0
        self._headers_before_seipd = 0

    def feed(self, chunk: bytes) -> None:
        pos, n = 0, len(chunk)
        while pos < n and not self.failed:
            if self._skip:
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
                if not self._skip:
                    self._body_done()
                continue
            octet = chunk[pos]
            pos += 1
            if self._want_tag:
                self._start_packet(octet)
            else:
                self._length_octet(octet)

    def _start_packet(self, octet: int) -> None:
        # A packet after anything but PKESK/SKESK, e.g. a literal after SEIPD: refused.
        if self._last_complete not in (-1, *self._leading) or octet & 0xC0 != 0xC0:
            self.failed = True
            return
        self._headers += 1
        if self._headers > MAX_HEADERS:
            self.failed = True
            return
        self._type = octet & 0x3F
        if self._type not in (*self._leading, SEIPD):
            self.failed = True
            return
        self._want_tag = False
        self._first_chunk = True
        self._len_octets.clear()

    def _length_octet(self, octet: int) -> None:
        lo = self._len_octets
        lo.append(octet)
        first = lo[0]
        if first < 192:
            self._set_length(first, partial=False)
        elif first < 224:
            if len(lo) == 2:
                self._set_length(((first - 192) << 8) + lo[1] + 192, partial=False)
        elif first == 255:
            if len(lo) == 5:
                self._set_length(int.from_bytes(lo[1:5], "big"), partial=False)
        else:
            size = 1 << (first & 0x1F)
            if self._type != SEIPD or (self._first_chunk and size < 512):
                self.failed = True
                return
            self._set_length(size, partial=True)

    def _set_length(self, length: int, partial: bool) -> None:
        self._len_octets.clear()
        self._in_partial = partial
        self._first_chunk = False
        if partial:
            self._headers += 1
            if self._headers > MAX_HEADERS:
                self.failed = True
                return
        self._skip = length
        if not length:
            self._body_done()

    def _body_done(self) -> None:
        if self._in_partial:
            self._in_partial = False  # next octet starts another length
            return
        if self._type != SEIPD:
            self._headers_before_seipd += 1
        self._last_complete = self._type
        self._want_tag = True

    def finish(self) -> bool:
        if self._need_leading and self._headers_before_seipd == 0:
            return False
        return (
            not self.failed and self._want_tag and not self._skip and self._last_complete == SEIPD
        )


def is_encrypted_payload(packets: bytes) -> bool:
    """Packet walk over already decoded bytes (tests and small inputs)."""
    walker = PacketWalker()
    walker.feed(packets)
    return walker.finish()


def is_armored_message(
    data: Buffer,
    start: int,
    end: int,
    allow_version: bool,
    *,
    allowed_headers: tuple[bytes, ...] = (),
    symmetric_only: bool = False,
) -> bool:
    """True if ``data[start:end]`` is one armored OpenPGP message holding an encrypted one.

    The armor must begin with the BEGIN line (CRLF, as RFC 3156 §3 canonical form) and,
    after trailing line breaks, end with the END line; nothing else may follow. Armor
    headers (RFC 4880 §6.2) are refused except those named in ``allowed_headers``, each
    at most once; ``allow_version`` adds ``Version`` (incoming: other writers add it;
    our clients never do). The base64 is decoded strictly, lines at most
    ``MAX_ARMOR_LINE``; the CRC24 line is optional (RFC 9580 §6.2).
    """
    if not data.startswith(BEGIN, start, end):
        return False
    while end - 2 >= start and data[end - 2 : end] == b"\r\n":
        end -= 2
    end_line = end - len(END)
    if end_line < start + len(BEGIN) or not data.startswith(END, end_line, end):
        return False
    pos = start + len(BEGIN)
    allowed = set(allowed_headers) | ({b"Version"} if allow_version else set())
    seen: set[bytes] = set()
    while True:
        m = _ARMOR_HEADER.match(data, pos, end_line)
        if m is None:
            break
        name = m.group(1)
        if name not in allowed or name in seen:
            return False
        seen.add(name)
        pos = m.end()
    while data.startswith(b"\r\n", pos, end_line):
        pos += 2
    if pos == end_line:
        return False
    # The END line must start a line of its own.
    if data[end_line - 2 : end_line] != b"\r\n":
        return False
    b64_end = end_line - 2
    last_nl = data.rfind(b"\r\n", pos, b64_end)
    last_line_start = pos if last_nl < 0 else last_nl + 2
    if data.startswith(b"=", last_line_start, b64_end):
        # RFC 4880 §6.1: "=" and four base64 characters of CRC24.
        crc = bytes(data[last_line_start:b64_end])
        if len(crc) != 5:
            return False
        try:
            binascii.a2b_base64(crc[1:], strict_mode=True)
        except binascii.Error:
            return False
        b64_end = max(pos, last_line_start - 2)
    return _decode_and_walk(data, pos, b64_end, PacketWalker(symmetric_only))


def _decode_and_walk(data: Buffer, start: int, end: int, walker: PacketWalker) -> bool:
    carry = b""
    padded = False
    pos = start
    while pos < end:
        stop = min(end, pos + _DECODE_CHUNK)
        if stop < end:
            # Cut at a line end, looking no further than one armor line.
            window = min(end, stop + MAX_ARMOR_LINE + 2)
            nl = data.find(b"\r\n", stop, window)
            if nl < 0 and window < end:
                return False
            stop = end if nl < 0 else nl + 2
        lines = bytes(data[pos:stop]).split(b"\r\n")
        if max(map(len, lines)) > MAX_ARMOR_LINE:
            return False
        text = carry + b"".join(lines)
        pos = stop
        usable = len(text) - len(text) % 4
        carry = text[usable:]
        if not usable:
            continue
        if padded:
            return False  # base64 after padding
        try:
            walker.feed(binascii.a2b_base64(text[:usable], strict_mode=True))
        except binascii.Error:
            return False
        padded = text[usable - 1 : usable] == b"="
        if walker.failed:
            return False
    if carry:
        return False
    return walker.finish()
