"""Reaching the relay over SSH: plain commands for checks, an inventory for pyinfra.

The target is a host name as SSH knows it, optionally with an ssh_config file (the lab
writes one). ``ssh -G`` resolves the real address, user, key and known-hosts file, so
pyinfra connects exactly as ``ssh`` would. ``@local`` (or ``localhost``) is this machine
itself: commands run here as root and pyinfra uses its local connector, for an operator
logged into the server.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


class RemoteError(Exception):
    """A command on the relay could not be run; the message says why."""


# Host names that mean "deploy on the machine cmdeploy runs on".
LOCAL_NAMES = ("@local", "localhost")


@dataclass(frozen=True)
class Remote:
    host: str
    ssh_config: Path | None = None
    user: str = "root"

    @property
    def local(self) -> bool:
        return self.host in LOCAL_NAMES

    def _base(self) -> list[str]:
        argv = ["ssh", "-o", "BatchMode=yes"]
        if self.ssh_config:
            argv += ["-F", str(self.ssh_config)]
        return argv

    def run(
        self, command: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess:
        """Run a shell command on the relay as root."""
        if self.local:
            if os.geteuid() != 0:
                raise RemoteError("deploying on this machine (--ssh-host @local) needs root")
            argv = ["bash", "-c", command]
        else:
            argv = self._base() + [f"{self.user}@{self.host}", command]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{self.host}: '{command}' took longer than {timeout:.0f}s") from None
        if proc.returncode == 255:
            raise RemoteError(
                f"cannot reach {self.user}@{self.host} over SSH: {proc.stderr.strip()}"
            )
        if check and proc.returncode != 0:
            raise RemoteError(f"{self.host}: '{command}' failed: {proc.stderr.strip()}")
        return proc

    def read_bytes(self, path: str, timeout: float = 600) -> bytes:
        """The contents of a file on the relay (binary-safe)."""
        if self.local:
            return Path(path).read_bytes()
        argv = self._base() + [f"{self.user}@{self.host}", f"cat -- {path}"]
        proc = subprocess.run(argv, capture_output=True, timeout=timeout)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()
            raise RemoteError(f"{self.host}: cannot read {path}: {err}")
        return proc.stdout

    def resolved(self) -> dict[str, str]:
        """The effective SSH settings (``ssh -G``)."""
        out = subprocess.run(self._base() + ["-G", f"{self.user}@{self.host}"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        settings: dict[str, str] = {}
        for line in out.splitlines():
            key, _, value = line.partition(" ")
            settings.setdefault(key, value)
        return settings

    def pyinfra_inventory(self, directory: Path) -> Path:
        """Write an inventory module for pyinfra that connects like ``ssh`` does."""
        path = directory / "inventory.py"
        if self.local:
            path.write_text('hosts = ["@local"]\n')
            return path
        s = self.resolved()
        data = {
            "ssh_hostname": s.get("hostname", self.host),
            "ssh_port": int(s.get("port", "22")),
            "ssh_user": self.user,
        }
        key = Path(s.get("identityfile", "").replace("~", str(Path.home()), 1))
        if self.ssh_config and key.is_file():
            data["ssh_key"] = str(key)
        known = s.get("userknownhostsfile", "").split()
        if self.ssh_config and known:
            data["ssh_known_hosts_file"] = known[0]
            data["ssh_strict_host_key_checking"] = "yes"
        path.write_text(f"hosts = [({self.host!r}, {data!r})]\n")
        return path
