"""Postfix hands remote mail to chatmail-mxtransport (issue 15): what the templates and
the service declarations say, checked with Postfix's own postconf."""

import shutil
import subprocess

import pytest
from chatmaild.config import parse_config, render_initial_config
from chatmaild.mxtransport import MAX_SESSIONS

from cmdeploy import status
from cmdeploy.deployer_base import DeployOptions
from cmdeploy.postfix.deployer import PostfixDeployer
from cmdeploy.services.deployer import DAEMONS, unit_limits


def postconf(config, tmp_path, *args: str) -> str:
    if not shutil.which("postconf"):
        pytest.fail("postconf missing: scripts/test.sh installs it (scripts/test-packages.txt)")
    p = PostfixDeployer(config, DeployOptions())
    (tmp_path / "main.cf").write_text(p.render("main.cf.j2"))
    (tmp_path / "master.cf").write_text(p.render("master.cf.j2"))
    out = subprocess.run(["postconf", "-c", tmp_path, *args], capture_output=True, text=True)
    assert out.returncode == 0 and "warning" not in out.stderr, out.stderr
    return out.stdout


def config_with(**overrides):
    return parse_config(render_initial_config("chat.example.org", overrides))


def test_remote_mail_goes_to_the_transport_with_local_mail_on_dovecot(tmp_path):
    config = config_with(mxdeliv_transport_port="11083", mxdeliv_outgoing="true")
    main = postconf(config, tmp_path, "-n")
    assert "default_transport = mxdeliv:inet:[127.0.0.1]:11083" in main
    assert "local_transport = lmtp:unix:private/dovecot-lmtp" in main
    assert f"mxdeliv_destination_concurrency_limit = {MAX_SESSIONS}" in main
    master = postconf(config, tmp_path, "-M", "mxdeliv/unix").split()
    assert master[:8] == ["mxdeliv", "unix", "-", "-", "n", "-", str(MAX_SESSIONS), "lmtp"]
    # Dovecot's header cleanup (DKIM-Signature is removed there) must not touch it.
    params = postconf(config, tmp_path, "-P", "mxdeliv/unix")
    assert "mxdeliv/unix/lmtp_header_checks =" in params.splitlines()
    assert "mxdeliv/unix/lmtp_tls_security_level = none" in params


def test_switched_off_postfix_delivers_by_smtp_itself(tmp_path):
    main = postconf(config_with(mxdeliv_outgoing="false"), tmp_path, "-n")
    assert "default_transport" not in main


def test_the_transport_is_supervised_and_probed():
    config = config_with(mxdeliv_transport_port="11083")
    assert DAEMONS["chatmail-mxtransport"][0].startswith("chatmail-mxtransport {ini}")
    limits = unit_limits("chatmail-mxtransport", config)
    assert limits["memory_high"] != limits["memory_max"]
    comps = {c.name: c for c in status.components(config)}
    (check,) = comps["chatmail-mxtransport"].checks
    assert check["port"] == 11083
