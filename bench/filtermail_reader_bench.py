"""Cost of filtermail's DATA reader on hostile 30 MiB inputs (prints figures; not a test).

    venv/bin/python bench/filtermail_reader_bench.py [--size-mib 30] [--impl FILE]

Each case runs in its own process: the wire bytes are built first, then fed to
``GateSMTP._read_content`` through an asyncio StreamReader in 256 KiB pieces (what one
socket read delivers) with the same back-pressure a transport applies. Printed: CPU
seconds of the read, and how far peak RSS (VmHWM) rose above the RSS before it (the input
itself excluded), also as a multiple of the input size. ``--impl`` loads GateSMTP from another file of the package (e.g. an older
proxy.py saved elsewhere) to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chatmaild" / "src"))

FEED = 1 << 18

CASES = {
    "short lines": "ab\\r\\n",
    "dot-stuffed lines": "..\\r\\n",
    "empty lines": "\\r\\n",
    "near-miss ends": "\\r\\n.\\rx",
    "one line, no CRLF": "x",
}


def wire_for(case: str, size: int) -> bytes:
    unit = CASES[case].encode().decode("unicode_escape").encode("latin-1")
    body = unit * (size // len(unit))
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\nQUIT\r\n"


def load_gate_smtp(impl: str | None):
    if impl is None:
        from chatmaild.filtermail.smtpserver import GateSMTP

        return GateSMTP
    # Loaded as a module of the package so its relative imports resolve.
    spec = importlib.util.spec_from_file_location("chatmaild.filtermail._bench_impl", impl)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GateSMTP


def vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field}")


async def read_once(gate_smtp, wire: bytes) -> tuple[int, bytes]:
    smtp = gate_smtp(object(), data_size_limit=None, loop=asyncio.get_running_loop())
    reader = asyncio.StreamReader(limit=smtp.line_length_limit)
    smtp._reader = reader

    async def feed() -> None:
        view = memoryview(wire)
        for pos in range(0, len(wire), FEED):
            reader.feed_data(bytes(view[pos : pos + FEED]))
            # A transport stops reading from the socket while the buffer is this full.
            while len(reader._buffer) > 2 * reader._limit:
                await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.ensure_future(feed())
    content = await smtp._read_content()
    await feeder
    return len(content), await reader.read()


def run_case(case: str, size: int, impl: str | None) -> None:
    gate_smtp = load_gate_smtp(impl)
    wire = wire_for(case, size)
    # Building the wire left a high-water mark of its own: count from the current RSS.
    before = vm("VmRSS")
    cpu = time.process_time()
    length, rest = asyncio.run(read_once(gate_smtp, wire))
    cpu = time.process_time() - cpu
    growth = vm("VmHWM") - before
    assert rest == b"QUIT\r\n", rest[:40]
    print(
        f"  {case:20s} content {length / 2**20:6.1f} MiB   cpu {cpu:6.2f} s   "
        f"peak RSS +{growth / 2**20:6.1f} MiB ({growth / len(wire):.2f}x input)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=30)
    parser.add_argument("--impl", help="file to load GateSMTP from instead of smtpserver.py")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.size_mib << 20
    if args.case:
        run_case(args.case, size, args.impl)
        return
    print(f"DATA reader: {args.impl or 'chatmaild.filtermail.smtpserver'}, {args.size_mib} MiB")
    for case in CASES:
        cmd = [sys.executable, __file__, "--size-mib", str(args.size_mib), "--case", case]
        if args.impl:
            cmd += ["--impl", args.impl]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
