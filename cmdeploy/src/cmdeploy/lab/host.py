"""One lab host: a writable copy of the cached base, booted by systemd-nspawn."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .errors import LabError
from .processes import is_alive, reap, run, spawn_daemon

HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
CGROUP_FS = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class LabHost:
    """Names and address of a lab host; `name` is short, `domain` is what clients use."""

    index: int
    name: str
    domain: str
    ip: str
    machine: str


@dataclass(frozen=True)
class RootSettings:
    """What every host's root gets from the lab: its resolver, proxy, subnet and SSH key."""

    dns_ip: str
    proxy_url: str
    # Reached directly, not through the proxy.
    subnet: str
    authorized_keys: str


def make_host(index: int, prefix: str) -> LabHost:
    name = f"relay{index}"
    # The leading underscore makes Delta Chat accept the self-signed certificate (real-clients §2.2).
    return LabHost(index, name, f"_{name}.lab", f"{prefix}.{10 + index}", f"cmlab-{name}")


def mount_root(base: Path, host_dir: Path) -> tuple[Path, bool]:
    """A writable root for the host: an overlay on the base, or a full copy without overlayfs.

    Returns the root and whether it is a mount that must be unmounted later.
    """
    root, upper, work = host_dir / "root", host_dir / "upper", host_dir / "work"
    if is_mountpoint(root):
        return root, True
    if (root / ".cmlab-complete").exists() and not upper.exists():
        return root, False
    for d in (root, upper, work):
        d.mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={base},upperdir={upper},workdir={work}"
    overlay = run(["mount", "-t", "overlay", "overlay", "-o", opts, str(root)], check=False)
    if overlay.returncode == 0:
        return root, True
    # Some kernels or filesystems refuse overlayfs; a copy costs disk and seconds but works.
    shutil.rmtree(upper)
    shutil.rmtree(work)
    run(["cp", "-a", "--reflink=auto", f"{base}/.", str(root)])
    return root, False


