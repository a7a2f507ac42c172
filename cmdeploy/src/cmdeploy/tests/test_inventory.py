"""Several relays in one command: the fan-out of run/status/dns over ini files."""

from __future__ import annotations

import pytest
from chatmaild.config import render_initial_config

from cmdeploy import inventory
from cmdeploy.cli import main


def ini(tmp_path, domain: str):
    path = tmp_path / f"{domain}.ini"
    path.write_text(render_initial_config(domain))
    return path


def test_config_options_are_removed_and_the_rest_kept():
    argv = ["--config", "a.ini", "-v", "--config=b.ini", "--ssh-config", "s", "run", "--dry-run"]
    assert inventory.strip_configs(argv) == ["-v", "--ssh-config", "s", "run", "--dry-run"]


def test_every_relay_runs_in_parallel_and_each_result_is_reported(tmp_path, capfd):
    a, b = ini(tmp_path, "a.chat.invalid"), ini(tmp_path, "b.chat.invalid")
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("Host *\n    ConnectTimeout 2\n")
    code = main(["--config", str(a), "--config", str(b), "--ssh-config", str(ssh_config),
                 "status"])  # fmt: skip
    out, err = capfd.readouterr()
    assert code == 1
    assert "cmdeploy status over 2 relays:" in out
    assert "a.chat.invalid: FAILED" in out and "b.chat.invalid: FAILED" in out
    # Each relay's own error is shown, prefixed with its domain.
    lines = (out + err).splitlines()
    assert any(line.startswith("[a.chat.invalid]") for line in lines)
    assert any(line.startswith("[b.chat.invalid]") for line in lines)


def test_a_relay_named_twice_is_refused_before_anything_runs(tmp_path):
    a = ini(tmp_path, "a.chat.invalid")
    with pytest.raises(SystemExit, match="already in the inventory"):
        main(["--config", str(a), "--config", str(a), "run"])


def test_ssh_host_cannot_apply_to_several_relays(tmp_path):
    a, b = ini(tmp_path, "a.chat.invalid"), ini(tmp_path, "b.chat.invalid")
    with pytest.raises(SystemExit, match="--ssh-host names one host"):
        main(["--config", str(a), "--config", str(b), "run", "--ssh-host", "x"])


def test_commands_for_one_relay_refuse_several_configs(tmp_path, capsys):
    a, b = ini(tmp_path, "a.chat.invalid"), ini(tmp_path, "b.chat.invalid")
    assert main(["--config", str(a), "--config", str(b), "init", "c.chat.invalid"]) == 1
    assert "several --config work with run, status, dns" in capsys.readouterr().err


def test_one_zonefile_for_several_relays_is_refused(tmp_path):
    a, b = ini(tmp_path, "a.chat.invalid"), ini(tmp_path, "b.chat.invalid")
    with pytest.raises(SystemExit, match="must contain {domain}"):
        main(["--config", str(a), "--config", str(b), "dns", "--zonefile", "zone.txt"])
