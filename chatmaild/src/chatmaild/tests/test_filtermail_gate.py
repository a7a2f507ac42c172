"""The encryption gate as a pure function, over the .eml corpus and hand-made cases."""

from __future__ import annotations

import logging
import random
import tracemalloc

import pytest

from chatmaild.filtermail import gate, openpgp
from chatmaild.testkit import mailgen
from chatmaild.testkit.mailgen import (
    ALICE,
    BOB,
    MAIL_DATA,
    armor,
    packet,
    partial_packet,
    pgp_mime,
    read,
)

ENC = "523 Encryption Needed: Invalid Unencrypted Mail"
OK = "250 OK"
BAD_FROM_HEADER = "500 Invalid FROM header"
FORGED = "500 Invalid FROM"
UNPARSABLE = "500 Failed to parse message"
LIMIT = "552 5.3.4 Message structure exceeds limits"

# file -> (outgoing reply from alice to bob, incoming reply to a recipient enforcing E2EE)
CORPUS = {
    "plain.eml": (ENC, ENC),
    "fake-encrypted.eml": (ENC, ENC),
    "encrypted.eml": (OK, OK),
    # The shape Delta Chat 2.65 sends (captured in the lab): charset on both parts, 7bit.
    "encrypted-deltachat-2.65.eml": (OK, OK),
    "attack-pgp-part-odd-charset.eml": (ENC, ENC),
    "encrypted-skesk.eml": (OK, OK),
    "encrypted-seipd-only.eml": (OK, OK),
    "encrypted-partial-lengths.eml": (OK, OK),
    "encrypted-five-octet.eml": (OK, OK),
    "encrypted-no-crc.eml": (OK, OK),
    "encrypted-64-char-lines.eml": (OK, OK),
    "encrypted-thunderbird-preamble.eml": (OK, OK),
    "encrypted-armor-version.eml": (ENC, OK),
    "encrypted-uppercase-from.eml": (OK, OK),
    "encrypted-display-name.eml": (OK, OK),
    "encrypted-8bit-headers.eml": (OK, OK),
    "encrypted-folded-content-type.eml": (OK, OK),
    "literal.eml": (ENC, ENC),
    "mdn.eml": (ENC, ENC),
    "securejoin-vc.eml": (OK, OK),
    "securejoin-vg.eml": (OK, OK),
    "securejoin-vc-fake.eml": (ENC, ENC),
    "securejoin-extra-part.eml": (ENC, ENC),
    "securejoin-epilogue-spam.eml": (ENC, ENC),
    "asm.eml": (ENC, ENC),  # to bob; to self it passes, see below
    "asm-base64.eml": (ENC, ENC),
    "mailer-daemon.eml": (FORGED, OK),
    "mailer-daemon-postfix.eml": (FORGED, OK),
    # Captured from a throw-away Postfix 3.7.11 (bounce of encrypted.eml), not generated.
    "mailer-daemon-postfix-3.7.eml": (FORGED, OK),
    "mailer-daemon-fake.eml": (FORGED, ENC),
    "attack-extra-part.eml": (ENC, ENC),
    "attack-nested-in-mixed.eml": (ENC, ENC),
    "attack-multipart-payload.eml": (ENC, ENC),
    "attack-text-control-part.eml": (ENC, ENC),
    "attack-text-payload-part.eml": (ENC, ENC),
    "attack-swapped-parts.eml": (ENC, ENC),
    "attack-version-2.eml": (ENC, ENC),
    "attack-version-no-space.eml": (ENC, ENC),
    "attack-version-lowercase.eml": (ENC, ENC),
    "attack-version-plus-text.eml": (ENC, ENC),
    "attack-trailing-data.eml": (ENC, ENC),
    "attack-leading-text.eml": (ENC, ENC),
    "attack-armor-comment.eml": (ENC, ENC),
    "attack-invalid-base64.eml": (ENC, ENC),
    "attack-second-armor.eml": (ENC, ENC),
    "attack-old-format-tags.eml": (ENC, ENC),
    "attack-signature-before-seipd.eml": (ENC, ENC),
    "attack-literal-before-seipd.eml": (ENC, ENC),
    "attack-literal-after-seipd.eml": (ENC, ENC),
    "attack-truncated-seipd.eml": (ENC, ENC),
    "attack-partial-length-pkesk.eml": (ENC, ENC),
    "attack-small-first-partial.eml": (ENC, ENC),
    "attack-no-packets.eml": (ENC, ENC),
    "attack-base64-transfer-encoding.eml": (ENC, ENC),
    "attack-big-preamble.eml": (ENC, ENC),
    "attack-boundary-lookalike.eml": (UNPARSABLE, UNPARSABLE),
    "attack-two-content-types.eml": (UNPARSABLE, UNPARSABLE),
    "attack-multipart-transfer-encoded.eml": (ENC, ENC),
    "attack-pgp-text-in-plain.eml": (ENC, ENC),
    "attack-lf-only.eml": (UNPARSABLE, UNPARSABLE),
    "attack-8bit-body.eml": (ENC, ENC),
    "attack-8bit-in-armor.eml": (ENC, ENC),
    # Incoming needs exactly one From with one plain address too (it need not be ours).
    "attack-duplicate-from.eml": (BAD_FROM_HEADER, BAD_FROM_HEADER),
    "attack-duplicate-from-space.eml": (UNPARSABLE, UNPARSABLE),
    "attack-from-encoded-word.eml": (BAD_FROM_HEADER, BAD_FROM_HEADER),
    "attack-from-encoded-word-in-angle.eml": (BAD_FROM_HEADER, BAD_FROM_HEADER),
    "attack-display-name-address.eml": (FORGED, OK),
    "attack-unquoted-display-name-address.eml": (BAD_FROM_HEADER, BAD_FROM_HEADER),
    "attack-text-after-angle.eml": (BAD_FROM_HEADER, BAD_FROM_HEADER),
    "attack-from-list.eml": (BAD_FROM_HEADER, BAD_FROM_HEADER),
    "attack-from-group.eml": (BAD_FROM_HEADER, BAD_FROM_HEADER),
    "attack-from-kelvin-sign.eml": (FORGED, OK),
    "attack-missing-from.eml": (BAD_FROM_HEADER, BAD_FROM_HEADER),
    "attack-folded-from-bare-cr.eml": (UNPARSABLE, UNPARSABLE),
    # Issue 11 (adversarial review): obs-syntax, parameter tricks, wide exceptions, limits.
    "attack-subject-space-colon.eml": (UNPARSABLE, UNPARSABLE),
    "attack-part-header-space-colon.eml": (UNPARSABLE, UNPARSABLE),
    "attack-content-description-secret.eml": (LIMIT, LIMIT),
    "attack-part-extra-header.eml": (ENC, ENC),
    "attack-rfc2231-boundary.eml": (UNPARSABLE, UNPARSABLE),
    "attack-wrong-protocol.eml": (ENC, ENC),
    "attack-missing-protocol.eml": (ENC, ENC),
    "attack-preamble-two-lines.eml": (ENC, ENC),
    "attack-preamble-header-like.eml": (ENC, ENC),
    "attack-epilogue-two-lines.eml": (ENC, ENC),
    "attack-duplicate-mime-version.eml": (UNPARSABLE, UNPARSABLE),
    "attack-many-parts.eml": (LIMIT, LIMIT),
    "attack-many-header-fields.eml": (LIMIT, LIMIT),
    "attack-huge-header-field.eml": (LIMIT, LIMIT),
    "attack-mailer-daemon-html-only.eml": (FORGED, ENC),
    "attack-mailer-daemon-auto-submitted-no.eml": (FORGED, ENC),
    "attack-mailer-daemon-no-delivery-status.eml": (FORGED, ENC),
    "attack-asm-without-setup-data.eml": (ENC, ENC),
    "attack-asm-pkesk.eml": (ENC, ENC),
}


