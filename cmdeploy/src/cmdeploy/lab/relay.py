"""A complete relay in a lab host: config, ``cmdeploy run``, DNS zone, and how to connect.

This is what an operator without a server runs first (``cmdeploy lab relay``), and what
the lab tests deploy. It drives the real CLI, exactly as an operator on a server would.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from chatmaild.config import read_config, render_initial_config
from chatmaild.newemail import create_credentials

from cmdeploy.cmdline import fail

from . import forward
from .lab import Lab

DEFAULT_WORKDIR = Path("lab-relays")
# Lab relays cannot reach the public push server; a test may listen here instead
# (the client namespace's address), see chatmaild/testkit/pushserver.py.
LAB_PUSH_PORT = 8383


@dataclass
class LabRelay:
    """A deployed lab relay and the files of its operator."""

    name: str
    domain: str
    ip: str
    workdir: Path
    deploy_seconds: list[float] = field(default_factory=list)
    deploy_logs: list[str] = field(default_factory=list)

    @property
    def ini(self) -> Path:
        return self.workdir / "chatmail.ini"


def cmdeploy(
    lab: Lab, relay: LabRelay, *args: str, check: bool = True
) -> subprocess.CompletedProcess:
    """Run the cmdeploy CLI for this relay (its ini, the lab's SSH settings)."""
    argv = [sys.executable, "-m", "cmdeploy.cli", "--config", str(relay.ini),
            "--ssh-config", str(lab.ssh_config), *args]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"cmdeploy {' '.join(args)} failed:\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}"
        )
    return proc


def write_config(lab: Lab, relay: LabRelay, overrides: dict | None = None) -> None:
    relay.workdir.mkdir(parents=True, exist_ok=True)
    settings = {
        "dns_forward_zones": f"lab@{lab.dns_ip}",
        "notification_url": f"http://{lab.client_ip}:{LAB_PUSH_PORT}/notify",
        # Every lab client (tests, benches, people trying it) comes from the client
        # namespace's one IP, which creates far more accounts than a real client IP.
        "max_new_accounts_per_ip_burst": 10000,
        # The lab's mirror does not serve the newest dovecot source (lab-facts 23: the
        # security archive's deb12u7 source answers 404): build the patched Dovecot from
        # bookworm's deb12u6 source so that lab relays and CI run it.
        "dovecot_allow_outdated_source": "true",
        **(overrides or {}),
    }
    relay.ini.write_text(render_initial_config(relay.domain, settings))


def deploy(lab: Lab, relay: LabRelay, *run_args: str) -> subprocess.CompletedProcess:
    """``cmdeploy run`` into the relay's host; keeps duration and output."""
    started = time.monotonic()
    proc = cmdeploy(lab, relay, "run", *run_args)
    relay.deploy_seconds.append(time.monotonic() - started)
    relay.deploy_logs.append(proc.stdout + proc.stderr)
    return proc


def publish_zone(lab: Lab, relay: LabRelay, ssh_host: str | None = None) -> str:
    """Generate the relay's zone with ``cmdeploy dns --zonefile`` and serve it in the lab."""
    zonefile = relay.workdir / "zone.txt"
    extra = ["--ssh-host", ssh_host] if ssh_host else []
    cmdeploy(lab, relay, "dns", "--dns-server", lab.dns_ip, "--zonefile", str(zonefile), *extra)
    text = zonefile.read_text()
    lab.load_zone(relay.domain, text)
    return text


def copy_paths(lab: Lab, src: str, dst: str, paths: str) -> None:
    """The migration step of the operator docs: ``ssh SRC tar c PATHS | ssh DST tar x -C /``."""
    pipe = (f"{' '.join(lab.ssh_argv(src))} tar c {paths} | "
            f"{' '.join(lab.ssh_argv(dst))} tar x -C /")  # fmt: skip
    subprocess.run(["sh", "-c", pipe], check=True, capture_output=True)


def repoint_zone(lab: Lab, relay: LabRelay, ip: str) -> None:
    """Serve the relay's published zone with every A record naming ``ip`` (a moved relay)."""
    lines = []
    for line in (relay.workdir / "zone.txt").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[-2] == "A" and not line.startswith(";"):
            line = line[: line.rindex(fields[-1])] + ip
        lines.append(line)
    lab.load_zone(relay.domain, "\n".join(lines) + "\n")


def deployed_relay(lab: Lab, name: str, workdir: Path) -> LabRelay:
    """The lab relay on host ``name`` whose operator files are in ``workdir`` (no deploy)."""
    h = lab.host(name)
    return LabRelay(name=h.name, domain=h.domain, ip=h.ip, workdir=workdir / h.name)


def prepare_relay(lab: Lab, name: str, workdir: Path, overrides: dict | None = None) -> LabRelay:
    """Bring up the lab host ``name`` and write its config; nothing is deployed yet."""
    index = int(name.removeprefix("relay"))
    lab.up(hosts=max(index, len(lab.hosts())))
    relay = deployed_relay(lab, name, workdir)
    if not relay.ini.exists() or overrides:
        write_config(lab, relay, overrides)
    read_config(relay.ini)  # a broken ini fails here with its own message
    return relay


def lab_relay(lab: Lab, name: str, workdir: Path, overrides: dict | None = None) -> LabRelay:
    """Bring up the lab host ``name``, write its config, deploy it and publish its zone."""
    relay = prepare_relay(lab, name, workdir, overrides)
    deploy(lab, relay)
    publish_zone(lab, relay)
    return relay


