"""nginx: web page, autoconfig, MTA-STS, /new, /metrics, and the 443 ALPN multiplexer."""

from __future__ import annotations

from pathlib import Path

from pyinfra.operations import apt, files

from cmdeploy.deployer_base import Deployer, as_file
from cmdeploy.relaypaths import INI


class NginxDeployer(Deployer):
    name = "nginx"
    templates = Path(__file__).parent

    def install(self) -> None:
        apt.packages(name="nginx: packages", packages=["nginx", "libnginx-mod-stream"])

    def configure(self) -> None:
        self.put_template("nginx.conf.j2", "/etc/nginx/nginx.conf", ini_path=INI)
        files.link(
            name="nginx: no default site", path="/etc/nginx/sites-enabled/default", present=False
        )
        files.directory(
            name="nginx: autoconfig dir", path="/var/www/html/.well-known/autoconfig/mail"
        )
        files.put(name="nginx: autoconfig", src=as_file(self.render("autoconfig.xml.j2")),
                  dest="/var/www/html/.well-known/autoconfig/mail/config-v1.1.xml")  # fmt: skip
        files.put(name="nginx: mta-sts", src=as_file(self.render("mta-sts.txt.j2")),
                  dest="/var/www/html/.well-known/mta-sts.txt")  # fmt: skip
        self.put_template(
            "supervise.conf", "/etc/systemd/system/nginx.service.d/chatmail-supervise.conf"
        )

    def activate(self) -> None:
        self.check_then_restart("nginx", check="nginx -t -q")
