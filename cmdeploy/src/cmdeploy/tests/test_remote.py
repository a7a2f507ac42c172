"""Reaching the relay: over SSH, or this machine itself (@local)."""

from __future__ import annotations

import runpy

import pytest

from cmdeploy import remote as remote_mod
from cmdeploy.remote import Remote, RemoteError


@pytest.mark.parametrize("name", ["@local", "localhost"])
def test_local_target_runs_commands_here_and_gives_pyinfra_its_local_connector(name, tmp_path):
    r = Remote(name)
    assert r.local
    if remote_mod.os.geteuid() == 0:
        assert r.run("echo $((6 * 7)); hostname").stdout.split()[0] == "42"
    inventory = runpy.run_path(str(r.pyinfra_inventory(tmp_path)))
    assert inventory["hosts"] == ["@local"]


def test_local_target_needs_root(monkeypatch):
    monkeypatch.setattr(remote_mod.os, "geteuid", lambda: 1000)
    with pytest.raises(RemoteError, match="needs root"):
        Remote("@local").run("true")


def test_a_failing_local_command_is_reported_with_its_error():
    if remote_mod.os.geteuid() != 0:
        pytest.skip("runs local commands as root")
    with pytest.raises(RemoteError, match="no-such-file"):
        Remote("@local").run("cat /no-such-file")


def test_other_names_go_over_ssh(tmp_path):
    r = Remote("chat.example.org", ssh_config=tmp_path / "ssh_config")
    assert not r.local
    assert r._base()[:3] == ["ssh", "-o", "BatchMode=yes"]
