import os

import pytest

from chatmaild.lastlogin import LastLoginDict, day_of
from chatmaild.testkit.config import DOMAIN


@pytest.fixture
def lastlogin(config):
    user = config.get_user(f"abcdefghi@{DOMAIN}")
    user.maildir.mkdir()
    user.password_path.write_text("{SHA512-CRYPT}$6$x$y")
    return LastLoginDict(config), user


def test_day_of_rounds_down():
    assert day_of(100000) == 86400
    assert day_of(200000) == 172800
    assert day_of(86400) == 86400


def test_login_sets_password_mtime_to_the_day(lastlogin):
    handler, user = lastlogin
    assert handler.set(user.addr, f"shared/last-login/{user.addr}", "1700000123")
    assert os.stat(user.password_path).st_mtime == day_of(1700000123)


def test_same_day_does_not_touch_the_file_again(lastlogin):
    handler, user = lastlogin
    handler.set(user.addr, f"shared/last-login/{user.addr}", "1700000123")
    before = os.stat(user.password_path).st_ctime_ns
    handler.set(user.addr, f"shared/last-login/{user.addr}", "1700000999")
    assert os.stat(user.password_path).st_ctime_ns == before


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("shared/other/abcdefghi@chat.example.org", "1700000000"),
        ("shared/last-login/abcdefghi@chat.example.org", "not-a-number"),
        ("shared/last-login/abcdefghi@chat.example.org", None),
        ("shared/last-login/../../x@chat.example.org", "1700000000"),
        ("shared/last-login/missing12@chat.example.org", "1700000000"),
        ("shared/last-login/abcdefghi@other.org", "1700000000"),
    ],
)
def test_invalid_writes_fail_without_touching_files(lastlogin, key, value):
    handler, user = lastlogin
    mtime = os.stat(user.password_path).st_mtime
    assert handler.set(user.addr, key, value) is False
    assert os.stat(user.password_path).st_mtime == mtime
