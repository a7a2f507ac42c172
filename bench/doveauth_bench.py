"""Account creation figures: raw doveauth lookups/s and new-account IMAP logins/s.

Run: ``venv/bin/python bench/doveauth_bench.py [--logins N] [--concurrency C] [--dict-only]``.
The raw lookups run twice: with doveauth's cache of existing accounts disabled (as before
it) and as deployed.
Starts its own doveauth and Debian Dovecot on loopback (see chatmaild.testkit.dovecot_instance),
prints a table and stops everything it started. Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chatmaild.testkit.config import write_ini
from chatmaild.testkit.dovecot_instance import DOMAIN, DovecotInstance
from chatmaild.testkit.waiting import wait_until


def new_addr() -> str:
    return f"{secrets.token_hex(8)[:9]}@{DOMAIN}"


async def dict_client(sock: Path, keys: list[str], latencies: list[float]) -> None:
    reader, writer = await asyncio.open_unix_connection(str(sock))
    writer.write(b"H3\t2\t0\t\tauth\n")
    for key in keys:
        start = time.perf_counter()
        writer.write(f"L{key}\n".encode())
        await writer.drain()
        line = await reader.readline()
        latencies.append(time.perf_counter() - start)
        if not line.startswith(b"O"):
            raise RuntimeError(f"lookup failed: {line[:40]!r}")
    writer.close()


async def run_dict_lookups(sock: Path, keys: list[str], connections: int) -> tuple[float, list]:
    latencies: list[float] = []
    chunks = [keys[i::connections] for i in range(connections)]
    start = time.perf_counter()
    await asyncio.gather(*(dict_client(sock, chunk, latencies) for chunk in chunks))
    return time.perf_counter() - start, latencies


# doveauth as it was before its cache of existing accounts: every lookup takes the thread
# pool and reads the password file (the code is otherwise the same).
UNCACHED = (
    "import sys; from chatmaild import doveauth; from chatmaild.dictproxy import NOT_CACHED; "
    "doveauth.AuthDict.lookup_nowait = lambda self, key, user: NOT_CACHED; "
    "doveauth.main(sys.argv[1:])"
)


def bench_raw_doveauth(n: int, connections: int, cached: bool = True) -> list[tuple]:
    """Lookups straight over doveauth's socket, as Dovecot's auth process does them."""
    rows = []
    tag = "" if cached else " (no cache)"
    with tempfile.TemporaryDirectory(prefix="chatmail-bench-") as tmp:
        d = Path(tmp)
        ini = write_ini(d, DOMAIN)
        sock = d / "doveauth.socket"
        run = ["-m", "chatmaild.doveauth"] if cached else ["-c", UNCACHED]
        proc = subprocess.Popen(
            [sys.executable, *run, str(sock), str(ini)],
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(sock.exists, "doveauth socket", 15, proc=proc)
            addrs = [new_addr() for _ in range(n)]
            # Each from its own client IP, as Dovecot sends it: the per-IP creation limit
            # is checked (and allows) every one of them.
            new_keys = [
                f'shared/passdb/password123"{a}"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}'
                for i, a in enumerate(addrs)
            ]
            secs, lat = asyncio.run(run_dict_lookups(sock, new_keys, connections))
            rows.append((f"doveauth passdb, new account{tag}", n, secs, lat))
            secs, lat = asyncio.run(run_dict_lookups(sock, new_keys, connections))
            rows.append((f"doveauth passdb, existing{tag}", n, secs, lat))
            user_keys = [f"shared/userdb/{a}" for a in addrs]
            secs, lat = asyncio.run(run_dict_lookups(sock, user_keys, connections))
            rows.append((f"doveauth userdb, existing{tag}", n, secs, lat))
        finally:
            proc.terminate()
            proc.wait(10)
    return rows


async def imap_login(
    port: int, addr: str, password: str, latencies: list[float], client_ip: str | None = None
) -> None:
    """One LOGIN; with ``client_ip``, to the PROXY protocol listener claiming that IP."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if client_ip:
            writer.write(f"PROXY TCP4 {client_ip} 127.0.0.1 40000 143\r\n".encode())
        await reader.readline()  # greeting
        writer.write(f'a LOGIN {addr} "{password}"\r\n'.encode())
        while True:
            line = await reader.readline()
            if not line:
                raise RuntimeError("connection closed during LOGIN")
            if line.startswith(b"a "):
                break
        if not line.startswith(b"a OK"):
            raise RuntimeError(f"login failed: {line!r}")
        latencies.append(time.perf_counter() - start)
        writer.write(b"b LOGOUT\r\n")
        await writer.drain()
    finally:
        writer.close()


async def run_imap_logins(
    port: int, addrs: list[str], concurrency: int, own_ips: bool = False
) -> tuple[float, list]:
    latencies: list[float] = []
    queue = list(reversed(list(enumerate(addrs))))

    async def worker():
        while queue:
            i, addr = queue.pop()
            ip = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" if own_ips else None
            await imap_login(port, addr, "password123", latencies, ip)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies


def bench_imap(n: int, concurrency: int) -> list[tuple]:
    rows = []
    with DovecotInstance() as dovecot:
        addrs = [new_addr() for _ in range(n)]
        secs, lat = asyncio.run(run_imap_logins(dovecot.imap_port, addrs, concurrency))
        rows.append(("IMAP login, new account", n, secs, lat))
        created = sum(1 for a in addrs if (dovecot.mailboxes_dir / a / "password").exists())
        if created != n:
            raise RuntimeError(f"only {created} of {n} accounts were stored")
        secs, lat = asyncio.run(run_imap_logins(dovecot.imap_port, addrs, concurrency))
        rows.append(("IMAP login, existing account", n, secs, lat))
        # Through the PROXY protocol listener (as port 443 on the relay), every login from
        # another client IP, so that the per-IP creation limit is checked for each.
        proxied = [new_addr() for _ in range(n)]
        secs, lat = asyncio.run(
            run_imap_logins(dovecot.haproxy_port, proxied, concurrency, own_ips=True)
        )
        rows.append(("IMAP login, new, own IP each", n, secs, lat))
    return rows


def print_table(rows: list[tuple]) -> None:
    print(f"{'benchmark':42} {'n':>6} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, n, secs, lat in rows:
        lat = sorted(lat)
        p50 = statistics.median(lat) * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        print(f"{name:42} {n:6d} {n / secs:8.0f} {p50:8.1f} {p99:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=5000, help="raw doveauth lookups per run")
    parser.add_argument("--logins", type=int, default=2000, help="IMAP logins per run")
    parser.add_argument("--concurrency", type=int, default=50, help="parallel IMAP clients")
    parser.add_argument("--connections", type=int, default=8, help="parallel dict connections")
    parser.add_argument("--dict-only", action="store_true", help="skip the IMAP logins")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load before start {os.getloadavg()[0]:.2f}")
    rows = bench_raw_doveauth(args.lookups, args.connections, cached=False)
    rows += bench_raw_doveauth(args.lookups, args.connections)
    if not args.dict_only:
        rows += bench_imap(args.logins, args.concurrency)
    print_table(rows)


if __name__ == "__main__":
    main()
