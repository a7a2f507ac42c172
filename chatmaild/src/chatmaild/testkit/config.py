"""Configs for tests and benchmarks: the ini ``cmdeploy init`` writes, pointed at a temporary
directory and with the resource checks of account creation switched off."""

from __future__ import annotations

from pathlib import Path

from chatmaild.config import Config, parse_config, render_initial_config

DOMAIN = "chat.example.org"


def settings(tmp_path: Path, **overrides) -> dict:
    """The ini keys that keep a test inside ``tmp_path``, then ``overrides``.

    doveauth refuses new accounts on a busy machine; the test machine may be busy, and the
    refusals have tests of their own (which override these keys)."""
    return {
        "mailboxes_dir": tmp_path / "mail",
        "nocreate_file": tmp_path / "nocreate",
        "max_load_1m": 1000,
        "min_available_memory": 0,
        "min_free_disk_space": 0,
        **overrides,
    }


def render_ini(tmp_path: Path, domain: str = DOMAIN, **overrides) -> str:
    """The text of a chatmail.ini for a test in ``tmp_path``; its mailboxes_dir is created."""
    values = settings(tmp_path, **overrides)
    Path(values["mailboxes_dir"]).mkdir(parents=True, exist_ok=True)
    return render_initial_config(domain, values)


def make_config(tmp_path: Path, domain: str = DOMAIN, **overrides) -> Config:
    """A parsed config for a test in ``tmp_path`` (no file written)."""
    return parse_config(render_ini(tmp_path, domain, **overrides))


def write_ini(tmp_path: Path, domain: str = DOMAIN, **overrides) -> Path:
    """``tmp_path/chatmail.ini`` for services started as processes; returns its path."""
    path = Path(tmp_path) / "chatmail.ini"
    path.write_text(render_ini(tmp_path, domain, **overrides))
    return path


def init_config(domain: str = DOMAIN, *, path: Path | None = None, **overrides) -> Config:
    """The config of the ini ``cmdeploy init`` writes for ``domain``, with ``overrides``
    (as if read from ``path``); for tests of what a relay's settings produce (templates,
    DNS records, web pages), which need no test directory."""
    return parse_config(render_initial_config(domain, overrides), path=path)
