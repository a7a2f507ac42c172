"""Test-data generator: OpenPGP packet framing, ASCII armor and PGP/MIME messages.

No cryptography: packet bodies are random bytes, since the gate only checks structure.
``python -m chatmaild.testkit.mailgen DIR`` (re)writes the .eml corpus deterministically
(the tests' copy: chatmaild/src/chatmaild/tests/mail-data).
"""

from __future__ import annotations

import base64
import random
import sys
from pathlib import Path

CRLF = b"\r\n"
ALICE = "alice@example.org"
BOB = "bob@example.org"
DOMAIN = "example.org"
# The tests' copy of the corpus (written by ``main``), as files: what they send and parse.
MAIL_DATA = Path(__file__).parents[1] / "tests" / "mail-data"


def new_length(n: int) -> bytes:
    """RFC 4880 §4.2.2 one-, two- or five-octet body length."""
    if n < 192:
        return bytes([n])
    if n < 8384:
        n -= 192
        return bytes([(n >> 8) + 192, n & 0xFF])
    return b"\xff" + n.to_bytes(4, "big")


def packet(tag: int, body: bytes, five_octet: bool = False) -> bytes:
    """A new-format packet (RFC 4880 §4.2: tag octet 0xC0 | tag)."""
    length = b"\xff" + len(body).to_bytes(4, "big") if five_octet else new_length(len(body))
    return bytes([0xC0 | tag]) + length + body


def partial_packet(tag: int, body: bytes, chunk_power: int = 9) -> bytes:
    """A new-format packet with partial body lengths (RFC 4880 §4.2.2.4)."""
    out = bytearray([0xC0 | tag])
    size = 1 << chunk_power
    pos = 0
    while len(body) - pos > size:
        out.append(224 + chunk_power)
        out += body[pos : pos + size]
        pos += size
    rest = body[pos:]
    out += new_length(len(rest)) + rest
    return bytes(out)


def old_packet(tag: int, body: bytes) -> bytes:
    """An old-format packet (bit 6 clear), which our gate must refuse."""
    assert len(body) < 256
    return bytes([0x80 | (tag << 2), len(body)]) + body


