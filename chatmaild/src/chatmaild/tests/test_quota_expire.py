import os
import subprocess
import sys
import time

import pytest

from chatmaild.quota_expire import expire_to_quota, main, message_files

ADDR = "alice1234@chat.example.org"
DAY = 86400
MB = 1024 * 1024


@pytest.fixture
def maildir(tmp_path):
    path = tmp_path / ADDR
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True)
    (path / "maildirsize").write_text("0S\n")
    return path


def message(maildir, age_days, size, sub="cur", folder=None, now=None):
    now = time.time() if now is None else now
    base = maildir / folder if folder else maildir
    (base / sub).mkdir(parents=True, exist_ok=True)
    t = now - age_days * DAY
    path = base / sub / f"{int(t)}.M{os.urandom(4).hex()}.host,S={size},W={size + 10}:2,S"
    path.write_bytes(b"x" * size)
    os.utime(path, (t, t))
    return path


def test_oldest_messages_go_first_until_below_target(maildir, capsys):
    msgs = [message(maildir, age, MB) for age in (10, 8, 6, 4, 2)]
    removed = expire_to_quota(maildir, 3 * MB)
    assert removed == 2
    assert [p.exists() for p in msgs] == [False, False, True, True, True]
    assert not (maildir / "maildirsize").exists()
    assert f"quota-expire: removed 2 message(s) from {ADDR}" in capsys.readouterr().err


def test_messages_younger_than_a_day_are_never_removed(maildir):
    old = message(maildir, 3, MB)
    young = [message(maildir, age, MB) for age in (0.9, 0.5, 0.1)]
    assert expire_to_quota(maildir, 0) == 1
    assert not old.exists()
    assert all(p.exists() for p in young)


def test_nothing_happens_below_target(maildir, capsys):
    msg = message(maildir, 30, MB)
    assert expire_to_quota(maildir, 2 * MB) == 0
    assert msg.exists()
    assert (maildir / "maildirsize").exists()
    assert capsys.readouterr().err == ""


def test_new_and_folders_count_tmp_does_not(maildir):
    files = [
        message(maildir, 5, MB, sub="new"),
        message(maildir, 4, MB, folder=".DeltaChat"),
        message(maildir, 3, MB),
    ]
    tmp = message(maildir, 9, 5 * MB, sub="tmp")
    assert sorted(m.path for m in message_files(maildir)) == sorted(files)
    expire_to_quota(maildir, 1 * MB)
    assert [p.exists() for p in files] == [False, False, True]
    assert tmp.exists()


def test_size_comes_from_the_dovecot_file_name(maildir):
    path = maildir / "cur" / "1000.M1.host,S=5000000:2,"
    path.write_bytes(b"tiny")
    (m,) = message_files(maildir)
    assert m.size == 5000000


@pytest.mark.parametrize("tz", ["America/New_York", "Asia/Tokyo"])
def test_command_line_in_other_time_zones(maildir, tz):
    just_over_a_day = message(maildir, 1 + 2 / 24, MB)
    just_under_a_day = message(maildir, 1 - 2 / 24, MB)
    result = subprocess.run(
        [sys.executable, "-m", "chatmaild.quota_expire", "0", str(maildir)],
        env={**os.environ, "TZ": tz},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert not just_over_a_day.exists()
    assert just_under_a_day.exists()
    assert result.stderr.strip() == f"quota-expire: removed 1 message(s) from {ADDR}"


def test_usage_errors(tmp_path):
    with pytest.raises(SystemExit):
        main(["x", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["10", str(tmp_path / "missing")])
