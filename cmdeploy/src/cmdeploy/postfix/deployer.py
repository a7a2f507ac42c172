"""Postfix: SMTP in (25) and submission (587, 465) with the encryption gate in front."""

from __future__ import annotations

from pathlib import Path

from pyinfra.operations import apt, server, systemd

from cmdeploy.deployer_base import Deployer

# The Debian unit of the one Postfix instance; postfix.service only starts and stops it.
INSTANCE_UNIT = "postfix@-"
# OpenSSL settings of Postfix alone (openssl.cnf; main.cf's import_environment names it).
OPENSSL_CONF = "/etc/postfix/chatmail-openssl.cnf"
MAPS = ["login_map", "submission_header_cleanup", "lmtp_header_cleanup", "smtp_tls_policy_map"]


class PostfixDeployer(Deployer):
    name = "postfix"
    templates = Path(__file__).parent

    def install(self) -> None:
        # Our main.cf replaces whatever debconf would set up.
        apt.packages(name="postfix: packages", packages=["postfix"],
                     _env={"DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
        server.user(name="postfix: may use the OpenDKIM socket", user="postfix",
                    groups=["opendkim"], append=True)  # fmt: skip

    def configure(self) -> None:
        self.put_template("main.cf.j2", "/etc/postfix/main.cf")
        self.put_template("master.cf.j2", "/etc/postfix/master.cf")
        self.put_text((self.templates / "openssl.cnf").read_text(), OPENSSL_CONF)
        for name in MAPS:
            self.put_template(name, f"/etc/postfix/{name}")
        self.put_template(
            "supervise.conf",
            f"/etc/systemd/system/{INSTANCE_UNIT}.service.d/chatmail-supervise.conf",
        )

    def activate(self) -> None:
        if self.options.disable_mail:
            self.stop_and_disable("postfix")
            return
        # Warnings of postconf mean a setting is wrong or unknown: fail before restarting.
        self.check_then_restart(
            "postfix", check="postfix check && ! postconf -n 2>&1 >/dev/null | grep -q warning"
        )
        # Restarting postfix.service restarts the instance (PartOf=); this makes sure the
        # supervised master runs even when only the wrapper was already active.
        systemd.service(name="postfix: master running", service=INSTANCE_UNIT, running=True)
