"""The cached Debian 12 root that every lab host starts from (built once by debootstrap)."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import shutil
import subprocess
import time
from pathlib import Path

from ..aptsources import AptSourcesError, debian_archives, read_sources
from .errors import LabError
from .progress import Progress, follow_lines

SUITE = "bookworm"
PACKAGES = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "iproute2",
    "ca-certificates",
    "curl",
    "rsync",
    "dnsutils",
]


@functools.cache
def archives() -> tuple[str, str]:
    """This machine's Debian mirror and security archive: the lab uses what apt here uses."""
    try:
        return debian_archives(read_sources())
    except AptSourcesError as e:
        raise LabError(str(e)) from None


def sources_text(mirror: str, security: str) -> str:
    """The deb822 apt sources of every lab host."""
    return f"""\
Types: deb
URIs: {mirror}
Suites: {SUITE} {SUITE}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: {security}
Suites: {SUITE}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def base_id() -> str:
    """Name of the cached base; it changes whenever what goes into the base changes."""
    mirror, security = archives()
    recipe = "\n".join([SUITE, mirror, *PACKAGES, sources_text(mirror, security)])
    return f"{SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:10]}"


def ensure_base(cache_dir: Path) -> tuple[Path, bool]:
    """Return the cached base root (building it if missing) and whether it was built now."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    root = cache_dir / base_id()
    # A lock, because two lab runs at once must not debootstrap the same tree twice.
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".cmlab-complete").exists():
            return root, False
        _build(root)
    return root, True


def _build(root: Path) -> None:
    tmp = root.with_name(root.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    free = shutil.disk_usage(root.parent).free
    if free < 2 * 2**30:
        raise LabError(
            f"only {free // 2**20} MiB free in {root.parent}; the lab needs 2 GiB for its "
            "Debian base, free some space there"
        )
    argv = [
        "debootstrap",
        "--include=" + ",".join(PACKAGES),
        SUITE,
        str(tmp),
        archives()[0],
    ]
    log = root.with_name(root.name + ".debootstrap.log")
    with Progress(f"building the Debian 12 base in {root} (once; later runs reuse it)") as bar:
        with open(log, "w") as logf:
            proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )

            def on_line(line: str) -> None:
                logf.write(line)
                if line.startswith(("I:", "W:", "E:")):
                    bar.update(line[2:])

            tail = follow_lines(proc, on_line)
        if proc.returncode != 0:
            raise LabError(
                f"debootstrap failed (exit {proc.returncode}); full log in {log}:\n"
                + "\n".join(tail[-10:])
            )
        bar.update("configuring")
        _configure(tmp)
    (tmp / ".cmlab-complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
    tmp.rename(root)


def _configure(root: Path) -> None:
    """Settings shared by every lab host; per-host ones are written when a host is made."""
    (root / "etc/apt/sources.list").write_text("")
    (root / "etc/apt/sources.list.d/debian.sources").write_text(sources_text(*archives()))
    # Host keys and machine id would otherwise be shared by every host made from this base.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    # Hosts get their address from networkd (written per host) and never from DHCP.
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    unit = wants / "systemd-networkd.service"
    if not unit.exists():
        unit.symlink_to("/lib/systemd/system/systemd-networkd.service")
    # Keep apt's own timers from racing a deploy's apt runs for the dpkg lock.
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        mask = root / "etc/systemd/system" / timer
        if not mask.exists():
            mask.symlink_to("/dev/null")
