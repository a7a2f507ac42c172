"""The lab's ACME CA: Debian's pebble on the lab bridge, standing in for Let's Encrypt.

Pebble validates HTTP-01 for real: it resolves names through the lab DNS and fetches the
challenge from port 80 of the relay. Its API is served with a certificate of a lab-made CA
(pebble's bundled one names only localhost). Pebble draws a new issuing root at every start,
so the CA bundle a relay trusts is written after each start: the API CA and that root.
"""

from __future__ import annotations

import json
import shutil
import ssl
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import LabError
from .processes import run

API_PORT = 14000
MANAGEMENT_PORT = 15000
# Pebble's own default is 5 years; a week makes expiry shown by `cmdeploy status` tell
# a lab certificate at once (and acmetool renews it, like a 90-day one, on its own schedule).
VALIDITY_SECONDS = 7 * 86400
# No random sleeps before validation, no rejected nonces, a fresh authorization every time:
# each issuance in the lab does the whole HTTP-01 exchange, quickly.
ENV = {
    "PEBBLE_VA_NOSLEEP": "1",
    "PEBBLE_WFE_NONCEREJECT": "0",
    "PEBBLE_AUTHZREUSE": "0",
}


@dataclass(frozen=True)
class AcmeServer:
    """What a relay's chatmail.ini needs to use the lab CA."""

    directory_url: str
    ca_file: Path  # the API CA and pebble's issuing root, PEM
    root_pem: str  # pebble's issuing root alone


def directory_url(ip: str) -> str:
    return f"https://{ip}:{API_PORT}/dir"


def make_api_cert(workdir: Path, ip: str) -> None:
    """A CA and, signed by it, the API server's certificate for the bridge address."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = workdir / "api-ca.key", workdir / "api-ca.pem"
    key, csr, crt = workdir / "api.key", workdir / "api.csr", workdir / "api.pem"
    if crt.exists() and ca_crt.exists():
        return
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-noenc"]
    run(["openssl", "req", "-x509", *curve, "-days", "30", "-subj", "/CN=chatmail lab ACME API CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-keyout", str(ca_key), "-out", str(ca_crt)])  # fmt: skip
    run(["openssl", "req", *curve, "-subj", "/CN=acme.lab", "-keyout", str(key), "-out", str(csr)])
    ext = workdir / "api.ext"
    ext.write_text(f"subjectAltName=IP:{ip},DNS:acme.lab\nextendedKeyUsage=serverAuth\n")
    run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "30", "-extfile", str(ext), "-out", str(crt)])  # fmt: skip


def pebble_config(workdir: Path, ip: str) -> Path:
    conf = workdir / "pebble.json"
    conf.write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"{ip}:{API_PORT}",
                    "managementListenAddress": f"{ip}:{MANAGEMENT_PORT}",
                    "certificate": str(workdir / "api.pem"),
                    "privateKey": str(workdir / "api.key"),
                    "httpPort": 80,
                    "tlsPort": 443,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                    "certificateValidityPeriod": VALIDITY_SECONDS,
                }
            },
            indent=2,
        )
    )
    return conf


def pebble_argv(workdir: Path, ip: str) -> list[str]:
    """Pebble with a clean environment: no proxy of this machine between it and the relays."""
    pebble = shutil.which("pebble") or "pebble"
    env = [f"{k}={v}" for k, v in ENV.items()]
    conf = pebble_config(workdir, ip)
    return ["env", "-i", "PATH=/usr/bin:/bin", *env,
            pebble, "-config", str(conf), "-dnsserver", f"{ip}:53"]  # fmt: skip


def fetch_root(workdir: Path, ip: str, timeout: float = 10) -> str:
    """Pebble's issuing root (management API), trusted through the API CA."""
    ctx = ssl.create_default_context(cafile=str(workdir / "api-ca.pem"))
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            with opener.open(f"https://{ip}:{MANAGEMENT_PORT}/roots/0", timeout=5) as r:
                return r.read().decode()
        except OSError as e:
            if time.monotonic() > deadline:
                raise LabError(f"pebble's management API on {ip}:{MANAGEMENT_PORT}: {e}") from e
            time.sleep(0.2)


def write_bundle(workdir: Path, root_pem: str) -> Path:
    bundle = workdir / "ca-bundle.pem"
    api_ca = (workdir / "api-ca.pem").read_text()
    bundle.write_text(api_ca.rstrip("\n") + "\n" + root_pem.rstrip("\n") + "\n")
    return bundle
