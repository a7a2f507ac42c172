"""OpenDKIM: signs outgoing mail and bounces, verifies mail from other relays."""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, server

from cmdeploy.deployer_base import Deployer

KEY = "/etc/dkimkeys/opendkim.private"


class OpenDKIMDeployer(Deployer):
    name = "opendkim"
    templates = Path(__file__).parent

    def install(self) -> None:
        apt.packages(name="opendkim: packages", packages=["opendkim", "opendkim-tools"])

    def configure(self) -> None:
        d = self.config.mail_domain
        files.directory(name="opendkim: key dir", path="/etc/dkimkeys", user="opendkim",
                        group="opendkim", mode="700")  # fmt: skip
        # The key is made once: its public half is published in DNS.
        if not host.get_fact(File, path=KEY):
            server.shell(
                name="opendkim: generate the DKIM key",
                commands=[f"opendkim-genkey -b 2048 -D /etc/dkimkeys -d {d} -s opendkim",
                          "chown opendkim:opendkim /etc/dkimkeys/opendkim.*"],
            )  # fmt: skip
        self.put_template("opendkim.conf.j2", "/etc/opendkim.conf")
        self.put_template("KeyTable.j2", "/etc/dkimkeys/KeyTable")
        self.put_template("SigningTable.j2", "/etc/dkimkeys/SigningTable")
        files.directory(name="opendkim: script dir", path="/etc/opendkim")
        self.put_template("screen.lua", "/etc/opendkim/screen.lua")
        self.put_template("final.lua", "/etc/opendkim/final.lua")
        files.directory(name="opendkim: socket dir", path="/var/spool/postfix/opendkim",
                        user="opendkim", group="opendkim", mode="750")  # fmt: skip
        # OpenDKIM leaks memory on long runs: it restarts daily, and after any crash.
        self.put_template("restart.conf", "/etc/systemd/system/opendkim.service.d/restart.conf")

    def activate(self) -> None:
        self.check_then_restart("opendkim", check="opendkim -n")
