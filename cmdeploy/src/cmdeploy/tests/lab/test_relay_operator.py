"""An operator's other paths: several relays in one command, and deploying on the relay itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cmdeploy.cmd_run import REPO
from cmdeploy.dovecot import build as dovecot_build
from cmdeploy.lab.relay import prepare_relay

pytestmark = pytest.mark.lab


def cli(lab, *args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "cmdeploy.cli", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=900)


def test_two_relays_deploy_check_and_list_dns_in_one_command_each(lab, tmp_path):
    relays = [prepare_relay(lab, name, tmp_path) for name in ("relay1", "relay2")]
    configs = [arg for r in relays for arg in ("--config", str(r.ini))]
    ssh = ["--ssh-config", str(lab.ssh_config)]

    run = cli(lab, *configs, *ssh, "run")
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-8000:]
    for r in relays:
        assert f"  {r.domain}: ok after" in run.stdout
        assert f"[{r.domain}] deploy of {r.domain} completed" in run.stdout
    # Both deploys ran at once: their output lines interleave.
    lines = [line for line in run.stdout.splitlines() if line.startswith("[")]
    done = next(i for i, line in enumerate(lines) if "] deploy of " in line)
    started = {line.split("]")[0] for line in lines[:done]}
    assert len(started) == 2, "the second relay started only after the first was done"

    zone = str(tmp_path / "{domain}.zone")
    dns = cli(lab, *configs, *ssh, "dns", "--dns-server", lab.dns_ip, "--zonefile", zone)
    assert dns.returncode == 0, dns.stdout[-3000:] + dns.stderr[-3000:]
    for r in relays:
        text = (tmp_path / f"{r.domain}.zone").read_text()
        assert "DKIM1" in text and r.domain in text
        lab.load_zone(r.domain, text)

    status = cli(lab, *configs, *ssh, "status")
    assert status.returncode == 0, status.stdout[-3000:] + status.stderr[-3000:]
    assert status.stdout.count(": ok after") == 2

    # One relay down: the command says which, and fails.
    lab.ssh_run("relay2", "systemctl stop dovecot")
    try:
        status = cli(lab, *configs, *ssh, "status")
    finally:
        lab.ssh_run("relay2", "systemctl start dovecot")
    assert status.returncode == 1
    assert f"  {relays[0].domain}: ok" in status.stdout
    assert f"  {relays[1].domain}: FAILED" in status.stdout


def test_an_operator_on_the_server_deploys_there_without_ssh(lab, tmp_path):
    relay = prepare_relay(lab, "relay3", tmp_path)
    # The operator's checkout on the server (the working tree, without this machine's venv).
    pack = subprocess.run(
        ["tar", "-C", str(REPO), "--exclude=./venv", "--exclude=./.git", "--exclude=*/build",
         "--exclude=./lab-relays", "--exclude=*/__pycache__", "-cf", "-", "."],
        capture_output=True, check=True,
    )  # fmt: skip
    lab.ssh_run(relay.name, "rm -rf /root/relay && mkdir /root/relay && tar -x -C /root/relay",
                input=pack.stdout, text=False)  # fmt: skip
    lab.ssh_run(relay.name, f"cat > /root/relay/chatmail.ini <<'EOF'\n{relay.ini.read_text()}EOF")
    # The patched Dovecot this machine built once (a deploy from here would upload it): a
    # server without it builds its own (~6-15 min), which CI need not repeat.
    cache = dovecot_build.cache_root()
    if cache.is_dir():
        packed = subprocess.run(["tar", "-C", str(cache), "-cf", "-", "."],
                                capture_output=True, check=True)  # fmt: skip
        target = "/root/.cache/cmdeploy/dovecot"
        lab.ssh_run(relay.name, f"mkdir -p {target} && tar -x -C {target}",
                    input=packed.stdout, text=False)  # fmt: skip
    # The README's command, run on the server itself; it installs python3-venv and the venv.
    deploy = lab.ssh_run(
        relay.name,
        "cd /root/relay && scripts/cmdeploy --config chatmail.ini run --ssh-host @local",
        check=False, timeout=900,
    )  # fmt: skip
    assert deploy.returncode == 0, deploy.stdout[-4000:] + deploy.stderr[-4000:]
    assert f"deploy of {relay.domain} completed" in deploy.stdout
    # Checked from outside, over SSH as usual: every service of the relay answers.
    status = cli(lab, "--config", str(relay.ini), "--ssh-config", str(lab.ssh_config), "status")
    assert status.returncode == 0, status.stdout[-3000:] + status.stderr[-3000:]
    # And on the server itself, without SSH.
    local = lab.ssh_run(
        relay.name,
        "cd /root/relay && scripts/cmdeploy --config chatmail.ini status --ssh-host @local",
        check=False,
    )  # fmt: skip
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
