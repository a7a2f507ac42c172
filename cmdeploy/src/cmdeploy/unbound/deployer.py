"""unbound: the relay's own validating DNS resolver (Postfix MX lookups, OpenDKIM keys)."""

from __future__ import annotations

from pathlib import Path

from pyinfra.operations import apt, files

from cmdeploy.deployer_base import Deployer


class UnboundDeployer(Deployer):
    name = "unbound"
    templates = Path(__file__).parent

    def install(self) -> None:
        apt.packages(name="unbound: packages", packages=["unbound", "dns-root-data", "dnsutils"])

    def configure(self) -> None:
        self.put_template("chatmail.conf.j2", "/etc/unbound/unbound.conf.d/chatmail.conf",
                          zones=self.config.dns_forward_zones)  # fmt: skip
        self.put_template(
            "supervise.conf", "/etc/systemd/system/unbound.service.d/chatmail-supervise.conf"
        )
        # Restarted here, not in activate: the rest of the deploy resolves names through
        # it as soon as resolv.conf below points at it.
        self.check_then_restart("unbound", check="unbound-checkconf")
        files.put(
            name="unbound: /etc/resolv.conf",
            src=str(self.templates / "resolv.conf"),
            dest="/etc/resolv.conf",
        )
