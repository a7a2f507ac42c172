import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatmaild.dictproxy import DictFailure
from chatmaild.doveauth import AuthDict, resource_problem, split_escaped
from chatmaild.hashing import hash_password, verify_password
from chatmaild.testkit.config import DOMAIN, make_config, write_ini
from chatmaild.testkit.procs import stop_process
from chatmaild.testkit.waiting import wait_until


@pytest.fixture
def auth(tmp_path):
    return AuthDict(make_config(tmp_path))


def passdb(auth, addr, password):
    escaped_pw = password.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")
    reply = auth.lookup(f'shared/passdb/{escaped_pw}"{addr}', addr)
    return None if reply is None else json.loads(reply)["password"]


def dovecot_accepts(reply_password: str, password: str) -> bool:
    """Dovecot's check of a client's password against a passdb reply's password field."""
    if reply_password.startswith("{PLAIN}"):
        return reply_password[len("{PLAIN}") :] == password
    return verify_password(password, reply_password)


def test_first_login_creates_the_account(auth):
    reply = passdb(auth, f"abcdefghi@{DOMAIN}", "password123")
    user = auth.config.get_user(f"abcdefghi@{DOMAIN}")
    stored = user.password_path.read_text()
    assert verify_password("password123", stored)
    # The login that created the account is answered in PLAIN (no second SHA512-CRYPT
    # in Dovecot); what is stored is the hash.
    assert reply == "{PLAIN}password123"
    assert passdb(auth, user.addr, "password123") == stored
    assert user.enforce_e2ee_path.exists()
    assert json.loads(auth.lookup(f"shared/userdb/abcdefghi@{DOMAIN}", None)) == {
        "home": str(user.maildir)
    }


def test_created_address_is_logged_for_metrics(auth, capfd):
    passdb(auth, f"abcdefghi@{DOMAIN}", "password123")
    assert f"Created address: abcdefghi@{DOMAIN}" in capfd.readouterr().err


def test_existing_account_returns_stored_hash_whatever_the_password(auth):
    passdb(auth, f"abcdefghi@{DOMAIN}", "password123")
    first = passdb(auth, f"abcdefghi@{DOMAIN}", "password123")
    again = passdb(auth, f"abcdefghi@{DOMAIN}", "another-password")
    assert again == first
    assert verify_password("password123", again)
    assert not dovecot_accepts(again, "another-password")


@pytest.mark.parametrize("password", ["pässwörd-123", "tab\tin-password", "nul\x00-password"])
def test_non_ascii_or_control_password_is_answered_with_the_hash(auth, password):
    reply = passdb(auth, f"abcdefghi@{DOMAIN}", password)
    if password == "nul\x00-password":
        assert reply is None  # crypt(3) cannot take it: no account
        return
    assert reply == auth.config.get_user(f"abcdefghi@{DOMAIN}").password_path.read_text()
    assert verify_password(password, reply)


def test_unknown_user_is_not_found_in_userdb(auth):
    assert auth.lookup(f"shared/userdb/nobody123@{DOMAIN}", None) is None


def test_password_with_quotes_and_backslashes_is_unescaped(auth):
    password = 'a\\b"c\'d/e"f\\'
    reply = passdb(auth, f"abcdefghi@{DOMAIN}", password)
    assert reply == "{PLAIN}" + password
    assert verify_password(password, passdb(auth, f"abcdefghi@{DOMAIN}", "x"))


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
        # Temporary (F), not "no such account", which a client shows as a wrong password.
        with pytest.raises(DictFailure):
            passdb(busy, f"newuser12@{DOMAIN}", "password123")
        assert not (tmp_path / "mail" / f"newuser12@{DOMAIN}").exists()
        assert passdb(busy, f"existing1@{DOMAIN}", "password123") is not None
    assert resource_problem(auth.config) is None


