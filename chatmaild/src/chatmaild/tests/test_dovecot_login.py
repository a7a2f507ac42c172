"""Create-on-login through Debian's real Dovecot, logging in over IMAP."""

import imaplib
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from chatmaild.hashing import verify_password
from chatmaild.lastlogin import day_of
from chatmaild.testkit.dovecot_instance import DOMAIN, DovecotInstance
from chatmaild.testkit.waiting import wait_until


@pytest.fixture(scope="module")
def dovecot():
    with DovecotInstance() as instance:
        yield instance


def new_addr() -> str:
    return f"{secrets.token_hex(8)[:9]}@{DOMAIN}"


def login(dovecot, addr, password) -> bool:
    """IMAP LOGIN and SELECT INBOX; True if both work."""
    conn = imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=30)
    try:
        conn.login(addr, password)
        typ, _ = conn.select("INBOX")
        return typ == "OK"
    except imaplib.IMAP4.error:
        return False
    finally:
        try:
            conn.logout()
        except (imaplib.IMAP4.abort, OSError):
            pass


def dovecot_errors(dovecot) -> str:
    lines = dovecot.dovecot_log().splitlines()
    return "\n".join(line for line in lines if "rror" in line or "Maximum" in line)[-3000:]


def stored_hash(dovecot, addr):
    path = dovecot.mailboxes_dir / addr / "password"
    return path.read_text() if path.exists() else None


def test_capabilities_announce_chatmail(dovecot):
    conn = imaplib.IMAP4("127.0.0.1", dovecot.imap_port)
    try:
        conn.login(new_addr(), "password123")
        caps = conn.capabilities
    finally:
        conn.logout()
    assert "XCHATMAIL" in caps and "XDELTAPUSH" in caps


def test_first_login_creates_account_and_password_is_then_required(dovecot):
    addr = new_addr()
    assert stored_hash(dovecot, addr) is None
    assert login(dovecot, addr, "password123")
    assert verify_password("password123", stored_hash(dovecot, addr))
    assert login(dovecot, addr, "password123")
    assert not login(dovecot, addr, "wrong-password")
    assert verify_password("password123", stored_hash(dovecot, addr))


def test_first_login_with_special_characters_is_compared_exactly(dovecot):
    # The creating login is answered with the password in PLAIN: Dovecot must compare
    # exactly what was stored, escapes and a scheme-like prefix included.
    addr, password = new_addr(), "{SHA512-CRYPT}a\\b\"c'd %w$6$"
    assert login(dovecot, addr, password)
    assert verify_password(password, stored_hash(dovecot, addr))
    assert login(dovecot, addr, password)
    assert not login(dovecot, addr, password[:-1])
    assert not login(dovecot, addr, password[len("{SHA512-CRYPT}") :])


def test_two_accounts_may_share_a_password(dovecot):
    a, b = new_addr(), new_addr()
    assert login(dovecot, a, "same-password")
    assert login(dovecot, b, "same-password")


def test_too_short_password_is_refused(dovecot):
    addr = new_addr()
    assert not login(dovecot, addr, "admin")
    assert stored_hash(dovecot, addr) is None


@pytest.mark.parametrize(
    "localpart", ["short", "muchtoolong123", "with+plus", "dot.dot..", "sp ace123"]
)
def test_bad_localpart_is_refused(dovecot, localpart):
    addr = f"{localpart}@{DOMAIN}"
    assert not login(dovecot, addr, "password123")
    assert not (dovecot.mailboxes_dir / addr).exists()


def test_uppercase_login_is_the_lowercase_account(dovecot):
    # Dovecot's default auth_username_format %Lu lowercases before we see the name.
    addr = new_addr()
    assert login(dovecot, addr.upper().replace("@CHAT.EXAMPLE.ORG", f"@{DOMAIN}"), "password123")
    assert stored_hash(dovecot, addr) is not None
    assert login(dovecot, addr, "password123")
    assert not any(p.name != p.name.lower() for p in dovecot.mailboxes_dir.iterdir())


def test_foreign_domain_is_refused(dovecot):
    assert not login(dovecot, "abcdefghi@example.net", "password123")
    assert not any("example.net" in p.name for p in dovecot.mailboxes_dir.iterdir())


