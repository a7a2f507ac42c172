import imaplib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import chatmaild
from chatmaild.config import parse_config, render_initial_config
from chatmaild.doveauth import AuthDict
from chatmaild.newemail import create_credentials
from chatmaild.testkit.config import write_ini
from chatmaild.testkit.dovecot_instance import DOMAIN, DovecotInstance

SCRIPT = Path(chatmaild.__file__).parent / "newemail.py"


@pytest.fixture
def ini(tmp_path):
    return write_ini(tmp_path, username_min_length=6)


def run_cgi(ini, method, **env):
    return subprocess.run(
        [sys.executable, str(SCRIPT)],
        env={**os.environ, "CHATMAIL_INI": str(ini), "REQUEST_METHOD": method, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_post_prints_json_credentials_after_the_header(ini):
    result = run_cgi(ini, "POST")
    assert result.returncode == 0, result.stderr
    head, sep, body = result.stdout.partition("\n\n")
    assert sep and head == "Content-Type: application/json"
    creds = json.loads(body)
    assert sorted(creds) == ["email", "password"]
    local, domain = creds["email"].split("@")
    assert domain == DOMAIN
    assert re.fullmatch(r"[a-z0-9]{9}", local)
    assert len(creds["password"]) == 12


def test_get_redirects_to_dcaccount(ini):
    result = run_cgi(ini, "GET")
    assert result.returncode == 0
    assert result.stdout.startswith("Status: 302")
    assert f"Location: dcaccount:https://{DOMAIN}/new\n" in result.stdout


def test_other_methods_are_refused(ini):
    assert run_cgi(ini, "PUT").stdout.startswith("Status: 405")


def test_lengths_follow_the_config(tmp_path):
    config = parse_config(
        render_initial_config(
            DOMAIN,
            {"username_min_length": 5, "username_max_length": 14, "password_min_length": 20},
        )
    )
    creds = create_credentials(config)
    assert len(creds["email"].split("@")[0]) == 14
    assert len(creds["password"]) == 23


def test_credentials_pass_doveauths_creation_rules(config):
    auth = AuthDict(config)
    seen = set()
    for _ in range(200):
        creds = create_credentials(config)
        seen.add(creds["email"])
        assert auth.refusal(config.get_user(creds["email"]), creds["password"]) is None
    assert len(seen) == 200


def test_first_login_with_new_credentials_creates_the_account():
    directory = Path(tempfile.mkdtemp(prefix="chatmail-new-"))
    inst = DovecotInstance(directory)
    try:
        inst.start()
        ini = inst.ini_path
        creds = json.loads(run_cgi(ini, "POST").stdout.partition("\n\n")[2])
        conn = imaplib.IMAP4("127.0.0.1", inst.imap_port)
        try:
            assert conn.login(creds["email"], creds["password"])[0] == "OK"
        finally:
            conn.logout()
        assert (inst.mailboxes_dir / creds["email"] / "password").exists()
    finally:
        inst.stop()
        shutil.rmtree(directory, ignore_errors=True)
