"""chatmaild on the relay: a venv with the wheel built by ``cmdeploy run``, the config,
systemd units for each service, timers for expiry and metrics, and the ``/new`` CGI."""

from __future__ import annotations

import os
from pathlib import Path

from pyinfra.operations import apt, files, server, systemd

from cmdeploy.deployer import Deployer

BASE = "/usr/local/lib/chatmaild"
VENV = f"{BASE}/venv"
INI = f"{BASE}/chatmail.ini"

# name -> (ExecStart arguments after the console script, socket runtime dir or None)
DAEMONS = {
    "doveauth": ("doveauth /run/doveauth/doveauth.socket {ini}", "doveauth"),
    "lastlogin": ("lastlogin /run/chatmail-lastlogin/lastlogin.socket {ini}", "chatmail-lastlogin"),
    "chatmail-metadata": ("chatmail-metadata /run/chatmail-metadata/metadata.socket {ini}",
                          "chatmail-metadata"),
    "filtermail": ("filtermail {ini} outgoing", None),
    "filtermail-incoming": ("filtermail {ini} incoming", None),
}  # fmt: skip
TIMERS = {
    "chatmail-expire": ("chatmail-expire {ini} --remove", "*-*-* 00:02:00"),
    "chatmail-metrics": ("chatmail-metrics {ini} /var/www/html/metrics", "*:0/5"),
}


class ServicesDeployer(Deployer):
    name = "chatmaild"
    templates = Path(__file__).parent

    def install(self) -> None:
        apt.packages(name="chatmaild: packages", packages=["python3-venv", "fcgiwrap"])

    def configure(self) -> None:
        wheel = Path(os.environ["CHATMAIL_WHEEL"])
        files.directory(name="chatmaild: dist dir", path=f"{BASE}/dist")
        upload = self.track(files.put(name="chatmaild: wheel", src=str(wheel),
                                      dest=f"{BASE}/dist/{wheel.name}"))  # fmt: skip
        server.shell(
            name="chatmaild: venv",
            commands=[f"[ -x {VENV}/bin/python ] || python3 -m venv --copies {VENV}"],
            _if=lambda: upload.did_change(),
        )
        constraints = self.put_text(_read(os.environ["CHATMAIL_CONSTRAINTS"]),
                                    f"{BASE}/dist/constraints.txt")  # fmt: skip
        server.shell(
            name="chatmaild: install into venv",
            commands=[f"{VENV}/bin/pip install -q --disable-pip-version-check "
                      f"-c {BASE}/dist/constraints.txt --force-reinstall --no-deps "
                      f"{BASE}/dist/{wheel.name} && {VENV}/bin/pip install -q "
                      f"--disable-pip-version-check -c {BASE}/dist/constraints.txt "
                      f"{BASE}/dist/{wheel.name}"],
            _if=lambda: upload.did_change() or constraints.did_change(),
        )  # fmt: skip
        self.put_text(_read(self.config.config_path), INI)
        for name, (args, runtime_dir) in DAEMONS.items():
            self.put_template("daemon.service.j2", f"/etc/systemd/system/{name}.service",
                              description=name, exec_start=f"{VENV}/bin/" + args.format(ini=INI),
                              runtime_dir=runtime_dir)  # fmt: skip
        for name, (args, when) in TIMERS.items():
            self.put_template("oneshot.service.j2", f"/etc/systemd/system/{name}.service",
                              description=name, exec_start=f"{VENV}/bin/" + args.format(ini=INI))  # fmt: skip
            self.put_template("timer.j2", f"/etc/systemd/system/{name}.timer",
                              description=name, when=when)  # fmt: skip
        files.directory(name="chatmaild: cgi-bin", path="/usr/lib/cgi-bin")
        self.put_text(f"#!{VENV}/bin/python3\nfrom chatmaild.newemail import main\n\nmain()\n",
                      "/usr/lib/cgi-bin/newemail.py", mode="755")  # fmt: skip

    def activate(self) -> None:
        for name in DAEMONS:
            systemd.service(name=f"chatmaild: restart {name}", service=name, running=True,
                            restarted=True, enabled=True, daemon_reload=True, _if=self.changed)  # fmt: skip
            systemd.service(name=f"chatmaild: {name} running", service=name, running=True, enabled=True)  # fmt: skip
        for name in TIMERS:
            systemd.service(name=f"chatmaild: {name}.timer", service=f"{name}.timer",
                            running=True, enabled=True, daemon_reload=True)  # fmt: skip
        systemd.service(name="chatmaild: fcgiwrap", service="fcgiwrap.socket", running=True, enabled=True)  # fmt: skip


def _read(path) -> str:
    return Path(path).read_text()
