"""Issue 11 (adversarial review of the gate): each attack, and its refusal."""

from __future__ import annotations

import base64
import json
import logging
import random
import subprocess
import sys
import textwrap

import pytest

from chatmaild.filtermail import gate, mime
from chatmaild.testkit import mailgen
from chatmaild.testkit.mailgen import (
    ALICE,
    BOB,
    CRLF,
    armor,
    encrypted_payload,
    multipart,
    packet,
    pgp_mime,
    postfix_bounce,
    read,
    setup_html,
    setup_message,
    setup_payload,
)

ENC = "523 Encryption Needed: Invalid Unencrypted Mail"
OK = "250 OK"
UNPARSABLE = "500 Failed to parse message: "
LIMIT = "552 5.3.4 Message structure exceeds limits: "
BAD_FROM = "500 Invalid FROM header: "

OK_ARMOR = armor(encrypted_payload(random.Random(7)))
VALID = pgp_mime(OK_ARMOR)


def outgoing(data: bytes, rcpts=(BOB,)) -> gate.Verdict:
    return gate.check_outgoing(data, ALICE, list(rcpts))


def incoming(data: bytes, mail_from: str = "x@example.net", rcpts=(BOB,)) -> gate.Verdict:
    return gate.check_incoming(data, mail_from, list(rcpts), lambda r: True)


def both(data: bytes) -> tuple[str, str]:
    return outgoing(data).reply, incoming(data).reply


def test_valid_message_passes_both_ways():
    assert both(VALID) == (OK, OK)


# Finding 1: bounded work. Limits refuse with 552 at the first violation.


def test_too_many_parts_is_refused_552():
    data = pgp_mime(OK_ARMOR, extra_parts=[b""] * mime.MAX_PARTS)
    out, inc = both(data)
    assert out == inc == LIMIT + f"more than {mime.MAX_PARTS} MIME parts"


def test_too_many_header_fields_is_refused_552():
    data = pgp_mime(OK_ARMOR, extra=[f"X-H{i}: x" for i in range(mime.MAX_HEADER_FIELDS)])
    assert both(data)[0] == LIMIT + f"more than {mime.MAX_HEADER_FIELDS} header fields"