def acme_lab_relay(lab: Lab, name: str, workdir: Path, overrides: dict | None = None) -> LabRelay:
    """Like lab_relay, with an ordinary name (``relayN.lab``) and an ACME certificate.

    The lab's ACME CA (pebble, lab.acme) issues it through the deploy code a real server
    runs: only ``acme_directory_url`` and ``acme_ca_file`` name the lab.
    """
    index = int(name.removeprefix("relay"))
    lab.up(hosts=max(index, len(lab.hosts())))
    server = lab.acme_server()
    h = lab.host(name)
    domain = h.domain.lstrip("_")
    relay = LabRelay(name=h.name, domain=domain, ip=h.ip, workdir=workdir / h.name)
    settings = {
        "acme_directory_url": server.directory_url,
        "acme_ca_file": str(server.ca_file),
        # An ordinary domain must name who runs it (only '_' test domains may leave it out).
        "privacy_mail": f"privacy@{domain}",
        "privacy_postal": "Lab Relay Operator, 1 Test Street, Testtown",
    }
    write_config(lab, relay, {**settings, **(overrides or {})})
    # HTTP-01 needs every name of the certificate to resolve before the first deploy.
    names = [domain, f"www.{domain}", f"mta-sts.{domain}"]
    zone = "".join(f"{n}. 3600 IN A {h.ip}\n" for n in names)
    lab.load_zone(domain, zone + f"{domain}. 3600 IN MX 10 {domain}.\n")
    # The lab's SSH config knows the host by its short name, not by this domain.
    deploy(lab, relay, "--ssh-host", h.name)
    publish_zone(lab, relay, ssh_host=h.name)
    return relay


def how_to_connect(lab: Lab, relay: LabRelay) -> str:
    ns = f"ip netns exec {lab.netns}"
    # An ACME relay's domain is not a name in the lab's SSH config.
    via = "" if relay.domain.startswith("_") else f" --ssh-host {relay.name}"
    return f"""\
The relay {relay.domain} runs in the lab host {relay.name} ({relay.ip}).
Its config: {relay.ini}

Lab names resolve only inside the lab's client network namespace. From there:
  {ns} openssl s_client -connect {relay.domain}:993 -quiet      # IMAP over TLS
  {ns} curl -sk https://{relay.domain}/                         # the web page

A Delta Chat client (deltachat-rpc-server) run in that namespace joins with
  dcaccount:{relay.domain}
(an underscore domain: the client accepts the relay's self-signed certificate), or with
  dcaccount:https://{relay.domain}/new

{_app_section(lab, relay)}
Manage it like a real server:
  cmdeploy --config {relay.ini} --ssh-config {lab.ssh_config} status{via}
  cmdeploy --config {relay.ini} --ssh-config {lab.ssh_config} run{via}
  cmdeploy lab ssh {relay.name}
Tear the lab down (hosts, DNS, proxy, namespace):
  cmdeploy lab down
"""


def _app_section(lab: Lab, relay: LabRelay) -> str:
    """How the Delta Chat app on this machine joins, if the loopback forwards run."""
    index = lab.host(relay.name).index
    if not _tcp_open_local(forward.local_port(index, "imap")):
        return ""
    creds = create_credentials(read_config(relay.ini))
    url = forward.dclogin_url(creds["email"], creds["password"], index)
    ports = ", ".join(
        f"{forward.LOOPBACK}:{forward.local_port(index, s)} -> {p}"
        for s, p in forward.PORTS.items()
    )
    return f"""
The Delta Chat app on THIS machine can use the relay through loopback forwards
({ports}; only this machine can reach them). Add a profile with this link or QR code
(a new account, created by its first login; it accepts the self-signed certificate):
  {url}
{_qr_text(url)}"""


def _tcp_open_local(port: int) -> bool:
    import socket

    try:
        socket.create_connection((forward.LOOPBACK, port), timeout=1).close()
    except OSError:
        return False
    return True


def _qr_text(text: str) -> str:
    import io

    import qrcode

    qr = qrcode.QRCode(border=1)
    qr.add_data(text)
    out = io.StringIO()
    qr.print_ascii(out=out, invert=True)
    return out.getvalue()


def relay_cmd(args) -> int:
    lab = Lab()
    overrides = dict(item.split("=", 1) for item in args.set)
    try:
        make = acme_lab_relay if args.acme else lab_relay
        relay = make(lab, args.name, args.workdir.resolve(), overrides or None)
        if not args.no_forward:
            lab.forward(relay.name)
    except Exception as e:  # the operator sees one clear line, not a traceback
        return fail(f"could not set up the lab relay: {e}")
    print(f"deployed {relay.domain} in {relay.deploy_seconds[-1]:.0f}s\n")
    print(how_to_connect(lab, relay))
    return 0


def register(lab_subparsers) -> None:
    p = lab_subparsers.add_parser(
        "relay", help="deploy a complete relay into a lab host and print how to reach it"
    )
    p.add_argument("name", nargs="?", default="relay1", help="lab host (default relay1)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                   help="where the relay's chatmail.ini and zone are kept (default ./lab-relays)")  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a chatmail.ini setting for this relay (repeatable)")  # fmt: skip
    p.add_argument("--acme", action="store_true",
                   help="ordinary domain relayN.lab with a certificate from the lab's ACME CA")  # fmt: skip
    p.add_argument("--no-forward", action="store_true",
                   help="no loopback forwards for a Delta Chat app on this machine")  # fmt: skip
    p.set_defaults(func=relay_cmd)
