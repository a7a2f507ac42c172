"""Temporary files that a killed writer left (fsutil.TMP_MARK) are swept once stale."""

from __future__ import annotations

import os
import secrets
import time

from chatmaild import metrics
from chatmaild.config import read_config
from chatmaild.expire import Expiry
from chatmaild.fsutil import (
    STALE_AFTER,
    TMP_MARK,
    remove_stale_temporary_files,
    stale_temporary_files,
)
from chatmaild.testkit.config import DOMAIN, write_ini


def leftover(directory, target: str, age: float):
    """A temporary file as write_atomic names it, last written ``age`` seconds ago."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{target}{TMP_MARK}{secrets.token_hex(4)}"
    path.write_bytes(b"half")
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def test_only_stale_temporary_files_directly_in_the_directory_are_found(tmp_path):
    old = leftover(tmp_path, "password", STALE_AFTER + 60)
    young = leftover(tmp_path, "metadata.json", 5)
    nested = leftover(tmp_path / "cur", "password", STALE_AFTER + 60)
    (tmp_path / "password").write_text("real")
    (tmp_path / f"dir{TMP_MARK}x").mkdir()
    assert stale_temporary_files(tmp_path, time.time()) == [old]
    assert stale_temporary_files(tmp_path, time.time(), prefix="metadata") == []
    assert stale_temporary_files(tmp_path / "missing", time.time()) == []
    assert remove_stale_temporary_files(tmp_path) == [old]
    assert not old.exists() and young.exists() and nested.exists()
    assert (tmp_path / "password").read_text() == "real"


def expiry(tmp_path, remove: bool) -> tuple[Expiry, object]:
    ini = write_ini(tmp_path, DOMAIN)
    mailboxes = tmp_path / "mail"
    return Expiry(read_config(ini), time.time(), remove=remove), mailboxes


def test_expire_removes_a_stale_password_write_and_then_the_empty_account(tmp_path):
    exp, mailboxes = expiry(tmp_path, remove=True)
    # doveauth killed between making the account directory and renaming its password file.
    cut_short = mailboxes / f"cutshort1@{DOMAIN}"
    leftover(cut_short, "password", STALE_AFTER + 60)
    (cut_short / "home").mkdir()  # Dovecot's home, made by doveauth with the account
    live = mailboxes / f"liveacct1@{DOMAIN}"
    (live / "cur").mkdir(parents=True)
    (live / "password").write_text("{SHA512-CRYPT}x")
    stale_meta = leftover(live, "metadata.json", STALE_AFTER + 60)
    writing = leftover(live, "metadata.json", 1)
    summary = exp.run()
    assert not cut_short.exists()
    assert not stale_meta.exists() and writing.exists()
    assert (live / "password").exists()
    assert summary.removed_temporary == 2


def test_an_account_directory_with_more_than_an_empty_home_is_kept(tmp_path):
    exp, mailboxes = expiry(tmp_path, remove=True)
    kept = mailboxes / f"notempty1@{DOMAIN}"
    (kept / "home").mkdir(parents=True)
    (kept / "home" / ".dovecot.lda-dupes").write_bytes(b"x")
    exp.run()
    assert (kept / "home" / ".dovecot.lda-dupes").exists()


def test_expire_dry_run_removes_no_temporary_file(tmp_path):
    exp, mailboxes = expiry(tmp_path, remove=False)
    path = leftover(mailboxes / f"cutshort2@{DOMAIN}", "password", STALE_AFTER + 60)
    assert exp.run().removed_temporary == 1
    assert path.exists()


def test_metrics_removes_a_stale_leftover_of_its_own_page(tmp_path):
    mailboxes = tmp_path / "mail"
    mailboxes.mkdir()
    out_dir = tmp_path / "www"
    stale = leftover(out_dir, "metrics", STALE_AFTER + 60)
    other = leftover(out_dir, "index.html", STALE_AFTER + 60)
    metrics.main([str(mailboxes), str(out_dir / "metrics")])
    assert (out_dir / "metrics").exists()
    assert not stale.exists() and other.exists()
