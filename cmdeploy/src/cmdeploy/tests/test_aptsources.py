"""Reading the machine's Debian archives from its apt sources (both sources.list formats)."""

from __future__ import annotations

import subprocess

import pytest

from cmdeploy import aptsources
from cmdeploy.aptsources import AptSource, AptSourcesError, debian_archives

ONE_LINE = """\
# deb http://commented.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian/ bookworm main contrib
deb-src http://src-only.example/debian bookworm main
deb http://mirror.example/debian bookworm-updates main   # trailing comment
deb http://security.example/debian-security bookworm-security main
"""

DEB822 = """\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://proxy.example:3142/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://proxy.example:3142/debian-security
Suites: bookworm-security
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 -----END PGP PUBLIC KEY BLOCK-----
"""

VENDOR = """\
Types: deb
URIs: https://vendor.example/node_20.x
Suites: nodistro
Components: main
"""


def test_one_line_entries_skip_comments_and_options():
    found = aptsources.parse_one_line(ONE_LINE)
    assert found[0] == AptSource(
        ("deb",), ("http://mirror.example/debian/",), ("bookworm",), ("main", "contrib")
    )
    assert [s.types for s in found] == [("deb",), ("deb-src",), ("deb",), ("deb",)]
    assert found[2].components == ("main",)
    assert debian_archives(found) == (
        "http://mirror.example/debian",
        "http://security.example/debian-security",
    )


def test_deb822_stanzas_with_comments_and_folded_fields():
    found = aptsources.parse_deb822(DEB822)
    assert [s.suites for s in found] == [("bookworm", "bookworm-updates"), ("bookworm-security",)]
    assert found[1].types == ("deb", "deb-src")
    assert debian_archives(found) == (
        "http://proxy.example:3142/debian",
        "http://proxy.example:3142/debian-security",
    )


def test_disabled_stanza_and_vendor_repository_are_not_debian_archives():
    disabled = "Enabled: no\n" + DEB822.split("\n\n")[0] + "\n"
    found = aptsources.parse_deb822(VENDOR + "\n" + disabled)
    assert [s.uris for s in found] == [("https://vendor.example/node_20.x",)]
    with pytest.raises(AptSourcesError, match="no Debian archive .* of /etc/apt; add"):
        debian_archives(found)


def test_missing_security_archive_is_named():
    found = aptsources.parse_one_line("deb http://mirror.example/debian bookworm main\n")
    with pytest.raises(AptSourcesError, match="no Debian security archive"):
        debian_archives(found, "the relay")


def test_pre_bullseye_security_suite_and_scheme_filter():
    text = (
        "deb mirror+file:///etc/apt/mirrors/debian.list bookworm main\n"
        "deb http://mirror.example/debian bookworm main\n"
        "deb http://security.example/ buster/updates main\n"
    )
    found = aptsources.parse_one_line(text)
    assert debian_archives(found) == ("http://mirror.example/debian", "http://security.example")
    # The relay's own apt reads mirror+file lists, so for it any scheme counts.
    assert debian_archives(found, schemes=None)[0] == "mirror+file:///etc/apt/mirrors/debian.list"


def test_read_sources_takes_sources_list_first_then_the_parts_by_name(tmp_path):
    apt = tmp_path / "etc/apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list").write_text("deb http://first.example/debian bookworm main\n")
    (apt / "sources.list.d/b.sources").write_text(DEB822)
    (apt / "sources.list.d/a.list").write_text(ONE_LINE)
    (apt / "sources.list.d/c.list.disabled").write_text("deb http://off.example/debian sid main\n")
    found = aptsources.read_sources(tmp_path)
    uris = [s.uris[0] for s in found]
    assert uris[0] == "http://first.example/debian"
    assert uris[1] == "http://mirror.example/debian/"
    assert uris[-1] == "http://proxy.example:3142/debian-security"
    assert "http://off.example/debian" not in uris
    assert debian_archives(found)[0] == "http://first.example/debian"


def test_listing_command_reads_what_read_sources_reads():
    out = subprocess.run(
        ["sh", "-c", aptsources.LIST_COMMAND], capture_output=True, text=True, check=True
    ).stdout
    assert aptsources.parse_listing(out) == aptsources.read_sources()


def test_parse_listing_splits_the_files_by_their_suffix():
    out = (
        f"\n==> /etc/apt/sources.list\n{ONE_LINE}\n==> /etc/apt/sources.list.d/x.sources\n{DEB822}"
    )
    found = aptsources.parse_listing(out)
    assert len(found) == 6
    assert found[-1].uris == ("http://proxy.example:3142/debian-security",)
