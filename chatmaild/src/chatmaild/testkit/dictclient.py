"""The Dovecot dict protocol from the client's side, and a dict service to serve: for the
tests of chatmaild.dictproxy and of the handlers on top of it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from chatmaild.dictproxy import DictFailure, DictHandler, DictProxyServer
from chatmaild.testkit.waiting import wait_until


class MemoryDict(DictHandler):
    """A dict service keeping values in memory; 'slow' keys take a while to look up."""

    def __init__(self):
        self.data = {"shared/answer": "42", "shared/tab\tkey": "a\tb\nc"}
        self.sets = []

    def lookup(self, key, user):
        if key.startswith("shared/slow"):
            time.sleep(0.3)
            return "slow"
        if key == "shared/fail":
            raise DictFailure("broken")
        if key == "shared/crash":
            raise RuntimeError("bug")
        return self.data.get(key)

    def iterate(self, path, user):
        return [(k, v) for k, v in sorted(self.data.items()) if k.startswith(path)]

    def set(self, user, key, value):
        self.sets.append((user, key, value))
        if key == "shared/readonly":
            return False
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value
        return True


class Client:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(5)
        self.sock.connect(str(path))
        self.buf = b""

    def send(self, line: str | bytes):
        data = line if isinstance(line, bytes) else line.encode()
        self.sock.sendall(data + b"\n")

    def readline(self) -> str:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def request(self, line) -> str:
        self.send(line)
        return self.readline()

    def expect_silence(self, seconds=0.2):
        self.sock.settimeout(seconds)
        try:
            assert self.sock.recv(100) == b"", "unexpected reply"
        except TimeoutError:
            pass
        finally:
            self.sock.settimeout(5)

    def close(self):
        self.sock.close()


@contextlib.contextmanager
def served(handler: DictHandler, socket_path: Path) -> Iterator[Callable[[], Client]]:
    """``handler`` behind a DictProxyServer on ``socket_path`` (its event loop in a thread)
    for the block, which gets a function that connects a new :class:`Client`."""
    server = DictProxyServer(handler, socket_path, workers=8)
    loop = asyncio.new_event_loop()
    ready = asyncio.Event()
    task = loop.create_task(server.serve(ready))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    wait_until(ready.is_set, "the dict server to listen", 5)
    clients = []

    def connect() -> Client:
        c = Client(server.socket_path)
        clients.append(c)
        return c

    try:
        yield connect
    finally:
        for c in clients:
            c.close()

        async def shutdown():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        server.executor.shutdown()
