"""The lab's one package list: complete for what the lab code runs, and installed by itself."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from cmdeploy.lab import LabError, packages
from cmdeploy.lab import lab as labmod

LAB_DIR = Path(packages.__file__).parent
REPO = LAB_DIR.parents[3]
CALLS = {"run", "Popen", "check_output", "check_call", "spawn_daemon"}


def _argv_heads(tree: ast.AST) -> set[str]:
    """First words of command lines in the code: call arguments, ``*argv`` variables, returns."""
    lists = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            if name in CALLS:
                lists.append(node.args[0])
        elif isinstance(node, ast.Assign):
            names = [getattr(t, "id", "") for t in node.targets]
            if any("argv" in n for n in names):
                lists.append(node.value)
        elif isinstance(node, ast.FunctionDef) and "argv" in node.name:
            lists += [n.value for n in ast.walk(node) if isinstance(n, ast.Return) and n.value]
    heads = set()
    for value in lists:
        if isinstance(value, (ast.List, ast.Tuple)) and value.elts:
            first = value.elts[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                heads.add(first.value)
    return heads


def test_every_program_the_lab_runs_has_its_package_in_the_list():
    heads = set()
    for path in LAB_DIR.glob("*.py"):
        heads |= _argv_heads(ast.parse(path.read_text()))
    # The collector must see the lab's main programs, or it checks nothing.
    assert {"ip", "systemd-nspawn", "dnsmasq", "tinyproxy", "debootstrap", "ssh"} <= heads
    assert heads - set(packages.TOOLS) == set()


def test_the_test_command_keeps_no_second_copy_of_the_lab_list():
    test_list = {
        line.strip()
        for line in (REPO / "scripts/test-packages.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    essential = {"coreutils", "mount", "util-linux", "apt", "dpkg"}
    assert test_list & (set(packages.TOOLS.values()) - essential) == set()


def test_missing_packages_are_installed_with_services_held_back(monkeypatch, tmp_path):
    installed = set()
    calls = []
    policy = tmp_path / "policy-rc.d"
    monkeypatch.setattr(packages, "POLICY_RC", policy)
    monkeypatch.setattr(packages.os, "geteuid", lambda: 0)
    monkeypatch.setattr(
        packages.shutil, "which", lambda t: None if t in ("tinyproxy", "dnsmasq") and
        packages.TOOLS[t] not in installed else f"/usr/bin/{t}",
    )  # fmt: skip

    def fake_run(argv, **kw):
        calls.append((argv, policy.exists() and policy.read_text()))
        if argv[1] == "install":
            installed.update(argv[5:])
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(packages.subprocess, "run", fake_run)
    assert packages.install_missing(say=lambda _: None) == ["dnsmasq-base", "tinyproxy"]
    assert [c[0][:2] for c in calls] == [["apt-get", "update"], ["apt-get", "install"]]
    assert calls[1][0][-2:] == ["dnsmasq-base", "tinyproxy"]
    assert all("exit 101" in text for _, text in calls)
    assert not policy.exists(), "the temporary policy-rc.d must be removed again"
    assert packages.install_missing(say=lambda _: None) == []


def test_a_failed_install_says_what_apt_said(monkeypatch, tmp_path):
    monkeypatch.setattr(packages, "POLICY_RC", tmp_path / "policy-rc.d")
    monkeypatch.setattr(packages.os, "geteuid", lambda: 0)
    monkeypatch.setattr(packages.shutil, "which", lambda t: None if t == "tinyproxy" else t)
    monkeypatch.setattr(
        packages.subprocess, "run",
        lambda argv, **kw: subprocess.CompletedProcess(argv, 100, "", "E: Unable to locate package"),
    )  # fmt: skip
    with pytest.raises(LabError, match="Unable to locate package"):
        packages.install_missing(say=lambda _: None)


def test_without_root_the_missing_packages_are_named(monkeypatch, tmp_path):
    monkeypatch.setattr(packages.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(packages.shutil, "which", lambda t: None if t == "tinyproxy" else t)
    with pytest.raises(LabError, match="tinyproxy; run as root"):
        packages.install_missing(say=lambda _: None)


def test_the_lab_checks_root_before_anything_else(monkeypatch, tmp_path):
    monkeypatch.setattr(labmod.os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match="needs root"):
        labmod.check_prerequisites(tmp_path)
