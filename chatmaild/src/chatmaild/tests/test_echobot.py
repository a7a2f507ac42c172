"""echobot's logic; the end-to-end run with real clients happens in the lab."""

import imaplib
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from deltachat_rpc_client import AttrDict

from chatmaild.doveauth import AuthDict
from chatmaild.echobot import (
    HELP_TEXT,
    load_password,
    main,
    on_new_message,
    provision_account,
    reply_for,
)
from chatmaild.hashing import verify_password
from chatmaild.testkit.config import make_config, write_ini
from chatmaild.testkit.dovecot_instance import DOMAIN, DovecotInstance

ECHO = f"echo@{DOMAIN}"


def snapshot(text="", file=None, is_info=False, **extra):
    return AttrDict(
        text=text,
        file=file,
        fileName=Path(file).name if file else None,
        viewType="File" if file else "Text",
        isInfo=is_info,
        **extra,
    )


class FakeChat:
    def __init__(self):
        self.sent = []

    def send_message(self, **kwargs):
        self.sent.append(kwargs)


# --- replies ---


def test_text_is_echoed():
    assert reply_for(snapshot("hello there")) == {"text": "hello there"}


def test_file_is_echoed_with_its_text():
    reply = reply_for(snapshot("look", file="/blobs/cat.jpg"))
    assert reply == {
        "text": "look",
        "file": "/blobs/cat.jpg",
        "filename": "cat.jpg",
        "viewtype": "File",
    }


def test_file_without_text():
    assert reply_for(snapshot("", file="/blobs/a.bin"))["text"] is None


def test_help_command_is_answered():
    assert reply_for(snapshot("/help")) == {"text": HELP_TEXT}
    assert reply_for(snapshot("  /help \n")) == {"text": HELP_TEXT}


@pytest.mark.parametrize("snap", [snapshot("Member added", is_info=True), snapshot("")])
def test_info_and_empty_messages_get_no_reply(snap):
    assert reply_for(snap) is None


def test_handler_sends_the_reply_to_the_same_chat():
    chat = FakeChat()
    on_new_message(AttrDict(message_snapshot=AttrDict(snapshot("ping"), chat=chat)))
    on_new_message(AttrDict(message_snapshot=AttrDict(snapshot("", is_info=True), chat=chat)))
    assert chat.sent == [{"text": "ping"}]


# --- password and account ---


def test_password_is_generated_once_and_kept_private(tmp_path):
    config = make_config(tmp_path)
    state = tmp_path / "state"
    password = load_password(config, state)
    assert len(password) >= 32 and password.isalnum()
    assert (state / "password").stat().st_mode & 0o777 == 0o600
    assert load_password(config, state) == password


def test_too_short_stored_password_is_replaced(tmp_path):
    config = make_config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "password").write_text("short")
    assert len(load_password(config, tmp_path / "state")) >= 32


def test_provisioned_account_logs_in_while_short_names_stay_refused(tmp_path):
    config = make_config(tmp_path)
    password = load_password(config, tmp_path / "state")
    assert provision_account(config, password) is True
    assert provision_account(config, password) is False

    auth = AuthDict(config)
    reply = auth.lookup(f'shared/passdb/{password}"{ECHO}', ECHO)
    assert verify_password(password, json.loads(reply)["password"])
    # doveauth's rules are unchanged: nobody else gets a 4-character name.
    assert auth.lookup(f'shared/passdb/{password}"abcd@{DOMAIN}', None) is None
    assert not (config.mailboxes_dir / f"abcd@{DOMAIN}").exists()


def test_lost_password_is_provisioned_again(tmp_path):
    config = make_config(tmp_path)
    provision_account(config, "first-password-123")
    assert provision_account(config, "second-password-456") is True
    stored = config.get_user(ECHO).get_password_hash()
    assert verify_password("second-password-456", stored)


def test_provision_command(tmp_path):
    config = make_config(tmp_path)
    ini = write_ini(tmp_path)
    main(["provision", str(ini), "--state-dir", str(tmp_path / "state")])
    password = (tmp_path / "state" / "password").read_text()
    assert verify_password(password, config.get_user(ECHO).get_password_hash())


def test_dovecot_login_with_the_provisioned_account():
    directory = Path(tempfile.mkdtemp(prefix="chatmail-echo-"))
    inst = DovecotInstance(directory)
    try:
        inst.start()
        config = inst.config
        password = load_password(config, directory / "state")
        provision_account(config, password)
        conn = imaplib.IMAP4("127.0.0.1", inst.imap_port)
        try:
            assert conn.login(ECHO, password)[0] == "OK"
            # Dovecot (running as the mailboxes' owner) can create the maildir.
            assert conn.select("INBOX")[0] == "OK"
        finally:
            conn.logout()
        wrong = imaplib.IMAP4("127.0.0.1", inst.imap_port)
        try:
            with pytest.raises(imaplib.IMAP4.error):
                wrong.login(ECHO, "wrong-password-1")
        finally:
            wrong.shutdown()
    finally:
        inst.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_bot_names_its_own_relay_as_servers():
    from chatmaild.config import parse_config, render_initial_config
    from chatmaild.echobot import transport_params

    config = parse_config(render_initial_config("chat.example.org"))
    params = transport_params(config, "x" * 32)
    assert params == {
        "addr": "echo@chat.example.org",
        "password": "x" * 32,
        "imapServer": "chat.example.org",
        "smtpServer": "chat.example.org",
    }


def test_bot_relaxes_certificate_checks_only_for_a_private_ca():
    from chatmaild.config import parse_config, render_initial_config
    from chatmaild.echobot import transport_params

    text = render_initial_config("chat.example.org")
    assert "certificateChecks" not in transport_params(parse_config(text), "x" * 32)
    private = text + "acme_ca_file = /etc/chatmail/lab-ca.pem\n"
    params = transport_params(parse_config(private), "x" * 32)
    assert params["certificateChecks"] == "acceptInvalidCertificates"


def test_invite_is_written_atomically_and_readable(tmp_path):
    from chatmaild.echobot import write_invite

    path = write_invite(tmp_path, "OPENPGP4FPR:ABC#a=echo%40x&n=Echo")
    assert path.read_text() == "OPENPGP4FPR:ABC#a=echo%40x&n=Echo\n"
    assert path.stat().st_mode & 0o777 == 0o644
    assert list(tmp_path.iterdir()) == [path]
