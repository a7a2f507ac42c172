"""The patched-Dovecot build: versions, pin, cache, and which Dovecot a relay gets."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import types

import pytest
from chatmaild.config import ConfigError
from chatmaild.testkit.config import init_config

from cmdeploy.dovecot import build

U6 = "1:2.3.19.1+dfsg1-2.1+deb12u6"
U7 = "1:2.3.19.1+dfsg1-2.1+deb12u7"
U8 = "1:2.3.19.1+dfsg1-2.1+deb12u8"

PAIRS = [
    (U6, U7, -1),
    (U7, U7, 0),
    (build.patched_version(U6), U6, 1),
    (build.patched_version(U6), U7, -1),
    (build.patched_version(U7), U7, 1),
    (build.patched_version(U7), U8, -1),
    ("1.0~rc1", "1.0", -1),
    ("1.0", "1.0-1", -1),
    ("2.3.19.1", "1:2.3.19.1", -1),
    ("1.10", "1.9", 1),
    ("1.0a", "1.0+", -1),
    ("1.0-2", "1.0-10", -1),
    ("1.001", "1.1", 0),
    ("1.0.", "1.0", 1),
    ("0:1.0", "1.0", 0),
]


@pytest.mark.parametrize(("a", "b", "expected"), PAIRS)
def test_compare_versions(a, b, expected):
    assert build.compare_versions(a, b) == expected
    assert build.compare_versions(b, a) == -expected


def test_compare_versions_agrees_with_dpkg():
    dpkg = shutil.which("dpkg")
    assert dpkg, "dpkg is part of every Debian machine this project runs on"
    for a, b, _ in PAIRS:
        for op, want in (("lt", -1), ("eq", 0), ("gt", 1)):
            rc = subprocess.run([dpkg, "--compare-versions", a, op, b]).returncode
            assert (rc == 0) == (build.compare_versions(a, b) == want), (a, op, b)


def test_suffix_sorts_between_source_and_next_update():
    v = build.patched_version(U7)
    assert v == U7 + "+chatmail2"
    assert build.is_patched(v) and not build.is_patched(U7)
    assert build.deb_name("dovecot-core", v, "amd64") == (
        "dovecot-core_2.3.19.1+dfsg1-2.1+deb12u7+chatmail2_amd64.deb"
    )


def test_pin_blocks_every_dovecot_package_from_every_source():
    lines = [x for x in build.pin_text().splitlines() if x and not x.startswith("#")]
    assert lines == ["Package: dovecot-*", "Pin: version *", "Pin-Priority: -1"]


def test_sources_are_signed_and_include_security():
    text = build.sources_text("http://mirror.example/debian", "http://mirror.example/security")
    assert text.count("Types: deb-src") == 2
    assert "URIs: http://mirror.example/debian\n" in text
    assert "URIs: http://mirror.example/security\n" in text
    assert text.count("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg") == 2
    assert "Suites: bookworm-security" in text


def _fill(root, arch, version, packages=build.PACKAGES):
    folder = build.cache_dir(arch, version, root)
    folder.mkdir(parents=True, exist_ok=True)
    for p in packages:
        (folder / build.deb_name(p, version, arch)).write_bytes(b"deb")
    return folder


def test_cache_is_keyed_by_arch_and_version(tmp_path):
    v6, v7 = build.patched_version(U6), build.patched_version(U7)
    folder = _fill(tmp_path, "amd64", v6)
    assert folder == tmp_path / "amd64" / "2.3.19.1+dfsg1-2.1+deb12u6+chatmail2"
    assert build.cached_debs("amd64", v6, tmp_path) == folder
    assert build.cached_debs("arm64", v6, tmp_path) is None
    assert build.cached_debs("amd64", v7, tmp_path) is None
    _fill(tmp_path, "amd64", v7, packages=build.PACKAGES[:3])
    assert build.cached_debs("amd64", v7, tmp_path) is None, "dovecot-sieve missing"


def test_cache_lives_outside_the_clone(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert build.cache_root() == tmp_path / "cmdeploy" / "dovecot"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert ".cache/cmdeploy/dovecot" in str(build.cache_root())


def never(_):
    raise AssertionError("must not be called")


def test_choose_builds_the_newest_source():
    tried = []
    c = build.choose([U6, U7], U7, False, lambda v: False, lambda v: tried.append(v) or True)
    assert (c.source, c.build, tried) == (U7, True, [U7])
    assert c.version == U7 + "+chatmail2"


def test_choose_uses_a_cached_build_without_fetching():
    c = build.choose([U6, U7], U7, False, lambda v: v == U7, never)
    assert (c.source, c.build) == (U7, False)


def test_choose_rebuilds_when_debian_has_a_newer_source():
    # The build of u7 is cached, but Debian now offers u8: build u8.
    c = build.choose([U7, U8], U8, False, lambda v: v == U7, lambda v: True)
    assert (c.source, c.build) == (U8, True)


def test_choose_keeps_stock_when_the_newest_source_is_missing():
    tried = []
    c = build.choose([U6, U7], U7, False, lambda v: v == U6, lambda v: tried.append(v) and False)
    assert c.source is None and not c.build
    assert tried == [U7], "the older source is not even tried without the override"
    assert "cannot be downloaded" in c.note and "dovecot_allow_outdated_source" in c.note


def test_choose_builds_the_older_source_only_with_the_override():
    c = build.choose([U6, U7], U7, True, lambda v: False, lambda v: v == U6)
    assert (c.source, c.build) == (U6, True)
    assert "dovecot_allow_outdated_source" in c.note
    c = build.choose([U6, U7], U7, True, lambda v: v == U6, lambda v: False)
    assert (c.source, c.build) == (U6, False), "the cached older build is reused"


def test_choose_never_ships_below_the_binary_without_the_override():
    # Only the older source is listed at all, the binaries are newer.
    c = build.choose([U6], U7, False, never, never)
    assert c.source is None and "older than the binary" in c.note
    c = build.choose([U6], U7, True, lambda v: False, lambda v: True)
    assert c.source == U6


def test_choose_without_sources():
    c = build.choose([], U7, True, never, never)
    assert c.source is None and "deb-src" in c.note


MADISON = f"""arch amd64
   dovecot | {U6} | http://mirror.example/debian bookworm/main Sources
   dovecot | {U7} | http://mirror.example/debian-security bookworm-security/main Sources