def test_nocreate_file_blocks_creation_not_login(dovecot):
    existing, new = new_addr(), new_addr()
    assert login(dovecot, existing, "password123")
    dovecot.nocreate_file.touch()
    try:
        assert not login(dovecot, new, "password123")
        assert stored_hash(dovecot, new) is None
        assert login(dovecot, existing, "password123")
    finally:
        dovecot.nocreate_file.unlink()
    assert login(dovecot, new, "password123")


def test_parallel_first_logins_same_password_all_succeed_one_hash(dovecot):
    addr = new_addr()
    barrier = threading.Barrier(50)

    def attempt(_):
        barrier.wait()
        return login(dovecot, addr, "password123")

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(attempt, range(50)))
    assert results == [True] * 50, dovecot_errors(dovecot)
    entries = os.listdir(dovecot.mailboxes_dir / addr)
    assert [e for e in entries if e.startswith("password") and e != "password.lock"] == ["password"]
    assert verify_password("password123", stored_hash(dovecot, addr))


def test_parallel_first_logins_different_passwords_exactly_one_wins(dovecot):
    addr = new_addr()
    barrier = threading.Barrier(50)

    def attempt(i):
        barrier.wait()
        return login(dovecot, addr, f"password-{i:03d}")

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(attempt, range(50)))
    winners = [i for i, ok in enumerate(results) if ok]
    assert len(winners) == 1
    assert verify_password(f"password-{winners[0]:03d}", stored_hash(dovecot, addr))
    # The winner keeps the account, the others stay locked out.
    assert login(dovecot, addr, f"password-{winners[0]:03d}")
    loser = (winners[0] + 1) % 50
    assert not login(dovecot, addr, f"password-{loser:03d}")


def test_500_new_accounts_none_lost(dovecot):
    addrs = [new_addr() for _ in range(500)]
    with ThreadPoolExecutor(25) as pool:
        results = list(pool.map(lambda a: login(dovecot, a, "password123"), addrs))
    assert results.count(True) == 500
    for addr in addrs:
        assert verify_password("password123", stored_hash(dovecot, addr))


def test_login_updates_last_login_day(dovecot):
    addr = new_addr()
    assert login(dovecot, addr, "password123")
    password = dovecot.mailboxes_dir / addr / "password"
    os.utime(password, (86400 * 3, 86400 * 3))
    assert login(dovecot, addr, "password123")
    wait_until(lambda: password.stat().st_mtime != 86400 * 3, "lastlogin's stamp", 5, interval=0.05)
    assert password.stat().st_mtime == day_of(int(time.time()))


def test_no_errors_from_our_dicts_in_dovecot_log(dovecot):
    assert login(dovecot, new_addr(), "password123")
    log = dovecot.dovecot_log()
    assert "dict" not in "\n".join(line for line in log.splitlines() if "Error" in line)


def test_overlong_name_is_an_auth_failure_not_an_internal_error(dovecot):
    addr = f"{'a' * 300}@{DOMAIN}"
    assert not login(dovecot, addr, "password123")
    assert not dovecot.login_from("203.0.113.1", addr, "password123")
    assert "Traceback" not in dovecot.log_text("doveauth")
    lines = dovecot.dovecot_log().splitlines()
    assert not [line for line in lines if "nternal" in line or "Temporary" in line][-5:]
    assert not any(len(p.name) > 64 for p in dovecot.mailboxes_dir.iterdir())


@pytest.fixture
def limited_dovecot():
    limits = {"max_new_accounts_per_ip_burst": 3, "max_new_accounts_per_ip_per_hour": 1}
    with DovecotInstance(ini_overrides=limits) as instance:
        yield instance


def test_new_accounts_from_one_ip_are_limited_but_its_logins_are_not(limited_dovecot):
    d = limited_dovecot
    first = [new_addr() for _ in range(3)]
    assert all(d.login_from("203.0.113.7", a, "password123") for a in first)
    late = new_addr()
    assert not d.login_from("203.0.113.7", late, "password123")
    assert stored_hash(d, late) is None
    assert "registration rejected: too many new accounts from 203.0.113.7" in d.log_text("doveauth")
    for _ in range(5):
        assert all(d.login_from("203.0.113.7", a, "password123") for a in first)
    # Another client IP, and the relay's own loopback, still create accounts.
    assert d.login_from("198.51.100.7", late, "password123")
    assert all(login(d, new_addr(), "password123") for _ in range(5))