@pytest.mark.parametrize("damaged", ["", "{SHA512-CRYPT}$6$abc", "garbage\n"])
def test_damaged_password_file_counts_as_missing_and_is_replaced(auth, damaged):
    user = auth.config.get_user(f"abcdefghi@{DOMAIN}")
    user.maildir.mkdir(parents=True)
    user.password_path.write_text(damaged)
    assert auth.lookup(f"shared/userdb/{user.addr}", None) is None
    assert passdb(auth, user.addr, "password123") == "{PLAIN}password123"
    assert verify_password("password123", user.password_path.read_text())


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
    stored = auth.config.get_user(addr).password_path.read_text()
    winners = [i for i, _ in results if verify_password(f"password-{i:03d}", stored)]
    assert len(winners) == 1
    # The winner's own login is answered in PLAIN, every other one with the winner's hash,
    # so Dovecot lets in the winner only.
    for i, reply in results:
        assert (reply == f"{{PLAIN}}password-{i:03d}") if i == winners[0] else (reply == stored)
    assert [i for i, reply in results if dovecot_accepts(reply, f"password-{i:03d}")] == winners


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


# --- names no account can have, and the per-IP limit of new accounts ---

LONG = "a" * 300


def passdb_from(auth, addr, password, ip):
    reply = auth.lookup(f'shared/passdb/{password}"{addr}"{ip}', addr)
    return None if reply is None else json.loads(reply)["password"]


@pytest.mark.parametrize(
    "addr",
    [
        f"{LONG}@{DOMAIN}",
        f"{'é' * 40}@{DOMAIN}",  # 80 octets
        f"abcdefghi@{'x' * 250}.{DOMAIN}",
        f"{LONG}@{'x' * 300}",
        f"abc\x00{LONG}@{DOMAIN}",
    ],
)
def test_overlong_names_are_not_found_without_touching_the_filesystem(auth, addr, tmp_path):
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert passdb_from(auth, addr, "password123", "203.0.113.1") is None
    assert auth.lookup(f"shared/userdb/{addr}", None) is None
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_name_the_filesystem_refuses_is_not_found(tmp_path):
    # Longer than one file name but within the configured local part length.
    auth = AuthDict(make_config(tmp_path, username_max_length=300))
    assert passdb_from(auth, f"{'b' * 260}@{DOMAIN}", "password123", "203.0.113.1") is None


def _start_doveauth(tmp_path, **overrides):
    ini = write_ini(tmp_path, **overrides)
    sock = tmp_path / "auth.sock"
    err = open(tmp_path / "doveauth.stderr", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatmaild.doveauth", str(sock), str(ini)], stderr=err
    )
    err.close()
    wait_until(sock.exists, "doveauth to start", 15, interval=0.02, proc=proc)
    return proc, sock


def _dict_lookups(sock, keys):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock))
        s.sendall(b"H3\t2\t0\t\tauth\n" + b"".join(f"L{k}\n".encode() for k in keys))
        f = s.makefile("rb")
        return [f.readline().decode().rstrip("\n") for _ in keys]


def test_overlong_name_over_the_real_dict_socket_is_not_found_not_a_failure(tmp_path):
    proc, sock = _start_doveauth(tmp_path)
    try:
        replies = _dict_lookups(sock, [
            f'shared/passdb/password123"{LONG}@{DOMAIN}"203.0.113.1',
            f"shared/userdb/{LONG}@{DOMAIN}",
            f'shared/passdb/password123"abcdefghi@{DOMAIN}"203.0.113.1',
        ])  # fmt: skip
    finally:
        stop_process(proc)
    assert replies[:2] == ["N", "N"]
    assert replies[2].startswith("O")
    log = (tmp_path / "doveauth.stderr").read_text()
    assert "Traceback" not in log
    assert os.listdir(tmp_path / "mail") == [f"abcdefghi@{DOMAIN}"]


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def limited(tmp_path, per_hour=2, burst=3):
    clock = FakeClock()
    config = make_config(
        tmp_path, max_new_accounts_per_ip_per_hour=per_hour, max_new_accounts_per_ip_burst=burst
    )
    return AuthDict(config, clock=clock), clock