dovecot-core | {U7} | http://mirror.example/debian-security bookworm-security/main amd64 Packages
dovecot-core | {U6} | http://mirror.example/debian bookworm/main amd64 Packages
installed dovecot-core {U6}+chatmail2 ii
installed dovecot-imapd {U6}+chatmail2 ii
installed dovecot-sieve {U6} rc
"""


def test_parse_state():
    s = build.parse_state(MADISON)
    assert s.arch == "amd64"
    assert sorted(s.sources) == [U6, U7]
    assert s.binary == U7
    assert s.installed == {"dovecot-core": U6 + "+chatmail2", "dovecot-imapd": U6 + "+chatmail2"}


def test_describe_names_the_build_and_newer_debian_versions():
    s = build.parse_state(MADISON)
    line = build.describe(s)
    assert line.startswith(f"dovecot: {U6}+chatmail2 (patched")
    assert f"Debian has {U7}" in line
    current = build.RelayState("amd64", [U7], U7, {"dovecot-core": U7 + "+chatmail2"})
    assert "Debian has" not in build.describe(current)
    stock = build.RelayState("amd64", [U6], U7, {"dovecot-core": U7})
    assert build.describe(stock) == f"dovecot: {U7} (Debian's stock package)"
    assert build.describe(build.RelayState("amd64", [], None, {})) == "dovecot: not installed"


def test_build_script_patches_builds_and_cleans_up():
    script = build.build_script(U6, "amd64")
    assert f"apt-get build-dep -y -q -o APT::Install-Recommends=false dovecot={U6}" in script
    for patch in build.PATCHES:
        assert f"echo {patch.name} >> debian/patches/series" in script
    assert f"dovecot ({U6}+chatmail2) bookworm" in script
    assert 'DEB_BUILD_OPTIONS="nocheck parallel=$(nproc)" dpkg-buildpackage -b -uc -us' in script
    assert "comm -13 $W/before $W/after" in script and "apt-get purge" in script
    assert "trap finish EXIT" in script and "rm -rf $W/src" in script
    for p in build.PACKAGES:
        assert build.deb_name(p, U6 + "+chatmail2", "amd64") in script
    bash = shutil.which("bash")
    assert subprocess.run([bash, "-n"], input=script, text=True).returncode == 0


def test_patch_removes_exactly_the_delay():
    text = build.PATCHES[0].read_text()
    removed = [x for x in text.splitlines() if x.startswith("-") and not x.startswith("---")]
    files = [x.split()[1] for x in text.splitlines() if x.startswith("+++ ")]
    assert files == [
        "b/src/lib-storage/mailbox-watch.c",
        "b/src/lib-storage/mail-storage-private.h",
    ]
    assert "-#define NOTIFY_DELAY_MSECS 500" in removed
    assert "-\tstruct timeout *to_notify, *to_notify_delay;" in removed
    assert "to_notify_delay" not in "".join(x for x in text.splitlines() if x.startswith("+"))


def test_metadata_patch_only_turns_dict_failures_into_unavailable():
    text = build.PATCHES[1].read_text()
    added = [x[1:] for x in text.splitlines() if x.startswith("+") and not x.startswith("+++")]
    removed = [x for x in text.splitlines() if x.startswith("-") and not x.startswith("---")]
    files = [x.split()[1] for x in text.splitlines() if x.startswith("+++ ")]
    assert files == [
        "b/src/lib-storage/index/index-attribute.c",
        "b/src/lib-storage/index/index-storage.h",
        "b/src/lib-storage/index/index-transaction.c",
    ]
    assert removed == []  # the critical log line of each failure stays
    calls = [
        x.strip()
        for x in added
        if x.strip().startswith("mailbox_set_attribute_dict_") and x.strip().endswith(";")
    ]
    # lookup, iteration, private and shared commit
    assert len(calls) == 4
    assert any("MAIL_ERROR_UNAVAILABLE" in x for x in added)


def test_version_suffix_marks_every_patch_set():
    assert build.is_patched(U6 + "+chatmail1") and build.is_patched(U6 + build.SUFFIX)
    assert not build.is_patched(U6) and not build.is_patched(U6 + "+chatmailx")
    older = build.RelayState("amd64", [U6], U6, {"dovecot-core": U6 + "+chatmail1"})
    line = build.describe(older)
    assert line.startswith(f"dovecot: {U6}+chatmail1 (patched")
    assert f"installs this project's newer patch set ({build.SUFFIX})" in line
    assert "Debian has" not in line


# The relay's own apt sources, as the listing command prints them.
RELAY_SOURCES = """
==> /etc/apt/sources.list.d/debian.sources
Types: deb
URIs: mirror+file:///etc/apt/mirrors/debian.list
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: mirror+file:///etc/apt/mirrors/debian-security.list
Suites: bookworm-security
Components: main
"""


class FakeShell:
    """The relay as seen by prepare(): canned answers, records the commands."""

    def __init__(self, out: str, fetch_ok: bool, sources: str = RELAY_SOURCES):
        self.out, self.fetch_ok, self.sources, self.commands = out, fetch_ok, sources, []

    def sh(self, command, timeout=120):
        self.commands.append(command)
        if command == build.LIST_COMMAND:
            return types.SimpleNamespace(returncode=0, stdout=self.sources, stderr="")
        ok = self.fetch_ok or "apt-get source" not in command
        return types.SimpleNamespace(returncode=0 if ok else 100, stdout=self.out, stderr="")

    def read(self, path):
        raise AssertionError(path)


def test_prepare_stock_asks_nothing():
    shell, logs = FakeShell("", True), []
    plan = build.prepare(init_config(dovecot_package="stock"), shell, log=logs.append)
    assert plan == build.Plan() and shell.commands == []
    assert plan.env()["CHATMAIL_DOVECOT_VERSION"] == ""


def test_prepare_falls_back_to_stock_and_says_so(tmp_path):
    shell, logs = FakeShell(MADISON, fetch_ok=False), []
    plan = build.prepare(init_config(), shell, log=logs.append, root=tmp_path)
    assert plan.version is None
    assert logs and logs[0].startswith("WARNING: dovecot:") and "stock" in logs[0]
    assert shell.commands[0] == build.LIST_COMMAND
    first = shell.commands[1]
    assert first.index(build.PIN_PATH) < first.index("apt-get update"), "pin before apt"


def test_deb_src_entry_uses_the_relays_own_archives():
    shell = FakeShell(MADISON, fetch_ok=False)
    build.query(shell, update=True)
    put = re.search(
        rf"echo (\S+) \| base64 -d > {re.escape(build.SOURCES_PATH)}", shell.commands[1]
    )
    written = base64.b64decode(put.group(1))
    assert b"URIs: mirror+file:///etc/apt/mirrors/debian.list\n" in written
    assert b"URIs: mirror+file:///etc/apt/mirrors/debian-security.list\n" in written


def test_a_relay_without_a_debian_archive_is_told_what_to_add():
    shell = FakeShell(MADISON, fetch_ok=False, sources="==> /etc/apt/sources.list\n")
    with pytest.raises(build.BuildError, match="no Debian archive.*of the relay"):
        build.query(shell, update=True)


def test_prepare_uses_the_cache(tmp_path):
    v6 = U6 + "+chatmail2"
    folder = _fill(tmp_path, "amd64", v6)
    shell, logs = FakeShell(MADISON, fetch_ok=False), []
    plan = build.prepare(init_config(dovecot_allow_outdated_source="true"), shell, log=logs.append,
                         root=tmp_path)  # fmt: skip
    assert plan == build.Plan(v6, folder)
    assert plan.env()["CHATMAIL_DOVECOT_DEBS"] == str(folder)
    assert not any("build.sh" in c for c in shell.commands)


def test_prepare_dry_run_changes_nothing(tmp_path):
    shell, logs = FakeShell(MADISON, fetch_ok=True), []
    plan = build.prepare(init_config(), shell, dry_run=True, log=logs.append, root=tmp_path)
    assert plan.pending and plan.version == U7 + "+chatmail2"
    assert "would try" in logs[0]
    assert len(shell.commands) == 1 and "apt-get update" not in shell.commands[0]


def test_config_keys():
    assert init_config().dovecot_package == "patched"
    assert init_config().dovecot_allow_outdated_source is False
    assert init_config(dovecot_package="stock").dovecot_package == "stock"
    with pytest.raises(ConfigError, match="dovecot_package.*'patched'.*'stock'"):
        init_config(dovecot_package="fast")