def rand(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def encrypted_payload(rng: random.Random, recipients: int = 2, size: int = 300) -> bytes:
    """PKESK per recipient, then one SEIPD (RFC 4880 §5.1, §5.13)."""
    out = b"".join(
        packet(1, b"\x03" + rand(rng, 8) + b"\x01" + rand(rng, 258)) for _ in range(recipients)
    )
    return out + packet(18, b"\x01" + rand(rng, size))


def crc24(data: bytes) -> int:
    """RFC 4880 §6.1 CRC-24."""
    crc = 0xB704CE
    for octet in data:
        crc ^= octet << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def armor(
    payload: bytes,
    version: str | None = None,
    crc: bool = True,
    line: int = 76,
    armor_headers: list[str] | None = None,
) -> bytes:
    """ASCII armor (RFC 4880 §6.2) with CRLF line ends."""
    lines = [b"-----BEGIN PGP MESSAGE-----"]
    if version is not None:
        lines.append(b"Version: " + version.encode())
    lines += [h.encode() for h in armor_headers or []]
    lines.append(b"")
    b64 = base64.b64encode(payload)
    lines += [b64[i : i + line] for i in range(0, len(b64), line)]
    if crc:
        lines.append(b"=" + base64.b64encode(crc24(payload).to_bytes(3, "big")))
    lines.append(b"-----END PGP MESSAGE-----")
    return CRLF.join(lines) + CRLF


def headers(
    from_addr: str = ALICE,
    to: str = BOB,
    content_type: str = "text/plain; charset=utf-8",
    subject: str = "...",
    extra: list[str] | None = None,
    message_id: str = "<Mr.test@example.org>",
) -> bytes:
    lines = [
        f"From: {from_addr}",
        f"To: {to}",
        f"Subject: {subject}",
        "Date: Tue, 24 Nov 2026 10:00:00 +0000",
        f"Message-ID: {message_id}",
        "MIME-Version: 1.0",
        f"Content-Type: {content_type}",
    ]
    lines += extra or []
    return CRLF.join(line.encode() for line in lines) + CRLF


def plain(body: str = "Hi!", **kw) -> bytes:
    return headers(**kw) + CRLF + body.encode().replace(b"\n", CRLF) + CRLF


def pgp_mime(
    armored: bytes,
    boundary: str = "bnd-Enc1",
    control_body: bytes = b"Version: 1",
    control_type: str = "application/pgp-encrypted",
    payload_type: str = 'application/octet-stream; name="encrypted.asc"',
    preamble: bytes = b"",
    epilogue: bytes = b"",
    extra_parts: list[bytes] | None = None,
    payload_headers: list[str] | None = None,
    **kw,
) -> bytes:
    """RFC 3156 §4 multipart/encrypted in the shape Delta Chat sends."""
    ct = f'multipart/encrypted; protocol="application/pgp-encrypted"; boundary="{boundary}"'
    dash = b"--" + boundary.encode()
    ph = [
        f"Content-Type: {payload_type}",
        "Content-Description: OpenPGP encrypted message",
        'Content-Disposition: inline; filename="encrypted.asc";',
    ] + (payload_headers or [])
    parts = [
        CRLF.join(
            [
                f"Content-Type: {control_type}".encode(),
                b"Content-Description: PGP/MIME version identification",
                b"",
                control_body,
            ]
        ),
        CRLF.join(line.encode() for line in ph) + CRLF + CRLF + armored,
    ] + (extra_parts or [])
    body = preamble
    for part in parts:
        body += dash + CRLF + part + CRLF
    body += dash + b"--" + CRLF + epilogue
    return headers(content_type=ct, **kw) + CRLF + body


def multipart(
    parts: list[bytes], subtype: str = "mixed", boundary: str = "bnd-Mix1", **kw
) -> bytes:
    dash = b"--" + boundary.encode()
    body = b"".join(dash + CRLF + p + CRLF for p in parts) + dash + b"--" + CRLF
    return headers(content_type=f'multipart/{subtype}; boundary="{boundary}"', **kw) + CRLF + body


def text_part(text: str, content_type: str = "text/plain; charset=utf-8") -> bytes:
    return f"Content-Type: {content_type}".encode() + CRLF + CRLF + text.encode()


def securejoin(step: str = "vc-request", body: str | None = None) -> bytes:
    text = body if body is not None else f"Secure-Join: {step}"
    return multipart([text_part(text)], extra=[f"Secure-Join: {step}"])


def setup_payload(rng: random.Random, size: int = 3000) -> bytes:
    """Autocrypt §4.4 setup data: SKESK (RFC 4880 §5.3) then SEIPD, passphrase-encrypted."""
    skesk = packet(3, b"\x04\x09\x03\x08" + rand(rng, 8) + b"\xee")
    return skesk + packet(18, b"\x01" + rand(rng, size))


def setup_html(armored: bytes) -> bytes:
    """Delta Chat's setup file: the armor inside a short HTML page (Autocrypt §4.4.3)."""
    head = (
        b"<!DOCTYPE html>\r\n<html>\r\n  <head>\r\n    <title>Autocrypt Setup Message</title>\r\n"
        b"  </head>\r\n  <body>\r\n    <h1>Autocrypt Setup Message</h1>\r\n"
        b"    <p>This is the Autocrypt Setup Message used to transfer your end-to-end setup "
        b"between clients.</p>\r\n    <pre>\r\n"
    )
    return head + armored + b"</pre>\r\n  </body>\r\n</html>\r\n"


def setup_message(setup_body: bytes, cte: str | None = None, description: bool = True) -> bytes:
    """An Autocrypt Setup Message from alice to herself (Autocrypt §4.4)."""
    setup = (
        b"Content-Type: application/autocrypt-setup\r\n"
        b'Content-Disposition: attachment; filename="autocrypt-setup-message.html"\r\n'
    )
    if cte:
        setup += f"Content-Transfer-Encoding: {cte}\r\n".encode()
    parts = [text_part("This is the Autocrypt Setup Message.")] if description else []
    parts.append(setup + b"\r\n" + setup_body)
    return multipart(
        parts,
        subject="Autocrypt Setup Message",
        to=ALICE,
        extra=["Autocrypt-Setup-Message: v1"],
    )


def postfix_bounce(original: bytes, boundary: str = "4Abc1.1796032800/mx.example.net") -> bytes:
    """A non-delivery report in Postfix 3.7's shape (bounce(8) template, RFC 3464/6522).

    Compared with a real one (mail-data/mailer-daemon-postfix-3.7.eml): Postfix adds
    ``Content-Transfer-Encoding: 8bit`` only when the content has 8-bit octets; kept
    here on the returned message and the top level to cover that variant.
    """
    dash = b"--" + boundary.encode()
    notification = (
        b"Content-Description: Notification\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        b"This is the mail system at host mx.example.net.\r\n\r\n"
        b"I'm sorry to have to inform you that your message could not\r\n"
        b"be delivered to one or more recipients. It's attached below.\r\n\r\n"
        b"For further assistance, please send mail to postmaster.\r\n\r\n"
        b"If you do so, please include this problem report. You can\r\n"
        b"delete your own text from the attached returned message.\r\n\r\n"
        b"                   The mail system\r\n\r\n"
        b"<carol@example.net>: host mx2.example.net[192.0.2.7] said: 550 5.1.1\r\n"
        b"    <carol@example.net>: Recipient address rejected: User unknown (in reply to\r\n"
        b"    RCPT TO command)\r\n"
    )
    report = (
        b"Content-Description: Delivery report\r\n"
        b"Content-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.example.net\r\n"
        b"X-Postfix-Queue-ID: 4Abc1\r\n"
        b"X-Postfix-Sender: rfc822; alice@example.org\r\n"
        b"Arrival-Date: Tue, 24 Nov 2026 09:59:58 +0000 (UTC)\r\n\r\n"
        b"Final-Recipient: rfc822; carol@example.net\r\n"
        b"Original-Recipient: rfc822;carol@example.net\r\n"
        b"Action: failed\r\n"
        b"Status: 5.1.1\r\n"
        b"Remote-MTA: dns; mx2.example.net\r\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 <carol@example.net>: Recipient address\r\n"
        b"    rejected: User unknown\r\n"
    )
    returned = (
        b"Content-Description: Undelivered Message\r\n"
        b"Content-Type: message/rfc822\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + original
    )
    top = (
        b"Received: by mx.example.net (Postfix)\r\n\tid 4Abc1; Tue, 24 Nov 2026 10:00:00 +0000 (UTC)\r\n"
        b"Date: Tue, 24 Nov 2026 10:00:00 +0000 (UTC)\r\n"
        b"From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\n"
        b"To: alice@example.org\r\n"
        b"Auto-Submitted: auto-replied\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status;\r\n"
        b'\tboundary="' + boundary.encode() + b'"\r\n'
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"Message-Id: <20261124100000.4Abc1@mx.example.net>\r\n\r\n"
        b"This is a MIME-encapsulated message.\r\n\r\n"
    )
    body = b"".join(dash + CRLF + p + CRLF for p in (notification, report, returned))
    return top + body + dash + b"--" + CRLF


def read(name: str) -> bytes:
    """The bytes of sample ``name`` of the corpus in MAIL_DATA."""
    return (MAIL_DATA / name).read_bytes()


def corpus() -> dict[str, bytes]:
    """Every file of tests/mail-data, by name."""
    rng = random.Random(3156)
    ok = armor(encrypted_payload(rng))
    files: dict[str, bytes] = {}
    f = files.__setitem__

    # The reference's cases (reference-behaviour §3.1 table) and the exceptions.
    f("plain.eml", plain())
    f(
        "fake-encrypted.eml",
        plain(
            "-----BEGIN PGP MESSAGE-----\n\nwcBMA1NzdG9wIHJlYWRpbmcgdGhpcw==\n-----END PGP MESSAGE-----"
        ),
    )
    f("encrypted.eml", pgp_mime(ok))
    f(
        "encrypted-skesk.eml",
        pgp_mime(
            armor(packet(3, b"\x04\x09\x03" + rand(rng, 40)) + packet(18, b"\x01" + rand(rng, 100)))
        ),
    )
    f("encrypted-seipd-only.eml", pgp_mime(armor(packet(18, b"\x01" + rand(rng, 50)))))
    f(
        "encrypted-partial-lengths.eml",
        pgp_mime(armor(packet(1, rand(rng, 270)) + partial_packet(18, rand(rng, 3000)))),
    )
    f(
        "encrypted-five-octet.eml",
        pgp_mime(armor(packet(1, rand(rng, 200), five_octet=True) + packet(18, rand(rng, 9000)))),
    )
    f("encrypted-no-crc.eml", pgp_mime(armor(encrypted_payload(rng), crc=False)))
    f("encrypted-64-char-lines.eml", pgp_mime(armor(encrypted_payload(rng), line=64)))
    f(
        "encrypted-thunderbird-preamble.eml",
        pgp_mime(ok, preamble=b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n"),
    )
    f("encrypted-armor-version.eml", pgp_mime(armor(encrypted_payload(rng), version="GnuPG v2")))
    f("encrypted-uppercase-from.eml", pgp_mime(ok, from_addr="Alice <ALICE@Example.ORG>"))
    f(
        "encrypted-display-name.eml",
        pgp_mime(ok, from_addr='"Alice (phone)" <alice@example.org> (comment)'),
    )
    f(
        "encrypted-8bit-headers.eml",
        pgp_mime(ok, from_addr="Jörg Ünal <alice@example.org>", subject="Grüße"),
    )
    folded = pgp_mime(ok).replace(
        b'"application/pgp-encrypted"; boundary', b'"application/pgp-encrypted";\r\n\tboundary', 1
    )
    f(
        "encrypted-folded-content-type.eml",
        folded.replace(b"Version: 1\r\n", b"Version: 1\r\n\r\n", 1),
    )
    f("literal.eml", pgp_mime(armor(packet(11, b"b\x08file.txt\x00\x00\x00\x00Hello, cleartext"))))
    mdn_parts = [
        text_part("The message was displayed."),
        text_part(
            "Reporting-UA: Delta Chat\r\nOriginal-Recipient: rfc822;bob@example.org\r\nDisposition: manual-action/MDN-sent-automatically; displayed",
            "message/disposition-notification",
        ),
    ]
    f(
        "mdn.eml",
        multipart(
            mdn_parts, subtype='report; report-type="disposition-notification"', boundary="bnd-Mdn"
        ),
    )
    f("securejoin-vc.eml", securejoin("vc-request"))
    f("securejoin-vg.eml", securejoin("vg-request"))
    f("securejoin-vc-fake.eml", securejoin("vc-request", body="Buy viagra!"))
    f(
        "securejoin-extra-part.eml",
        multipart(
            [text_part("Secure-Join: vc-request"), text_part("Buy viagra!")],
            extra=["Secure-Join: vc-request"],
        ),
    )
    f(
        "securejoin-epilogue-spam.eml",
        securejoin("vc-request") + b"Buy viagra! Cheap! Visit http://spam.example\r\n",
    )
    setup_armor = armor(
        setup_payload(random.Random(4)),
        armor_headers=["Passphrase-Format: numeric9x4", "Passphrase-Begin: 12"],
    )
    # asm.eml used to carry "<html>...</html>" without setup data, which no client sends;
    # it now holds Delta Chat's HTML-wrapped armor (Autocrypt §4.4.3).
    f("asm.eml", setup_message(setup_html(setup_armor)))
    b64 = base64.b64encode(setup_html(setup_armor))
    f(
        "asm-base64.eml",
        setup_message(CRLF.join(b64[i : i + 76] for i in range(0, len(b64), 76)), cte="base64"),
    )
    bounce_parts = [
        text_part(
            "This is the mail system at host example.net.\r\n\r\nI'm sorry to have to inform you that your message could not be delivered."
        ),
        text_part(
            "Reporting-MTA: dns; example.net\r\n\r\nFinal-Recipient: rfc822; carol@example.net\r\nAction: failed\r\nStatus: 5.1.1",
            "message/delivery-status",
        ),
    ]
    f(
        "mailer-daemon.eml",
        multipart(
            bounce_parts,
            subtype="report; report-type=delivery-status",
            boundary="bnd-Dsn",
            from_addr="MAILER-DAEMON@example.net (Mail Delivery System)",
            to=ALICE,
            subject="Undelivered Mail Returned to Sender",
            extra=["Auto-Submitted: auto-replied"],
        ),
    )
    f(
        "mailer-daemon-fake.eml",
        multipart(
            [text_part("Buy viagra!")],
            subtype="report; report-type=delivery-status",
            from_addr="mailer-daemon@example.net",
            to=ALICE,
        ),
    )

    f("mailer-daemon-postfix.eml", postfix_bounce(pgp_mime(ok)))

    # Bypasses an attacker would try: all must be refused.
    f("attack-extra-part.eml", pgp_mime(ok, extra_parts=[text_part("Buy viagra!")]))
    f(
        "attack-nested-in-mixed.eml",
        multipart(
            [text_part("Buy viagra!"), pgp_mime(ok).split(b"\r\n", 5)[5]],
        ),
    )
    inner = pgp_mime(ok, boundary="bnd-Inner")
    inner_entity = inner[inner.index(b"Content-Type: multipart/encrypted") :]
    f(
        "attack-multipart-payload.eml",
        pgp_mime(inner_entity, payload_type='multipart/mixed; boundary="x"'),
    )
    f("attack-text-control-part.eml", pgp_mime(ok, control_type="text/plain"))
    f("attack-text-payload-part.eml", pgp_mime(ok, payload_type="text/plain"))
    f(
        "attack-swapped-parts.eml",
        pgp_mime(
            b"Version: 1",
            control_body=ok.rstrip(b"\r\n"),
            control_type="application/octet-stream",
            payload_type="application/pgp-encrypted",
        ),
    )
    f("attack-version-2.eml", pgp_mime(ok, control_body=b"Version: 2"))
    f("attack-version-no-space.eml", pgp_mime(ok, control_body=b"Version:1"))
    f("attack-version-lowercase.eml", pgp_mime(ok, control_body=b"version: 1"))
    f("attack-version-plus-text.eml", pgp_mime(ok, control_body=b"Version: 1\r\nBuy viagra!"))
    f("attack-trailing-data.eml", pgp_mime(ok + b"Buy viagra!\r\n"))
    f("attack-leading-text.eml", pgp_mime(b"Buy viagra!\r\n" + ok))
    f(
        "attack-armor-comment.eml",
        pgp_mime(ok.replace(b"-----\r\n\r\n", b"-----\r\nComment: Buy viagra!\r\n\r\n", 1)),
    )
    bad64 = ok.replace(b"\r\n\r\n", b"\r\n\r\nBuy viagra!\r\n", 1)
    f("attack-invalid-base64.eml", pgp_mime(bad64))
    f(
        "attack-second-armor.eml",
        pgp_mime(ok + b"\r\n" + armor(packet(11, b"b\x00\x00\x00\x00\x00spam"))),
    )
    f(
        "attack-old-format-tags.eml",
        pgp_mime(armor(old_packet(1, rand(rng, 200)) + old_packet(9, rand(rng, 200)))),
    )
    f(
        "attack-signature-before-seipd.eml",
        pgp_mime(armor(packet(2, rand(rng, 100)) + packet(18, rand(rng, 100)))),
    )
    f(
        "attack-literal-before-seipd.eml",
        pgp_mime(armor(packet(11, b"b\x00\x00\x00\x00\x00spam") + packet(18, rand(rng, 100)))),
    )
    f(
        "attack-literal-after-seipd.eml",
        pgp_mime(armor(encrypted_payload(rng) + packet(11, b"b\x00\x00\x00\x00\x00spam"))),
    )
    f(
        "attack-truncated-seipd.eml",
        pgp_mime(armor(packet(1, rand(rng, 100)) + packet(18, rand(rng, 300))[:200])),
    )
    f(
        "attack-partial-length-pkesk.eml",
        pgp_mime(armor(partial_packet(1, rand(rng, 1500)) + packet(18, rand(rng, 100)))),
    )
    f(
        "attack-small-first-partial.eml",
        pgp_mime(armor(partial_packet(18, rand(rng, 1000), chunk_power=4))),
    )
    f("attack-no-packets.eml", pgp_mime(armor(b"")))
    f(
        "attack-base64-transfer-encoding.eml",
        pgp_mime(ok, payload_headers=["Content-Transfer-Encoding: base64"]),
    )
    f(
        "attack-big-preamble.eml",
        pgp_mime(ok, preamble=b"Buy viagra! " * 200 + b"\r\n"),
    )
    f("attack-boundary-lookalike.eml", pgp_mime(ok, preamble=b"--bnd-Enc1 Buy viagra!\r\n"))
    f(
        "attack-multipart-transfer-encoded.eml",
        pgp_mime(ok, extra=["Content-Transfer-Encoding: base64"]),
    )
    two_ct = pgp_mime(ok).replace(
        b"MIME-Version: 1.0\r\n", b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n", 1
    )
    f("attack-two-content-types.eml", two_ct)
    f(
        "attack-pgp-text-in-plain.eml",
        plain(
            "Content-Type: multipart/encrypted; protocol=application/pgp-encrypted\n"
            "Content-Type: application/pgp-encrypted\n\nVersion: 1\n\n" + ok.decode()
        ),
    )
    f("attack-lf-only.eml", pgp_mime(ok).replace(b"\r\n", b"\n"))
    f(
        "attack-8bit-body.eml",
        plain("Grüße, ça va? Привет").replace(b"charset=utf-8", b"charset=utf-8", 1),
    )
    f(
        "attack-8bit-in-armor.eml",
        pgp_mime(ok.replace(b"\r\n\r\n", "\r\n\r\nÄÖÜ\r\n".encode(), 1)),
    )
    dup = pgp_mime(ok).replace(
        b"From: alice@example.org\r\n",
        b"From: alice@example.org\r\nFrom: mallory@evil.example\r\n",
        1,
    )
    f("attack-duplicate-from.eml", dup)
    dup_space = pgp_mime(ok).replace(
        b"From: alice@example.org\r\n",
        b"From: alice@example.org\r\nFrom : mallory@evil.example\r\n",
        1,
    )
    f("attack-duplicate-from-space.eml", dup_space)
    f("attack-from-encoded-word.eml", pgp_mime(ok, from_addr="=?utf-8?q?alice=40example=2Eorg?="))
    f(
        "attack-from-encoded-word-in-angle.eml",
        pgp_mime(ok, from_addr="Alice <=?utf-8?q?alice=40example.org?=>"),
    )
    f(
        "attack-display-name-address.eml",
        pgp_mime(ok, from_addr='"alice@example.org" <mallory@evil.example>'),
    )
    f(
        "attack-unquoted-display-name-address.eml",
        pgp_mime(ok, from_addr="alice@example.org <mallory@evil.example>"),
    )
    f(
        "attack-text-after-angle.eml",
        pgp_mime(ok, from_addr="<alice@example.org> mallory@evil.example"),
    )
    f("attack-from-list.eml", pgp_mime(ok, from_addr="alice@example.org, mallory@evil.example"))
    f("attack-from-group.eml", pgp_mime(ok, from_addr="friends: alice@example.org;"))
    f("attack-from-kelvin-sign.eml", pgp_mime(ok, from_addr="\u212aate@example.org"))
    f("attack-missing-from.eml", pgp_mime(ok).replace(b"From: alice@example.org\r\n", b"", 1))
    f(
        "attack-folded-from-bare-cr.eml",
        pgp_mime(ok).replace(
            b"From: alice@example.org\r\n",
            b"From: alice@example.org\rFrom: mallory@evil.example\r\n",
            1,
        ),
    )
    hostile(files.__setitem__, ok, random.Random(11))
    return files


def hostile(f, ok: bytes, rng: random.Random) -> None:
    """Issue 11's findings: obs-syntax, parameter tricks, wide exceptions, limits."""
    f(
        "attack-subject-space-colon.eml",
        pgp_mime(ok, extra=["Subject : the meeting is at 10, bring the documents"]),
    )
    f(
        "attack-part-header-space-colon.eml",
        pgp_mime(ok, payload_headers=["Content-Description : meeting at 10"]),
    )
    f(
        "attack-content-description-secret.eml",
        pgp_mime(ok).replace(
            b"Content-Description: OpenPGP encrypted message",
            b"Content-Description: " + b"the secret plan " * 3200,
            1,
        ),
    )
    f("attack-part-extra-header.eml", pgp_mime(ok, payload_headers=["X-Note: meet at 10"]))
    rfc2231 = pgp_mime(ok, boundary="y").replace(
        b'boundary="y"', b"boundary*=utf-8''x; boundary=\"y\"", 1
    )
    f(
        "attack-rfc2231-boundary.eml",
        rfc2231.replace(
            b"\r\n\r\n--y\r\n",
            b"\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nsecret\r\n--x--\r\n--y\r\n",
            1,
        ),
    )
    f(
        "attack-wrong-protocol.eml",
        pgp_mime(ok).replace(b'protocol="application/pgp-encrypted"', b'protocol="text/plain"', 1),
    )
    f(
        "attack-missing-protocol.eml",
        pgp_mime(ok).replace(b'protocol="application/pgp-encrypted"; ', b"", 1),
    )
    f("attack-preamble-two-lines.eml", pgp_mime(ok, preamble=b"Meet at 10.\r\nBring the plan.\r\n"))
    f("attack-preamble-header-like.eml", pgp_mime(ok, preamble=b"Content-Type: text/plain\r\n"))
    f("attack-epilogue-two-lines.eml", pgp_mime(ok, epilogue=b"Meet at 10.\r\nBring the plan.\r\n"))
    f(
        "attack-duplicate-mime-version.eml",
        pgp_mime(ok, extra=["MIME-Version: 1.0"]),
    )
    f("attack-many-parts.eml", pgp_mime(ok, extra_parts=[b""] * 20))
    f("attack-many-header-fields.eml", pgp_mime(ok, extra=[f"X-H{i}: x" for i in range(300)]))
    f("attack-huge-header-field.eml", pgp_mime(ok, extra=["X-Big: " + "x" * (70 * 1024)]))
    dsn = [
        text_part("Meet at 10.", "text/html"),
    ]
    f(
        "attack-mailer-daemon-html-only.eml",
        multipart(
            dsn,
            subtype="report; report-type=delivery-status",
            boundary="bnd-Dsn",
            from_addr="MAILER-DAEMON@example.net",
            to=ALICE,
            extra=["Auto-Submitted: auto-replied"],
        ),
    )
    bounce = postfix_bounce(pgp_mime(ok))
    f(
        "attack-mailer-daemon-auto-submitted-no.eml",
        bounce.replace(b"Auto-Submitted: auto-replied", b"Auto-Submitted: no", 1),
    )
    f(
        "attack-mailer-daemon-no-delivery-status.eml",
        bounce.replace(b"Content-Type: message/delivery-status", b"Content-Type: text/plain", 1),
    )
    f(
        "attack-asm-without-setup-data.eml",
        multipart(
            [
                text_part("This is the Autocrypt Setup Message."),
                b"Content-Type: application/autocrypt-setup\r\n\r\n<html>Meet at 10.</html>",
            ],
            subject="Autocrypt Setup Message",
            to=ALICE,
            extra=["Autocrypt-Setup-Message: v1"],
        ),
    )
    f(
        "attack-asm-pkesk.eml",
        setup_message(setup_html(armor(encrypted_payload(rng)))),
    )


def main(argv: list[str]) -> None:
    target = Path(argv[1])
    target.mkdir(parents=True, exist_ok=True)
    for name, data in corpus().items():
        (target / name).write_bytes(data)


if __name__ == "__main__":
    main(sys.argv)
