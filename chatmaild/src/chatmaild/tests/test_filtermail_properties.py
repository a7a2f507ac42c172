"""Property-based tests of the gate against an independent statement of the definition.

The oracle re-states reference-behaviour §3.3 with the stdlib ``email`` parser and a
whole-buffer packet walk, sharing no code with the gate. The gate may be stricter than
the oracle (it refuses ambiguity) but must never accept what the oracle refuses.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email
import email.policy
import email.utils
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatmaild.filtermail import gate, openpgp
from chatmaild.tests.mailgen import ALICE, BOB, armor, new_length, pgp_mime

MAIL_DATA = Path(__file__).parent / "mail-data"
VALID = (MAIL_DATA / "encrypted.eml").read_bytes()
VALID_PARTIAL = (MAIL_DATA / "encrypted-partial-lengths.eml").read_bytes()


def oracle_walk(data: bytes) -> bool:
    """RFC 4880 §4.2 walk over the whole buffer: PKESK/SKESK* then exactly one SEIPD."""
    i, n, types = 0, len(data), []
    while i < n:
        tag = data[i]
        if tag & 0xC0 != 0xC0:
            return False
        ptype = tag & 0x3F
        i += 1
        first = True
        while True:
            if i >= n:
                return False
            b0 = data[i]
            if b0 < 192:
                length, i = b0, i + 1
                partial = False
            elif b0 < 224:
                if i + 1 >= n:
                    return False
                length, i = ((b0 - 192) << 8) + data[i + 1] + 192, i + 2
                partial = False
            elif b0 == 255:
                if i + 4 >= n:
                    return False
                length, i = int.from_bytes(data[i + 1 : i + 5], "big"), i + 5
                partial = False
            else:
                length, i = 1 << (b0 & 0x1F), i + 1
                partial = True
                if ptype != 18 or (first and length < 512):
                    return False
            first = False
            i += length
            if i > n:
                return False
            if not partial:
                break
        types.append(ptype)
    return bool(types) and types[-1] == 18 and all(t in (1, 3) for t in types[:-1])


def oracle_armor(text: str, incoming: bool) -> bool:
    if not text.startswith("-----BEGIN PGP MESSAGE-----\r\n"):
        return False
    while text.endswith("\r\n"):
        text = text[:-2]
    if not text.endswith("\r\n-----END PGP MESSAGE-----"):
        return False
    lines = text.split("\r\n")[1:-1]
    if lines and lines[0].startswith("Version:"):
        if not incoming:
            return False
        lines = lines[1:]
    while lines and lines[0] == "":
        lines = lines[1:]
    if lines and lines[-1].startswith("="):
        lines = lines[:-1]
    try:
        decoded = base64.b64decode("".join(lines).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return False
    return oracle_walk(decoded)


def oracle_encrypted(data: bytes, incoming: bool = False) -> bool:
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    if msg.get_content_type() != "multipart/encrypted" or not msg.is_multipart():
        return False
    parts = msg.get_payload()
    if len(parts) != 2 or any(p.is_multipart() for p in parts):
        return False
    control, payload = parts
    if control.get_content_type() != "application/pgp-encrypted":
        return False
    if payload.get_content_type() != "application/octet-stream":
        return False
    if control.get_payload().strip() != "Version: 1":
        return False
    return oracle_armor(payload.get_payload(), incoming)


def oracle_from_ok(data: bytes, mail_from: str) -> bool:
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    values = msg.get_all("From") or []
    if len(values) != 1:
        return False
    return email.utils.parseaddr(str(values[0]))[1].lower() == mail_from.lower()


def test_oracle_agrees_with_the_corpus_basics():
    assert oracle_encrypted(VALID) and oracle_encrypted(VALID_PARTIAL)
    assert not oracle_encrypted((MAIL_DATA / "literal.eml").read_bytes())


mutation = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "replace"]),
    st.floats(0, 1, exclude_max=True),
    st.integers(0, 255),
)


def mutate(data: bytes, mutations) -> bytes:
    buf = bytearray(data)
    for kind, where, value in mutations:
        if not buf:
            break
        pos = int(where * len(buf))
        if kind == "flip":
            buf[pos] ^= 1 << (value % 8)
        elif kind == "insert":
            buf.insert(pos, value)
        elif kind == "delete":
            del buf[pos]
        else:
            buf[pos] = value
    return bytes(buf)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([VALID, VALID_PARTIAL]), st.lists(mutation, min_size=1, max_size=3))
def test_mutated_message_passes_only_if_it_still_satisfies_the_definition(base, mutations):
    data = mutate(base, mutations)
    verdict = gate.check_outgoing(data, ALICE, [BOB])
    if verdict.accept:
        assert oracle_encrypted(data) and oracle_from_ok(data, ALICE)
    verdict = gate.check_incoming(data, "x@example.net", [BOB], lambda r: True)
    if verdict.accept:
        assert oracle_encrypted(data, incoming=True)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes_never_pass_and_never_raise(data):
    assert not gate.check_outgoing(data, ALICE, [BOB]).accept
    assert not gate.check_incoming(data, "x@example.net", [BOB], lambda r: True).accept


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_in_a_pgp_mime_envelope_never_pass(payload_text):
    data = pgp_mime(payload_text)
    assert gate.check_outgoing(data, ALICE, [BOB]).accept == oracle_encrypted(data)


# A packet: (tag, body length, length form) with form "normal", "five" or "partial".
packets = st.lists(
    st.tuples(
        st.sampled_from([1, 2, 3, 8, 11, 18, 18, 20]),
        st.integers(0, 3000),
        st.sampled_from(["normal", "five", "partial", "old"]),
    ),
    min_size=0,
    max_size=5,
)


def build(spec) -> bytes:
    out = bytearray()
    for tag, size, form in spec:
        body = bytes(size)
        if form == "old":
            out += bytes([0x80 | ((tag & 0xF) << 2) | 2]) + size.to_bytes(4, "big") + body
        elif form == "five":
            out += bytes([0xC0 | tag, 0xFF]) + size.to_bytes(4, "big") + body
        elif form == "partial" and size > 512:
            out += bytes([0xC0 | tag, 224 + 9]) + body[:512] + new_length(size - 512) + body[512:]
        else:
            out += bytes([0xC0 | tag]) + new_length(size) + body
    return bytes(out)


@settings(max_examples=500, deadline=None)
@given(packets, st.integers(0, 200))
def test_packet_walk_equals_the_oracle_and_any_truncation_fails(spec, cut):
    payload = build(spec)
    expected = oracle_walk(payload)
    assert openpgp.is_encrypted_payload(payload) == expected
    data = pgp_mime(armor(payload))
    assert gate.check_outgoing(data, ALICE, [BOB]).accept == expected
    if expected and cut:
        truncated = payload[: max(0, len(payload) - cut)]
        assert not openpgp.is_encrypted_payload(truncated)


# The proxy's bulk DATA reader (RFC 5321 §4.5.2) against every way TCP may split it.

lines = st.lists(
    st.sampled_from(
        [b"", b".", b"..", b".x", b"x.", b"abc", b"\r", b"a\rb", b"\n", b"." * 5, b"x" * 40]
    ),
    max_size=30,
)


def stuff(content_lines: list[bytes]) -> bytes:
    return b"".join(
        (b"." + line if line.startswith(b".") else line) + b"\r\n" for line in content_lines
    )


def read_data(wire: bytes, cuts: list[int], limit: int | None = None) -> tuple[bytes | None, bytes]:
    from chatmaild.filtermail.proxy import GateSMTP

    async def run():
        smtp = GateSMTP(object(), data_size_limit=limit, loop=asyncio.get_running_loop())
        reader = asyncio.StreamReader(limit=16)
        smtp._reader = reader

        async def feed():
            pos = 0
            for cut in sorted(set(cuts)) + [len(wire)]:
                reader.feed_data(wire[pos:cut])
                pos = max(pos, cut)
                await asyncio.sleep(0)
            reader.feed_eof()

        feeder = asyncio.ensure_future(feed())
        content = await smtp._read_content()
        await feeder
        return content, await reader.read()

    content, rest = asyncio.run(run())
    return (None if content is None else bytes(content)), rest


@settings(max_examples=300, deadline=None)
@given(lines, st.lists(st.integers(0, 400), max_size=8))
def test_data_reader_undoes_dot_stuffing_and_stops_at_the_lone_dot(content_lines, cuts):
    expected = b"".join(line + b"\r\n" for line in content_lines)
    wire = stuff(content_lines) + b".\r\nQUIT\r\n"
    content, rest = read_data(wire, [c for c in cuts if c < len(wire)])
    assert content == expected
    assert rest == b"QUIT\r\n"


def test_data_reader_refuses_oversize_but_stays_in_sync():
    wire = stuff([b"x" * 50] * 10) + b".\r\nNOOP\r\n"
    content, rest = read_data(wire, [7, 100, 333], limit=200)
    assert content is None
    assert rest == b"NOOP\r\n"
