import logging
from pathlib import Path

import pytest

from chatmaild.config import (
    ConfigError,
    known_keys,
    parse_config,
    parse_size,
    read_config,
    render_initial_config,
)
from chatmaild.testkit.config import init_config


def test_defaults_of_a_fresh_ini():
    config = init_config()
    assert config.mail_domain == "chat.example.org"
    assert config.max_user_send_per_minute == 60
    assert config.max_user_send_burst_size == 10
    assert config.max_mailbox_size == 500 * 1024**2
    assert config.max_mailbox_size_mb == 500
    assert config.max_message_size == 31457280
    assert (config.delete_mails_after, config.delete_large_after) == (20, 7)
    assert config.delete_inactive_users_after == 90
    assert (config.username_min_length, config.username_max_length) == (9, 9)
    assert config.password_min_length == 9
    assert config.max_new_accounts_per_ip_per_hour == 60
    assert config.max_new_accounts_per_ip_burst == 100
    assert config.max_load_1m == 5.0
    assert config.min_available_memory == 200 * 1024**2
    assert config.min_free_disk_space == 1024**3
    assert (config.filtermail_smtp_port, config.filtermail_smtp_port_incoming) == (10080, 10081)
    assert (config.postfix_reinject_port, config.postfix_reinject_port_incoming) == (10025, 10026)
    assert config.postfix_reinject_port_local == 10027
    assert config.mailboxes_dir == Path("/home/vmail/mail/chat.example.org")
    assert config.nocreate_file == Path("/etc/chatmail-nocreate")
    assert config.notification_url == "https://notifications.delta.chat/notify"
    assert config.iroh_relay is None and config.mtail_address is None
    assert config.tls_cert_mode == "acme"
    assert config.mxdeliv_outgoing is True and config.mxdeliv_transport_port == 10083
    assert config.unknown_keys == ()


def test_every_key_is_documented_in_the_template():
    template = render_initial_config("chat.example.org")
    for key in known_keys():
        assert f"{key} =" in template, key


def test_values_are_parsed_into_types():
    config = init_config(
        max_mailbox_size="1G",
        disable_ipv6="True",
        max_load_1m="2.5",
        iroh_relay="https://iroh.example.org",
        tls_external_cert_and_key="/etc/c.pem /etc/k.pem",
    )
    assert config.max_mailbox_size_mb == 1024
    assert config.disable_ipv6 is True
    assert config.max_load_1m == 2.5
    assert config.iroh_relay == "https://iroh.example.org"
    assert config.tls_cert_mode == "external"
    assert config.tls_cert_path == Path("/etc/c.pem")
    assert config.tls_key_path == Path("/etc/k.pem")
    assert init_config(rate_limit_exempt="A@X.org b@y.org").rate_limit_exempt == {
        "a@x.org",
        "b@y.org",
    }
    assert init_config(dns_forward_zones="lab@10.77.0.1 test.@::1").dns_forward_zones == (
        ("lab", "10.77.0.1"),
        ("test", "::1"),
    )


def test_underscore_domain_is_self_signed():
    config = parse_config(render_initial_config("_relay1.lab"))
    assert config.tls_cert_mode == "self"
    assert config.tls_cert_path == Path("/etc/ssl/certs/mailserver.pem")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_user_send_per_minute", "sixty"),
        ("max_mailbox_size", "100X"),
        ("max_message_size", "-5"),
        ("username_min_length", "0"),
        ("filtermail_smtp_port", "70000"),
        ("disable_ipv6", "maybe"),
        ("max_load_1m", "high"),
        ("tls_external_cert_and_key", "/only/one"),
        ("tls_external_cert_and_key", "relative.pem /k.pem"),
        ("notification_url", "notifications.example.org"),
        ("mailboxes_dir", "relative/dir"),
        ("dns_forward_zones", "lab"),
        ("dns_forward_zones", "lab@not-an-ip"),
        ("rate_limit_exempt", "bench@x.org nobody"),
        ("max_new_accounts_per_ip_per_hour", "0"),
        ("max_new_accounts_per_ip_burst", "lots"),
    ],
)
def test_wrong_value_names_key_and_value(key, value):
    with pytest.raises(ConfigError) as e:
        init_config(**{key: value})
    assert key in str(e.value)
    assert repr(value) in str(e.value)


@pytest.mark.parametrize(
    "domain", ["chat example.org", "nodot", "-bad.example.org", "a..b", "x/y.org", ""]
)
def test_invalid_domain_is_rejected(domain):
    with pytest.raises(ConfigError, match="mail_domain"):
        parse_config(f"[params]\nmail_domain = {domain}\n")


def test_missing_domain_and_section():
    with pytest.raises(ConfigError, match="mail_domain is required"):
        parse_config("[params]\nmax_mailbox_size = 1G\n")
    with pytest.raises(ConfigError, match=r"\[params\]"):
        parse_config("[other]\nmail_domain = a.org\n")


def test_min_length_larger_than_max_is_rejected():
    with pytest.raises(ConfigError, match="username_min_length"):
        init_config(username_min_length=12, username_max_length=9)


def test_unknown_keys_are_kept_for_the_caller_not_logged(caplog):
    # cmdeploy names them once; a log line as well made the operator read each one twice
    with caplog.at_level(logging.DEBUG):
        config = init_config(passthrough_recipients="x@example.org", colour="blue")
    assert config.unknown_keys == ("colour", "passthrough_recipients")
    assert "colour" not in caplog.text


def test_read_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cmdeploy init"):
        read_config(tmp_path / "nope.ini")


def test_read_config_roundtrip(tmp_path):
    path = tmp_path / "chatmail.ini"
    path.write_text(render_initial_config("chat.example.org", {"max_mailbox_size": "100M"}))
    config = read_config(path)
    assert config.max_mailbox_size_mb == 100
    assert config.config_path == path


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("500M", 500 * 1024**2),
        ("1G", 1024**3),
        ("200MB", 200 * 1024**2),
        ("31457280", 31457280),
        ("4k", 4096),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "addr",
    ["", None, "../x@chat.example.org", "..", ".", "x/y@chat.example.org", "@chat.example.org",
     "a@b@chat.example.org", "user@other.org", "user@chat.example.org.evil", "..@chat.example.org",
     ".hidden@chat.example.org", "a\x00b@chat.example.org", "a b@chat.example.org",
     "a\\b@chat.example.org", "user", "user@"],
)  # fmt: skip
def test_get_user_rejects_what_is_not_an_account(addr):
    with pytest.raises(ValueError):
        init_config().get_user(addr)


def test_get_user_paths():
    user = init_config().get_user("abc123xyz@chat.example.org")
    assert user.maildir == Path("/home/vmail/mail/chat.example.org/abc123xyz@chat.example.org")
    assert user.password_path.name == "password"
    assert user.enforce_e2ee_path.name == "enforceE2EEincoming"
    assert user.metadata_path.name == "metadata.json"


@pytest.mark.parametrize(
    ("localpart", "allowed"),
    [("abcdefghi", True), ("a.b-c_d9z", True), ("abcdefgh", False), ("abcdefghij", False),
     ("ABCDEFGHI", False), ("abcd efgh", False), ("abcd+efgh", False), ("abcdéfghi", False)],
)  # fmt: skip
def test_localpart_rules(localpart, allowed):
    assert init_config().is_localpart_allowed(localpart) is allowed
