"""Dovecot: IMAP (143, 993), LMTP from Postfix, create-on-login auth through doveauth."""

from __future__ import annotations

from importlib.resources import files as package_files
from pathlib import Path

from pyinfra.operations import apt

from cmdeploy.deployer import Deployer
from cmdeploy.services.deployer import VENV


class DovecotDeployer(Deployer):
    name = "dovecot"
    templates = Path(__file__).parent

    def install(self) -> None:
        apt.packages(name="dovecot: packages", packages=["dovecot-imapd", "dovecot-lmtpd"])

    def configure(self) -> None:
        self.put_template("dovecot.conf.j2", "/etc/dovecot/dovecot.conf", venv=VENV)
        self.put_template("auth.conf.j2", "/etc/dovecot/auth.conf", mode="640", group="dovecot")
        lua = package_files("chatmaild").joinpath("push_notification.lua").read_text()
        self.put_text(lua, "/etc/dovecot/push_notification.lua")
        self.put_template(
            "supervise.conf", "/etc/systemd/system/dovecot.service.d/chatmail-supervise.conf"
        )

    def activate(self) -> None:
        if self.options.disable_mail:
            self.stop_and_disable("dovecot")
            return
        self.check_then_restart("dovecot", check="doveconf -n >/dev/null")
