"""filtermail throughput, added latency and peak RSS (prints figures; not a test).

    venv/bin/python bench/filtermail_bench.py [--clients 50] [--small 5000] [--large 200]

Starts a minimal SMTP sink (its own process, standing in for Postfix's reinject port),
the real ``filtermail <ini> outgoing`` console script in front of it, and a raw asyncio
SMTP client that sends encrypted PGP/MIME messages with N concurrent connections, one
message per connection (what Postfix's smtpd_proxy_filter does per client session).
Latency is measured once sequentially (one client: proxy vs. direct to the sink) and once
under load. Peak RSS is the proxy's VmHWM from /proc after each scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import smtpsink  # bench/ is on sys.path when a bench script runs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chatmaild" / "src"))

from chatmaild.testkit.mailgen import ALICE, BOB, armor, packet, partial_packet, pgp_mime  # noqa: E402
from chatmaild.testkit.procs import free_port  # noqa: E402

# --- sink: just enough SMTP to swallow messages quickly --------------------------------


# --- client -----------------------------------------------------------------------------


async def _send_one(port: int, data: bytes) -> float:
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:

        async def reply() -> bytes:
            while True:
                line = await reader.readuntil(b"\r\n")
                if line[3:4] != b"-":
                    return line

        await reply()
        for cmd in (
            b"EHLO bench",
            f"MAIL FROM:<{ALICE}>".encode(),
            f"RCPT TO:<{BOB}>".encode(),
            b"DATA",
        ):
            writer.write(cmd + b"\r\n")
            line = await reply()
            if line[:1] not in (b"2", b"3"):
                raise RuntimeError(f"{cmd!r}: {line!r}")
        writer.write(data)
        writer.write(b".\r\n")
        line = await reply()
        if not line.startswith(b"250"):
            raise RuntimeError(f"end of data: {line!r}")
        elapsed = time.perf_counter() - start
        writer.write(b"QUIT\r\n")
        await writer.drain()
        return elapsed
    finally:
        writer.close()


async def _load(port: int, data: bytes, total: int, clients: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            latencies.append(await _send_one(port, data))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - start, latencies


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


# --- orchestration ----------------------------------------------------------------------


def encrypted_message(size: int) -> bytes:
    rng = random.Random(size)
    body = rng.randbytes(max(100, int(size * 0.72) - 900))
    payload = packet(1, rng.randbytes(270)) + partial_packet(18, body, chunk_power=13)
    return pgp_mime(armor(payload))


def start_filtermail(tmp: Path, sink_port: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    ini = tmp / "chatmail.ini"
    ini.write_text(
        "[params]\nmail_domain = example.org\n"
        f"mailboxes_dir = {tmp}/mail\n"
        f"filtermail_smtp_port = {port}\npostfix_reinject_port = {sink_port}\n"
        f"postfix_reinject_port_local = {sink_port}\n"
        "max_user_send_per_minute = 1000000000\nmax_user_send_burst_size = 1000000000\n"
    )
    return smtpsink.spawn_filtermail(ini, "outgoing"), port


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scenario(name: str, data: bytes, total: int, clients: int, sink_port: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_filtermail(Path(tmp), sink_port)
        try:
            sequential = 50 if len(data) < 100_000 else 10
            direct = asyncio.run(_load(sink_port, data, sequential, 1))[1]
            proxied = asyncio.run(_load(port, data, sequential, 1))[1]
            elapsed, lat = asyncio.run(_load(port, data, total, clients))
            rss = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)
    print(
        f"\n{name}: {len(data) / 1024:.0f} KiB encrypted, {total} messages, {clients} concurrent clients"
    )
    print(
        f"  throughput           {total / elapsed:8.1f} msg/s  ({total * len(data) / elapsed / 2**20:.1f} MiB/s)"
    )
    print(f"  latency under load   p50 {pct(lat, 50):7.1f} ms   p99 {pct(lat, 99):7.1f} ms")
    print(
        f"  added latency (1 client, proxy minus direct)  "
        f"p50 {pct(proxied, 50) - pct(direct, 50):6.2f} ms   p99 {pct(proxied, 99) - pct(direct, 99):6.2f} ms"
    )
    print(f"  proxy peak RSS       {rss:8.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--small", type=int, default=5000, help="number of 10 KB messages")
    parser.add_argument("--large", type=int, default=200, help="number of 1 MB messages")
    args = parser.parse_args()
    sink_port = free_port()
    with smtpsink.running(sink_port):
        print(f"cpus: {os.cpu_count()}  python: {sys.version.split()[0]}")
        scenario("small", encrypted_message(10 * 1024), args.small, args.clients, sink_port)
        scenario("large", encrypted_message(1024 * 1024), args.large, args.clients, sink_port)


if __name__ == "__main__":
    main()
