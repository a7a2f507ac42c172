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

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatmaild.filtermail import gate, openpgp
from chatmaild.testkit.mailgen import ALICE, BOB, MAIL_DATA, armor, new_length, pgp_mime

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


# Issue 11: Python's email package as a differential oracle on structure. Whatever it
# parses as anything but exactly the two PGP/MIME parts (a text/* leaf, another part, a
# different boundary, a defect) must never pass the gate. The generator assembles
# messages from tricks an attacker would combine.

OK_ARMOR = (MAIL_DATA / "encrypted.eml").read_bytes().split(b"\r\n\r\n-----BEGIN", 1)[1]
OK_ARMOR = b"-----BEGIN" + OK_ARMOR.split(b"\r\n--bnd-Enc1--", 1)[0]

CONTENT_TYPES = [
    'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="B"',
    'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";\r\n\tboundary="B"',
    'Content-Type: multipart/encrypted;\r\n protocol="application/pgp-encrypted";\r\n boundary=B',
    'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary*=utf-8\'\'C; boundary="B"',
    'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="B"; boundary="C"',
    'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; BOUNDARY="C"; boundary="B"',
    'Content-Type: multipart/encrypted (x); protocol="application/pgp-encrypted"; boundary="B"',
    'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="B" (C)',
    'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="\\B"',
    'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary*0="B"',
    'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="B";',
    'Content-Type: multipart/encrypted; protocol=application/pgp-encrypted; boundary="B"',
    'Content-Type: multipart/encrypted; boundary="B"',
    'Content-Type: Multipart/Encrypted; Protocol="Application/PGP-Encrypted"; Boundary="B"',
    'Content-Type: =?utf-8?q?multipart/encrypted?=; protocol="application/pgp-encrypted"; boundary="B"',
    'Content-Type : multipart/encrypted; protocol="application/pgp-encrypted"; boundary="B"',
    'Content-Type:multipart/encrypted;protocol="application/pgp-encrypted";boundary="B"',
    'Content-Type: multipart/mixed; boundary="B"',
    'Content-Type: multipart/encrypted ; protocol = "application/pgp-encrypted" ;boundary= B ',
    'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="B"; x="y;boundary=C"',
    # policy.default decodes RFC 2047 words inside quoted parameters: boundary "B" there.
    'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="=?utf-8?q?B?="',
]
TOP_EXTRAS = [
    "",
    "Subject : hidden",
    "X-Trick: a\r\n folded: b",
    "\r\n\tcontinued",
    "X-\xc3\xa4: 8-bit name",
    "Content-Transfer-Encoding: 7bit",
    "Content-Transfer-Encoding: base64",
    'Content-Type: text/plain; boundary="B"',
    "MIME-Version: 1.0",
    "Subject: =?utf-8?q?=0D=0AContent-Type=3A_text/plain?=",
]
CONTROL = b"Content-Type: application/pgp-encrypted\r\nContent-Description: PGP/MIME version identification\r\n\r\nVersion: 1"
PAYLOAD = b'Content-Type: application/octet-stream; name="encrypted.asc"\r\n\r\n' + OK_ARMOR
PARTS = [
    CONTROL,
    PAYLOAD,
    b"Content-Type: text/plain\r\n\r\nsecret",
    b"\r\nsecret without headers",
    b"",
    b'Content-Type: multipart/mixed; boundary="C"\r\n\r\n--C\r\nContent-Type: text/plain\r\n\r\nsecret\r\n--C--',
    b"Content-Type: application/pgp-encrypted\r\nContent-Type: text/plain\r\n\r\nVersion: 1",
    b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + OK_ARMOR,
    b"Content-Type : text/plain\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1",
    b"Content-type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--C\r\nContent-Type: text/plain\r\n\r\nx",
    CONTROL.replace(b"\r\n\r\n", b"\r\nX-Secret: hidden\r\n\r\n"),
    b"Content-Type: application/octet-stream; name*=''x\r\n\r\n" + OK_ARMOR,
]
NOTICES = [
    b"",
    b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n",
    b"secret\r\nmore secret\r\n",
    b"--B\r\n",
    b"--C\r\nContent-Type: text/plain\r\n\r\nsecret\r\n--C--\r\n",
    b"Content-Type: text/plain\r\n\r\nsecret\r\n",
    b"--B \r\n",
    b"--B--\r\n",
    b"\r\n\r\n",
]
BOUNDARY_LINES = [b"--B", b"--B ", b"--B\t", b"--C", b"--B x", b"--=?utf-8?q?B?="]


