import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatmaild.config import parse_config, render_initial_config
from chatmaild.doveauth import AuthDict, resource_problem, split_escaped
from chatmaild.hashing import hash_password, verify_password

DOMAIN = "chat.example.org"


def make_config(tmp_path, **overrides):
    settings = {
        "mailboxes_dir": tmp_path / "mail",
        "nocreate_file": tmp_path / "nocreate",
        "max_load_1m": 1000,
        "min_available_memory": 0,
        "min_free_disk_space": 0,
        **overrides,
    }
    (tmp_path / "mail").mkdir(exist_ok=True)
    return parse_config(render_initial_config(DOMAIN, settings))


@pytest.fixture
def auth(tmp_path):
    return AuthDict(make_config(tmp_path))


def passdb(auth, addr, password):
    escaped_pw = password.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")
    reply = auth.lookup(f'shared/passdb/{escaped_pw}"{addr}', addr)
    return None if reply is None else json.loads(reply)["password"]


def test_first_login_creates_the_account(auth):
    stored = passdb(auth, f"abcdefghi@{DOMAIN}", "password123")
    assert verify_password("password123", stored)
    user = auth.config.get_user(f"abcdefghi@{DOMAIN}")
    assert user.password_path.read_text() == stored
    assert user.enforce_e2ee_path.exists()
    assert json.loads(auth.lookup(f"shared/userdb/abcdefghi@{DOMAIN}", None)) == {
        "home": str(user.maildir)
    }


def test_created_address_is_logged_for_metrics(auth, capfd):
    passdb(auth, f"abcdefghi@{DOMAIN}", "password123")
    assert f"Created address: abcdefghi@{DOMAIN}" in capfd.readouterr().err


def test_existing_account_returns_stored_hash_whatever_the_password(auth):
    first = passdb(auth, f"abcdefghi@{DOMAIN}", "password123")
    again = passdb(auth, f"abcdefghi@{DOMAIN}", "another-password")
    assert again == first
    assert not verify_password("another-password", again)


def test_unknown_user_is_not_found_in_userdb(auth):
    assert auth.lookup(f"shared/userdb/nobody123@{DOMAIN}", None) is None


def test_password_with_quotes_and_backslashes_is_unescaped(auth):
    password = 'a\\b"c\'d/e"f\\'
    stored = passdb(auth, f"abcdefghi@{DOMAIN}", password)
    assert verify_password(password, stored)


def test_split_escaped():
    assert split_escaped('p\\"w\\\\"user@x') == ['p"w\\', "user@x"]
    assert split_escaped("no-separator") == ["no-separator"]
    assert split_escaped('a"b"c') == ["a", "b", "c"]


def test_nocreate_file_blocks_creation_but_not_existing_accounts(auth):
    passdb(auth, f"existing1@{DOMAIN}", "password123")
    auth.config.nocreate_file.touch()
    assert passdb(auth, f"newuser12@{DOMAIN}", "password123") is None
    assert not (auth.config.mailboxes_dir / f"newuser12@{DOMAIN}").exists()
    assert passdb(auth, f"existing1@{DOMAIN}", "password123") is not None


def test_short_password_is_refused(auth):
    assert passdb(auth, f"abcdefghi@{DOMAIN}", "12345678") is None
    assert passdb(auth, f"abcdefghi@{DOMAIN}", "123456789") is not None


@pytest.mark.parametrize(
    "localpart",
    ["abcdefgh", "abcdefghij", "ABCDEFGHI", "abcd efgh", "abcd+efgh", "abcd!efgh", "abcdéfghi"],
)
def test_bad_localpart_is_refused(auth, localpart):
    assert passdb(auth, f"{localpart}@{DOMAIN}", "password123") is None
    assert os.listdir(auth.config.mailboxes_dir) == []


def test_length_bounds_follow_config(tmp_path):
    auth = AuthDict(make_config(tmp_path, username_min_length=6, username_max_length=10))
    assert passdb(auth, f"a1234@{DOMAIN}", "password123") is None
    assert passdb(auth, f"0123456789x@{DOMAIN}", "password123") is None
    assert passdb(auth, f"a12345@{DOMAIN}", "password123") is not None
    assert passdb(auth, f"0123456789@{DOMAIN}", "password123") is not None


