"""echo@<domain>: the bot that answers every message, a chatmaild console script."""

from __future__ import annotations

from pathlib import Path

from pyinfra.operations import server

from cmdeploy.deployer_base import Deployer
from cmdeploy.services.deployer import unit_limits


class EchobotDeployer(Deployer):
    """Started after Postfix and Dovecot, which it logs in to; it runs chatmaild's code, so
    pyinfra_deploy.py has it follow the services' deployer (a new wheel restarts it)."""

    name = "echobot"
    templates = Path(__file__).parent

    def install(self) -> None:
        server.user(name="echobot: user", user="echobot", system=True,
                    home="/var/lib/echobot", shell="/usr/sbin/nologin")  # fmt: skip

    def configure(self) -> None:
        self.put_template("echobot.service.j2", "/etc/systemd/system/echobot.service",
                          **unit_limits("echobot", self.config))  # fmt: skip

    def activate(self) -> None:
        if self.options.disable_mail:
            self.stop_and_disable("echobot")
            return
        self.check_then_restart("echobot")
