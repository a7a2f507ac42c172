"""The direction objects: ports, MAIL FROM / RCPT rules and the gate check of each side."""

from __future__ import annotations

import pytest

from chatmaild.filtermail import direction
from chatmaild.testkit.config import make_config
from chatmaild.testkit.mailgen import ALICE, BOB, DOMAIN, plain


@pytest.fixture
def config(tmp_path):
    return make_config(
        tmp_path, DOMAIN,
        filtermail_smtp_port=1001, filtermail_smtp_port_incoming=1002,
        postfix_reinject_port=1003, postfix_reinject_port_incoming=1004,
        max_user_send_per_minute=1, max_user_send_burst_size=2,
    )  # fmt: skip


def test_ports_and_prefixes_come_from_the_config(config):
    out = direction.for_name(config, "outgoing")
    inc = direction.for_name(config, "incoming")
    assert (out.name, out.log_prefix, out.listen_port, out.reinject_port) == (
        "outgoing", "Outgoing", 1001, 1003,
    )  # fmt: skip
    assert (inc.name, inc.log_prefix, inc.listen_port, inc.reinject_port) == (
        "incoming", "Incoming", 1002, 1004,
    )  # fmt: skip
    assert direction.NAMES == ("outgoing", "incoming")
    with pytest.raises(ValueError):
        direction.for_name(config, "sideways")


def test_outgoing_checks_mail_from_and_rate_limits_but_not_rcpt(config):
    out = direction.for_name(config, "outgoing")
    assert out.rate_limited
    assert out.mail_from_refusal("alice") == "500 Invalid from address <alice>"
    assert out.mail_from_refusal("<>") is not None
    assert out.mail_from_refusal(ALICE) is None
    assert out.mail_from_refusal(ALICE.upper()) is None  # same sender, second of the burst
    assert out.mail_from_refusal(ALICE) == f"450 4.7.1: Too much mail from {ALICE}"
    assert out.mail_from_refusal(BOB) is None
    for rcpt in ("nobody@example.org", "x%y@example.org", "someone@example.net"):
        assert out.rcpt_refusal(rcpt) is None


def test_incoming_refuses_unknown_recipients_but_not_senders(config):
    inc = direction.for_name(config, "incoming")
    assert not inc.rate_limited
    for sender in ("", "<>", "alice", "x@example.net"):
        assert inc.mail_from_refusal(sender) is None
    user = config.get_user(BOB)
    user.maildir.mkdir(parents=True)
    assert inc.rcpt_refusal(BOB) == f"550 5.1.1 <{BOB}>: Recipient address rejected: User unknown"
    user.password_path.write_text("x")
    assert inc.rcpt_refusal(BOB) is None
    assert inc.rcpt_refusal("Bob+chat@Example.org") is None
    assert inc.rcpt_refusal("bob%example.org@example.org")[:10] == "550 5.1.1 "
    assert inc.rcpt_refusal("example.org!bob@example.org")[:10] == "550 5.1.1 "


def test_each_direction_runs_its_own_gate_check(config):
    inc = direction.for_name(config, "incoming")
    out = direction.for_name(config, "outgoing")
    user = config.get_user(BOB)
    user.maildir.mkdir(parents=True)
    user.password_path.write_text("x")
    cleartext = plain()  # From: alice, To: bob
    # Outgoing refuses cleartext; incoming takes it for an account without the enforce file.
    assert out.check(cleartext, ALICE, [BOB]).reply.startswith("523")
    assert inc.check(cleartext, "x@example.net", [BOB]).accept
    user.enforce_e2ee_path.touch()
    assert inc.check(cleartext, "x@example.net", [BOB]).reply.startswith("523")
    # Fail closed: a recipient that is no account counts as enforcing.
    assert inc.check(cleartext, "x@example.net", ["carol@example.org"]).reply.startswith("523")
