import os
import subprocess
import sys
import time

import pytest

from chatmaild.expire import DAY, Expiry, delete_inactive_users_main, main, scan_mailbox
from chatmaild.testkit.config import DOMAIN, make_config, write_ini

HOUR = 3600


class Maildirs:
    """Builds account directories with files of chosen age and size."""

    def __init__(self, root, now):
        self.root = root
        self.now = now

    def account(self, name, last_login_days=1.0):
        path = self.root / f"{name}@{DOMAIN}"
        for sub in ("cur", "new", "tmp"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        if last_login_days is not None:
            self.touch(path / "password", last_login_days, b"{SHA512-CRYPT}x")
        return path

    def touch(self, path, age_days, content=b"x"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        t = self.now - age_days * DAY
        os.utime(path, (t, t))
        return path

    def message(self, account, age_days, size=100, sub="cur", folder=None):
        base = account / folder if folder else account
        name = f"{int(self.now)}.M{len(os.listdir(base / sub)) if (base / sub).exists() else 0}"
        return self.touch(base / sub / f"{name}.host,S={size}:2,S", age_days, b"x" * size)


def names(paths):
    return sorted(p.name for p in paths if p.exists())


def test_old_large_and_inactive_are_removed_with_remove(tmp_path, capsys):
    ini = write_ini(tmp_path, DOMAIN)
    mailboxes = tmp_path / "mail"
    md = Maildirs(mailboxes, time.time())
    alice = md.account("alice1234")
    fresh = md.message(alice, 1)
    old = md.message(alice, 21)
    old_new = md.message(alice, 21, sub="new")
    old_tmp = md.message(alice, 21, sub="tmp")
    old_in_folder = md.message(alice, 21, folder=".DeltaChat")
    large_old = md.message(alice, 8, size=200001)
    large_young = md.message(alice, 6, size=200001)
    large_in_new = md.message(alice, 8, size=200001, sub="new")
    just_200000 = md.message(alice, 8, size=200000)
    (alice / "maildirsize").write_text("500000S\n")
    inactive = md.account("bob123456", last_login_days=91)
    md.message(inactive, 1)
    active = md.account("carol1234", last_login_days=89)
    (mailboxes / "pending_notifications").mkdir()
    (mailboxes / "pending_notifications" / "item").write_text("x")

    main([str(ini), "--remove"])

    out = capsys.readouterr().out
    assert not inactive.exists()
    assert active.exists()
    kept = [fresh, large_young, large_in_new, just_200000]
    gone = [old, old_new, old_tmp, old_in_folder, large_old]
    assert all(p.exists() for p in kept)
    assert not any(p.exists() for p in gone)
    assert not (alice / "maildirsize").exists()
    assert (mailboxes / "pending_notifications" / "item").exists()
    assert out.splitlines()[-1].startswith(
        "Removed 1 out of 3 mailboxes and 5 out of 9 files in existing mailboxes in "
    )


def test_dry_run_is_the_default_and_changes_nothing(tmp_path, capsys):
    ini = write_ini(tmp_path, DOMAIN)
    mailboxes = tmp_path / "mail"
    md = Maildirs(mailboxes, time.time())
    alice = md.account("alice1234")
    old = md.message(alice, 21)
    inactive = md.account("bob123456", last_login_days=91)
    before = sorted(mailboxes.rglob("*"))

    main([str(ini), "-v"])

    out = capsys.readouterr().out
    assert sorted(mailboxes.rglob("*")) == before
    assert f"would remove {old}" in out
    assert f"would remove inactive account {inactive}" in out
    assert out.splitlines()[-1].startswith(
        "Would remove 1 out of 2 mailboxes and 1 out of 1 files in existing mailboxes (dry run"
    )


def test_account_without_password_is_removed_only_when_empty(tmp_path, capsys):
    ini = write_ini(tmp_path, DOMAIN)
    mailboxes = tmp_path / "mail"
    empty = mailboxes / f"empty1234@{DOMAIN}"
    empty.mkdir()
    md = Maildirs(mailboxes, time.time())
    full = md.account("full12345", last_login_days=None)
    md.message(full, 100)

    main([str(ini), "--remove"])

    assert not empty.exists()
    assert full.exists() and len(os.listdir(full / "cur")) == 1
    assert "Skipped deleting" in capsys.readouterr().out


def test_quota_is_trimmed_to_70_percent_oldest_first(tmp_path, capsys):
    ini = write_ini(tmp_path, DOMAIN, max_mailbox_size="1M")
    mailboxes = tmp_path / "mail"
    md = Maildirs(mailboxes, time.time())
    alice = md.account("alice1234")
    # 5 x 200000 bytes = 1000000 > 0.7 MiB (734003): the two oldest must go.
    msgs = [md.message(alice, age, size=200000) for age in (5, 4, 3, 2, 1.5)]

    main([str(ini), "--remove"])

    assert names(msgs) == names(msgs[2:])
    assert not msgs[0].exists() and not msgs[1].exists()


def test_days_option_pretends_an_earlier_time(tmp_path, capsys):
    ini = write_ini(tmp_path, DOMAIN)
    mailboxes = tmp_path / "mail"
    md = Maildirs(mailboxes, time.time())
    alice = md.account("alice1234")
    msg = md.message(alice, 22)
    main([str(ini), "--remove", "--days", "3"])
    assert msg.exists()
    main([str(ini), "--remove"])
    assert not msg.exists()


def test_invalid_account_names_are_never_touched(tmp_path, capsys):
    ini = write_ini(tmp_path, DOMAIN)
    mailboxes = tmp_path / "mail"
    md = Maildirs(mailboxes, time.time())
    foreign = md.account("x").parent / "someone@other.org"
    foreign.mkdir()
    md.touch(foreign / "password", 400)
    main([str(ini), "--remove"])
    assert foreign.exists()


def test_delete_inactive_users_removes_accounts_but_no_messages(tmp_path, capsys):
    ini = write_ini(tmp_path, DOMAIN)
    mailboxes = tmp_path / "mail"
    md = Maildirs(mailboxes, time.time())
    inactive = md.account("bob123456", last_login_days=91)
    alice = md.account("alice1234")
    old = md.message(alice, 30)

    delete_inactive_users_main([str(ini), "--dry-run"])
    assert inactive.exists()
    delete_inactive_users_main([str(ini)])

    assert not inactive.exists()
    assert old.exists()
    assert "Removed 1 out of 2 mailboxes" in capsys.readouterr().out


def doomed_paths(config, now):
    expiry = Expiry(config, now, remove=False)
    boxes = [scan_mailbox(path) for path in expiry.account_dirs()]
    return {str(m.path) for box in boxes for m in expiry.select_messages(box)}


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Tokyo"])
def test_ages_do_not_depend_on_the_host_time_zone(tmp_path, tz):
    """Files two hours either side of each limit land on the right side in every zone."""
    ini = write_ini(tmp_path, DOMAIN)
    mailboxes = tmp_path / "mail"
    md = Maildirs(mailboxes, time.time())
    alice = md.account("alice1234")
    keep = [md.message(alice, 20 - 2 / 24), md.message(alice, 7 - 2 / 24, size=300000)]
    gone = [md.message(alice, 20 + 2 / 24), md.message(alice, 7 + 2 / 24, size=300000)]
    still_active = md.account("carol1234", last_login_days=90 - 2 / 24)
    inactive = md.account("bob123456", last_login_days=90 + 2 / 24)

    env = {**os.environ, "TZ": tz}
    result = subprocess.run(
        [sys.executable, "-m", "chatmaild.expire", str(ini), "--remove"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert all(p.exists() for p in keep)
    assert not any(p.exists() for p in gone)
    assert still_active.exists() and not inactive.exists()


def test_expiry_uses_the_given_now(tmp_path):
    config = make_config(tmp_path, DOMAIN)
    mailboxes = config.mailboxes_dir
    now = 1_800_000_000
    md = Maildirs(mailboxes, now)
    alice = md.account("alice1234")
    msg = md.message(alice, 21)
    assert doomed_paths(config, now) == {str(msg)}
    assert doomed_paths(config, now - 2 * DAY) == set()


def test_missing_mailboxes_dir_is_reported(tmp_path):
    ini = write_ini(tmp_path, DOMAIN)
    mailboxes = tmp_path / "mail"
    mailboxes.rmdir()
    with pytest.raises(SystemExit, match="does not exist"):
        main([str(ini)])
