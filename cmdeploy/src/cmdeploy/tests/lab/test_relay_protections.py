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
    # Mail that stays on the relay is neither signed nor given a Received line on its way
    # (authclean), so only mail from another relay shows what lmtp_header_checks removes.
    "relay headers stripped": (
        "postconf -e lmtp_header_checks= && systemctl restart postfix",
        "test_mail_from_another_relay_arrives_without_its_relay_headers",
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


# Online tests that need a second relay to send from.
NEEDS_RELAY2 = {"test_mail_from_another_relay_arrives_without_its_relay_headers"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("protections")


@pytest.fixture(scope="module")
def relay(lab, workdir):
    return lab_relay(lab, "relay1", workdir)


def online_test(lab, relay, name: str, relay2=None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "cmdeploy.cli", "--config", str(relay.ini),
            "--ssh-config", str(lab.ssh_config), "test", "--netns", lab.netns]  # fmt: skip
    if relay2 is not None:
        argv += ["--relay2", relay2.domain, "--ssh-host2", relay2.name]
    return subprocess.run([*argv, "--", "-k", name], capture_output=True, text=True)


@pytest.mark.parametrize("protection", list(PROTECTIONS))
def test_online_test_fails_without_the_protection(lab, relay, workdir, protection):
    sabotage, name = PROTECTIONS[protection]
    relay2 = lab_relay(lab, "relay2", workdir) if name in NEEDS_RELAY2 else None
    before = online_test(lab, relay, name, relay2)
    assert before.returncode == 0 and " passed" in before.stdout, before.stdout[-2000:]
    lab.ssh_run(relay.name, sabotage)
    try:
        off = online_test(lab, relay, name, relay2)
        assert off.returncode == 1 and " failed" in off.stdout, (
            f"{name} still passes with the {protection} switched off:\n{off.stdout[-2000:]}"
        )
    finally:
        deploy(lab, relay)
    after = online_test(lab, relay, name, relay2)
    assert after.returncode == 0, after.stdout[-2000:]
