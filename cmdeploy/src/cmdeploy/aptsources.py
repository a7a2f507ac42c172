"""The Debian archives a machine already uses, read from its own apt sources.

The lab's Debian base and the relay's deb-src entry for the Dovecot build take their mirror
and security archive from here, so they go through whatever mirror or proxy the operator
chose for apt, and no archive host is written into the tree. Both formats of
sources.list(5) are read: one-line (``deb [opts] URI SUITE COMPONENT...``) in
``sources.list`` and ``*.list``, deb822 stanzas in ``*.sources``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Debian release suites (codenames and their aliases): an entry for one of these is a
# Debian archive, whatever its host; other repositories (vendor tools) use other suites.
DEBIAN_SUITES = frozenset(
    "buster bullseye bookworm trixie forky duke sid "
    "oldoldstable oldstable stable testing unstable".split()
)


class AptSourcesError(Exception):
    """The machine's apt sources name no usable Debian archive; the message says which."""


@dataclass(frozen=True)
class AptSource:
    """One repository entry: a line of a .list file or a stanza of a .sources file."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]


def parse_one_line(text: str) -> list[AptSource]:
    """Entries of a one-line style file; comments and options in brackets are skipped."""
    found = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, rest = line.partition(" ")
        rest = rest.strip()
        if rest.startswith("["):
            _, _, rest = rest.partition("]")
        words = rest.split()
        if kind not in ("deb", "deb-src") or len(words) < 2:
            continue
        found.append(AptSource((kind,), (words[0],), (words[1],), tuple(words[2:])))
    return found


def parse_deb822(text: str) -> list[AptSource]:
    """Entries of a deb822 ``.sources`` file; stanzas with ``Enabled: no`` are skipped."""
    found = []
    for stanza in _stanzas(text):
        if stanza.get("enabled", "yes").lower() == "no":
            continue
        types = tuple(stanza.get("types", "").split())
        uris = tuple(stanza.get("uris", "").split())
        suites = tuple(stanza.get("suites", "").split())
        if types and uris and suites:
            found.append(
                AptSource(types, uris, suites, tuple(stanza.get("components", "").split()))
            )
    return found


def _stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = None
    for raw in text.splitlines() + [""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if current:
                stanzas.append(current)
            current, key = {}, None
        elif raw[0] in " \t" and key:
            # A continuation line (deb822 folded field).
            current[key] += " " + raw.strip()
        elif ":" in raw:
            name, _, value = raw.partition(":")
            key = name.strip().lower()
            current[key] = value.strip()
    return stanzas


def parse_files(files: dict[str, str]) -> list[AptSource]:
    """Entries of sources files by path, in apt's order: sources.list, then the parts dir
    sorted by name; ``*.list`` are one-line style, ``*.sources`` deb822, others ignored."""
    found = []
    for path in sorted(files, key=lambda p: (not p.endswith("/sources.list"), p)):
        if path.endswith(".list"):
            found += parse_one_line(files[path])
        elif path.endswith(".sources"):
            found += parse_deb822(files[path])
    return found


# A shell command that prints every apt sources file, each after a "==> <path>" line.
LIST_COMMAND = (
    "for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list "
    '/etc/apt/sources.list.d/*.sources; do [ -f "$f" ] && printf \'\\n==> %s\\n\' "$f" '
    '&& cat "$f"; done; true'
)


def parse_listing(text: str) -> list[AptSource]:
    """Entries from the output of :data:`LIST_COMMAND` (run on another machine)."""
    files: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("==> "):
            current = files.setdefault(line[4:].strip(), [])
        elif current is not None:
            current.append(line)
    return parse_files({path: "\n".join(lines) for path, lines in files.items()})


def read_sources(root: Path = Path("/")) -> list[AptSource]:
    """Every entry of the apt sources under ``root``."""
    etc = root / "etc/apt"
    paths = [etc / "sources.list"]
    if (etc / "sources.list.d").is_dir():
        paths += (etc / "sources.list.d").iterdir()
    files = {str(p): p.read_text("utf-8", "replace") for p in paths if p.is_file()}
    return parse_files(files)


def debian_archives(
    sources: list[AptSource],
    where: str = "/etc/apt",
    schemes: tuple[str, ...] | None = ("http://", "https://"),
) -> tuple[str, str]:
    """The Debian mirror and security archive URIs (no trailing slash) of ``sources``.

    The mirror is the first binary (``deb``) entry of a Debian release suite, the security
    archive the first one of a ``<suite>-security`` suite (``<suite>/updates`` before
    bullseye). Only URIs of ``schemes`` count (debootstrap reads no ``mirror+file:``
    list); None takes any, for entries that the machine's own apt will read.
    """
    mirror = security = None
    for source in sources:
        if "deb" not in source.types:
            continue
        for uri in source.uris:
            if schemes is not None and not uri.startswith(schemes):
                continue
            uri = uri.rstrip("/")
            for suite in source.suites:
                if mirror is None and suite in DEBIAN_SUITES:
                    mirror = uri
                base, sep, _ = suite.partition("/updates")
                if security is None and (
                    suite.endswith("-security")
                    and suite[: -len("-security")] in DEBIAN_SUITES
                    or sep
                    and base in DEBIAN_SUITES
                ):
                    security = uri
    if mirror is None:
        raise AptSourcesError(
            f"no Debian archive (a 'deb' entry for a release such as bookworm) in the apt "
            f"sources of {where}; add your Debian mirror there"
        )
    if security is None:
        raise AptSourcesError(
            f"no Debian security archive (a 'deb' entry for bookworm-security or similar) "
            f"in the apt sources of {where}; add it there"
        )
    return mirror, security
