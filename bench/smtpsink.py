"""The filtermail benches' surroundings: an SMTP sink and the real filtermail process.

The sink stands in for Postfix's reinject port: ``python bench/smtpsink.py PORT`` serves
until killed; ``running(port)`` starts that in its own process (so its CPU is not the
measured process's) and stops it by PID. ``spawn_filtermail`` starts the console script.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


async def _session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 sink\r\n")
    try:
        while True:
            line = await reader.readuntil(b"\r\n")
            verb = line[:4].upper()
            if verb == b"DATA":
                writer.write(b"354 go\r\n")
                await reader.readuntil(b"\r\n.\r\n")
                writer.write(b"250 2.0.0 Ok: queued\r\n")
            elif verb == b"EHLO":
                writer.write(b"250-sink\r\n250 8BITMIME\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 OK\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    # 64 MiB reads: a whole 30 MiB message fits one readuntil.
    server = await asyncio.start_server(_session, "127.0.0.1", port, limit=64 << 20, backlog=1024)
    print("sink ready", flush=True)
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def running(port: int) -> Iterator[None]:
    """The sink listening on ``port`` while the block runs."""
    proc = subprocess.Popen(
        [sys.executable, __file__, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        proc.stdout.readline()
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def spawn_filtermail(ini: Path, direction: str) -> subprocess.Popen:
    """``filtermail <ini> <direction>`` of this venv, listening when this returns."""
    exe = Path(sys.executable).parent / "filtermail"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "chatmaild.filtermail.proxy"]
    proc = subprocess.Popen([*cmd, str(ini), direction], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "entering serving loop" in line:
            break
    else:
        raise RuntimeError("filtermail did not start")
    # Keep draining stderr (one log line per message) so the proxy never blocks on it.
    subprocess.Popen(["cat"], stdin=proc.stderr, stdout=subprocess.DEVNULL)
    return proc


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
