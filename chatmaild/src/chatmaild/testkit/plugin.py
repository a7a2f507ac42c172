"""The test kit's pytest plugin: fixtures shared by the test trees of chatmaild and cmdeploy.

Registered once, by the repository's conftest.py (``pytest_plugins``); a test module's own
fixture of the same name takes precedence, as the online suite's ``config`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from aiosmtpd.controller import Controller

from chatmaild.config import Config
from chatmaild.testkit import dictclient
from chatmaild.testkit.config import make_config
from chatmaild.testkit.filtermail import Filtermail, SinkHandler
from chatmaild.testkit.procs import free_port


@pytest.fixture
def config(tmp_path) -> Config:
    """A config for this test: mailboxes in ``tmp_path/mail``, no resource refusals."""
    return make_config(tmp_path)


@pytest.fixture
def no_proxy(monkeypatch) -> None:
    """Requests to the local push server go direct, whatever proxy the environment names."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[dictclient.MemoryDict, Callable]]:
    """A MemoryDict behind the dict protocol server, and a function that connects a client."""
    handler = dictclient.MemoryDict()
    with dictclient.served(handler, tmp_path / "dict.socket") as connect:
        yield handler, connect


@pytest.fixture
def sink() -> Iterator[SinkHandler]:
    """An SMTP listener in place of Postfix's reinject port (``.port``, ``.received``)."""
    handler = SinkHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), data_size_limit=None)
    controller.start()
    handler.port = controller.port
    handler.controller = controller
    try:
        yield handler
    finally:
        handler.controller.stop()


@pytest.fixture
def start_filtermail(tmp_path) -> Iterator[Callable[..., Filtermail]]:
    """``start(mode, reinject_port, **ini_overrides)``: a filtermail process, stopped after."""
    started: list[Filtermail] = []

    def start(mode: str, reinject_port: int, **overrides) -> Filtermail:
        fm = Filtermail(tmp_path, mode, reinject_port, **overrides)
        started.append(fm)
        return fm

    yield start
    for fm in started:
        fm.stop()
