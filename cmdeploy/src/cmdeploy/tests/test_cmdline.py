"""The helpers every subcommand shares, and the one-way imports of the command line."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest
from chatmaild.config import render_initial_config

import cmdeploy
from cmdeploy import cli, cmdline


def _ini(tmp_path: Path, extra: str = "") -> Path:
    ini = tmp_path / "chatmail.ini"
    ini.write_text(render_initial_config("chat.example.org") + extra)
    return ini


def test_unknown_key_is_warned_about_once_on_stderr(tmp_path):
    ini = _ini(tmp_path, "colour = blue\n")
    # A fresh interpreter with logging unconfigured, as the cmdeploy command runs: a warning
    # logged by the config parser would reach stderr too (logging's last-resort handler).
    code = (
        "import argparse, pathlib, sys; from cmdeploy.cmdline import load_config; "
        "load_config(argparse.Namespace(config=pathlib.Path(sys.argv[1])))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(ini)], capture_output=True, text=True, check=True
    )
    assert proc.stderr.count("colour") == 1, proc.stderr
    assert "unknown key 'colour' is ignored" in proc.stderr


def test_broken_config_exits_with_one_line(tmp_path, capsys):
    ini = tmp_path / "chatmail.ini"
    ini.write_text("[params]\nmax_mailbox_size = lots\n")
    with pytest.raises(SystemExit) as exc:
        cmdline.load_config(argparse.Namespace(config=ini))
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "max_mailbox_size" in err and "\n" not in err


def test_remote_is_the_ssh_host_or_the_mail_domain(tmp_path):
    config = cmdline.load_config(argparse.Namespace(config=_ini(tmp_path)))
    args = argparse.Namespace(ssh_host=None, ssh_config=None)
    assert cmdline.remote_for(args, config).host == "chat.example.org"
    args = argparse.Namespace(ssh_host="relay1", ssh_config=tmp_path / "ssh_config")
    remote = cmdline.remote_for(args, config)
    assert (remote.host, remote.ssh_config) == ("relay1", tmp_path / "ssh_config")


@pytest.mark.parametrize("command", ["run", "dns", "status", "test", "bench"])
def test_every_relay_command_takes_ssh_host(command):
    args = cli.build_parser().parse_args([command, "--ssh-host", "relay1"])
    assert args.ssh_host == "relay1"


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_module_imports_the_cli_back():
    root = Path(cmdeploy.__file__).parent
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "tests" not in path.relative_to(root).parts and path != root / "cli.py"
        if "cmdeploy.cli" in _imported_modules(path)
    ]
    assert offenders == []
    # the shared helpers import no subcommand, so the imports of the CLI run one way
    own = {name for name in _imported_modules(root / "cmdline.py") if name.startswith("cmdeploy")}
    assert own == {"cmdeploy.remote"}