@pytest.mark.parametrize(
    "addr",
    [
        f"../../etc/x@{DOMAIN}",
        f"a/b/c/d/e@{DOMAIN}",
        f"..@{DOMAIN}",
        f"@{DOMAIN}",
        "abcdefghi@other.org",
        f"abcdefghi@{DOMAIN}/../..",
        f"abcdefghi@sub.{DOMAIN}",
        f"abc\x00defgh@{DOMAIN}",
        "",
        "@",
        "abcdefghi",
    ],
)
def test_hostile_addresses_never_touch_the_filesystem(auth, addr, tmp_path):
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert passdb(auth, addr, "password123") is None
    assert auth.lookup(f"shared/userdb/{addr}", None) is None
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_other_namespaces_fail(auth):
    from chatmaild.dictproxy import DictFailure

    with pytest.raises(DictFailure):
        auth.lookup(f'priv/passdb/x"abcdefghi@{DOMAIN}', None)
    assert auth.lookup(f"shared/unknown/abcdefghi@{DOMAIN}", None) is None
    assert auth.lookup("shared/passdb/no-separator", None) is None


def test_resource_limits_block_only_new_accounts(tmp_path):
    auth = AuthDict(make_config(tmp_path))
    passdb(auth, f"existing1@{DOMAIN}", "password123")
    for limits in ({"max_load_1m": -1}, {"min_available_memory": "1000G"},
                   {"min_free_disk_space": "100000G"}):  # fmt: skip
        busy = AuthDict(make_config(tmp_path, **limits))
        assert resource_problem(busy.config) is not None
        assert passdb(busy, f"newuser12@{DOMAIN}", "password123") is None
        assert passdb(busy, f"existing1@{DOMAIN}", "password123") is not None
    assert resource_problem(auth.config) is None


@pytest.mark.parametrize("damaged", ["", "{SHA512-CRYPT}$6$abc", "garbage\n"])
def test_damaged_password_file_counts_as_missing_and_is_replaced(auth, damaged):
    user = auth.config.get_user(f"abcdefghi@{DOMAIN}")
    user.maildir.mkdir(parents=True)
    user.password_path.write_text(damaged)
    assert auth.lookup(f"shared/userdb/{user.addr}", None) is None
    stored = passdb(auth, user.addr, "password123")
    assert verify_password("password123", stored)


def test_concurrent_first_logins_store_one_hash(auth):
    addr = f"racer1234@{DOMAIN}"
    results = []
    barrier = threading.Barrier(50)

    def login(i):
        barrier.wait()
        results.append((i, passdb(auth, addr, f"password-{i:03d}")))

    threads = [threading.Thread(target=login, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hashes = {h for _, h in results}
    assert len(hashes) == 1
    stored = auth.config.get_user(addr).password_path.read_text()
    assert hashes == {stored}
    winners = [i for i, _ in results if verify_password(f"password-{i:03d}", stored)]
    assert len(winners) == 1


def test_iterate_lists_accounts_only(auth):
    passdb(auth, f"abcdefghi@{DOMAIN}", "password123")
    passdb(auth, f"jklmnopqr@{DOMAIN}", "password123")
    (auth.config.mailboxes_dir / "pending_notifications").mkdir()
    assert list(auth.iterate("shared/userdb/", None)) == [
        (f"shared/userdb/abcdefghi@{DOMAIN}", ""),
        (f"shared/userdb/jklmnopqr@{DOMAIN}", ""),
    ]
    assert list(auth.iterate("shared/other/", None)) == []


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.text(max_size=80), user=st.none() | st.text(max_size=30))
def test_fuzzed_lookups_never_escape_the_mailboxes_dir(tmp_path, key, user):
    auth = AuthDict(make_config(tmp_path))
    try:
        auth.lookup("shared/" + key, user)
    except Exception as e:
        assert type(e).__name__ == "DictFailure"
    for path in tmp_path.rglob("*"):
        assert path == tmp_path / "mail" or path.is_relative_to(tmp_path / "mail"), path
    for entry in (tmp_path / "mail").iterdir():
        assert entry.name.endswith(f"@{DOMAIN}")
        shutil.rmtree(entry)


def test_hash_is_accepted_by_doveadm():
    if not shutil.which("doveadm"):
        pytest.fail("doveadm missing: apt-get install dovecot-core")
    stored = hash_password("pass word ä\"'\\")
    ok = subprocess.run(
        ["doveadm", "pw", "-t", stored, "-p", "pass word ä\"'\\"], capture_output=True
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(["doveadm", "pw", "-t", stored, "-p", "wrong"], capture_output=True)
    assert bad.returncode != 0


def _python313():
    found = shutil.which("python3.13")
    if found and subprocess.run([found, "-V"], capture_output=True).returncode == 0:
        return found
    for candidate in sorted(Path.home().glob(".pyenv/versions/3.13*/bin/python3.13")):
        return str(candidate)
    return None


def test_hashing_works_on_python_313():
    python = _python313()
    if python is None:
        pytest.skip("no Python 3.13 interpreter on this machine")
    src = Path(__file__).parents[2]
    code = (
        "import sys; from chatmaild.hashing import hash_password, verify_password;"
        "h = hash_password('secret-pw'); assert verify_password('secret-pw', h); print(h)"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(src)})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert verify_password("secret-pw", out.stdout.strip())
