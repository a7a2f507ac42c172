"""Each protection's online test fails when the protection is switched off.

For every protection: its test from the online suite passes against a freshly deployed lab
relay, fails after one setting of the relay is changed by hand, and passes again after a
plain ``cmdeploy run`` (which also shows that a deploy repairs such hand edits).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from cmdeploy.lab.relay import deploy, lab_relay

pytestmark = pytest.mark.lab

INI = "/usr/local/lib/chatmaild/chatmail.ini"

# protection -> (command on the relay that switches it off, online test that notices).
# Postfix is restarted, not reloaded: after a reload, running smtpd processes keep the old
# settings for a while.
PROTECTIONS = {
    "outgoing encryption gate": (
        "postconf -P submission/inet/smtpd_proxy_filter= smtps/inet/smtpd_proxy_filter= "
        "&& systemctl restart postfix",
        "test_cleartext_is_refused",
    ),
    "From header equals the login": (
        "postconf -P submission/inet/smtpd_proxy_filter= smtps/inet/smtpd_proxy_filter= "
        "&& systemctl restart postfix",
        "test_forged_from_header_is_refused",
    ),
    "envelope sender equals the login": (
        "postconf -e 'mua_sender_restrictions=permit_sasl_authenticated, reject' "
        "&& systemctl restart postfix",
        "test_envelope_sender_must_be_the_login",
    ),
    "incoming encryption gate": (
        "postconf -P smtp/inet/smtpd_proxy_filter= && systemctl restart postfix",
        "test_cleartext_from_other_relays_is_refused",
    ),
    "DKIM required on arrival": (
        "postconf -P 127.0.0.1:10026/inet/smtpd_milters= && systemctl restart postfix",
        "test_mail_without_dkim_signature_is_refused_on_port_25",
    ),
    "subject hidden": (
        "postconf -P authclean/unix/header_checks= && systemctl restart postfix",
        "test_encrypted_mail_is_delivered_with_subject_hidden",
    ),
    "relay headers stripped": (
        "postconf -e lmtp_header_checks= && systemctl restart postfix",
        "test_delivered_mail_has_no_dkim_or_received_headers_and_no_sender_ip",
    ),
    "send rate limit": (
        f"sed -i 's/^#*max_user_send_burst_size.*/max_user_send_burst_size = 100000/' {INI} "
        "&& systemctl restart filtermail",
        "test_rate_limit_refuses_after_the_burst",
    ),
    "account creation switch": (
        "systemctl stop doveauth && sed -i 's|^#*nocreate_file.*|nocreate_file = /nonexistent|' "
        f"{INI} && systemctl start doveauth",
        "test_nocreate_file_blocks_new_accounts_only",
    ),
}


@pytest.fixture(scope="module")
def relay(lab, tmp_path_factory):
    return lab_relay(lab, "relay1", tmp_path_factory.mktemp("protections"))


def online_test(lab, relay, name: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "cmdeploy.cli", "--config", str(relay.ini),
            "--ssh-config", str(lab.ssh_config), "test", "--netns", lab.netns, "--", "-k", name]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True)


@pytest.mark.parametrize("protection", list(PROTECTIONS))
def test_online_test_fails_without_the_protection(lab, relay, protection):
    sabotage, name = PROTECTIONS[protection]
    before = online_test(lab, relay, name)
    assert before.returncode == 0 and " passed" in before.stdout, before.stdout[-2000:]
    lab.ssh_run(relay.name, sabotage)
    try:
        off = online_test(lab, relay, name)
        assert off.returncode == 1 and " failed" in off.stdout, (
            f"{name} still passes with the {protection} switched off:\n{off.stdout[-2000:]}"
        )
    finally:
        deploy(lab, relay)
    after = online_test(lab, relay, name)
    assert after.returncode == 0, after.stdout[-2000:]
