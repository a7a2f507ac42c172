"""The Debian packages the lab needs on this machine, and installing the missing ones.

This is the one list for the lab: ``cmdeploy lab ...`` and the lab tests install from it
(as root), and the README's test command relies on it instead of a copy of its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import LabError

# Every program the lab runs on this machine, with the Debian package that ships it.
# Programs of essential packages (coreutils, util-linux, mount, dpkg, apt) are listed too, so
# that a test can check each program the lab code calls against this map.
TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "dnsmasq": "dnsmasq-base",
    "tinyproxy": "tinyproxy",
    "socat": "socat",
    "pebble": "pebble",
    "openssl": "openssl",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "mount": "mount",
    "umount": "mount",
    "chroot": "coreutils",
    "env": "coreutils",
    "cp": "coreutils",
    "nsenter": "util-linux",
    "apt-get": "apt",
    "dpkg-query": "dpkg",
    "sh": "dash",
}

# Packages must not start their own system services here: the lab runs its own tinyproxy
# and dnsmasq, and a system tinyproxy would be an open proxy port on this machine.
POLICY_RC = Path("/usr/sbin/policy-rc.d")


def missing_packages() -> list[str]:
    """The lab's packages whose programs are not on this machine."""
    return sorted({pkg for tool, pkg in TOOLS.items() if not shutil.which(tool)})


@contextlib.contextmanager
def services_held_back(policy: Path | None = None) -> Iterator[None]:
    """While inside, Debian's maintainer scripts start no service (policy-rc.d exit 101)."""
    policy = policy or POLICY_RC
    if policy.exists():
        yield
        return
    policy.write_text("#!/bin/sh\n# written by cmdeploy lab while it installs packages\nexit 101\n")
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)


def install_missing(say: Callable[[str], None] = print) -> list[str]:
    """Install the lab's missing packages with apt-get; returns what was installed.

    Needs root; without it raises LabError naming the packages.
    """
    missing = missing_packages()
    if not missing:
        return []
    if os.geteuid() != 0:
        raise LabError(
            f"the lab needs these Debian packages: {' '.join(missing)}; "
            "run as root and they are installed"
        )
    say(f"installing Debian packages for the lab: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with services_held_back():
        for argv in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        ):
            proc = subprocess.run(argv, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise LabError(
                    f"{' '.join(argv)} failed (exit {proc.returncode}): "
                    f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
                )
    still = missing_packages()
    if still:
        raise LabError(f"after apt-get install, still missing: {' '.join(still)}")
    return missing