def names(n, prefix="user"):
    return [f"{prefix}{i:0{9 - len(prefix)}d}@{DOMAIN}" for i in range(n)]


def test_new_accounts_per_ip_stop_after_the_burst_and_existing_logins_go_on(tmp_path, caplog):
    auth, clock = limited(tmp_path)
    first, refused = names(3), f"late00000@{DOMAIN}"
    assert all(passdb_from(auth, a, "password123", "203.0.113.7") for a in first)
    with caplog.at_level(logging.WARNING, logger="doveauth"):
        assert passdb_from(auth, refused, "password123", "203.0.113.7") is None
    assert "registration rejected: too many new accounts from 203.0.113.7" in caplog.text
    assert not (auth.config.mailboxes_dir / refused).exists()
    # Logins of the accounts that exist are never counted or refused.
    for _ in range(20):
        assert all(passdb_from(auth, a, "password123", "203.0.113.7") for a in first)
    # Another client is not affected.
    assert passdb_from(auth, refused, "password123", "203.0.113.8") is not None


def test_the_per_ip_allowance_refills_at_the_hourly_rate(tmp_path):
    auth, clock = limited(tmp_path, per_hour=2, burst=1)
    a, b, c = names(3)
    assert passdb_from(auth, a, "password123", "203.0.113.7")
    assert passdb_from(auth, b, "password123", "203.0.113.7") is None
    clock.now += 29 * 60
    assert passdb_from(auth, b, "password123", "203.0.113.7") is None
    clock.now += 61
    assert passdb_from(auth, b, "password123", "203.0.113.7")
    assert passdb_from(auth, c, "password123", "203.0.113.7") is None


def test_ipv6_clients_count_per_64(tmp_path):
    auth, _ = limited(tmp_path, burst=2)
    a, b, c = names(3)
    assert passdb_from(auth, a, "password123", "2001:db8:1:2::1")
    assert passdb_from(auth, b, "password123", "2001:db8:1:2:ffff::9")
    assert passdb_from(auth, c, "password123", "2001:db8:1:2::3") is None
    assert passdb_from(auth, c, "password123", "2001:db8:1:3::1")


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1", "::ffff:127.0.0.1", "", "not-an-ip"])
def test_loopback_and_unknown_clients_have_no_per_ip_limit(tmp_path, ip):
    auth, _ = limited(tmp_path, burst=1)
    assert all(passdb_from(auth, a, "password123", ip) for a in names(10))


def test_key_without_ip_still_works(tmp_path):
    auth, _ = limited(tmp_path, burst=1)
    assert all(passdb(auth, a, "password123") for a in names(5))


def test_ipv4_mapped_address_counts_as_the_ipv4_client(tmp_path):
    auth, _ = limited(tmp_path, burst=1)
    a, b = names(2)
    assert passdb_from(auth, a, "password123", "203.0.113.9")
    assert passdb_from(auth, b, "password123", "::ffff:203.0.113.9") is None


def test_refused_creations_use_up_no_allowance(tmp_path):
    auth, _ = limited(tmp_path, burst=1)
    assert passdb_from(auth, f"short@{DOMAIN}", "password123", "203.0.113.7") is None
    assert passdb_from(auth, f"abcdefghi@{DOMAIN}", "short", "203.0.113.7") is None
    assert passdb_from(auth, f"abcdefghi@{DOMAIN}", "password123", "203.0.113.7")


def test_concurrent_first_logins_of_one_address_count_once(tmp_path):
    auth, _ = limited(tmp_path, burst=2)
    barrier = threading.Barrier(30)

    def login(i):
        barrier.wait()
        return passdb_from(auth, f"racer1234@{DOMAIN}", "password123", "203.0.113.7")

    threads = [threading.Thread(target=login, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert passdb_from(auth, f"second123@{DOMAIN}", "password123", "203.0.113.7")


def test_creation_limiter_memory_is_bounded(tmp_path):
    auth, clock = limited(tmp_path, per_hour=1, burst=1)
    for i in range(60_000):
        auth.creations.allow(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(auth.creations) <= 50_000
