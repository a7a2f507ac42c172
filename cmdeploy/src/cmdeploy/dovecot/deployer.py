"""Dovecot: IMAP (143, 993), LMTP from Postfix, create-on-login auth through doveauth."""

from __future__ import annotations

from importlib.resources import files as package_files
from pathlib import Path

from pyinfra import host
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server

from cmdeploy.deployer_base import Deployer, DeployError, as_file
from cmdeploy.dovecot import build

SIEVE_DIR = "/etc/dovecot/chatmail"
DEDUP_SCRIPT = f"{SIEVE_DIR}/dedup.sieve"

# Keep the relay's own Dovecot config when a package ships a newer default one.
APT_INSTALL = ("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades "
               "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold")  # fmt: skip


def installed_versions() -> dict[str, str]:
    """Installed version of each Dovecot package of ours (absent ones left out)."""
    out = host.get_fact(
        Command,
        "dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\\n' "
        + " ".join(build.PACKAGES) + " 2>/dev/null; true",
    )  # fmt: skip
    versions = {}
    for line in (out or "").splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2].startswith("ii"):
            versions[fields[0]] = fields[1]
    return versions


class DovecotDeployer(Deployer):
    name = "dovecot"
    templates = Path(__file__).parent

    def install(self) -> None:
        # ``cmdeploy run`` decided (and built, if needed) before pyinfra: see build.prepare.
        version = self.options.dovecot_version
        if version:
            self._install_patched(build.check_version(version))
        else:
            self._install_stock()

    def _install_patched(self, version: str) -> None:
        files.put(name="dovecot: pin the patched packages", src=as_file(build.pin_text()),
                  dest=build.PIN_PATH)  # fmt: skip
        installed = installed_versions()
        if all(installed.get(p) == version for p in build.PACKAGES):
            return
        if self.options.dovecot_pending:
            return  # a dry run: the build comes first
        local = self.options.dovecot_debs
        if not local:
            raise DeployError(f"no .debs of Dovecot {version} on this machine; run again")
        arch = local.parent.name
        folder = f"{build.RELAY_DEBS}/{build.folder_name(version)}"
        files.directory(name=f"dovecot: {folder}", path=folder)
        debs = [build.deb_name(p, version, arch) for p in build.PACKAGES]
        for name in debs:
            files.put(name=f"dovecot: upload {name}", src=str(local / name),
                      dest=f"{folder}/{name}")  # fmt: skip
        self.track(server.shell(
            name=f"dovecot: install {version}",
            commands=[
                f"cd {folder} && {APT_INSTALL} " + " ".join(f"./{d}" for d in debs),
                # Only the installed build stays on the relay.
                f"find {build.RELAY_DEBS} -mindepth 1 -maxdepth 1 ! -name "
                f"'{build.folder_name(version)}' -exec rm -rf {{}} +",
            ],
        ))  # fmt: skip

    def _install_stock(self) -> None:
        files.file(name="dovecot: no pin (stock packages)", path=build.PIN_PATH, present=False)
        installed = installed_versions()
        if any(build.is_patched(v) for v in installed.values()):
            madison = host.get_fact(Command, "apt-cache madison dovecot-core; true") or ""
            state = build.parse_state(madison)
            if not state.binary:
                raise DeployError("apt offers no stock dovecot-core to replace the patched one")
            stock = build.check_version(state.binary)
            wanted = " ".join(f"{p}={stock}" for p in installed)
            self.track(server.shell(name=f"dovecot: back to stock {stock}",
                                    commands=[f"{APT_INSTALL} {wanted}"]))  # fmt: skip
        self.track(apt.packages(name="dovecot: packages", packages=list(build.PACKAGES)))

    def configure(self) -> None:
        self.put_template("dovecot.conf.j2", "/etc/dovecot/dovecot.conf")
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
        # With no config: the relay's (TLS files, sockets) need not be in place yet, and it
        # enables no other Sieve extensions than the defaults this script uses.
        server.shell(name="dovecot: compile dedup.sieve",
                     commands=[f"sievec -c /dev/null {DEDUP_SCRIPT}"],
                     _if=lambda: script.did_change() or fresh != "fresh")  # fmt: skip

    def activate(self) -> None:
        if self.options.disable_mail:
            self.stop_and_disable("dovecot")
            return
        self.check_then_restart("dovecot", check="doveconf -n >/dev/null")