def assemble(ct, extra, preamble, parts, delims, close, epilogue, newline_edits, word=False):
    head = [
        b"From: alice@example.org",
        b"To: bob@example.org",
        b"Subject: ...",
        b"MIME-Version: 1.0",
        CONTENT_TYPES[ct].encode("latin-1"),
    ]
    if TOP_EXTRAS[extra]:
        head.append(TOP_EXTRAS[extra].encode("latin-1"))
    body = NOTICES[preamble]
    for i, part in enumerate(parts):
        body += BOUNDARY_LINES[delims[i % len(delims)]] + b"\r\n" + PARTS[part] + b"\r\n"
    body += close + b"\r\n" + NOTICES[epilogue]
    data = bytearray(b"\r\n".join(head) + b"\r\n\r\n" + body)
    if word:
        # The boundary as an RFC 2047 encoded-word, delimiters using it literally.
        data = data.replace(b'boundary="B"', b'boundary="=?utf-8?q?B?="')
        data = data.replace(b"\r\n--B", b"\r\n--=?utf-8?q?B?=")
    # CRLF vs LF vs CR: turn some line breaks into bare LF or bare CR.
    for where, kind in newline_edits:
        at = data.find(b"\r\n", int(where * len(data)))
        if at >= 0:
            data[at : at + 2] = b"\n" if kind else b"\r"
    return bytes(data)


def usually(default, strategy):
    """Mostly the valid choice, so single tricks get tried on an otherwise valid message."""
    return st.one_of(st.just(default), st.just(default), strategy)


messages = st.builds(
    assemble,
    usually(0, st.integers(0, len(CONTENT_TYPES) - 1)),
    usually(0, st.integers(0, len(TOP_EXTRAS) - 1)),
    usually(1, st.sampled_from(range(len(NOTICES)))),
    usually([0, 1], st.lists(st.integers(0, len(PARTS) - 1), min_size=0, max_size=4)),
    usually([0], st.lists(st.sampled_from([0, 0, 0, 1, 2, 3, 4, 5]), min_size=1, max_size=3)),
    usually(
        b"--B--",
        st.sampled_from([b"--B--", b"--B-- ", b"--C--", b"--B--x", b"", b"--=?utf-8?q?B?=--"]),
    ),
    usually(0, st.sampled_from(range(len(NOTICES)))),
    usually([], st.lists(st.tuples(st.floats(0, 1), st.booleans()), max_size=2)),
    usually(False, st.booleans()),
)


def python_sees_the_encrypted_shape(data: bytes) -> bool:
    """Both ``email`` policies see exactly multipart/encrypted with the two parts."""
    for policy in (email.policy.compat32, email.policy.default):
        try:
            msg = email.message_from_bytes(data, policy=policy)
            if msg.get_content_type() != "multipart/encrypted" or not msg.is_multipart():
                return False
            protocol = msg.get_param("protocol")
            if not isinstance(protocol, str) or protocol.lower() != "application/pgp-encrypted":
                return False
            if msg.get_boundary() != "B":
                return False
            parts = msg.get_payload()
            types = [p.get_content_type() for p in parts]
            if types != ["application/pgp-encrypted", "application/octet-stream"]:
                return False
            if len(list(msg.walk())) != 3 or any(p.is_multipart() for p in parts):
                return False
            if msg.defects or any(p.defects for p in parts):
                return False
            for notice in (msg.preamble, msg.epilogue):
                if notice and len(notice.strip().splitlines()) > 1:
                    return False
        except Exception:
            return False
    return True


def test_assembled_valid_message_passes_and_python_agrees():
    data = assemble(0, 0, 1, [0, 1], [0], b"--B--", 0, [])
    assert python_sees_the_encrypted_shape(data)
    assert gate.check_outgoing(data, ALICE, [BOB]).accept


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_gate_passes_only_what_python_email_sees_as_the_encrypted_shape(data):
    for verdict in (
        gate.check_outgoing(data, ALICE, [BOB]),
        gate.check_incoming(data, "x@example.net", [BOB], lambda r: True),
        gate.check_incoming(data, "", [BOB], lambda r: True),
    ):
        assert not verdict.reply.startswith("451"), verdict
        if verdict.accept:
            assert python_sees_the_encrypted_shape(data)
            assert oracle_encrypted(data, incoming=True)


# Mailer-daemon reports, securejoin and the setup message: the exceptions must never
# pass a structure that Python's email reads differently.


def python_part_types(data: bytes) -> list[str] | None:
    try:
        msg = email.message_from_bytes(data, policy=email.policy.default)
        if msg.defects or not msg.is_multipart():
            return None
        parts = msg.get_payload()
        if any(p.defects for p in parts):
            return None
        return [p.get_content_type() for p in parts]
    except Exception:
        return None


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"Content-Type: text/plain\r\n\r\nnotice",
                b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\nAction: failed",
                b"Content-Type: text/rfc822-headers\r\n\r\nFrom: a@b",
                b"Content-Type: text/html\r\n\r\n<p>secret</p>",
                b"Content-Type: text/plain\r\n\r\nnotice\r--R\r\nContent-Type: text/html\r\n\r\nsecret",
                b"Content-Type: text/plain\r\n\r\nnotice\n--R\nContent-Type: text/html\n\nsecret",
                b"Content-Type: message/delivery-status\r\nContent-Type: text/html\r\n\r\nx",
            ]
        ),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from([b"", b"This is a MIME-encapsulated message.\r\n\r\n", b"--R\r\nsecret\r\n"]),
    st.sampled_from(["auto-replied", "no", ""]),
)
def test_report_exception_never_passes_another_structure(parts, preamble, auto):
    body = preamble + b"".join(b"--R\r\n" + p + b"\r\n" for p in parts) + b"--R--\r\n"
    data = (
        b"From: MAILER-DAEMON@example.net\r\nTo: bob@example.org\r\n"
        + (f"Auto-Submitted: {auto}\r\n".encode() if auto else b"")
        + b'Content-Type: multipart/report; report-type=delivery-status; boundary="R"\r\n\r\n'
        + body
    )
    verdict = gate.check_incoming(data, "", [BOB], lambda r: True)
    assert not verdict.reply.startswith("451")
    if verdict.accept:
        types = python_part_types(data)
        assert types is not None and len(types) == len(parts)
        assert types[0] == "text/plain" and types[1] == "message/delivery-status"
        assert auto == "auto-replied"


