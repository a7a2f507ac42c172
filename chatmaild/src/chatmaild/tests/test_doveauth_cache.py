"""doveauth's cache of existing accounts: answers only what the password file still says."""

import json
import os
import shutil

import pytest

from chatmaild.dictproxy import NOT_CACHED, DictProxyServer
from chatmaild.doveauth import AccountCache, AuthDict
from chatmaild.fsutil import write_atomic
from chatmaild.hashing import hash_password, verify_password
from chatmaild.testkit.config import DOMAIN, make_config
from chatmaild.testkit.dictclient import Client, MemoryDict

ADDR = f"abcdefghi@{DOMAIN}"


@pytest.fixture
def auth(tmp_path):
    return AuthDict(make_config(tmp_path))


def passdb_key(password: str, addr: str = ADDR, ip: str = "10.0.0.1") -> str:
    return f'shared/passdb/{password}"{addr}"{ip}'


def nowait_hash(auth, password: str = "whatever-password", addr: str = ADDR):
    reply = auth.lookup_nowait(passdb_key(password, addr), addr)
    return reply if reply is NOT_CACHED else json.loads(reply)["password"]


def create(auth, password: str = "password123") -> str:
    """Create ADDR with ``password`` (its first login); returns the stored hash."""
    assert json.loads(auth.lookup(passdb_key(password), ADDR))["password"] == "{PLAIN}" + password
    return auth.config.get_user(ADDR).password_path.read_text()


def test_existing_account_is_answered_without_the_slow_path(auth):
    stored = create(auth)
    # Whatever password the client tries: Dovecot compares it with the stored hash.
    assert nowait_hash(auth, "another-password") == stored
    user = auth.config.get_user(ADDR)
    assert json.loads(auth.lookup_nowait(f"shared/userdb/{ADDR}", None)) == {
        "home": str(user.maildir)
    }


def test_unknown_and_impossible_accounts_always_take_the_slow_path(auth):
    for addr in (f"nobody123@{DOMAIN}", f"{'x' * 300}@{DOMAIN}", "abcdefghi@other.org", ""):
        assert nowait_hash(auth, addr=addr) is NOT_CACHED
        assert auth.lookup_nowait(f"shared/userdb/{addr}", None) is NOT_CACHED
    assert auth.lookup_nowait("shared/other/x", None) is NOT_CACHED
    assert auth.lookup_nowait("priv/passdb/x", None) is NOT_CACHED


def test_expired_account_is_created_again_with_the_new_password(auth):
    auth.lookup(passdb_key("password123"), ADDR)
    shutil.rmtree(auth.config.get_user(ADDR).maildir)  # what chatmail-expire does
    assert nowait_hash(auth) is NOT_CACHED
    assert auth.lookup_nowait(f"shared/userdb/{ADDR}", None) is NOT_CACHED
    assert auth.lookup(f"shared/userdb/{ADDR}", None) is None
    stored = create(auth, "new-password-456")
    assert verify_password("new-password-456", stored)
    assert nowait_hash(auth) == stored


def test_replaced_password_file_is_read_again(auth):
    auth.lookup(passdb_key("password123"), ADDR)
    user = auth.config.get_user(ADDR)
    replaced = hash_password("replaced-password")
    write_atomic(user.password_path, replaced)
    assert nowait_hash(auth) is NOT_CACHED
    assert json.loads(auth.lookup(passdb_key("x"), ADDR))["password"] == replaced
    assert nowait_hash(auth) == replaced


def test_touched_password_file_still_answers_its_hash(auth):
    # lastlogin sets the file's mtime to the day of the last login.
    stored = create(auth)
    os.utime(auth.config.get_user(ADDR).password_path, (86400 * 20000, 86400 * 20000))
    assert nowait_hash(auth) is NOT_CACHED
    assert json.loads(auth.lookup(passdb_key("x"), ADDR))["password"] == stored
    assert nowait_hash(auth) == stored


def test_damaged_password_file_is_not_cached(auth):
    user = auth.config.get_user(ADDR)
    user.maildir.mkdir(parents=True)
    user.password_path.write_text("{SHA512-CRYPT}$6$cut")
    assert auth.lookup(f"shared/userdb/{ADDR}", None) is None
    assert nowait_hash(auth) is NOT_CACHED


def test_cache_keeps_at_most_its_size(tmp_path):
    cache = AccountCache(max_entries=3)
    path = tmp_path / "f"
    path.write_text("x")
    st = os.stat(path)
    identity = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    for i in range(5):
        cache.put(f"a{i}", str(path), identity, f"p{i}", f"u{i}")
    assert len(cache) == 3
    assert cache.get("a0", "passdb") is None
    assert cache.get("a4", "passdb") == "p4"
    assert cache.get("a4", "userdb") == "u4"


def test_existing_account_over_the_socket_matches_the_slow_path(tmp_path, auth):
    server = DictProxyServer(auth, tmp_path / "s")
    create(auth)
    # The slow path's replies, then the cached ones: the same bytes.
    auth.cache.discard(ADDR)
    first = server._reply_lookup(passdb_key("password123"), ADDR)
    assert first.startswith("O{")
    assert server._reply_lookup_nowait(passdb_key("password123"), ADDR) == first
    assert server._reply_lookup_nowait(f"shared/userdb/{ADDR}", None) == server._reply_lookup(
        f"shared/userdb/{ADDR}", None
    )


class FastDict(MemoryDict):
    """MemoryDict that knows 'shared/fast*' keys without a thread."""

    def lookup_nowait(self, key, user):
        if key.startswith("shared/fast"):
            return self.data.get(key, "fast")
        return NOT_CACHED


@pytest.fixture
def fast(served):
    handler, connect = served
    handler.lookup_nowait = FastDict.lookup_nowait.__get__(handler)
    return handler, connect


def test_immediate_replies_wait_for_earlier_slow_ones(fast):
    _, connect = fast
    c: Client = connect()
    c.sock.sendall(b"Lshared/slow1\nLshared/fast1\nLshared/answer\nLshared/fast2\n")
    assert [c.readline() for _ in range(4)] == ["Oslow", "Ofast", "O42", "Ofast"]
    assert c.request("Lshared/fast3") == "Ofast"


def test_immediate_lookup_after_commit_sees_the_write(fast):
    handler, connect = fast
    c = connect()
    c.sock.sendall(b"B1\tu\nS1\tshared/fastkey\tnew\nC1\nLshared/fastkey\n")
    assert [c.readline() for _ in range(2)] == ["O1", "Onew"]
