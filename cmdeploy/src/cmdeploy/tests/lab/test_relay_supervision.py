"""Every component of a deployed lab relay comes back by itself after SIGKILL.

Each component's main process is killed (for Postfix the master, whose PID Debian's unit
does not track, lab-facts 18) and the time until it answers again is measured with the
probes of ``cmdeploy status``, on the relay itself. ``cmdeploy status`` is then shown to
name a service that is stopped, or running but not answering, and to report all well once
it is back.
"""

from __future__ import annotations

import re
import time

import pytest
from chatmaild.config import read_config
from chatmaild.testkit.waiting import wait_until

from cmdeploy import status
from cmdeploy.lab.relay import cmdeploy, deploy, lab_relay
from cmdeploy.tests.lab.kills import POSTFIX_MASTER_PID, TARGETS, install_probe, kill_and_wait

pytestmark = pytest.mark.lab

RECOVERY_LIMIT = 15.0


@pytest.fixture(scope="module")
def relay(lab, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("supervision-relays")
    r = lab_relay(lab, "relay1", workdir, overrides={"mtail_address": "127.0.0.1"})
    install_probe(lab, r)
    return r


@pytest.fixture(scope="module")
def comps(relay):
    return {c.name: c for c in status.components(read_config(relay.ini))}


RECOVERED: dict[str, float] = {}


def journal(lab, relay, unit: str) -> str:
    out = lab.ssh_run(relay.name, f"journalctl -u {unit} -n 30 --no-pager", check=False)
    return out.stdout


@pytest.mark.parametrize("name", list(TARGETS))
def test_component_answers_again_after_sigkill(lab, relay, comps, name):
    kill_unit, pidfile = TARGETS[name]
    result = kill_and_wait(lab, relay, comps[name], kill_unit, pidfile)
    assert "error" not in result, (result, journal(lab, relay, kill_unit))
    seconds = result["seconds"]
    assert seconds is not None and seconds <= RECOVERY_LIMIT, (
        result, journal(lab, relay, kill_unit)
    )  # fmt: skip
    assert result["after"] != result["before"]
    # No orphan of the killed Postfix master keeps a port or the queue.
    assert result["children_left"] == [], result
    if name == "postfix":
        assert result["children_before"] >= 2  # qmgr and pickup at least
    RECOVERED[name] = seconds


def test_recovery_times_table():
    print("\nrecovery after SIGKILL of the main process (until it answers again):")
    print(f"  {'component':22} seconds")
    for name in TARGETS:
        shown = f"{RECOVERED[name]:6.1f}" if name in RECOVERED else "   not measured"
        print(f"  {name:22} {shown}")
    assert set(RECOVERED) == set(TARGETS)


def status_of(lab, relay):
    return cmdeploy(lab, relay, "status", check=False)


def test_status_names_a_stopped_service_and_is_happy_once_it_is_back(lab, relay):
    # With its socket unit too: a request to the socket alone would start it again.
    lab.ssh_run(relay.name, "systemctl stop doveauth.socket doveauth")
    try:
        proc = status_of(lab, relay)
        assert proc.returncode == 1, proc.stdout
        assert "doveauth (unit doveauth is inactive)" in proc.stderr
        assert re.search(r"^  doveauth\s+inactive$", proc.stdout, re.M), proc.stdout
    finally:
        lab.ssh_run(relay.name, "systemctl start doveauth.socket doveauth")
    proc = status_of(lab, relay)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_status_names_a_running_service_that_does_not_answer(lab, relay):
    # Frozen, not dead: systemd still says active, the kernel still accepts connections.
    lab.ssh_run(relay.name, "systemctl kill -s SIGSTOP filtermail")
    try:
        proc = status_of(lab, relay)
        assert proc.returncode == 1, proc.stdout
        assert re.search(r"^  filtermail\s+not-answering$", proc.stdout, re.M), proc.stdout
        assert "not answering: filtermail (smtp 10080: timed out)" in proc.stderr
    finally:
        lab.ssh_run(relay.name, "systemctl kill -s SIGCONT filtermail")
    assert status_of(lab, relay).returncode == 0


def master_pid(lab, relay) -> int:
    return int(lab.ssh_run(relay.name, f"cat {POSTFIX_MASTER_PID}").stdout.split()[0])


def wait_answering(lab, relay, comp: status.Component, timeout: float = 15) -> None:
    spec = status.probe_spec([comp])
    wait_until(lambda: status.verdicts([comp], status.parse(
                   lab.ssh_run(relay.name, status.probe_command(spec)).stdout)),
               f"{comp.name} to answer", timeout, interval=0.3,
               until=lambda verdicts: not verdicts[0].down)  # fmt: skip


def test_postfix_reload_and_restart_act_on_the_supervised_master(lab, relay, comps):
    before = master_pid(lab, relay)
    lab.ssh_run(relay.name, "systemctl reload postfix")
    assert master_pid(lab, relay) == before
    assert "reload" in lab.ssh_run(relay.name, "journalctl -u postfix@- -n 5 --no-pager").stdout
    for unit in ("postfix", "postfix@-"):
        lab.ssh_run(relay.name, f"systemctl restart {unit}")
        wait_answering(lab, relay, comps["postfix"])
        after = master_pid(lab, relay)
        assert after != before, unit
        before = after


def test_deploy_restarts_the_master_when_its_config_changed(lab, relay, comps):
    # A file newer than the running service: what a failed earlier deploy leaves behind.
    before = master_pid(lab, relay)
    lab.ssh_run(relay.name, "sleep 1; touch /etc/postfix/main.cf")
    deploy(lab, relay)
    wait_answering(lab, relay, comps["postfix"])
    assert master_pid(lab, relay) != before
    state = lab.ssh_run(relay.name, "systemctl is-active postfix postfix@-").stdout.split()
    assert state == ["active", "active"]


def test_with_debians_own_postfix_unit_a_killed_master_stays_down_and_status_says_so(
    lab, relay, comps
):
    """The old setting, for contrast: without the drop-in nothing restarts the master.
    (systemd may even go on calling the unit active while children of the dead master
    linger, lab-facts 18; on an idle relay they exit and the unit turns inactive.)"""
    dropin = "/etc/systemd/system/postfix@-.service.d/chatmail-supervise.conf"
    lab.ssh_run(relay.name, f"mv {dropin} /root/supervise.conf.off && systemctl daemon-reload"
                            " && systemctl restart postfix")  # fmt: skip
    try:
        wait_answering(lab, relay, comps["postfix"])
        lab.ssh_run(relay.name, f"kill -9 $(cat {POSTFIX_MASTER_PID})")
        time.sleep(RECOVERY_LIMIT)
        unit = lab.ssh_run(relay.name, "systemctl is-active postfix@-", check=False).stdout.strip()
        print(f"\nDebian's postfix@- {RECOVERY_LIMIT:.0f} s after SIGKILL of the master: {unit}")
        proc = status_of(lab, relay)
        assert proc.returncode == 1, proc.stdout
        assert re.search(r"^  postfix\s+\S+$", proc.stdout, re.M), proc.stdout
        assert "not answering: postfix (" in proc.stderr, proc.stderr
    finally:
        lab.ssh_run(relay.name, f"mv /root/supervise.conf.off {dropin} && systemctl daemon-reload"
                                " && systemctl restart postfix")  # fmt: skip
    wait_answering(lab, relay, comps["postfix"])


def wait_all_well(lab, relay, timeout: float) -> float:
    """Seconds until ``cmdeploy status`` reports all well (fails after ``timeout``)."""
    started = time.monotonic()
    while True:
        proc = status_of(lab, relay)
        if proc.returncode == 0:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, proc.stdout + proc.stderr
        time.sleep(2)


def test_with_debians_own_dovecot_unit_a_killed_dovecot_stays_down(lab, relay, comps):
    """The old setting, for contrast: Debian's dovecot.service has no Restart=."""
    dropin = "/etc/systemd/system/dovecot.service.d/chatmail-supervise.conf"
    lab.ssh_run(
        relay.name, f"mv {dropin} /root/dovecot-supervise.conf.off && systemctl daemon-reload"
    )
    try:
        lab.ssh_run(relay.name, "kill -9 $(systemctl show -P MainPID dovecot)")
        time.sleep(RECOVERY_LIMIT)
        proc = status_of(lab, relay)
        assert proc.returncode == 1, proc.stdout
        assert re.search(r"^  dovecot\s+(failed|inactive)$", proc.stdout, re.M), proc.stdout
    finally:
        lab.ssh_run(relay.name, f"mv /root/dovecot-supervise.conf.off {dropin} && systemctl daemon-reload"
                                " && systemctl restart dovecot")  # fmt: skip
    wait_answering(lab, relay, comps["dovecot"])
    # Postfix's submission smtpd cannot start while Dovecot's auth socket is gone (status
    # connected to it meanwhile); its master then throttles the service for a while.
    seconds = wait_all_well(lab, relay, timeout=120)
    print(f"\nall well again {seconds:.0f} s after Dovecot answered (after 15 s down)")
    log = lab.ssh_run(relay.name, "journalctl -u postfix@- -n 200 --no-pager").stdout
    for line in log.splitlines():
        if "throttl" in line or "SASL" in line:
            print("  " + line[-160:])