def is_mountpoint(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def configure_root(root: Path, host: LabHost, settings: RootSettings) -> None:
    """Per-host files: identity, address, resolver, proxy, CA certificates, SSH access."""
    etc = root / "etc"
    (etc / "hostname").write_text(f"{host.name}\n")
    (etc / "hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{host.name}\n::1\tlocalhost ip6-localhost\n"
    )
    if not (etc / "machine-id").read_text().strip():
        (etc / "machine-id").write_text(uuid.uuid4().hex + "\n")
    (etc / "systemd/network/10-cmlab.network").write_text(
        "[Match]\nName=host0\n\n[Network]\n"
        f"Address={host.ip}/24\nDNS={settings.dns_ip}\n"
        # No gateway: the proxy is the only way out, anything else fails fast.
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    )
    resolv = etc / "resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text(f"nameserver {settings.dns_ip}\noptions timeout:2 attempts:2\n")
    proxy = settings.proxy_url
    (etc / "apt/apt.conf.d/80cmlab-proxy").write_text(
        f'Acquire::http::Proxy "{proxy}";\nAcquire::https::Proxy "{proxy}";\n'
    )
    (etc / "pip.conf").write_text(
        f"[global]\nproxy = {proxy}\ncert = /etc/ssl/certs/ca-certificates.crt\n"
    )
    no_proxy = f"localhost,127.0.0.1,::1,.lab,{settings.subnet}"
    (etc / "environment").write_text(
        "".join(
            f"{k}={v}\n"
            for k, v in [
                ("http_proxy", proxy),
                ("https_proxy", proxy),
                ("HTTP_PROXY", proxy),
                ("HTTPS_PROXY", proxy),
                ("no_proxy", no_proxy),
                ("NO_PROXY", no_proxy),
            ]
        )
    )
    # HTTPS through the proxy is re-signed by this machine's egress CA (lab-facts 9).
    ca_dir = root / "usr/local/share/ca-certificates"
    ca_dir.mkdir(parents=True, exist_ok=True)
    for crt in HOST_CA_DIR.glob("*.crt"):
        shutil.copy(crt, ca_dir / crt.name)
    run(["chroot", str(root), "update-ca-certificates"])
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(settings.authorized_keys)
    (ssh_dir / "authorized_keys").chmod(0o600)
    if not list((etc / "ssh").glob("ssh_host_*_key")):
        run(["ssh-keygen", "-A", "-f", str(root)])


def host_public_keys(root: Path) -> list[str]:
    """`type base64` of each SSH host key, for the lab's known_hosts file."""
    return [
        " ".join(p.read_text().split()[:2]) for p in sorted((root / "etc/ssh").glob("*_key.pub"))
    ]


def start(host: LabHost, root: Path, bridge: str, log: Path) -> dict:
    """Boot the host with systemd as PID 1 on the lab bridge; return the nspawn PID record."""
    argv = [
        "systemd-nspawn",
        "--directory",
        str(root),
        "--machine",
        host.machine,
        "--boot",
        # There is no systemd on this machine to register with or get a scope from (lab-facts 2).
        "--register=no",
        "--keep-unit",
        f"--network-bridge={bridge}",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
        "--console=read-only",
    ]
    cgroups = cgroup_dirs(host.machine)
    for d in cgroups:
        d.mkdir(parents=True, exist_ok=True)

    def enter_cgroups() -> None:
        for d in cgroups:
            (d / "cgroup.procs").write_text(str(os.getpid()))

    return spawn_daemon(argv, log, preexec=enter_cgroups)


def cgroup_dirs(machine: str) -> list[Path]:
    """The host's own cgroups, one per hierarchy that systemd inside the host manages.

    With --keep-unit nspawn puts the container's systemd below the cgroup it was started
    in; without a cgroup of their own, all hosts would share one tree and their systemds
    would track and kill each other's units.
    """
    if (CGROUP_FS / "cgroup.controllers").exists():
        roots = [CGROUP_FS]
    else:
        roots = [
            CGROUP_FS / h
            for h in ("systemd", "unified")
            if (CGROUP_FS / h / "cgroup.procs").exists()
        ]
    return [root / "cmlab" / machine for root in roots]


def remove_cgroups(machine: str, timeout: float = 5.0) -> None:
    """Remove the host's cgroups (they only go once their last process has exited)."""
    deadline = time.monotonic() + timeout
    for top in cgroup_dirs(machine):
        if not top.exists():
            continue
        while True:
            try:
                for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
                    os.rmdir(dirpath)
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    raise LabError(f"cannot remove cgroup {e.filename}: {e.strerror}") from e
                time.sleep(0.2)
        with contextlib.suppress(OSError):
            top.parent.rmdir()


def init_pid(nspawn_pid: int) -> int | None:
    """PID (on this machine) of the container's systemd, the child of systemd-nspawn."""
    try:
        children = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def wait_booted(
    host: LabHost, nspawn: dict, ssh_argv: list[str], log: Path, timeout: float = 240
) -> str:
    """Wait until systemd in the host finished booting; return `running` or `degraded`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(nspawn["pid"], nspawn["start"]):
            raise LabError(
                f"{host.name} stopped while booting; its console log {log} ends with:\n"
                + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            )
        try:
            proc = subprocess.run(
                [*ssh_argv, "systemctl", "is-system-running", "--wait"],
                capture_output=True,
                text=True,
                timeout=max(5, deadline - time.monotonic()),
            )
        except subprocess.TimeoutExpired:
            break
        state = proc.stdout.strip()
        if state in ("running", "degraded"):
            return state
        time.sleep(1)
    raise LabError(f"{host.name} did not finish booting in {timeout:.0f} s; see {log}")


def cgroup_pids(machine: str) -> set[int]:
    """Every process in the host's cgroups: its systemd-nspawn and all of the container."""
    pids: set[int] = set()
    for top in cgroup_dirs(machine):
        for dirpath, _, _ in os.walk(top):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in Path(dirpath, "cgroup.procs").read_text().split())
    return pids


def power_cut(machine: str, timeout: float = 15.0) -> None:
    """SIGKILL every process of the host at once, as a power cut would stop them.

    Nothing inside gets to shut down or flush its own buffers; the page cache of this
    machine's kernel keeps what was already written, as a disk's contents would.
    """
    # cgroup.kill (cgroup v2, Linux 5.14) kills the whole tree in one step, so no process
    # sees another die first; the loop below covers older kernels and stragglers.
    for top in cgroup_dirs(machine):
        with contextlib.suppress(OSError):
            (top / "cgroup.kill").write_text("1")
    deadline = time.monotonic() + timeout
    while True:
        live = [pid for pid in cgroup_pids(machine) if is_alive(pid)]
        for pid in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in live:
            reap(pid)  # our own systemd-nspawn child would otherwise stay a zombie
        if not live:
            return
        if time.monotonic() > deadline:
            raise LabError(f"{machine}: processes {sorted(live)} survived SIGKILL")
        time.sleep(0.1)


def wait_exited(record: dict, timeout: float) -> bool:
    """Wait for a recorded process to end by itself; return whether it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reap(record["pid"])
        if not is_alive(record["pid"], record["start"]):
            return True
        time.sleep(0.2)
    return False


def bridge_link(init: int) -> str | None:
    """This machine's end of the veth pair whose other end is the host's `host0`."""
    inside = run(
        ["nsenter", "-t", str(init), "-n", "ip", "-j", "link", "show", "host0"], check=False
    )
    links = json.loads(inside.stdout or "[]")
    if inside.returncode != 0 or not links or "link_index" not in links[0]:
        return None
    here = json.loads(run(["ip", "-j", "link", "show"]).stdout or "[]")
    return next((x["ifname"] for x in here if x["ifindex"] == links[0]["link_index"]), None)