ASM_SETUP = (
    (MAIL_DATA / "asm.eml").read_bytes().split(b"--bnd-Mix1\r\n")[2].split(b"\r\n--bnd-Mix1--")[0]
)
MIXED_PARTS = [
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nSecure-Join: vc-request",
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nThis is the Autocrypt Setup Message.",
    ASM_SETUP,
    b"Content-Type: text/html\r\n\r\n<p>secret</p>",
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nSecure-Join: vc-request\r--M\r\nContent-Type: text/html\r\n\r\nx",
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Type: text/html\r\n\r\nSecure-Join: vc-request",
    b"Content-Type: text/plain; charset*=utf-8''x\r\n\r\nSecure-Join: vc-request",
    b"Content-Type : text/html\r\n\r\nSecure-Join: vc-request",
    b"\r\nSecure-Join: vc-request",
]


def assemble_mixed(ct, parts, preamble, epilogue, newline_edits):
    cts = [
        b'Content-Type: multipart/mixed; boundary="M"',
        b"Content-Type: multipart/mixed; boundary*=''N; boundary=\"M\"",
        b'Content-Type: multipart/mixed; boundary="=?utf-8?q?M?="',
        b'Content-Type: multipart/mixed; boundary="M"\r\nContent-Transfer-Encoding: base64',
    ]
    head = (
        b"From: alice@example.org\r\nTo: alice@example.org\r\n"
        b"Subject: Autocrypt Setup Message\r\nAutocrypt-Setup-Message: v1\r\n"
        b"Secure-Join: vc-request\r\nMIME-Version: 1.0\r\n" + cts[ct] + b"\r\n\r\n"
    )
    body = NOTICES[preamble]
    for part in parts:
        body += b"--M\r\n" + MIXED_PARTS[part] + b"\r\n"
    data = bytearray(head + body + b"--M--\r\n" + NOTICES[epilogue])
    for where, kind in newline_edits:
        at = data.find(b"\r\n", int(where * len(data)))
        if at >= 0:
            data[at : at + 2] = b"\n" if kind else b"\r"
    return bytes(data)


mixed_messages = st.builds(
    assemble_mixed,
    usually(0, st.integers(0, 3)),
    st.one_of(
        st.just([0]),
        st.just([1, 2]),
        st.lists(st.integers(0, len(MIXED_PARTS) - 1), min_size=1, max_size=3),
    ),
    usually(0, st.sampled_from(range(len(NOTICES)))),
    usually(0, st.sampled_from(range(len(NOTICES)))),
    usually([], st.lists(st.tuples(st.floats(0, 1), st.booleans()), max_size=2)),
)


def test_assembled_exceptions_pass():
    assert gate.check_outgoing(assemble_mixed(0, [0], 0, 0, []), ALICE, [BOB]).accept
    assert gate.check_outgoing(assemble_mixed(0, [1, 2], 0, 0, []), ALICE, [ALICE]).accept


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixed_messages)
def test_securejoin_and_setup_message_pass_only_what_python_email_sees_the_same(data):
    for rcpt in (BOB, ALICE):
        verdict = gate.check_outgoing(data, ALICE, [rcpt])
        assert not verdict.reply.startswith("451"), verdict
        if verdict.accept:
            types = python_part_types(data)
            assert types in (
                ["text/plain"],
                ["text/plain", "application/autocrypt-setup"],
                ["application/autocrypt-setup"],
            ), types
            msg = email.message_from_bytes(data, policy=email.policy.default)
            assert msg.get_boundary() == "M"
            for notice in (msg.preamble, msg.epilogue):
                assert not notice or len(notice.strip().splitlines()) <= 1


CORPUS_FILES = sorted(MAIL_DATA.glob("*.eml"))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CORPUS_FILES), st.lists(mutation, min_size=1, max_size=4))
def test_mutated_corpus_files_never_cause_an_internal_error(path, mutations):
    data = mutate(path.read_bytes(), mutations)
    replies = [
        gate.check_outgoing(data, ALICE, [BOB]).reply,
        gate.check_outgoing(data, ALICE, [ALICE]).reply,
        gate.check_incoming(data, "", [BOB], lambda r: True).reply,
        gate.check_incoming(data, "x@example.net", [BOB], lambda r: False).reply,
    ]
    for reply in replies:
        assert reply[:3] in ("250", "500", "523", "552"), reply