def outgoing(data: bytes, mail_from: str = ALICE, rcpts=(BOB,)) -> gate.Verdict:
    return gate.check_outgoing(data, mail_from, list(rcpts))


def incoming(
    data: bytes, rcpts=(BOB,), enforcing=frozenset({BOB}), mail_from="sender@example.net"
) -> gate.Verdict:
    return gate.check_incoming(data, mail_from, list(rcpts), lambda r: r in enforcing)


def test_every_corpus_file_has_an_expected_verdict():
    assert sorted(p.name for p in MAIL_DATA.glob("*.eml")) == sorted(CORPUS)


def test_corpus_files_are_what_the_generator_writes():
    for name, data in mailgen.corpus().items():
        assert read(name) == data, name


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_outgoing_verdict_for_corpus_file(name):
    verdict = outgoing(read(name))
    assert verdict.reply.startswith(CORPUS[name][0])
    assert verdict.accept == (verdict.reply == OK)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_incoming_verdict_for_corpus_file_to_enforcing_recipient(name):
    # Bounces come from the null envelope sender (RFC 5321 §4.5.5).
    verdict = incoming(read(name), mail_from="" if "mailer-daemon" in name else "x@example.net")
    assert verdict.reply.startswith(CORPUS[name][1])
    assert verdict.accept == (verdict.reply == OK)


