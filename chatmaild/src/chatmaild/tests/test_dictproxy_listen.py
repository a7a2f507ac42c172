"""The dict socket appears only once it accepts connections."""

import asyncio
import os
import socket

from chatmaild import dictproxy
from chatmaild.dictproxy import DictHandler, DictProxyServer


def test_socket_file_appears_only_when_listening(tmp_path, monkeypatch):
    path = tmp_path / "dict.socket"
    path.write_text("left over by a killed service")
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        # The moment the final name appears: a client must be able to connect already.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(src))
        seen.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(dictproxy.os, "replace", replace)
    server = DictProxyServer(DictHandler(), path)

    async def main():
        ready = asyncio.Event()
        task = asyncio.ensure_future(server.serve(ready))
        await asyncio.wait_for(ready.wait(), 10)
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"H3\t2\t0\t\ttest\nLshared/x\n")
        line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return line

    try:
        assert asyncio.run(main()) == b"N\n"
    finally:
        server.executor.shutdown()
    assert seen == [(str(path) + ".new", str(path))]
    assert not (tmp_path / "dict.socket.new").exists()


def test_a_burst_of_connections_waits_in_the_backlog(tmp_path):
    """While the server is busy (it accepts nothing), 300 connects still succeed."""
    path = tmp_path / "dict.socket"
    server = DictProxyServer(DictHandler(), path)

    async def main():
        ready = asyncio.Event()
        task = asyncio.ensure_future(server.serve(ready))
        await asyncio.wait_for(ready.wait(), 10)
        clients = []
        try:
            # The event loop is ours and blocked here, so nothing is accepted meanwhile.
            for _ in range(300):
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                c.setblocking(False)
                clients.append(c)
                c.connect(str(path))  # BlockingIOError once the backlog is full
        finally:
            for c in clients:
                c.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return len(clients)

    assert asyncio.run(main()) == 300
