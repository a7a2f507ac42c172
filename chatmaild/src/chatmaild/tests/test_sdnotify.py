"""READY=1 reaches systemd only once a service answers on its socket (Type=notify units)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chatmaild import dictproxy, sdnotify
from chatmaild.config import parse_config
from chatmaild.filtermail import proxy
from chatmaild.testkit.procs import free_port, stop_process
from chatmaild.testkit.waiting import wait_until


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A datagram socket standing in for systemd's, named in $NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def _console_script(name: str, module: str) -> list[str]:
    script = shutil.which(name, path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", module]


def _ini(tmp_path: Path, **settings) -> Path:
    ini = tmp_path / "chatmail.ini"
    settings = {"mail_domain": "example.org", "mailboxes_dir": str(tmp_path / "mail"), **settings}
    ini.write_text("[params]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    return ini


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False


def test_ready_is_one_datagram(notify_socket):
    assert sdnotify.ready() is True
    assert notify_socket.recv(100) == b"READY=1"


def test_abstract_socket_address(monkeypatch):
    name = f"chatmail-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready() is True
        assert sock.recv(100) == b"READY=1"


def test_unreachable_notify_socket_does_not_raise(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.ready() is False


def test_dict_service_sends_ready_only_when_its_socket_answers(tmp_path, notify_socket):
    dict_socket = tmp_path / "lastlogin.socket"
    cmd = _console_script("lastlogin", "chatmaild.lastlogin")
    proc = subprocess.Popen([*cmd, str(dict_socket), str(_ini(tmp_path))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert notify_socket.recv(100) == b"READY=1"
        # Right at READY, without waiting: a connection is accepted and a request answered.
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(10)
            conn.connect(str(dict_socket))
            conn.sendall(b"H3\t2\t0\t\tlastlogin\nI0\t0\tshared/nothing\n")
            assert conn.recv(100) == b"\n"  # the end of an empty iteration
    finally:
        stop_process(proc)


def test_filtermail_sends_ready_only_when_it_greets(tmp_path, notify_socket):
    port = free_port()
    ini = _ini(tmp_path, filtermail_smtp_port=port, postfix_reinject_port=free_port())
    cmd = _console_script("filtermail", "chatmaild.filtermail.proxy")
    proc = subprocess.Popen([*cmd, str(ini), "outgoing"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert notify_socket.recv(100) == b"READY=1"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            assert conn.recv(100).startswith(b"220 ")
    finally:
        stop_process(proc)


# In-process, deterministic: at the very moment the service calls ready(), a connection
# must already succeed (the black-box tests above could pass by luck of scheduling).


def test_dictproxy_calls_ready_after_listening(tmp_path, monkeypatch):
    path = tmp_path / "dict.socket"
    seen = []

    def ready() -> bool:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(str(path))
        seen.append("connected")
        raise asyncio.CancelledError  # stop serving: the check is done

    monkeypatch.setattr(dictproxy.sdnotify, "ready", ready)
    server = dictproxy.DictProxyServer(dictproxy.DictHandler(), path, workers=1)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(server.serve())
    server.executor.shutdown()
    assert seen == ["connected"]


def test_filtermail_calls_ready_after_listening(tmp_path, monkeypatch):
    port = free_port()
    config = parse_config((_ini(tmp_path, filtermail_smtp_port=port)).read_text())
    seen = []

    def ready() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        seen.append("connected")
        raise asyncio.CancelledError

    monkeypatch.setattr(proxy.sdnotify, "ready", ready)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(proxy.serve(config, "outgoing"))
    assert seen == ["connected"]


def _lastlogin_request(path: Path) -> bytes:
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(20)
        conn.connect(str(path))
        conn.sendall(b"H3\t2\t0\t\tlastlogin\nI0\t0\tshared/nothing\n")
        return conn.recv(100)


@pytest.mark.skipif(not shutil.which("systemd-socket-activate"), reason="needs systemd")
def test_dict_service_serves_the_socket_systemd_passed(tmp_path):
    """systemd's own socket activation tool listens and starts the service only at the
    first connection: that request waits in the backlog and is answered, as with a socket
    unit while the service restarts; the service never binds its own path."""
    own_path = tmp_path / "not-used.socket"
    cmd = _console_script("lastlogin", "chatmaild.lastlogin")
    for attempt in range(2):
        dict_socket = tmp_path / f"lastlogin-{attempt}.socket"
        activator = subprocess.Popen(
            ["systemd-socket-activate", "-l", str(dict_socket), *cmd, str(own_path),
             str(_ini(tmp_path))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_until(dict_socket.exists, "the activated socket", 10, interval=0.05)
            assert _lastlogin_request(dict_socket) == b"\n", attempt
            assert not own_path.exists()
        finally:
            stop_process(activator)


def test_listen_socket_ignores_variables_meant_for_another_process(monkeypatch):
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert sdnotify.listen_socket() is None
