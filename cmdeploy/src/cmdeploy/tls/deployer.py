"""TLS certificate: self-signed (underscore domains), acmetool (Let's Encrypt) or external."""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, server, systemd

from cmdeploy.deployer import Deployer, DeployError


class TLSDeployer(Deployer):
    name = "tls"
    templates = Path(__file__).parent

    def install(self) -> None:
        if self.config.tls_cert_mode == "acme":
            apt.packages(name="tls: acmetool", packages=["acmetool"])

    def configure(self) -> None:
        mode = self.config.tls_cert_mode
        if mode == "self":
            self._self_signed()
        elif mode == "acme":
            self._acme()
        else:
            self._external()

    def _self_signed(self) -> None:
        d = self.config.mail_domain
        if host.get_fact(File, path=str(self.config.tls_cert_path)):
            return  # never replaced: clients pin what they saw
        # Delta Chat accepts a self-signed certificate for names starting with '_' when
        # its SAN names the host exactly (real-clients.md 2.2).
        server.shell(
            name="tls: self-signed certificate",
            commands=[
                "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc "
                f"-days 36500 -subj /CN={d} "
                "-addext basicConstraints=critical,CA:FALSE "
                "-addext extendedKeyUsage=serverAuth,clientAuth "
                f"-addext subjectAltName=DNS:{d},DNS:www.{d},DNS:mta-sts.{d} "
                f"-keyout {self.config.tls_key_path} -out {self.config.tls_cert_path}",
                f"chmod 640 {self.config.tls_key_path}",
            ],
        )

    def _acme(self) -> None:
        d = self.config.mail_domain
        files.directory(name="tls: acme conf dir", path="/var/lib/acme/conf")
        files.directory(name="tls: acme webroot", path="/var/run/acme/acme-challenge")
        self.put_template("acme-target.j2", "/var/lib/acme/conf/target")
        self.put_template("acme-responses.j2", "/var/lib/acme/conf/responses")
        self.put_template("acme-reload-hook", "/usr/lib/acme/hooks/chatmail-reload", mode="755")
        self.put_template("acmetool.service", "/etc/systemd/system/acmetool.service")
        self.put_template("acmetool.timer", "/etc/systemd/system/acmetool.timer")
        if not host.get_fact(File, path=str(self.config.tls_cert_path)):
            server.shell(name="tls: request certificate",
                         commands=[f"acmetool --batch want {d} www.{d} mta-sts.{d}"])  # fmt: skip

    def _external(self) -> None:
        for path in (self.config.tls_cert_path, self.config.tls_key_path):
            if not host.get_fact(File, path=str(path)):
                raise DeployError(
                    f"tls_external_cert_and_key names {path}, which does not exist on the "
                    "server: copy your certificate and key there first"
                )
        self.put_template("tls-cert-reload.path", "/etc/systemd/system/tls-cert-reload.path")
        self.put_template("tls-cert-reload.service", "/etc/systemd/system/tls-cert-reload.service")

    def activate(self) -> None:
        if self.config.tls_cert_mode == "acme":
            systemd.service(name="tls: renewal timer", service="acmetool.timer", running=True,
                            enabled=True, daemon_reload=self.changed())  # fmt: skip
        elif self.config.tls_cert_mode == "external":
            systemd.service(name="tls: reload on certificate change", service="tls-cert-reload.path",
                            running=True, enabled=True, daemon_reload=True)  # fmt: skip