@pytest.mark.parametrize("name", ["plain.eml", "mdn.eml", "fake-encrypted.eml"])
def test_incoming_cleartext_passes_to_recipient_without_enforce_file(name):
    assert incoming(read(name), rcpts=["carol@example.org"]).accept


def test_incoming_cleartext_is_refused_if_any_recipient_enforces():
    verdict = incoming(read("plain.eml"), rcpts=["carol@example.org", BOB])
    assert verdict.reply == ENC


def test_plain_mail_to_other_domain_is_refused_523():
    assert outgoing(read("plain.eml"), rcpts=["someone@example.net"]).reply == ENC


def test_plain_mail_to_same_domain_and_to_self_is_refused_523():
    assert outgoing(read("plain.eml"), rcpts=[BOB]).reply == ENC
    assert outgoing(read("plain.eml"), rcpts=[ALICE]).reply == ENC


def test_autocrypt_setup_message_passes_only_to_self_alone():
    asm = read("asm.eml")
    assert outgoing(asm, rcpts=[ALICE]).accept
    assert outgoing(read("asm-base64.eml"), rcpts=[ALICE]).accept
    assert outgoing(asm, rcpts=["Alice@Example.org"]).accept
    assert outgoing(asm, rcpts=[ALICE, BOB]).reply == ENC
    assert outgoing(asm, rcpts=[BOB]).reply == ENC


def test_autocrypt_setup_message_needs_subject_and_multipart_mixed():
    asm = read("asm.eml")
    other_subject = asm.replace(b"Subject: Autocrypt Setup Message", b"Subject: Hello", 1)
    assert outgoing(other_subject, rcpts=[ALICE]).reply == ENC
    not_mixed = asm.replace(b"multipart/mixed", b"multipart/alternative", 1)
    assert outgoing(not_mixed, rcpts=[ALICE]).reply == ENC


def test_mailer_daemon_exception_needs_auto_submitted_and_report_type():
    bounce = read("mailer-daemon.eml")
    assert incoming(bounce, mail_from="").accept
    no_auto = bounce.replace(b"Auto-Submitted: auto-replied", b"Auto-Submitted: ", 1)
    assert incoming(no_auto, mail_from="").reply == ENC
    mixed = bounce.replace(b"multipart/report", b"multipart/mixed", 1)
    assert incoming(mixed, mail_from="").reply == ENC
    postmaster = bounce.replace(b"MAILER-DAEMON@", b"postmaster@", 1)
    assert incoming(postmaster, mail_from="").reply == ENC


def test_mailer_daemon_exception_does_not_apply_outgoing():
    bounce = read("mailer-daemon.eml")
    verdict = outgoing(bounce, mail_from="mailer-daemon@example.net", rcpts=[ALICE])
    assert verdict.reply == ENC


def test_securejoin_request_passes_but_other_steps_do_not():
    vc = read("securejoin-vc.eml")
    assert outgoing(vc).accept
    for step in (b"vc-auth-required", b"vc-request-with-auth", b"VC-REQUEST"):
        assert (
            outgoing(
                vc.replace(b"Secure-Join: vc-request\r\n", b"Secure-Join: " + step + b"\r\n", 1)
            ).reply
            == ENC
        )


def test_from_must_equal_mail_from_case_insensitively():
    enc = read("encrypted.eml")
    assert outgoing(enc, mail_from="ALICE@example.ORG").accept
    verdict = outgoing(enc, mail_from=BOB)
    assert verdict.reply == f"500 Invalid FROM <{ALICE}> for <{BOB}>"


def test_mail_from_needs_exactly_one_at():
    assert gate.check_mail_from(ALICE).accept
    assert gate.check_mail_from("alice").reply == "500 Invalid from address <alice>"
    assert (
        gate.check_mail_from("a@b@example.org").reply
        == "500 Invalid from address <a@b@example.org>"
    )
    assert not gate.check_mail_from("<>").accept


