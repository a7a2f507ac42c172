"""TLS certificate: self-signed (underscore domains), ACME via acmetool, or external.

In every mode the relay can trust extra CAs (``acme_ca_file``): a private ACME server's CA,
and the roots it issues from so that other relays with such certificates verify.
"""

from __future__ import annotations

import json
import re
import ssl
import urllib.request
from pathlib import Path

from chatmaild.config import LETSENCRYPT_DIRECTORY, Config
from pyinfra import host
from pyinfra.facts.files import File
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server, systemd

from cmdeploy.deployer_base import Deployer, DeployError, as_file

LETSENCRYPT_TERMS = "https://letsencrypt.org/documents/LE-SA-v1.5-February-24-2025.pdf"
EXTRA_CA_DIR = "/usr/local/share/ca-certificates"
EXTRA_CA_PREFIX = "chatmail-trusted-"
# acmetool runs every executable in this directory (its --hooks default on Debian).
HOOKS_DIR = "/etc/acme/hooks"
PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", re.S)


def acme_names(config: Config) -> list[str]:
    """The names the certificate covers: the domain and the two web aliases."""
    d = config.mail_domain
    return [d, f"www.{d}", f"mta-sts.{d}"]


def ca_file_path(config: Config) -> Path | None:
    """``acme_ca_file`` as a path on this machine (relative to the ini's directory)."""
    if not config.acme_ca_file:
        return None
    path = Path(config.acme_ca_file).expanduser()
    if not path.is_absolute() and config.config_path:
        path = Path(config.config_path).parent / path
    return path


def trusted_pems(config: Config) -> list[str]:
    """Each certificate of ``acme_ca_file`` as its own PEM text (empty if unset)."""
    path = ca_file_path(config)
    if path is None:
        return []
    try:
        text = path.read_text()
    except OSError as e:
        raise DeployError(f"acme_ca_file: cannot read {path}: {e.strerror}") from None
    pems = [m.group(0) + "\n" for m in PEM_BLOCK.finditer(text)]
    if not pems:
        raise DeployError(f"acme_ca_file: {path} holds no PEM certificate")
    return pems


def terms_of_service(config: Config, timeout: float = 20) -> str:
    """The ACME server's terms URL, which acmetool asks to agree to when it registers.

    Let's Encrypt's is known; any other server's directory is asked (from this machine,
    trusting the system CAs and ``acme_ca_file``).
    """
    if config.acme_directory_url == LETSENCRYPT_DIRECTORY:
        return LETSENCRYPT_TERMS
    ctx = ssl.create_default_context()
    path = ca_file_path(config)
    if path:
        ctx.load_verify_locations(cafile=str(path))
    try:
        with urllib.request.urlopen(config.acme_directory_url, timeout=timeout, context=ctx) as r:
            meta = json.load(r).get("meta", {})
    except (OSError, ValueError) as e:
        raise DeployError(f"acme_directory_url {config.acme_directory_url}: {e}") from None
    return meta.get("termsOfService", "")


class TLSDeployer(Deployer):
    name = "tls"
    templates = Path(__file__).parent

    def install(self) -> None:
        apt.packages(name="tls: ca-certificates", packages=["ca-certificates"])
        if self.config.tls_cert_mode == "acme":
            apt.packages(name="tls: acmetool", packages=["acmetool"])

    def configure(self) -> None:
        self._trust()
        mode = self.config.tls_cert_mode
        if mode == "self":
            self._self_signed()
        elif mode == "acme":
            self._acme()
        else:
            self._external()

    def _trust(self) -> None:
        """The extra CAs into the system store, which acmetool, Postfix and OpenSSL read."""
        pems = trusted_pems(self.config)
        ops = []
        for i, pem in enumerate(pems):
            ops.append(files.put(name=f"tls: trusted CA {i}", src=as_file(pem),
                                 dest=f"{EXTRA_CA_DIR}/{EXTRA_CA_PREFIX}{i}.crt"))  # fmt: skip
        # Certificates dropped from the file (or the whole file unset) are trusted no more.
        keep = " ".join(f"! -name {EXTRA_CA_PREFIX}{i}.crt" for i in range(len(pems)))
        stale = host.get_fact(
            Command,
            f"find {EXTRA_CA_DIR} -maxdepth 1 -name '{EXTRA_CA_PREFIX}*.crt' {keep} 2>/dev/null; true",
        )
        if stale:
            ops.append(server.shell(name="tls: drop CAs no longer trusted",
                                    commands=[f"rm -f {' '.join(stale.split())}"]))  # fmt: skip
        if ops:
            server.shell(
                name="tls: update the system CA store",
                commands=["update-ca-certificates"],
                _if=lambda: any(op.did_change() for op in ops),
            )

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
        files.directory(name="tls: acme conf dir", path="/var/lib/acme/conf")
        files.directory(name="tls: acme webroot", path="/var/run/acme/acme-challenge")
        files.directory(name="tls: acme hooks dir", path=HOOKS_DIR)
        self.put_template("acme-target.j2", "/var/lib/acme/conf/target")
        have_cert = host.get_fact(File, path=str(self.config.tls_cert_path))
        # The terms matter only when acmetool registers an account (the first request);
        # later deploys keep the file as it is rather than ask the ACME server again.
        if not have_cert or not host.get_fact(File, path="/var/lib/acme/conf/responses"):
            self.put_template("acme-responses.j2", "/var/lib/acme/conf/responses",
                              terms_url=terms_of_service(self.config))  # fmt: skip
        self.put_template("acme-reload-hook.j2", f"{HOOKS_DIR}/chatmail-reload", mode="755")
        self.put_template("acmetool.service", "/etc/systemd/system/acmetool.service")
        self.put_template("acmetool.timer", "/etc/systemd/system/acmetool.timer")
        if not have_cert:
            # Before the first certificate nginx cannot serve HTTPS and has no challenge
            # location yet: it gives port 80 to acmetool's own HTTP-01 responder, and the
            # nginx deploy starts it again with the certificate. Renewals then go
            # through nginx's webroot location.
            names = " ".join(acme_names(self.config))
            server.shell(
                name="tls: request certificate",
                commands=[
                    "systemctl stop nginx 2>/dev/null || true",
                    f"acmetool --batch want {names}",
                ],
            )

    def _external(self) -> None:
        for path in (self.config.tls_cert_path, self.config.tls_key_path):
            if not host.get_fact(File, path=str(path)):
                raise DeployError(
                    f"tls_external_cert_and_key names {path}, which does not exist on the "
                    "server: copy your certificate and key there first"
                )
        self.put_template("tls-cert-reload.path.j2", "/etc/systemd/system/tls-cert-reload.path")
        self.put_template("tls-cert-reload.service", "/etc/systemd/system/tls-cert-reload.service")

    def activate(self) -> None:
        if self.config.tls_cert_mode == "acme":
            systemd.service(name="tls: renewal timer", service="acmetool.timer", running=True,
                            enabled=True, daemon_reload=True)  # fmt: skip
        else:
            # A relay switched away from ACME renews nothing any more.
            if host.get_fact(File, path="/etc/systemd/system/acmetool.timer"):
                systemd.service(name="tls: no renewal timer", service="acmetool.timer",
                                running=False, enabled=False)  # fmt: skip
        if self.config.tls_cert_mode == "external":
            systemd.service(name="tls: reload on certificate change", service="tls-cert-reload.path",
                            running=True, enabled=True, daemon_reload=True)  # fmt: skip
