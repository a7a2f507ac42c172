"""The lab's services on this machine: DNS (dnsmasq), the proxy (tinyproxy), the client
namespace, port forwards, the ACME CA, and the inotify limits the hosts need.

Each service is a recorded process (see lab.state); `ensure_*` starts it unless it runs,
and waits until it answers.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import acme, dns, forward, net, proxy
from .errors import LabError
from .host import LabHost
from .processes import spawn_daemon, stop_process
from .state import StateStore, running

# Dovecot needs one inotify instance per IDLE mailbox, all as user vmail (lab-facts 11, 16).
INOTIFY_MIN = {
    "fs/inotify/max_user_instances": 65536,
    "fs/inotify/max_user_watches": 1048576,
}


@dataclass(frozen=True)
class Network:
    """The lab's addresses and link names: bridge, lab DNS/proxy address, client namespace."""

    prefix: str = "10.77.0"
    bridge: str = "cmlab0"
    netns: str = "cmlab-client"
    client_links: tuple[str, str] = ("cmlab-c0", "cmlab-c1")

    @property
    def dns_ip(self) -> str:
        return f"{self.prefix}.1"

    @property
    def client_ip(self) -> str:
        return f"{self.prefix}.2"

    @property
    def subnet(self) -> str:
        return f"{self.prefix}.0/24"

    @property
    def proxy_url(self) -> str:
        return proxy.proxy_url(self.dns_ip)


def raise_inotify(state: dict) -> None:
    """Raise this machine's inotify limits to INOTIFY_MIN, recording the old values."""
    for key, minimum in INOTIFY_MIN.items():
        path = Path("/proc/sys", key)
        current = int(path.read_text())
        if current < minimum:
            state["sysctl"].setdefault(key, current)
            path.write_text(f"{minimum}\n")


def restore_inotify(state: dict) -> None:
    for key, old in state["sysctl"].items():
        with contextlib.suppress(OSError):
            Path("/proc/sys", key).write_text(f"{old}\n")
    state["sysctl"] = {}


class Services:
    """Starts the lab's services and records them in the state the caller holds locked."""

    def __init__(self, store: StateStore, network: Network):
        self.store = store
        self.network = network

    def require_up(self, state: dict) -> None:
        if "dnsmasq" not in state["procs"]:
            raise LabError("the lab is not up: run `cmdeploy lab up` first")

    def has_zone(self, domain: str) -> bool:
        return (self.store.zone_dir / f"{domain}.conf").exists()

    def write_zone(self, domain: str, zone_text: str) -> None:
        """Write the dnsmasq file of a zone; dnsmasq serves it after its next start."""
        records = dns.parse_zone(domain, zone_text)
        self.store.zone_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store.zone_dir / f"{domain.rstrip('.').lower()}.conf"
        conf.write_text("\n".join(dns.dnsmasq_lines(domain, records)) + "\n")

    def ensure_dnsmasq(self, state: dict, restart: bool) -> None:
        rec = state["procs"].get("dnsmasq")
        if running(rec) and not restart:
            return
        if rec:
            stop_process(rec)
            del state["procs"]["dnsmasq"]
        self.store.zone_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store.dir / "dnsmasq.conf"
        conf.write_text(dns.dnsmasq_conf(self.network.dns_ip, self.store.zone_dir))
        argv = ["dnsmasq", "--keep-in-foreground", f"--conf-file={conf}", "--log-facility=-"]
        self._start("dnsmasq", state, argv, lambda: _dns_answers(self.network.dns_ip))

    def ensure_tinyproxy(self, state: dict) -> None:
        if running(state["procs"].get("tinyproxy")):
            return
        log_dir = self.store.log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / "tinyproxy.log"
        log.touch()
        shutil.chown(log, "tinyproxy")
        conf = self.store.dir / "tinyproxy.conf"
        conf.write_text(proxy.tinyproxy_conf(self.network.dns_ip, self.network.subnet, str(log)))
        argv = ["tinyproxy", "-d", "-c", str(conf)]
        ready = (self.network.dns_ip, proxy.PORT)
        self._start("tinyproxy", state, argv, lambda: tcp_open(*ready), log_dir / "tinyproxy.out")

    def ensure_client_ns(self, state: dict) -> None:
        """The client namespace on the bridge, with the lab DNS as its resolver."""
        nw = self.network
        host_if, ns_if = nw.client_links
        if nw.netns not in state["netns"]:
            state["netns"].append(nw.netns)
        if host_if not in state["links"]:
            state["links"].append(host_if)
        self.store.save(state)
        net.ensure_client_netns(
            nw.netns, nw.bridge, host_if, ns_if, f"{nw.client_ip}/24", nw.dns_ip
        )

    def ensure_forwards(self, state: dict, h: LabHost) -> None:
        """socat forwards of the host's IMAP, SMTP and HTTPS ports to loopback (lab.forward)."""
        for service in forward.PORTS:
            key = f"forward-{h.name}-{service}"
            if running(state["procs"].get(key)):
                continue
            port = forward.local_port(h.index, service)
            argv = forward.socat_argv(h.index, service, h.ip)
            self._start(key, state, argv, lambda port=port: tcp_open(forward.LOOPBACK, port))

    def ensure_pebble(self, state: dict) -> acme.AcmeServer:
        """The lab's ACME CA (lab.acme); a new start has a new issuing root."""
        dns_ip = self.network.dns_ip
        workdir = self.store.dir / "acme"
        if not running(state["procs"].get("pebble")):
            acme.make_api_cert(workdir, dns_ip)
            argv = acme.pebble_argv(workdir, dns_ip)
            self._start("pebble", state, argv, lambda: tcp_open(dns_ip, acme.MANAGEMENT_PORT))
            acme.write_bundle(workdir, acme.fetch_root(workdir, dns_ip))
        root = acme.fetch_root(workdir, dns_ip)
        return acme.AcmeServer(acme.directory_url(dns_ip), workdir / "ca-bundle.pem", root_pem=root)

    def _start(
        self,
        key: str,
        state: dict,
        argv: list[str],
        ready: Callable[[], bool],
        out: Path | None = None,
        timeout: float = 10,
    ) -> None:
        """Spawn a service, record it, and wait until `ready()` says it answers."""
        log = self.store.log_dir / f"{key}.log"
        rec = state["procs"][key] = spawn_daemon(argv, out or log)
        self.store.save(state)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not running(rec):
                break
            if ready():
                return
            time.sleep(0.1)
        tail = log.read_text(errors="replace").splitlines()[-5:]
        raise LabError(f"{key} did not start on {self.network.dns_ip}: " + " | ".join(tail))


def tcp_open(ip: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((ip, port), timeout=0.5):
        return True
    return False


def _dns_answers(ip: str) -> bool:
    from dns import resolver as dnsresolver

    resolver = dnsresolver.Resolver(configure=False)
    resolver.nameservers = [ip]
    resolver.lifetime = 0.5
    try:
        resolver.resolve(dns.NS_NAME, "A")
    except Exception:
        return False
    return True