def test_header_field_over_the_limit_is_refused_even_when_folded():
    folded = "X-Big: " + "\r\n ".join(["x" * 70] * (mime.MAX_FIELD_SIZE // 70 + 2))
    assert both(pgp_mime(OK_ARMOR, extra=[folded]))[1].startswith(LIMIT + "a header field")


def test_header_section_over_the_limit_is_refused():
    extra = [f"X-H{i}: " + "x" * 1900 for i in range(mime.MAX_HEADER_SECTION // 1900 + 5)]
    assert both(pgp_mime(OK_ARMOR, extra=extra))[0].startswith(LIMIT + "header section")


def test_rsa4096_autocrypt_header_is_well_within_limits():
    key = base64.b64encode(random.Random(1).randbytes(6000)).decode()
    autocrypt = "Autocrypt: addr=alice@example.org; keydata=\r\n " + "\r\n ".join(
        key[i : i + 76] for i in range(0, len(key), 76)
    )
    assert both(pgp_mime(OK_ARMOR, extra=[autocrypt])) == (OK, OK)


def test_long_delimiter_line_is_refused_without_copying_it():
    data = VALID.replace(b"--bnd-Enc1\r\n", b"--bnd-Enc1" + b" " * 5000 + b"\r\n", 1)
    assert both(data)[0] == LIMIT + f"a delimiter line longer than {mime.MAX_LINE} bytes"


def test_overlong_armor_line_is_refused():
    payload = encrypted_payload(random.Random(2), size=3000)
    assert both(pgp_mime(armor(payload, line=2000))) == (ENC, ENC)
    assert both(pgp_mime(armor(payload, line=900))) == (OK, OK)


def test_nested_multipart_is_refused_without_recursing():
    inner = b'Content-Type: multipart/mixed; boundary="n1"\r\n\r\n--n1\r\n' * 50
    data = multipart([inner], boundary="n0")
    assert both(data) == (ENC, ENC)


# Finding 5: obs-syntax names; only PGP/MIME labels in the part headers.


@pytest.mark.parametrize("line", ["Subject : secret", "Subject\t: secret", "From : x@evil.example"])
def test_whitespace_before_colon_is_refused_at_top_level(line):
    out, inc = both(pgp_mime(OK_ARMOR, extra=[line]))
    assert out == inc == UNPARSABLE + "whitespace before ':' in a header field name"


def test_whitespace_before_colon_is_refused_in_part_headers():
    data = pgp_mime(OK_ARMOR, payload_headers=["Content-Description : secret"])
    assert both(data)[1] == UNPARSABLE + "whitespace before ':' in a header field name"


@pytest.mark.parametrize(
    "description",
    ["OpenPGP encrypted message", "openpgp ENCRYPTED message", "Encrypted message"],
)
def test_standard_content_description_passes(description):
    data = VALID.replace(b"OpenPGP encrypted message", description.encode(), 1)
    assert both(data) == (OK, OK)


@pytest.mark.parametrize("description", ["Meet at 10", "x" * 2000, ""])
def test_other_content_description_is_refused(description):
    data = VALID.replace(b"OpenPGP encrypted message", description.encode(), 1)
    assert both(data) == (ENC, ENC)


def test_content_description_of_50k_is_refused():
    data = VALID.replace(b"OpenPGP encrypted message", b"secret " * 7300, 1)
    assert both(data)[0].startswith(LIMIT + "header section larger")


@pytest.mark.parametrize(
    "header",
    [
        "X-Note: meet at 10",
        "Content-ID: <meet-at-10@example.org>",
        "MIME-Version: 1.0",
        "Content-Transfer-Encoding: quoted-printable",
    ],
)
def test_part_header_beyond_the_shape_is_refused(header):
    assert both(pgp_mime(OK_ARMOR, payload_headers=[header])) == (ENC, ENC)


@pytest.mark.parametrize(
    "old, new",
    [
        (b'name="encrypted.asc"', b'name="' + b"meet at ten o clock " * 5 + b'"'),
        (b'filename="encrypted.asc";', b'filename="meet at 10 (bring it).asc";'),
        (b"inline;", b"form-data; name=x;"),
        (b'filename="encrypted.asc";', b'filename="encrypted.asc"; note="meet at 10"'),
        (
            b"Content-Type: application/pgp-encrypted\r\n",
            b"Content-Type: application/pgp-encrypted; note=meet-at-10\r\n",
        ),
    ],
)
def test_parameters_beyond_the_shape_are_refused(old, new):
    assert old in VALID
    assert both(VALID.replace(old, new, 1)) == (ENC, ENC)


def test_duplicated_part_header_is_refused():
    data = pgp_mime(OK_ARMOR, payload_headers=["Content-Description: OpenPGP encrypted message"])
    assert both(data)[0] == UNPARSABLE + "duplicated content-description header field"


# Finding 6: parser differentials.


def test_rfc2231_boundary_is_refused():
    data = VALID.replace(b'boundary="bnd-Enc1"', b"boundary*=utf-8''x; boundary=\"bnd-Enc1\"", 1)
    assert both(data)[0] == UNPARSABLE + "RFC 2231 parameter on multipart/encrypted"


@pytest.mark.parametrize("param", ["boundary*0=bnd-; boundary*1=Enc1", "protocol*=''x"])
def test_other_rfc2231_forms_on_structural_types_are_refused(param):
    data = VALID.replace(b'protocol="application/pgp-encrypted"', param.encode(), 1)
    assert both(data)[0].startswith(UNPARSABLE + "RFC 2231")


def test_rfc2231_on_payload_part_is_refused():
    data = VALID.replace(b'name="encrypted.asc"', b"name*=utf-8''encrypted.asc", 1)
    assert both(data)[0] == UNPARSABLE + "RFC 2231 parameter on application/octet-stream"


@pytest.mark.parametrize(
    "protocol, expected",
    [
        ('"application/pgp-encrypted"', OK),
        ('"Application/PGP-Encrypted"', OK),
        ('"application/pkcs7-mime"', ENC),
        ('"application/pgp-encrypted "', ENC),
        ('""', ENC),
    ],
)
def test_protocol_must_be_pgp_encrypted(protocol, expected):
    data = VALID.replace(b'"application/pgp-encrypted"', protocol.encode(), 1)
    assert both(data) == (expected, expected)


def test_unquoted_protocol_is_refused_as_malformed():
    # RFC 2045 §5.1: "/" is a tspecial, so the value must be a quoted-string.
    data = VALID.replace(b'"application/pgp-encrypted"', b"application/pgp-encrypted", 1)
    assert both(data)[0] == UNPARSABLE + "malformed Content-Type"


def test_duplicated_protocol_is_refused():
    data = VALID.replace(b"; boundary=", b'; protocol="application/pgp-encrypted"; boundary=', 1)
    assert both(data)[0] == UNPARSABLE + "malformed Content-Type"


def test_encoded_word_in_boundary_is_refused():
    # Python's email (policy.default) decodes it and splits at "--B" instead.
    word = b"=?utf-8?q?bnd-Enc1?="
    data = VALID.replace(b'boundary="bnd-Enc1"', b'boundary="' + word + b'"', 1)
    data = data.replace(b"--bnd-Enc1", b"--" + word)
    assert both(data)[0] == UNPARSABLE + "malformed Content-Type"


def test_comment_in_content_type_is_refused():
    data = VALID.replace(b"multipart/encrypted;", b"multipart/encrypted (x);", 1)
    assert both(data)[0] == UNPARSABLE + "malformed Content-Type"


@pytest.mark.parametrize(
    "preamble",
    [
        b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n",
        b"This is a MIME-encapsulated message.\r\n\r\n",
        b"\r\n",
    ],
)
def test_one_line_notice_as_preamble_passes(preamble):
    assert both(pgp_mime(OK_ARMOR, preamble=preamble)) == (OK, OK)


@pytest.mark.parametrize(
    "text",
    [
        b"Meet at 10.\r\nBring the plan.\r\n",
        b"Content-Type: text/plain\r\n",
        b"X-Secret:meet at 10\r\n",
        b"--bnd-Enc0 meet at 10\r\n",
        b"-- \r\n",
        b"x" * 201 + b"\r\n",
        "Grüße\r\n".encode(),
        b"meet\tat 10\r\n",
    ],
)
def test_preamble_or_epilogue_beyond_a_notice_is_refused(text):
    assert both(pgp_mime(OK_ARMOR, preamble=text)) == (ENC, ENC)
    assert both(pgp_mime(OK_ARMOR, epilogue=text)) == (ENC, ENC)


def test_boundary_lookalike_in_epilogue_is_refused():
    data = pgp_mime(OK_ARMOR, epilogue=b"--bnd-Enc1\r\n")
    assert both(data) == (ENC, ENC)


@pytest.mark.parametrize(
    "old, new",
    [
        (
            b"\r\n--bnd-Enc1\r\nContent-Type: application/oct",
            b"\n--bnd-Enc1\r\nContent-Type: application/oct",
        ),
        (b"--bnd-Enc1--\r\n", b"--bnd-Enc1--\n"),
        (b"Version: 1\r\n", b"Version: 1\r\r\n"),
        (b"To: bob@example.org\r\n", b"To: bob@example.org\n"),
        (b"To: bob@example.org\r\n", b"To: bob@exam\x00ple.org\r\n"),
    ],
)
def test_cr_lf_and_nul_oddities_are_refused(old, new):
    assert old in VALID
    out, inc = both(VALID.replace(old, new, 1))
    assert out != OK and inc != OK
    assert out.startswith(("500 ", "523 "))


@pytest.mark.parametrize("name", ["content-transfer-encoding", "mime-version", "subject"])
def test_duplicated_structural_top_level_field_is_refused(name):
    data = pgp_mime(OK_ARMOR, extra=[f"{name}: 7bit", f"{name}: 7bit"])
    assert both(data)[0] == UNPARSABLE + f"duplicated {name} header field"


def test_transfer_encoded_multipart_is_refused():
    data = pgp_mime(OK_ARMOR, extra=["Content-Transfer-Encoding: quoted-printable"])
    assert both(data) == (ENC, ENC)


# Finding 7: exactly one From with one plain address, incoming too.


@pytest.mark.parametrize(
    "from_lines",
    [
        [],
        ["From: alice@example.org", "From: mallory@evil.example"],
        ["From: alice@example.org, mallory@evil.example"],
        ["From: friends: alice@example.org;"],
        ["From: =?utf-8?q?alice=40example.org?="],
    ],
)
def test_incoming_needs_exactly_one_plain_from(from_lines):
    data = VALID.replace(
        b"From: alice@example.org\r\n",
        CRLF.join(x.encode() for x in from_lines) + (CRLF if from_lines else b""),
        1,
    )
    assert incoming(data).reply.startswith(BAD_FROM)
    bounce = postfix_bounce(VALID)
    bounce = bounce.replace(
        b"From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n",
        CRLF.join(
            x.replace("alice@example.org", "MAILER-DAEMON@mx.example.net").encode()
            for x in from_lines
        )
        + (CRLF if from_lines else b""),
        1,
    )
    assert incoming(bounce, mail_from="").reply.startswith(BAD_FROM)


def test_incoming_from_of_another_domain_is_fine():
    data = pgp_mime(OK_ARMOR, from_addr="Carol <carol@example.net>")
    assert incoming(data, mail_from="carol@example.net").reply == OK


# Finding 3: the mailer-daemon exception is an RFC 3464 report from the null sender.


def test_postfix_bounce_passes_from_null_sender_with_log_line(caplog):
    caplog.set_level(logging.INFO, logger="filtermail")
    assert incoming(postfix_bounce(VALID), mail_from="").reply == OK
    assert caplog.messages[-1] == (
        "Incoming: Filtering mailer-daemon message from MAILER-DAEMON@mx.example.net"
    )


def test_postfix_bounce_with_headers_only_passes():
    bounce = postfix_bounce(VALID).replace(
        b"Content-Type: message/rfc822", b"Content-Type: text/rfc822-headers", 1
    )
    assert incoming(bounce, mail_from="").reply == OK


def test_bounce_from_a_non_null_envelope_sender_is_refused():
    bounce = postfix_bounce(VALID)
    assert incoming(bounce, mail_from="mailer-daemon@mx.example.net").reply == ENC


@pytest.mark.parametrize("value", [b"no", b"No", b"NO ; x=y", b""])
def test_bounce_with_auto_submitted_no_or_empty_is_refused(value):
    bounce = postfix_bounce(VALID).replace(b"auto-replied", value, 1)
    assert incoming(bounce, mail_from="").reply == ENC


def test_bounce_without_auto_submitted_is_refused():
    bounce = postfix_bounce(VALID).replace(b"Auto-Submitted: auto-replied\r\n", b"", 1)
    assert incoming(bounce, mail_from="").reply == ENC


@pytest.mark.parametrize(
    "old, new",
    [
        (b"report-type=delivery-status", b"report-type=disposition-notification"),
        (b"report-type=delivery-status;", b""),
        (b"Content-Type: message/delivery-status", b"Content-Type: text/plain"),
        (
            b"Content-Type: text/plain; charset=us-ascii",
            b"Content-Type: text/html; charset=us-ascii",
        ),
        (b"Content-Type: message/rfc822", b"Content-Type: text/html"),
        (b"This is a MIME-encapsulated message.\r\n", b"Meet at 10.\r\nBring it.\r\n"),
    ],
)
def test_bounce_outside_the_report_shape_is_refused(old, new):
    bounce = postfix_bounce(VALID)
    assert old in bounce
    assert incoming(bounce.replace(old, new, 1), mail_from="").reply == ENC


def test_bounce_with_a_lone_html_part_is_refused():
    data = read("attack-mailer-daemon-html-only.eml")
    assert incoming(data, mail_from="").reply == ENC


def test_bounce_with_an_extra_part_is_refused():
    bounce = postfix_bounce(VALID)
    dash = b"--4Abc1.1796032800/mx.example.net"
    extra = bounce.replace(
        dash + b"--", dash + b"\r\nContent-Type: text/plain\r\n\r\nx\r\n" + dash + b"--"
    )
    assert incoming(extra, mail_from="").reply == ENC


def test_bounce_with_a_bare_cr_in_the_notification_is_refused():
    bounce = postfix_bounce(VALID).replace(
        b"The mail system\r\n", b"The mail system\r--4Abc1.1796032800/mx.example.net\r\n", 1
    )
    assert incoming(bounce, mail_from="").reply == UNPARSABLE + "bare CR, LF or NUL in a report"


# Finding 8: securejoin to one recipient; the setup message in Autocrypt's shape.


def test_securejoin_request_to_one_recipient_passes_to_many_is_refused():
    vc = mailgen.securejoin("vc-request")
    assert outgoing(vc).reply == OK
    assert incoming(vc).reply == OK
    rcpts = [f"user{i}@example.org" for i in range(50)]
    assert outgoing(vc, rcpts=rcpts).reply == ENC
    assert incoming(vc, rcpts=rcpts).reply == ENC


def test_securejoin_body_must_name_the_header_step():
    data = mailgen.securejoin("vc-request", body="Secure-Join: vg-request")
    assert outgoing(data).reply == ENC


@pytest.mark.parametrize(
    "header",
    ["Content-Description: meet at 10", "Content-Disposition: attachment; filename=plan.txt"],
)
def test_securejoin_part_headers_beyond_the_shape_are_refused(header):
    data = mailgen.securejoin("vc-request").replace(
        b"charset=utf-8\r\n", b"charset=utf-8\r\n" + header.encode() + CRLF, 1
    )
    assert outgoing(data).reply == ENC


def test_securejoin_content_type_parameter_carrying_text_is_refused():
    data = mailgen.securejoin("vc-request").replace(
        b"charset=utf-8", b'charset=utf-8; x="meet at 10, bring the plan"', 1
    )
    assert outgoing(data).reply == ENC


def test_setup_message_to_self_passes_in_html_and_base64_forms():
    assert outgoing(read("asm.eml"), rcpts=[ALICE]).reply == OK
    assert outgoing(read("asm-base64.eml"), rcpts=[ALICE]).reply == OK
    bare = setup_message(
        armor(setup_payload(random.Random(5)), armor_headers=["Passphrase-Format: numeric9x4"]),
        description=False,
    )
    assert outgoing(bare, rcpts=[ALICE]).reply == OK


def test_setup_message_without_setup_data_is_refused():
    assert outgoing(read("attack-asm-without-setup-data.eml"), rcpts=[ALICE]).reply == ENC


def test_setup_message_with_pkesk_instead_of_skesk_is_refused():
    assert outgoing(read("attack-asm-pkesk.eml"), rcpts=[ALICE]).reply == ENC


def test_setup_message_with_text_around_the_armor_beyond_a_wrapper_is_refused():
    setup = armor(setup_payload(random.Random(5)))
    big = setup_html(setup).replace(b"<p>", b"<p>" + b"meet at 10 " * 500, 1)
    assert outgoing(setup_message(big), rcpts=[ALICE]).reply == ENC
    second = setup_html(setup) + armor(packet(11, b"b\x00\x00\x00\x00\x00spam"))
    assert outgoing(setup_message(second), rcpts=[ALICE]).reply == ENC


@pytest.mark.parametrize(
    "old, new",
    [
        (b"Autocrypt-Setup-Message: v1\r\n", b""),
        (b"Passphrase-Format: numeric9x4", b"Comment: meet at 10"),
        (b"This is the Autocrypt Setup Message.", b"x" * 5000),
        (b"Content-Type: text/plain; charset=utf-8", b"Content-Type: text/html"),
    ],
)
def test_setup_message_outside_autocrypt_shape_is_refused(old, new):
    asm = read("asm.eml")
    assert old in asm
    assert outgoing(asm.replace(old, new, 1), rcpts=[ALICE]).reply == ENC


def test_setup_message_with_an_extra_part_is_refused():
    asm = read("asm.eml")
    extra = asm.replace(
        b"--bnd-Mix1--", b"--bnd-Mix1\r\nContent-Type: text/plain\r\n\r\nhi\r\n--bnd-Mix1--", 1
    )
    assert outgoing(extra, rcpts=[ALICE]).reply == ENC


def test_setup_message_with_a_bare_cr_delimiter_is_refused():
    # Python's email ends a line at a lone CR and would see a third, text/html part.
    asm = read("asm.eml").replace(
        b"Setup Message.\r\n",
        b"Setup Message.\r--bnd-Mix1\r\nContent-Type: text/html\r\n\r\nhi\r\n",
        1,
    )
    assert (
        outgoing(asm, rcpts=[ALICE]).reply == UNPARSABLE + "bare CR, LF or NUL in a setup message"
    )


def test_setup_message_is_not_an_incoming_exception():
    assert incoming(read("asm.eml"), rcpts=[ALICE]).reply == ENC


# Memory: hostile 30 MiB shapes cost at most ~2x their size (peak RSS, own process).

_MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    from chatmaild.filtermail import gate
    from chatmaild.tests.test_filtermail_hostile import hostile_shape

    def rss_kib():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

    data = hostile_shape(sys.argv[1])
    before = max(rss_kib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    out = gate.check_outgoing(data, "alice@example.org", ["bob@example.org"]).reply
    inc = gate.check_incoming(data, "", ["bob@example.org"], lambda r: True).reply
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"size": len(data), "growth_kib": after - before, "out": out, "in": inc}))
    """
)

SIZE = 30 * 1024 * 1024


def hostile_shape(name: str) -> bytearray:
    """A 30 MiB message of one hostile shape, built in place (no large temporaries)."""
    top = mailgen.headers(
        content_type='multipart/encrypted; protocol="application/pgp-encrypted"; boundary="B"'
    )
    data = bytearray()
    if name == "many-parts":
        data += top + CRLF
        data += b"--B\r\n\r\n" * (SIZE // 7)
    elif name == "many-headers":
        data += b"X: y\r\n" * (SIZE // 6)
        data += top + CRLF
    elif name == "many-folded-lines":
        data += top + b"X: y\r\n" + b" z\r\n" * (SIZE // 4) + CRLF
    elif name == "huge-header":
        data += top + b"X-Big: " + b"x" * SIZE + CRLF + CRLF
    elif name == "deep-nesting":
        data += mailgen.headers(content_type='multipart/mixed; boundary="0"') + CRLF
        level = 0
        while len(data) < SIZE:
            data += b'--%d\r\nContent-Type: multipart/mixed; boundary="%d"\r\n\r\n' % (
                level,
                level + 1,
            )
            level += 1
    elif name == "long-armor-line":
        data += top + CRLF + b"--B\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
        data += b"--B\r\nContent-Type: application/octet-stream\r\n\r\n"
        data += b"-----BEGIN PGP MESSAGE-----\r\n\r\n" + b"A" * SIZE
        data += b"\r\n-----END PGP MESSAGE-----\r\n--B--\r\n"
    elif name == "long-preamble-line":
        data += top + CRLF + b"x" * SIZE + CRLF + b"--B--\r\n"
    elif name == "lookalike-lines":
        data += top + CRLF + b"--B\r\n\r\n" + b"--Bx\r\n" * (SIZE // 6)
    elif name == "packet-flood":
        flood = bytearray(b"\xc1\x00") * (SIZE * 3 // 8)
        flood += packet(18, b"x")
        data += pgp_mime(armor(bytes(flood), crc=False))
    elif name == "big-bounce":
        returned = bytearray(b"X: y\r\n\r\n") + (b"x" * 76 + CRLF) * (SIZE // 78)
        data += postfix_bounce(bytes(returned))
    elif name == "valid-encrypted":
        rng = random.Random(1)
        payload = packet(1, rng.randbytes(270)) + mailgen.partial_packet(
            18, rng.randbytes(22 * 1024 * 1024), chunk_power=13
        )
        data += pgp_mime(armor(payload, crc=False))
    else:
        raise ValueError(name)
    return data


HOSTILE_SHAPES = [
    "many-parts",
    "many-headers",
    "many-folded-lines",
    "huge-header",
    "deep-nesting",
    "long-armor-line",
    "long-preamble-line",
    "lookalike-lines",
    "packet-flood",
    "valid-encrypted",
    "big-bounce",
]


@pytest.mark.parametrize("name", HOSTILE_SHAPES)
def test_hostile_30mib_message_costs_at_most_twice_its_size(name):
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, name],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(proc.stdout)
    assert result["size"] >= 29 * 1024 * 1024
    assert result["growth_kib"] * 1024 < 2 * result["size"], result
    if name == "valid-encrypted":
        assert result["out"] == result["in"] == OK
    elif name == "big-bounce":
        assert result["in"] == OK and result["out"] != OK
    else:
        assert result["out"] != OK and result["in"] != OK
        assert not result["out"].startswith("451") and not result["in"].startswith("451")
