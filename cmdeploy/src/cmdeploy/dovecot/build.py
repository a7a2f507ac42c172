"""A Dovecot without the 500 ms IDLE delay, rebuilt from Debian's own ``dovecot`` source.

Stock Dovecot holds every IDLE/NOTIFY notification for 500 ms; the first patch beside this
file removes that timer. The second makes METADATA answer ``NO [UNAVAILABLE]`` (retry)
instead of ``NO [SERVERBUG]`` while the relay's metadata service is down.
``cmdeploy run`` calls :func:`prepare` before pyinfra starts. It asks the relay (over SSH)
which dovecot source and binary versions Debian offers, and picks the version to run:

- the newest source, rebuilt with the patches as ``<source version>+chatmail2``, if its
  .debs are in the cache on this machine (``~/.cache/cmdeploy/dovecot/<arch>/<version>/``)
  or already installed on the relay;
- otherwise that source is downloaded and built once on the relay (~15 min; build
  dependencies are purged again and the tree deleted), and the .debs come back into the
  cache for every later run and relay;
- a build never ships a version below what apt would install, unless
  ``dovecot_allow_outdated_source`` is set: when the newest source cannot be downloaded the
  relay keeps Debian's stock package, and the deploy output says so.

Every run repeats the version check, so a Debian security update of dovecot is rebuilt
by the next ``cmdeploy run``. The Dovecot deployer then installs the chosen .debs and pins
them (see :func:`pin_text`).
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..aptsources import LIST_COMMAND, AptSourcesError, debian_archives, parse_listing

PACKAGES = ("dovecot-core", "dovecot-imapd", "dovecot-lmtpd", "dovecot-sieve")
# The number counts our patch sets: a new one sorts above relays' older builds.
SUFFIX = "+chatmail2"
PATCHES = tuple(
    Path(__file__).parent / name
    for name in ("chatmail-no-idle-notify-delay.patch", "chatmail-metadata-unavailable.patch")
)
_SUFFIX_RE = re.compile(r"\+chatmail\d+$")
SOURCES_PATH = "/etc/apt/sources.list.d/chatmail-dovecot-src.sources"
PIN_PATH = "/etc/apt/preferences.d/chatmail-dovecot"
# On the relay: the .debs of the installed build (uploaded or built there).
RELAY_DEBS = "/var/cache/chatmail-dovecot"
BUILD_DIR = "/var/tmp/chatmail-dovecot-build"
BUILD_TIMEOUT = 3 * 3600


# Debian version comparison (deb-version(7)), so that the decision can be made and tested
# on any deploying machine, dpkg or not; the tests check it against dpkg --compare-versions.


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ac != bc:
                return -1 if ac < bc else 1
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return -1 if first_diff < 0 else 1
    return 0


def _split(version: str) -> tuple[int, str, str]:
    epoch, _, rest = version.rpartition(":") if ":" in version else ("0", "", version)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return int(epoch or 0), upstream, revision


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as Debian orders versions ``a`` and ``b``."""
    ea, ua, ra = _split(a)
    eb, ub, rb = _split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)


def newest(versions) -> str | None:
    best = None
    for v in versions:
        if best is None or compare_versions(v, best) > 0:
            best = v
    return best


def patched_version(source_version: str) -> str:
    """The version of our rebuild: sorts just above the source it was built from."""
    return source_version + SUFFIX


def is_patched(version: str | None) -> bool:
    return bool(version) and _SUFFIX_RE.search(version) is not None


def deb_name(package: str, version: str, arch: str) -> str:
    """The file name dpkg-buildpackage gives a binary package (no epoch)."""
    return f"{package}_{version.split(':', 1)[-1]}_{arch}.deb"


def folder_name(version: str) -> str:
    """A folder for a build: its version without the epoch (no ':' in paths)."""
    return version.split(":", 1)[-1]


def pin_text() -> str:
    """apt preferences that keep every Debian dovecot-* away from a relay running ours."""
    return (
        "# Written by cmdeploy: this relay runs Dovecot rebuilt without the 500 ms IDLE delay\n"
        "# (dovecot_package = patched). No dovecot-* from any repository may replace it;\n"
        "# 'cmdeploy run' rebuilds when Debian publishes a newer dovecot source.\n"
        "Package: dovecot-*\n"
        "Pin: version *\n"
        "Pin-Priority: -1\n"
    )


