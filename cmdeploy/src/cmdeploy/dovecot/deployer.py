"""Dovecot: IMAP (143, 993), LMTP from Postfix, create-on-login auth through doveauth."""

from __future__ import annotations

from importlib.resources import files as package_files
from pathlib import Path

from pyinfra import host
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server

from cmdeploy.deployer import Deployer
from cmdeploy.services.deployer import VENV


SIEVE_DIR = "/etc/dovecot/chatmail"
DEDUP_SCRIPT = f"{SIEVE_DIR}/dedup.sieve"


class DovecotDeployer(Deployer):
    name = "dovecot"
    templates = Path(__file__).parent

    def install(self) -> None:
        apt.packages(
            name="dovecot: packages", packages=["dovecot-imapd", "dovecot-lmtpd", "dovecot-sieve"]
        )

    def configure(self) -> None:
        self.put_template("dovecot.conf.j2", "/etc/dovecot/dovecot.conf", venv=VENV)
        self.put_template("auth.conf.j2", "/etc/dovecot/auth.conf", mode="640", group="dovecot")
        lua = package_files("chatmaild").joinpath("push_notification.lua").read_text()
        self.put_text(lua, "/etc/dovecot/push_notification.lua")
        self.put_template(
            "supervise.conf", "/etc/systemd/system/dovecot.service.d/chatmail-supervise.conf"
        )
        self.deploy_dedup_script()

    def deploy_dedup_script(self) -> None:
        """The duplicate filter LMTP runs first (dedup.sieve), compiled here: LMTP runs as
        vmail and cannot write the binary beside the script, so without this it would
        compile the script anew for every delivery."""
        files.directory(name="dovecot: script dir", path=SIEVE_DIR)
        script = self.put_text((self.templates / "dedup.sieve").read_text(), DEDUP_SCRIPT)
        compiled = DEDUP_SCRIPT.removesuffix(".sieve") + ".svbin"
        fresh = host.get_fact(Command, f"[ {compiled} -nt {DEDUP_SCRIPT} ] && echo fresh; true")
        server.shell(name="dovecot: compile dedup.sieve", commands=[f"sievec {DEDUP_SCRIPT}"],
                     _if=lambda: script.did_change() or fresh != "fresh")  # fmt: skip

    def activate(self) -> None:
        if self.options.disable_mail:
            self.stop_and_disable("dovecot")
            return
        self.check_then_restart("dovecot", check="doveconf -n >/dev/null")
