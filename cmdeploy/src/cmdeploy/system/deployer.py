"""Base system: apt behaviour, the vmail user and mailboxes dir, journald, kernel limits."""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.facts.server import Sysctl
from pyinfra.operations import apt, files, server, systemd

from cmdeploy.deployer_base import Deployer, as_file

INOTIFY = {"fs.inotify.max_user_instances": 65535, "fs.inotify.max_user_watches": 1048576}


class SystemDeployer(Deployer):
    name = "system"
    templates = Path(__file__).parent

    def install(self) -> None:
        files.put(
            name="system: apt without recommended packages",
            src=str(self.templates / "apt-no-recommends.conf"),
            dest="/etc/apt/apt.conf.d/80chatmail-no-recommends",
        )
        apt.update(name="system: apt update", cache_time=24 * 3600)
        apt.packages(name="system: base packages",
                     packages=["ca-certificates", "openssl", "python3", "python3-venv", "acl"])  # fmt: skip
        server.group(name="system: group vmail", group="vmail", system=True)
        server.user(
            name="system: user vmail",
            user="vmail",
            group="vmail",
            home="/home/vmail",
            create_home=True,
            shell="/usr/sbin/nologin",
            system=True,
        )

    def configure(self) -> None:
        config = self.config
        files.directory(name="system: vmail home", path="/home/vmail", user="vmail", group="vmail", mode="700")  # fmt: skip
        files.directory(name="system: mailboxes dir", path=str(config.mailboxes_dir),
                        user="vmail", group="vmail", mode="700", recursive=False)  # fmt: skip
        files.put(
            name="system: /etc/mailname",
            src=as_file(config.mail_domain + "\n"),
            dest="/etc/mailname",
        )
        self.journald = files.put(
            name="system: journald keeps logs 3 days in memory",
            src=str(self.templates / "journald.conf"),
            dest="/etc/systemd/journald.conf.d/chatmail.conf",
        )
        files.directory(
            name="system: no persistent journal", path="/var/log/journal", present=False
        )
        # Dovecot watches every mailbox with inotify as the one user vmail. No sysctl
        # operation fits: it would also lower a higher value, and it must not fail in a
        # container whose /proc/sys is read-only (the host's limit applies there).
        current = host.get_fact(Sysctl, keys=list(INOTIFY))
        for key, value in INOTIFY.items():
            if int(current.get(key, 0)) < value:
                server.shell(
                    name=f"system: raise {key} to {value}",
                    commands=[f"sysctl -w {key}={value} || echo 'cannot raise {key} here"
                              f" (container?): raise it on the host' >&2"],
                )  # fmt: skip
        files.put(name="system: persist inotify limits", src=as_file(
            "".join(f"{k} = {v}\n" for k, v in INOTIFY.items())), dest="/etc/sysctl.d/60-chatmail-inotify.conf")  # fmt: skip

    def activate(self) -> None:
        systemd.service(name="system: restart journald", service="systemd-journald",
                        restarted=True, _if=self.journald.did_change)  # fmt: skip
