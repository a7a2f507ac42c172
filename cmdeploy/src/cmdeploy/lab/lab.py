"""The local lab: Debian 12 hosts on a private bridge, with lab DNS, proxy and a client netns.

Everything the lab starts or creates is written to a state file first-hand (PIDs with their
start times, link and namespace names, each host's mount), and `down` removes exactly those.
`Lab` is the entry point and runs the hosts; the other jobs have a module each:

- lab.state: the state file and its lock
- lab.services: dnsmasq, tinyproxy, the client namespace, forwards, pebble, inotify limits
- lab.teardown: `down` and the `leftovers` check
- lab.host: one host's root, boot and power cut
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import acme, dns, forward, host, net
from .base import ensure_base
from .errors import LabError
from .packages import install_missing
from .processes import proc_start_time, run
from .progress import Progress
from .services import Network, Services, raise_inotify
from .state import CACHE_DIR, STATE_DIR, StateStore, by_index, running
from .teardown import Teardown

__all__ = ["CACHE_DIR", "STATE_DIR", "Lab", "check_prerequisites"]


class Lab:
    """The lab on this machine; all methods need root."""

    def __init__(
        self,
        state_dir: Path = STATE_DIR,
        cache_dir: Path = CACHE_DIR,
        prefix: str = "10.77.0",
    ):
        self.store = StateStore(state_dir)
        self.network = nw = Network(prefix)
        self.services = Services(self.store, nw)
        self.teardown = Teardown(self.store, nw)
        self.state_dir = self.store.dir
        self.log_dir = self.store.log_dir
        self.cache_dir = Path(cache_dir)
        self.prefix, self.bridge, self.netns = prefix, nw.bridge, nw.netns
        self.dns_ip, self.client_ip, self.proxy_url = nw.dns_ip, nw.client_ip, nw.proxy_url
        self.ssh_key = self.state_dir / "id_ed25519"
        self.known_hosts = self.state_dir / "known_hosts"
        self.ssh_config = self.state_dir / "ssh_config"
        self.last_up: dict = {}

    # -- public API ----------------------------------------------------------

    def hosts(self) -> list[host.LabHost]:
        """The hosts recorded as part of the lab, in index order."""
        state = self.store.load()
        return [self._host(h["index"]) for h in sorted(state["hosts"].values(), key=by_index)]

    def host(self, name: str) -> host.LabHost:
        """A lab host by short name (`relay1`), domain (`_relay1.lab`) or machine name."""
        for h in self.hosts():
            if name in (h.name, h.domain, h.machine, h.ip):
                return h
        raise LabError(f"no lab host {name!r}; `cmdeploy lab status` lists them")

    def up(self, hosts: int = 2) -> dict:
        """Bring the lab up with at least `hosts` booted hosts; running parts are kept."""
        if hosts < 1 or hosts > 200:
            raise LabError(f"--hosts must be between 1 and 200, not {hosts}")
        check_prerequisites(self.state_dir)
        t0 = time.monotonic()
        store, services = self.store, self.services
        with store.locked():
            state = store.load()
            raise_inotify(state)
            store.save(state)
            base, built = ensure_base(self.cache_dir)
            self._ensure_key()
            if net.ensure_bridge(self.bridge, f"{self.dns_ip}/24"):
                state["links"].append(self.bridge)
            store.save(state)
            wanted = [self._host(i) for i in range(1, hosts + 1)]
            new_zones = False
            for h in wanted:
                if not services.has_zone(h.domain):
                    services.write_zone(h.domain, dns.host_zone(h.domain, h.ip))
                    new_zones = True
            # dnsmasq reads its zone files at start: a host added to a running lab needs it.
            services.ensure_dnsmasq(state, restart=new_zones)
            services.ensure_tinyproxy(state)
            services.ensure_client_ns(state)
            started = self._start_hosts(state, wanted, base)
            boot = self._wait_hosts(state, started)
        self.last_up = {
            "seconds": time.monotonic() - t0,
            "base_built": built,
            "started": [h.name for h in started],
            "boot": boot,
        }
        return self.last_up

    def down(self) -> None:
        """Stop and remove everything the lab recorded (see lab.teardown)."""
        self.teardown.down()

    def forward(self, name: str) -> dict[str, int]:
        """Forward the host's IMAP, SMTP and HTTPS ports to 127.0.0.1 (see lab.forward).

        Idempotent; the forwards are lab processes, so `down` stops them. Returns the
        loopback port of each service.
        """
        h = self.host(name)
        with self.store.locked():
            self.services.ensure_forwards(self.store.load(), h)
        return {service: forward.local_port(h.index, service) for service in forward.PORTS}

    def acme_server(self) -> acme.AcmeServer:
        """Start the lab's ACME CA (pebble, see lab.acme) if it does not run; idempotent.

        `down` stops it and removes its files; a new start has a new issuing root.
        """
        with self.store.locked():
            state = self.store.load()
            self.services.require_up(state)
            return self.services.ensure_pebble(state)

    def reboot(self, name: str, hard: bool = False) -> dict:
        """Reboot a host on its own root: `systemctl reboot` inside, or a power cut if `hard`.

        Returns the seconds until the host was down and until it had booted again, and the
        boot state (`running` or `degraded ...`).
        """
        h = self.host(name)
        t0 = time.monotonic()
        with self.store.locked():
            state = self.store.load()
            rec = state["hosts"][h.name]
            link = host.bridge_link(rec["init"]["pid"]) if rec.get("init") else None
            if hard:
                host.power_cut(h.machine)
            else:
                # nspawn ends when its container reboots (it restarts only under a unit
                # with RestartForceExitStatus=133, which the lab has not): boot it again here.
                self.ssh_run(h.name, "systemctl reboot", check=False, timeout=30)
                if not host.wait_exited(rec["nspawn"], timeout=90):
                    raise LabError(f"{h.name} did not shut down within 90 s of `systemctl reboot`")
                host.power_cut(h.machine)  # nothing should be left; make sure
            down = time.monotonic() - t0
            # The veth goes with the container's network namespace; the kernel may lag.
            if link:
                net.delete_link(link)
            rec.pop("init", None)
            rec["links"] = []
            log = self.log_dir / f"{h.name}.console.log"
            rec["nspawn"] = host.start(h, Path(rec["root"]), self.bridge, log)
            self.store.save(state)
            boot = self._wait_hosts(state, [h])[h.name]
        return {"down_seconds": down, "seconds": time.monotonic() - t0, "boot": boot}

    def status(self, probe: bool = True) -> dict:
        """What runs: services, hosts with their PIDs and (if probed) systemd state."""
        state = self.store.load()
        out: dict = {"up": bool(state["hosts"] or state["procs"]), "hosts": [], "services": {}}
        for key, rec in state["procs"].items():
            out["services"][key] = {"pid": rec["pid"], "alive": running(rec)}
        for rec in sorted(state["hosts"].values(), key=by_index):
            h = self._host(rec["index"])
            alive = running(rec["nspawn"])
            entry = {
                "name": h.name,
                "domain": h.domain,
                "ip": h.ip,
                "pid": rec["nspawn"]["pid"],
                "alive": alive,
            }
            if probe and alive:
                proc = self.ssh_run(h.name, "systemctl is-system-running", check=False, timeout=10)
                entry["systemd"] = proc.stdout.strip() or "unreachable"
            out["hosts"].append(entry)
        return out

    def ssh_argv(self, name: str | host.LabHost) -> list[str]:
        """The ssh command line (without a remote command) for root on a lab host."""
        h = self.host(name) if not isinstance(name, host.LabHost) else name
        return ["ssh", "-F", str(self.ssh_config), h.name]

    def ssh_run(
        self, name: str, command: str, check: bool = True, timeout: float = 600, **kw
    ) -> subprocess.CompletedProcess:
        """Run a shell command as root on a lab host and capture its output."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        proc = subprocess.run([*self.ssh_argv(name), command], timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise LabError(
                f"on {name}: {command!r} failed (exit {proc.returncode}): "
                f"{(proc.stderr or '').strip()}"
            )
        return proc

    def load_zone(self, domain: str, zone_text: str) -> None:
        """Serve `zone_text` (BIND lines as `cmdeploy dns --zonefile` writes) for `domain`.

        Replaces every record of that zone; SOA and NS always name the lab DNS.
        """
        dns.parse_zone(domain, zone_text)
        with self.store.locked():
            state = self.store.load()
            self.services.require_up(state)
            self.services.write_zone(domain, zone_text)
            # dnsmasq rereads only hosts files on SIGHUP, so records need a restart.
            self.services.ensure_dnsmasq(state, restart=True)

    def client_ns_cmd(self, argv: Sequence[str]) -> list[str]:
        """`argv` prefixed so it runs in the client namespace (lab DNS as resolver)."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def client_ns_run(self, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        """Run a command in the client namespace; keyword arguments go to subprocess.run."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.client_ns_cmd(argv), **kw)

    def client_ns_python(self, code: str, **kw) -> subprocess.CompletedProcess:
        """Run Python code (this interpreter, same venv) in the client namespace."""
        return self.client_ns_run([sys.executable, "-c", code], **kw)

    def client_ns_wrapper(self, program: str, path: Path) -> Path:
        """Write an executable that runs `program` in the client namespace.

        For tools that spawn a binary themselves, e.g. deltachat-rpc-client's
        `Rpc(rpc_server_path=...)`.
        """
        real = shutil.which(program) or program
        path.write_text(f'#!/bin/sh\nexec ip netns exec {self.netns} "{real}" "$@"\n')
        path.chmod(0o755)
        return path

    def records(self) -> dict:
        """A copy of what the lab recorded (PIDs, links, namespaces, mounts), for leftovers()."""
        return self.store.load()

    def leftovers(self, records: dict | None = None) -> list[str]:
        """Anything of the lab still present (see lab.teardown); empty after a clean `down`."""
        return self.teardown.leftovers(records)

    # -- hosts ---------------------------------------------------------------

    def _host(self, index: int) -> host.LabHost:
        return host.make_host(index, self.prefix)

    def _ensure_key(self) -> None:
        if not self.ssh_key.exists():
            argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cmlab"]
            run([*argv, "-f", str(self.ssh_key)])

    def _start_hosts(self, state: dict, wanted: list[host.LabHost], base: Path) -> list:
        settings = host.RootSettings(
            dns_ip=self.dns_ip,
            proxy_url=self.proxy_url,
            subnet=self.network.subnet,
            authorized_keys=self.ssh_key.with_suffix(".pub").read_text(),
        )
        started = []
        for h in wanted:
            rec = state["hosts"].get(h.name)
            if rec and running(rec["nspawn"]):
                continue
            root, mounted = host.mount_root(base, self.store.hosts_dir / h.name)
            rec = {"index": h.index, "root": str(root), "mount": str(root) if mounted else None}
            state["hosts"][h.name] = {**rec, "nspawn": {"pid": 0, "start": None, "argv": []}}
            self.store.save(state)
            host.configure_root(root, h, settings)
            log = self.log_dir / f"{h.name}.console.log"
            log.unlink(missing_ok=True)
            state["hosts"][h.name]["nspawn"] = host.start(h, root, self.bridge, log)
            self.store.save(state)
            started.append(h)
        self._write_ssh_files(state)
        return started

    def _wait_hosts(self, state: dict, started: list[host.LabHost]) -> dict:
        result = {}
        if not started:
            return result
        names = ", ".join(h.name for h in started)
        with Progress(f"booting {names} (systemd in each host)") as bar:
            for h in started:
                rec = state["hosts"][h.name]
                bar.update(f"waiting for {h.name} ({h.ip})")
                log = self.log_dir / f"{h.name}.console.log"
                result[h.name] = host.wait_booted(h, rec["nspawn"], self.ssh_argv(h.name), log)
                if result[h.name] == "degraded":
                    failed = self.ssh_run(
                        h.name, "systemctl --failed --no-legend --plain", check=False
                    )
                    units = " ".join(line.split()[0] for line in failed.stdout.splitlines() if line)
                    result[h.name] = f"degraded (failed units: {units or 'none listed'})"
                init = host.init_pid(rec["nspawn"]["pid"])
                if init:
                    rec["init"] = {"pid": init, "start": proc_start_time(init), "argv": ["init"]}
                # The bridge port nspawn made for this host, so down can make sure it is gone.
                # Asked of the host's own end: hosts started together all have ports already.
                own = host.bridge_link(init) if init else None
                known = {link for r in state["hosts"].values() for link in r.get("links", [])}
                ports = net.bridge_ports(self.bridge)
                rec["links"] = (
                    [own] if own else [p for p in ports if p.startswith("vb-") and p not in known]
                )
                self.store.save(state)
        return result

    def _write_ssh_files(self, state: dict) -> None:
        known, config = [], []
        for rec in sorted(state["hosts"].values(), key=by_index):
            h = self._host(rec["index"])
            names = f"{h.domain},{h.name},{h.machine},{h.ip}"
            known += [f"{names} {key}" for key in host.host_public_keys(Path(rec["root"]))]
            config.append(f"Host {h.name} {h.domain} {h.machine}\n    HostName {h.ip}\n")
        config.append(
            "Host *\n    User root\n"
            f"    IdentityFile {self.ssh_key}\n    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {self.known_hosts}\n    StrictHostKeyChecking yes\n"
            "    ConnectTimeout 5\n    LogLevel ERROR\n"
        )
        self.known_hosts.write_text("".join(line + "\n" for line in known))
        self.ssh_config.write_text("\n".join(config))


def check_prerequisites(state_dir: Path) -> None:
    """Raise LabError naming what is missing for the lab on this machine."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (bridges, namespaces, containers): run it with sudo")
    install_missing()
    for ns in ("pid", "net", "mnt", "uts", "ipc"):
        if not Path(f"/proc/self/ns/{ns}").exists():
            raise LabError(
                f"this kernel has no {ns} namespaces, which systemd-nspawn needs; "
                "run the lab on a full Debian 12 VM or machine"
            )
    if not any(Path("/sys/fs/cgroup").iterdir()):
        raise LabError("no cgroup filesystem under /sys/fs/cgroup, which systemd-nspawn needs")
    state_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(state_dir).free
    if free < 2 * 2**30:
        raise LabError(
            f"only {free // 2**20} MiB free in {state_dir}; the lab needs at least 2 GiB there"
        )
