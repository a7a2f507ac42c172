"""The stock floor host's configuration (cmdeploy.lab.stock), checked without the lab."""

import re
import subprocess

from cmdeploy.lab import stock
from cmdeploy.tests.test_templates import need


def test_floor_dovecot_conf_is_valid_and_has_no_chatmail_service(tmp_path):
    need("doveconf")
    conf = tmp_path / "dovecot.conf"
    conf.write_text(stock.DOVECOT_CONF.replace("{domain}", "_relay3.lab"))
    out = subprocess.run(["doveconf", "-c", conf, "-n"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "passwd-file" in out.stdout and "dict" not in out.stdout
    assert re.search(r"inet_listener imaps \{\s+port = 993", out.stdout)


def test_bench_accounts_fit_chatmail_username_rules():
    # The same names are exempt senders on chatmail relays (9 characters, [a-z0-9._-]).
    senders, recipients = stock.bench_accounts("_relay3.lab", "pw")
    assert len(senders) == stock.SENDERS and len(recipients) == stock.RECIPIENTS
    for addr, password in senders + recipients:
        local, domain = addr.split("@")
        assert re.fullmatch(r"[a-z0-9._-]{9}", local) and domain == "_relay3.lab"
        assert password == "pw"
    assert len({a for a, _ in senders + recipients}) == len(senders) + len(recipients)


def test_bench_password_is_made_once_and_private(tmp_path):
    path = tmp_path / "relay1" / "bench-password"
    first = stock.bench_password(path)
    assert stock.bench_password(path) == first and len(first) >= 18
    assert path.stat().st_mode & 0o077 == 0


def test_remote_setup_script_compiles():
    compile(stock.REMOTE_SETUP, "REMOTE_SETUP", "exec")
