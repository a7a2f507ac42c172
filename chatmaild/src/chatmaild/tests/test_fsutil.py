"""A full disk never leaves a half-written state file or temporary litter, and callers
report it as a temporary failure (doveauth and metadata answer F)."""

from __future__ import annotations

import errno
import imaplib
import json
import os
import pwd
import shutil
import stat

import pytest

from chatmaild.dictproxy import DictProxyServer, _Transaction
from chatmaild.doveauth import AuthDict
from chatmaild.fsutil import is_temporary, write_atomic
from chatmaild.metadata import MetadataDict, MetadataStore
from chatmaild.notifier import Notifier
from chatmaild.testkit.config import DOMAIN, make_config, write_ini
from chatmaild.testkit.dovecot_instance import DovecotInstance
from chatmaild.testkit.fullfs import fill, small_tmpfs, temporary_files

ADDR = f"abcdefghi@{DOMAIN}"


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_replaces_content_with_the_given_mode_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "state"
    target.write_text("old")
    write_atomic(target, "new ✓", mode=0o644)
    assert target.read_text("utf-8") == "new ✓"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    write_atomic(target, b"\x00bytes")
    assert target.read_bytes() == b"\x00bytes"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_failed_fsync_keeps_the_old_file_and_removes_the_temporary_one(tmp_path, monkeypatch, err):
    target = tmp_path / "password"
    target.write_text("old hash")

    def failing_fsync(fd):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError) as exc:
        write_atomic(target, "new hash")
    assert exc.value.errno == err
    assert target.read_text() == "old hash"
    assert [p.name for p in tmp_path.iterdir()] == ["password"]


def test_really_full_disk_keeps_the_old_file_then_works_once_space_is_free(tmp_path):
    with small_tmpfs(tmp_path / "fs", "64k") as fs:
        target = fs / "metadata.json"
        target.write_text('{"devicetoken": {}}')
        filler = fill(fs)
        with pytest.raises(OSError) as exc:
            write_atomic(target, "x" * 8192)
        assert exc.value.errno == errno.ENOSPC
        assert target.read_text() == '{"devicetoken": {}}'
        assert temporary_files(fs) == []
        filler.unlink()
        write_atomic(target, "x" * 8192)
        assert target.read_text() == "x" * 8192
        assert temporary_files(fs) == []