def test_internal_error_refuses_instead_of_passing(monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(gate, "is_encrypted", explode)
    verdict = outgoing(read("encrypted.eml"))
    assert not verdict.accept and verdict.reply.startswith("451 ")
    verdict = incoming(read("encrypted.eml"), enforcing=frozenset())
    assert not verdict.accept and verdict.reply.startswith("451 ")


def test_log_lines_for_counting(caplog):
    caplog.set_level(logging.INFO, logger="filtermail")
    outgoing(read("encrypted.eml"))
    outgoing(read("plain.eml"))
    incoming(read("encrypted.eml"))
    incoming(read("plain.eml"))
    incoming(read("mailer-daemon.eml"), mail_from="")
    assert caplog.messages == [
        "Outgoing: Filtering encrypted mail.",
        "Outgoing: Filtering unencrypted mail.",
        "Outgoing: Rejected unencrypted mail.",
        "Incoming: Filtering encrypted mail.",
        "Incoming: Filtering unencrypted mail.",
        "Incoming: Rejected unencrypted mail.",
        "Incoming: Filtering unencrypted mail.",
        "Incoming: Filtering mailer-daemon message from MAILER-DAEMON@example.net",
    ]


# OpenPGP packet framing (RFC 4880 §4.2) on decoded bytes.


@pytest.mark.parametrize("size", [0, 1, 191, 192, 193, 8383, 8384, 70000])
def test_packet_lengths_one_two_and_five_octets_are_walked(size):
    body = bytes(size)
    assert openpgp.is_encrypted_payload(packet(1, b"k" * 10) + packet(18, body))
    assert openpgp.is_encrypted_payload(
        packet(1, b"k" * 10, five_octet=True) + packet(18, body, five_octet=True)
    )


def test_partial_lengths_are_allowed_for_seipd_only():
    body = bytes(5000)
    assert openpgp.is_encrypted_payload(packet(1, b"k") + partial_packet(18, body, chunk_power=9))
    assert openpgp.is_encrypted_payload(partial_packet(18, body, chunk_power=12))
    assert not openpgp.is_encrypted_payload(partial_packet(1, body) + packet(18, b"x"))
    # RFC 4880 §4.2.2.4: the first partial length is at least 512 octets.
    assert not openpgp.is_encrypted_payload(partial_packet(18, body, chunk_power=8))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        packet(1, b"k"),
        packet(18, b"x")[:-1],  # truncated body
        packet(18, bytes(300))[:2],  # truncated two-octet length
        b"\xd2\xff\x00\x00",  # truncated five-octet length
        packet(18, b"x") + packet(18, b"y"),  # two SEIPD
        packet(18, b"x") + packet(1, b"k"),  # PKESK after SEIPD
        packet(2, b"sig") + packet(18, b"x"),  # signature before SEIPD
        packet(11, b"literal"),
        packet(20, b"aead"),
        bytes([0x80 | (1 << 2), 1, 0]) + packet(18, b"x"),  # old-format PKESK
        partial_packet(18, bytes(600))[:-1],
    ],
)
def test_payloads_that_are_not_one_encrypted_message_are_refused(payload):
    assert not openpgp.is_encrypted_payload(payload)


def test_streaming_walk_equals_whole_walk_for_every_split():
    payload = (
        packet(1, bytes(200))
        + packet(3, bytes(20), five_octet=True)
        + partial_packet(18, bytes(1500))
    )
    for cut in range(len(payload) + 1):
        walker = openpgp.PacketWalker()
        walker.feed(payload[:cut])
        walker.feed(payload[cut:])
        assert walker.finish()


def test_packet_header_flood_is_refused_without_walking_it_all():
    flood = packet(1, b"") * (openpgp.MAX_HEADERS + 1) + packet(18, b"x")
    assert not openpgp.is_encrypted_payload(flood)


# Memory: a 30 MiB message must not cost many times its size.


def test_large_encrypted_message_passes_with_small_extra_memory():
    rng = random.Random(1)
    payload = packet(1, rng.randbytes(270)) + partial_packet(
        18, rng.randbytes(22 * 1024 * 1024), chunk_power=13
    )
    data = bytearray(pgp_mime(armor(payload, crc=False)))
    assert len(data) > 29 * 1024 * 1024
    tracemalloc.start()
    try:
        verdict = outgoing(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert verdict.accept
    assert peak < 4 * 1024 * 1024