def sources_text(mirror: str, security: str, codename: str = "bookworm") -> str:
    """deb-src entries for Debian's dovecot source, including security updates."""
    return (
        "# Written by cmdeploy: the dovecot source for the patched Dovecot build.\n"
        "Types: deb-src\n"
        f"URIs: {mirror}\n"
        f"Suites: {codename} {codename}-updates\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        "\n"
        "Types: deb-src\n"
        f"URIs: {security}\n"
        f"Suites: {codename}-security\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )


def cache_root() -> Path:
    """Where this machine keeps builds: outside any git clone, kept across runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cmdeploy" / "dovecot"


def cache_dir(arch: str, version: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / arch / folder_name(version)


def cached_debs(arch: str, version: str, root: Path | None = None) -> Path | None:
    """The cache folder of this build if it holds all packages, else None."""
    folder = cache_dir(arch, version, root)
    if all((folder / deb_name(p, version, arch)).is_file() for p in PACKAGES):
        return folder
    return None


# The decision, kept free of I/O so that it can be tested.


@dataclass(frozen=True)
class Choice:
    """What to run: ``source`` is the dovecot source version to (build and) install, or
    None for Debian's stock package; ``build`` says whether a build is needed first."""

    source: str | None
    build: bool
    note: str

    @property
    def version(self) -> str | None:
        return patched_version(self.source) if self.source else None


def choose(
    sources: list[str],
    binary: str | None,
    allow_outdated: bool,
    have: Callable[[str], bool],
    fetchable: Callable[[str], bool],
) -> Choice:
    """Pick the build for the offered ``sources`` against apt's newest ``binary``.

    ``have(v)`` says whether the rebuild of source ``v`` is cached or installed already;
    ``fetchable(v)`` tries to download source ``v`` (only called when a build is needed).
    """
    if not sources:
        return Choice(None, False, "Debian offers no dovecot source (deb-src): stock Dovecot")
    ordered = sorted(set(sources), key=_Key, reverse=True)
    top = ordered[0]
    if binary and compare_versions(top, binary) < 0 and not allow_outdated:
        return Choice(None, False, f"the newest dovecot source {top} is older than the "
                      f"binary package {binary}: keeping stock Dovecot")  # fmt: skip
    for v in ordered:
        outdated = v != top or (binary is not None and compare_versions(v, binary) < 0)
        if outdated and not allow_outdated:
            break
        why = f" (below Debian's {newest([top, binary or top])}: dovecot_allow_outdated_source)"
        why = why if outdated else ""
        if have(v):
            return Choice(v, False, f"patched Dovecot {patched_version(v)}{why}")
        if fetchable(v):
            return Choice(v, True, f"patched Dovecot {patched_version(v)}{why}")
    return Choice(None, False, f"the newest dovecot source {top} cannot be downloaded: "
                  "keeping Debian's stock Dovecot (with its 500 ms IDLE delay). Run again when "
                  "it can, or set dovecot_allow_outdated_source = true to build from an older "
                  "source below Debian's security level")  # fmt: skip


class _Key:
    """Sort key for Debian versions."""

    def __init__(self, v: str):
        self.v = v

    def __lt__(self, other: _Key) -> bool:
        return compare_versions(self.v, other.v) < 0


# Talking to the relay.


class Shell(Protocol):
    """Runs shell commands as root on the relay and reads files from it."""

    def sh(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess: ...

    def read(self, path: str) -> bytes: ...


class SSHShell:
    """:class:`Shell` over the deploy's SSH connection."""

    def __init__(self, remote):
        self.remote = remote

    def sh(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.remote.run(command, timeout=timeout, check=False)

    def read(self, path: str) -> bytes:
        return self.remote.read_bytes(path)


class BuildError(Exception):
    """The patched Dovecot could not be built; the message says why."""


@dataclass(frozen=True)
class RelayState:
    arch: str
    sources: list[str]
    binary: str | None
    installed: dict[str, str]


def _put_file(text: str, path: str, mode: str = "644") -> str:
    data = base64.b64encode(text.encode()).decode()
    return (f"echo {data} | base64 -d > {path}.new && chmod {mode} {path}.new && "
            f"{{ cmp -s {path}.new {path} && rm {path}.new || mv {path}.new {path}; }}")  # fmt: skip


def relay_archives(shell: Shell) -> tuple[str, str]:
    """The Debian mirror and security archive that the relay's own apt sources name."""
    proc = shell.sh(LIST_COMMAND)
    try:
        return debian_archives(parse_listing(proc.stdout), "the relay", schemes=None)
    except AptSourcesError as e:
        raise BuildError(str(e)) from None


def query(shell: Shell, update: bool) -> RelayState:
    """Versions on the relay; with ``update`` first the deb-src entry and apt-get update."""
    steps = []
    if update:
        # The pin goes first: no apt run of this deploy may swap a patched Dovecot back.
        src = sources_text(*relay_archives(shell))
        steps += [_put_file(pin_text(), PIN_PATH), _put_file(src, SOURCES_PATH),
                  "apt-get update -qq >&2"]  # fmt: skip
    steps += [
        "echo arch $(dpkg --print-architecture)",
        "apt-cache madison dovecot dovecot-core",
        "dpkg-query -W -f='installed ${Package} ${Version} ${db:Status-Abbrev}\\n' "
        + " ".join(PACKAGES) + " 2>/dev/null; true",
    ]  # fmt: skip
    proc = shell.sh(" && ".join(steps), timeout=300)
    if proc.returncode != 0:
        raise BuildError(f"asking the relay for dovecot versions failed: {proc.stderr.strip()}")
    return parse_state(proc.stdout)


def parse_state(out: str) -> RelayState:
    arch, sources, binaries, installed = "", [], [], {}
    for line in out.splitlines():
        if line.startswith("arch "):
            arch = line.split()[1]
        elif line.startswith("installed "):
            fields = line.split()
            if len(fields) >= 4 and fields[3].startswith("ii"):
                installed[fields[1]] = fields[2]
        elif "|" in line:
            name, version, origin = (f.strip() for f in line.split("|", 2))
            if name == "dovecot" and origin.endswith("Sources"):
                sources.append(check_version(version))
            elif name == "dovecot-core" and not origin.endswith("Sources"):
                if not is_patched(version):
                    binaries.append(version)
    return RelayState(arch, sources, newest(binaries), installed)


def describe(state: RelayState) -> str:
    """One line for ``cmdeploy status``: the installed Dovecot and whether Debian has newer."""
    core = state.installed.get("dovecot-core")
    if not core:
        return "dovecot: not installed"
    kind = "patched, without the IDLE delay" if is_patched(core) else "Debian's stock package"
    line = f"dovecot: {core} ({kind})"
    base = _SUFFIX_RE.sub("", core)
    top = newest(state.sources + ([state.binary] if state.binary else []))
    if top and compare_versions(top, base) > 0:
        line += f"; Debian has {top}: 'cmdeploy run' updates it"
    elif is_patched(core) and core != patched_version(base):
        line += f"; 'cmdeploy run' installs this project's newer patch set ({SUFFIX})"
    return line


def status_line(shell: Shell) -> str:
    """:func:`describe` for the relay, from its current apt lists (changes nothing)."""
    try:
        return describe(query(shell, update=False))
    except (BuildError, OSError, subprocess.SubprocessError) as e:
        return f"dovecot: version unknown ({e})"


def build_script(source: str, arch: str) -> str:
    """The shell script that builds on the relay, leaving only the .debs behind.

    It runs detached (an SSH drop must not kill a 15 min build) and reports its step in
    ``BUILD_DIR/step``; on exit, whatever happened, it purges exactly the packages it
    installed and deletes the build tree.
    """
    version = patched_version(source)
    debs = " ".join(deb_name(p, version, arch) for p in PACKAGES)
    out = f"{RELAY_DEBS}/{folder_name(version)}"
    patch_lines = "\n".join(
        f"cp $W/{p.name} debian/patches/\necho {p.name} >> debian/patches/series" for p in PATCHES
    )
    return f"""#!/bin/bash
set -eu -o pipefail
W={BUILD_DIR}
export DEBIAN_FRONTEND=noninteractive
step() {{ echo "$1" > $W/step; echo "== $1 $(date -u +%T)"; }}
installed() {{ dpkg-query -W -f='${{db:Status-Abbrev}} ${{binary:Package}}\\n' | awk '$1=="ii" {{print $2}}' | sort; }}
finish() {{
    rc=$?
    set +e
    step "cleanup (exit $rc)"
    installed > $W/after
    extra=$(comm -13 $W/before $W/after)
    if [ -n "$extra" ]; then apt-get purge -y -q $extra; fi
    installed > $W/after
    comm -13 $W/before $W/after > $W/left || true
    rm -rf $W/src
    if [ -s $W/left ]; then echo "left installed: $(cat $W/left)"; rc=1; fi
    if [ $rc -eq 0 ]; then echo done > $W/step; else echo "failed (exit $rc)" > $W/step; fi
}}
installed > $W/before
trap finish EXIT
step "installing build dependencies"
apt-get build-dep -y -q -o APT::Install-Recommends=false dovecot={source}
step "unpacking the source"
cd $W/src
dpkg-source -x dovecot_{source.split(":", 1)[-1]}.dsc tree
cd tree
{patch_lines}
{{ printf '%s\\n\\n' "dovecot ({version}) bookworm; urgency=medium"
  printf '%s\\n' "  * chatmail: IDLE/NOTIFY notifications without the 500 ms delay."
  printf '%s\\n\\n' "  * chatmail: METADATA answers NO [UNAVAILABLE] while its dict is down."
  printf '%s\\n\\n' " -- chatmail relay <root@localhost>  $(date -R)"
  cat debian/changelog; }} > debian/changelog.new
mv debian/changelog.new debian/changelog
dpkg-source --before-build .
if grep -q to_notify_delay src/lib-storage/mail-storage-private.h ||
   ! grep -q mailbox_set_attribute_dict_unavailable src/lib-storage/index/index-storage.h; then
    echo "the patches were not applied"; exit 1
fi
step "compiling (dpkg-buildpackage)"
DEB_BUILD_OPTIONS="nocheck parallel=$(nproc)" dpkg-buildpackage -b -uc -us
step "collecting the packages"
rm -rf {out}.tmp && mkdir -p {out}.tmp
cd $W/src && cp {debs} {out}.tmp/
rm -rf {out} && mv {out}.tmp {out}
"""


def _fetch_source(shell: Shell, source: str) -> bool:
    """Download source ``source`` into the build folder; False if Debian does not serve it."""
    cmd = (f"rm -rf {BUILD_DIR}/src && mkdir -p {BUILD_DIR}/src && cd {BUILD_DIR}/src && "
           f"apt-get source -q --download-only -o APT::Sandbox::User=root dovecot={source}")  # fmt: skip
    proc = shell.sh(cmd, timeout=600)
    if proc.returncode != 0:
        shell.sh(f"rm -rf {BUILD_DIR}")
    return proc.returncode == 0


def build(shell: Shell, source: str, arch: str, log: Callable[[str], None] = print,
          poll: float = 20) -> float:  # fmt: skip
    """Build on the relay (source already fetched into the build folder); returns seconds."""
    script = build_script(source, arch)
    setup = " && ".join([
        f"mkdir -p {BUILD_DIR} {RELAY_DEBS}",
        _put_file(script, f"{BUILD_DIR}/build.sh", mode="755"),
        *(_put_file(p.read_text(), f"{BUILD_DIR}/{p.name}") for p in PATCHES),
        f"echo starting > {BUILD_DIR}/step",
        # Braces: only the script goes to the background, not the whole && list (whose
        # subshell would keep the SSH session open until the build ends).
        f"{{ setsid nohup {BUILD_DIR}/build.sh > {BUILD_DIR}/build.log 2>&1 < /dev/null & }}",
    ])  # fmt: skip
    proc = shell.sh(setup)
    if proc.returncode != 0:
        raise BuildError(f"cannot start the Dovecot build on the relay: {proc.stderr.strip()}")
    started = time.monotonic()
    last = ""
    while True:
        time.sleep(poll)
        elapsed = time.monotonic() - started
        step = shell.sh(f"cat {BUILD_DIR}/step").stdout.strip()
        if step != last:
            log(f"  dovecot build, {elapsed / 60:.0f} min: {step}")
            last = step
        if step == "done" or step.startswith("failed"):
            break
        if elapsed > BUILD_TIMEOUT:
            raise BuildError(f"the Dovecot build took over {BUILD_TIMEOUT}s; see "
                             f"{BUILD_DIR}/build.log on the relay")  # fmt: skip
    if step != "done":
        tail = shell.sh(f"tail -n 40 {BUILD_DIR}/build.log").stdout
        raise BuildError(f"the Dovecot build on the relay failed ({step}):\n{tail}")
    shell.sh(f"rm -rf {BUILD_DIR}")
    return time.monotonic() - started


def fetch_debs(shell: Shell, version: str, arch: str, root: Path | None = None) -> Path:
    """Copy the built .debs from the relay into this machine's cache."""
    folder = cache_dir(arch, version, root)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for p in PACKAGES:
        name = deb_name(p, version, arch)
        (tmp / name).write_bytes(shell.read(f"{RELAY_DEBS}/{folder_name(version)}/{name}"))
    if folder.exists():
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    tmp.rename(folder)
    return folder


@dataclass(frozen=True)
class Plan:
    """What the Dovecot deployer installs: ``version`` None means Debian's stock package."""

    version: str | None = None
    debs: Path | None = None
    # A dry run that would build first: there is nothing to install yet.
    pending: bool = False

    def env(self) -> dict[str, str]:
        return {
            "CHATMAIL_DOVECOT_VERSION": self.version or "",
            "CHATMAIL_DOVECOT_DEBS": str(self.debs) if self.debs else "",
            "CHATMAIL_DOVECOT_PENDING": "1" if self.pending else "",
        }


def prepare(config, shell: Shell, dry_run: bool = False, log: Callable[[str], None] = print,
            root: Path | None = None) -> Plan:  # fmt: skip
    """Decide which Dovecot the relay runs, building it first if needed (not in a dry run)."""
    if config.dovecot_package == "stock":
        log("dovecot: Debian's stock package (dovecot_package = stock)")
        return Plan()
    state = query(shell, update=not dry_run)

    def have(source: str) -> bool:
        version = patched_version(source)
        if cached_debs(state.arch, version, root):
            return True
        return all(state.installed.get(p) == version for p in PACKAGES)

    def fetchable(source: str) -> bool:
        # A dry run downloads nothing: it reports the build it would try.
        return dry_run or _fetch_source(shell, source)

    choice = choose(state.sources, state.binary, config.dovecot_allow_outdated_source,
                    have, fetchable)  # fmt: skip
    if choice.source is None:
        log(f"WARNING: dovecot: {choice.note}")
        return Plan()
    version = choice.version
    if choice.build and dry_run:
        log(f"dovecot: would try {choice.note} on the relay (~15 min, once)")
        return Plan(version, None, pending=True)
    if choice.build:
        log(f"dovecot: {choice.note}: building Dovecot on the relay, ~15 min, once; "
            f"the .debs are then cached in {cache_dir(state.arch, version, root)}")  # fmt: skip
        seconds = build(shell, choice.source, state.arch, log=log)
        log(f"dovecot: built {version} in {seconds:.0f}s")
        return Plan(version, fetch_debs(shell, version, state.arch, root))
    log(f"dovecot: {choice.note}")
    return Plan(version, cached_debs(state.arch, version, root))


_SAFE = re.compile(r"^[A-Za-z0-9.+:~_-]+$")


def check_version(version: str) -> str:
    """A version string safe to put in a shell command."""
    if not _SAFE.match(version):
        raise ValueError(f"unexpected version string {version!r}")
    return version
