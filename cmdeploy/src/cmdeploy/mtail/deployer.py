"""mtail: Prometheus counters from the journal, only when ``mtail_address`` is set."""

from __future__ import annotations

from importlib.resources import files as package_files
from pathlib import Path

from pyinfra.operations import apt, files, systemd

from cmdeploy.deployer_base import Deployer


class MtailDeployer(Deployer):
    name = "mtail"
    templates = Path(__file__).parent

    def install(self) -> None:
        if self.config.mtail_address:
            apt.packages(name="mtail: package", packages=["mtail"])

    def configure(self) -> None:
        if not self.config.mtail_address:
            files.file(name="mtail: no unit", path="/etc/systemd/system/chatmail-mtail.service",
                       present=False)  # fmt: skip
            return
        files.directory(name="mtail: programs dir", path="/etc/mtail")
        for prog in package_files("chatmaild").iterdir():
            if prog.name.endswith(".mtail"):
                self.put_text(prog.read_text(), f"/etc/mtail/{prog.name}")
        self.put_template("chatmail-mtail.service.j2", "/etc/systemd/system/chatmail-mtail.service")

    def activate(self) -> None:
        if self.config.mtail_address:
            self.check_then_restart("chatmail-mtail")
        else:
            systemd.service(name="mtail: off", service="chatmail-mtail", running=False, enabled=False,
                            _ignore_errors=True)  # fmt: skip
