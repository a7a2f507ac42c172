"""Taking the lab down: what was recorded, then whatever an interrupted run left behind.

`leftovers` is the check that nothing of the lab remains; the lab tests run it after `down`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from . import host, net
from .errors import LabError
from .processes import is_alive, proc_start_time, run, stop_process
from .services import Network, restore_inotify
from .state import StateStore

# The programs the lab runs on this machine, each with an argument naming the state dir.
DAEMONS = ("systemd-nspawn", "dnsmasq", "tinyproxy", "pebble")
# What `down` removes from the state dir once no host is left; the cached base and key stay.
STATE_FILES = ("known_hosts", "ssh_config", "dnsmasq.conf", "tinyproxy.conf")
STATE_TREES = ("zones", "acme", "hosts")


class Teardown:
    """Stops and removes what the lab recorded, and finds what is still there."""

    def __init__(self, store: StateStore, network: Network):
        self.store = store
        self.network = network

    def down(self) -> None:
        """Stop and remove everything the lab recorded; the cached base and the key stay.

        Every step is tried even if an earlier one failed; what failed stays recorded.
        """
        store = self.store
        with store.locked():
            state = store.load()
            errors: list[str] = []

            def attempt(what: str, fn: Callable, *args) -> None:
                try:
                    fn(*args)
                except (LabError, OSError) as e:
                    errors.append(f"{what}: {e}")

            for name, rec in sorted(state["hosts"].items()):
                attempt(f"host {name}", self._stop_host, state, name, rec)
            for key in list(state["procs"]):
                attempt(key, self._stop_service, state, key)
            attempt("stray lab processes", self._stop_strays)
            attempt("stray mounts", self._unmount_strays)
            attempt("stray cgroups", self._remove_stray_cgroups)
            for ns in dict.fromkeys(state["netns"] + [self.network.netns]):
                attempt(f"netns {ns}", self._delete_netns, ns)
            # Our links by record, plus any cmlab-named leftover of an interrupted run.
            for link in dict.fromkeys(state["links"] + net.links_with_prefix("cmlab", "vb-cmlab")):
                attempt(f"link {link}", net.delete_link, link)
            attempt("inotify limits", restore_inotify, state)
            if state["hosts"]:
                # A host that did not stop keeps its tree: it may still be mounted or in use.
                store.save(state)
                raise LabError("; ".join(errors))
            for tree in STATE_TREES:
                shutil.rmtree(store.dir / tree, ignore_errors=True)
            for f in STATE_FILES:
                (store.dir / f).unlink(missing_ok=True)
            if errors:
                state.update(procs={}, links=[], netns=[])
                store.save(state)
                raise LabError("; ".join(errors))
            store.file.unlink(missing_ok=True)

    def leftovers(self, records: dict | None = None) -> list[str]:
        """Anything of the lab still present: recorded PIDs, cmlab links/netns, mounts, cgroups.

        Zombies count as gone: they hold no resources and are reaped by their parent.
        """
        recs = records if records is not None else self.store.load()
        netns = self.network.netns
        found = []
        procs = [(k, r) for k, r in recs["procs"].items()]
        for name, h in recs["hosts"].items():
            procs += [(f"{name} nspawn", h["nspawn"]), (f"{name} init", h.get("init"))]
        for what, rec in procs:
            if rec and rec["pid"] and is_alive(rec["pid"], rec["start"]):
                found.append(f"process {what} (pid {rec['pid']})")
        found += [f"process {pid} {cmd[:80]}" for pid, cmd in self._stray_processes()]
        links = set(net.links_with_prefix("cmlab", "vb-cmlab"))
        links |= {link for link in recs["links"] if net.link_exists(link)}
        found += [f"link {link}" for link in sorted(links)]
        found += [f"netns {ns}" for ns in net.netns_list() if ns.startswith("cmlab")]
        if (net.NETNS_ETC / netns).exists():
            found.append(f"directory {net.NETNS_ETC / netns}")
        ours = (str(self.store.dir), "/run/netns/cmlab")
        found += [f"mount {m}" for m in _mounts() if m.startswith(ours)]
        found += [f"cgroup {d.parent}" for d in host.cgroup_dirs("any") if d.parent.exists()]
        return found

    def _stray_processes(self) -> list[tuple[int, str]]:
        """Live processes whose root is a lab host, or lab daemons started from the lab's files."""
        found = []
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                root = os.readlink(p / "root")
                cmdline = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            lab_root = root.startswith(str(self.store.hosts_dir))
            daemon = cmdline.startswith(DAEMONS) and str(self.store.dir) in cmdline
            if (lab_root or daemon) and is_alive(int(p.name)):
                found.append((int(p.name), cmdline))
        return found

    def _stop_host(self, state: dict, name: str, rec: dict) -> None:
        # SIGTERM makes nspawn send SIGRTMIN+3 to the host's systemd: a clean poweroff.
        stop_process(rec["nspawn"], timeout=30)
        if rec.get("init"):
            stop_process(rec["init"])
        host.remove_cgroups(host.make_host(rec["index"], self.network.prefix).machine)
        if rec.get("mount") and host.is_mountpoint(Path(rec["mount"])):
            _unmount(rec["mount"])
        for link in rec.get("links", []):
            net.delete_link(link)
        del state["hosts"][name]
        self.store.save(state)

    def _stop_service(self, state: dict, key: str) -> None:
        stop_process(state["procs"][key])
        del state["procs"][key]
        self.store.save(state)

    def _stop_strays(self) -> None:
        """Processes of the lab whose records were lost (an interrupted run), nspawn first."""
        for _ in range(3):
            strays = self._stray_processes()
            if not strays:
                return
            first = [p for p in strays if p[1].startswith("systemd-nspawn")] or strays
            for pid, cmdline in first:
                rec = {"pid": pid, "start": proc_start_time(pid), "argv": [cmdline]}
                stop_process(rec, timeout=30)

    def _unmount_strays(self) -> None:
        for m in reversed(_mounts()):
            if m.startswith(f"{self.store.hosts_dir}/"):
                _unmount(m)

    def _remove_stray_cgroups(self) -> None:
        for top in host.cgroup_dirs("any"):
            if top.parent.exists():
                for machine in [d.name for d in top.parent.iterdir() if d.is_dir()]:
                    host.remove_cgroups(machine)
            with contextlib.suppress(FileNotFoundError):
                top.parent.rmdir()

    def _delete_netns(self, ns: str) -> None:
        """Stop what tests left running in the client namespace, then remove it."""
        if net.netns_exists(ns):
            pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
            for pid in map(int, pids):
                rec = {"pid": pid, "start": proc_start_time(pid), "argv": [f"pid {pid} in {ns}"]}
                stop_process(rec)
        net.delete_client_netns(ns)
        with contextlib.suppress(OSError):
            net.NETNS_ETC.rmdir()


def _mounts() -> list[str]:
    """Mount points on this machine, in mount order."""
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f]


def _unmount(path: str) -> None:
    # A busy mount (a process still in it) goes lazily: it is detached now and freed later.
    if run(["umount", path], check=False).returncode != 0:
        run(["umount", "--lazy", path])
