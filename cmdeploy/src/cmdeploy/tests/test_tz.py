"""TZ=:/etc/localtime in the environment of every chatmaild unit and Postfix."""

from __future__ import annotations

import pytest

from cmdeploy.deployer_base import DeployOptions
from cmdeploy.echobot.deployer import EchobotDeployer
from cmdeploy.postfix.deployer import PostfixDeployer
from cmdeploy.services.deployer import DAEMONS, TIMERS, TZ_LINE, ServicesDeployer, unit_limits
from cmdeploy.tests.test_supervision import config_with, effective


def assert_tz(text: str) -> None:
    env = [e for v in effective(text, "Service", "Environment") for e in v.split()]
    assert "TZ=:/etc/localtime" in env


def test_tz_line_is_the_references():
    assert TZ_LINE == "TZ=:/etc/localtime"


@pytest.mark.parametrize("name", [*DAEMONS, *TIMERS, "echobot"])
def test_chatmaild_units_set_tz(name):
    config = config_with()
    d = ServicesDeployer(config, DeployOptions())
    limits = unit_limits(name, config)
    if name in DAEMONS:
        text = d.render("daemon.service.j2", description=name, exec_start="/bin/true",
                        runtime_dir=None, socket_unit=False, **limits)  # fmt: skip
    elif name in TIMERS:
        text = d.render("oneshot.service.j2", description=name, exec_start="/bin/true", **limits)
    else:
        text = EchobotDeployer(config, DeployOptions()).render("echobot.service.j2", **limits)
    assert_tz(text)


def test_postfix_dropin_sets_tz():
    # Not Dovecot's: its master drops the unit's environment when it re-executes itself
    # (lab relay: no Dovecot process had TZ with it).
    assert_tz(PostfixDeployer(config_with(), DeployOptions()).render("supervise.conf"))


def import_environment(text: str) -> list[str]:
    """The entries of import_environment in a main.cf or dovecot.conf (continuation lines
    included)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("import_environment"):
            value = line.split("=", 1)[1]
            for more in lines[i + 1 :]:
                if not more[:1].isspace():
                    break
                value += " " + more
            return value.split()
    return []


def test_postfix_master_passes_tz_on():
    # Postfix's default import_environment has TZ; a list of our own would have to keep it.
    entries = import_environment((PostfixDeployer.templates / "main.cf.j2").read_text())
    assert not entries or "TZ" in entries
