"""The test kit's pytest plugin: fixtures shared by the test trees of chatmaild and cmdeploy.

Registered once, by the repository's conftest.py (``pytest_plugins``); a test module's own
fixture of the same name takes precedence, as the online suite's ``config`` does.
"""

from __future__ import annotations

import pytest

from chatmaild.config import Config
from chatmaild.testkit.config import make_config


@pytest.fixture
def config(tmp_path) -> Config:
    """A config for this test: mailboxes in ``tmp_path/mail``, no resource refusals."""
    return make_config(tmp_path)


@pytest.fixture
def no_proxy(monkeypatch) -> None:
    """Requests to the local push server go direct, whatever proxy the environment names."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