def test_dir_owner_gives_the_file_to_the_directory_owner(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    nobody = pwd.getpwnam("nobody")
    tmp_path.chmod(0o755)
    shutil.chown(tmp_path, nobody.pw_uid, nobody.pw_gid)
    write_atomic(tmp_path / "password", "secret", dir_owner=True)
    st = (tmp_path / "password").stat()
    assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    write_atomic(tmp_path / "invite", "x", mode=0o644)
    assert (tmp_path / "invite").stat().st_uid == 0


def test_is_temporary_names():
    assert is_temporary("password.tmp-k2j3h4")
    assert not is_temporary("password")
    assert not is_temporary("0123abcd")


def test_doveauth_on_a_full_disk_fails_temporarily_and_creates_nothing(tmp_path):
    with small_tmpfs(tmp_path / "mail", "64k") as mail:
        # The kit's config has no free-space minimum: the write itself meets the full disk.
        auth = AuthDict(make_config(tmp_path))
        server = DictProxyServer(auth, tmp_path / "unused.sock", workers=1)
        filler = fill(mail)
        key = f'shared/passdb/password123"{ADDR}"203.0.113.9'
        # F: Dovecot answers NO [UNAVAILABLE] / 454 instead of "authentication failed".
        assert server._reply_lookup(key, None).startswith("F")
        user = auth.config.get_user(ADDR)
        assert user.get_password_hash() is None
        assert not user.password_path.exists()
        assert auth.lookup(f"shared/userdb/{ADDR}", None) is None
        assert temporary_files(mail) == []
        filler.unlink()
        # The login that creates the account is answered in PLAIN, later ones with the hash.
        assert json.loads(auth.lookup(key, None))["password"] == "{PLAIN}password123"
        assert user.get_password_hash().startswith("{SHA512-CRYPT}")
        assert json.loads(auth.lookup(key, None))["password"] == user.get_password_hash()


def test_metadata_set_on_a_full_disk_answers_F_and_keeps_the_old_tokens(tmp_path):
    with small_tmpfs(tmp_path / "mail", "64k") as mail:
        config = make_config(tmp_path)
        store = MetadataStore(config)
        user = config.get_user(ADDR)
        user.maildir.mkdir()
        store.add_token(ADDR, "token-one")
        before = user.metadata_path.read_text()
        handler = MetadataDict(config, store, None)
        server = DictProxyServer(handler, tmp_path / "unused.sock", workers=1)
        filler = fill(mail)
        tx = _Transaction(user=ADDR, ops=[("priv/guid/devicetoken", "token-two" * 500)])
        assert server._reply_commit("1", tx) == "F1\n"
        assert user.metadata_path.read_text() == before
        assert store.get_tokens(ADDR) == ["token-one"]
        assert [p for p in temporary_files(mail) if not p.name.endswith(".lock")] == []
        filler.unlink()
        tx = _Transaction(user=ADDR, ops=[("priv/guid/devicetoken", "token-two")])
        assert server._reply_commit("2", tx) == "O2\n"
        assert store.get_tokens(ADDR) == ["token-one", "token-two"]


def test_notifier_queue_on_a_full_disk_raises_and_leaves_no_file(tmp_path):
    with small_tmpfs(tmp_path / "queue", "64k") as queue:
        notifier = Notifier(queue, "http://127.0.0.1:9/", lambda addr, token: None)
        fill(queue)
        with pytest.raises(OSError) as exc:
            notifier.notify(ADDR, ["t" * 8192])
        assert exc.value.errno == errno.ENOSPC
        assert sorted(p.name for p in queue.iterdir()) == ["zz-filler"]
        assert notifier.pending_count() == 0


def test_metrics_on_a_full_disk_keeps_the_old_page(tmp_path):
    from chatmaild.metrics import main

    mail = tmp_path / "mail"
    (mail / ADDR).mkdir(parents=True)
    with small_tmpfs(tmp_path / "www", "64k") as www:
        page = www / "metrics"
        main([str(mail), str(page)])
        before = page.read_text()
        filler = fill(www)
        (mail / f"jklmnopqr@{DOMAIN}").mkdir()
        with pytest.raises(OSError):
            main([str(mail), str(page)])
        assert page.read_text() == before
        assert temporary_files(www) == []
        filler.unlink()
        main([str(mail), str(page)])
        assert "accounts 2\n" in page.read_text()


def test_dovecot_login_of_a_new_account_on_a_full_disk_is_unavailable_not_wrong(tmp_path):
    """Through the real Dovecot: NO [UNAVAILABLE] while full, then the same login works."""
    inst = DovecotInstance()
    inst.dir.mkdir(parents=True, exist_ok=True)
    with small_tmpfs(inst.mailboxes_dir, "256k") as mail:
        try:
            inst.start()
            filler = fill(mail)
            conn = imaplib.IMAP4("127.0.0.1", inst.imap_port)
            with pytest.raises(imaplib.IMAP4.error) as exc:
                conn.login(ADDR, "password123")
            assert "[UNAVAILABLE]" in str(exc.value)
            conn.shutdown()
            assert not (mail / ADDR / "password").exists()
            filler.unlink()
            conn = imaplib.IMAP4("127.0.0.1", inst.imap_port)
            assert conn.login(ADDR, "password123")[0] == "OK"
            conn.logout()
            assert temporary_files(mail) == []
        finally:
            inst.stop()


def test_lastlogin_on_a_full_disk_still_records_the_day(tmp_path):
    from chatmaild.lastlogin import LastLoginDict, day_of

    with small_tmpfs(tmp_path / "mail", "64k") as mail:
        config = make_config(tmp_path)
        user = config.get_user(ADDR)
        user.maildir.mkdir()
        user.password_path.write_text("{SHA512-CRYPT}$6$x")
        fill(mail)
        # Only the inode's times change: no block is needed.
        assert LastLoginDict(config).set(ADDR, f"shared/last-login/{ADDR}", "1796000000")
        assert user.password_path.stat().st_mtime == day_of(1796000000)
        assert user.password_path.read_text() == "{SHA512-CRYPT}$6$x"


def test_expire_on_a_full_disk_removes_old_messages_and_frees_space(tmp_path):
    from chatmaild.expire import main

    with small_tmpfs(tmp_path / "mail", "256k") as mail:
        maildir = mail / ADDR
        (maildir / "cur").mkdir(parents=True)
        (maildir / "password").write_text("{SHA512-CRYPT}$6$x")
        old = maildir / "cur" / "1700000000.M1P1.host,S=65536:2,S"
        old.write_bytes(b"x" * 65536)
        os.utime(old, (1700000000, 1700000000))
        fill(mail)
        ini = write_ini(tmp_path)
        main([str(ini), "--remove"])
        assert not old.exists()
        assert shutil.disk_usage(mail).free >= 65536
        assert (maildir / "password").read_text() == "{SHA512-CRYPT}$6$x"
