"""Hostile message shapes against the real ``filtermail <ini> incoming`` (prints a table).

    venv/bin/python bench/filtermail_hostile.py [--size-mib 29.9]

For each shape it starts a fresh console-script process (so VmHWM is that shape's peak),
an SMTP sink stands in for Postfix's reinject port, and a raw client sends one message
over SMTP like a remote relay on port 25 would. Printed per shape: message size, the
proxy's final reply, its peak RSS (VmHWM) and its idle RSS, and the CPU seconds
(utime + stime from /proc/<pid>/stat) spent between MAIL FROM and the final reply,
which covers reading DATA and the gate. Not a test: figures only.

The generators are written out here rather than imported from the test package.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import smtpsink  # bench/ is on sys.path when a bench script runs
from chatmaild.testkit.mailgen import new_length, partial_packet

CRLF = b"\r\n"
RCPT = "bob@example.org"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# --- message generators -----------------------------------------------------------------


def armor(payload: bytes) -> bytes:
    b64 = base64.b64encode(payload)
    lines = [b"-----BEGIN PGP MESSAGE-----", b""]
    lines += [b64[i : i + 76] for i in range(0, len(b64), 76)]
    lines.append(b"-----END PGP MESSAGE-----")
    return CRLF.join(lines) + CRLF


TOP = (
    b"From: carol@example.net\r\nTo: bob@example.org\r\nSubject: ...\r\n"
    b"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <hostile@example.net>\r\n"
    b"MIME-Version: 1.0\r\n"
)
ENCRYPTED_CT = (
    b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="B"\r\n'
)


def pgp_mime(armored: bytes) -> bytes:
    return (
        TOP
        + ENCRYPTED_CT
        + b"\r\n--B\r\nContent-Type: application/pgp-encrypted\r\n"
        + b"Content-Description: PGP/MIME version identification\r\n\r\nVersion: 1\r\n"
        + b'--B\r\nContent-Type: application/octet-stream; name="encrypted.asc"\r\n'
        + b"Content-Description: OpenPGP encrypted message\r\n"
        + b'Content-Disposition: inline; filename="encrypted.asc";\r\n\r\n'
        + armored
        + b"\r\n--B--\r\n"
    )


def valid_encrypted(size: int) -> bytearray:
    rng = random.Random(size)
    pkesk = bytes([0xC0 | 1]) + new_length(270) + rng.randbytes(270)
    body = rng.randbytes(max(100, int(size * 0.73) - 1500))
    return bytearray(
        pgp_mime(armor(pkesk + partial_packet(18, body, 13)))
    )  # SEIPD (tag 18), 8 KiB chunks


def fill(head: bytes, unit: bytes, size: int, tail: bytes = b"") -> bytearray:
    data = bytearray(head)
    data += unit * max(0, (size - len(head) - len(tail)) // len(unit))
    data += tail
    return data


def many_parts(size: int) -> bytearray:
    return fill(TOP + ENCRYPTED_CT + CRLF, b"--B\r\n\r\n", size)


def many_headers(size: int) -> bytearray:
    return fill(b"", b"X: y\r\n", size, TOP + ENCRYPTED_CT + CRLF)


def many_folded_lines(size: int) -> bytearray:
    return fill(TOP + ENCRYPTED_CT + b"X: y\r\n", b" z\r\n", size, CRLF)


def huge_header(size: int) -> bytearray:
    return fill(TOP + ENCRYPTED_CT + b"X-Big: ", b"x" * 1024, size, CRLF + CRLF)


def deep_nesting(size: int) -> bytearray:
    data = bytearray(TOP + b'Content-Type: multipart/mixed; boundary="0"\r\n\r\n')
    level = 0
    while len(data) < size - 100:
        data += b'--%d\r\nContent-Type: multipart/mixed; boundary="%d"\r\n\r\n' % (level, level + 1)
        level += 1
    return data


def long_armor_line(size: int) -> bytearray:
    head = (
        TOP
        + ENCRYPTED_CT
        + b"\r\n--B\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
        + b"--B\r\nContent-Type: application/octet-stream\r\n\r\n"
        + b"-----BEGIN PGP MESSAGE-----\r\n\r\n"
    )
    return fill(head, b"A" * 1024, size, b"\r\n-----END PGP MESSAGE-----\r\n--B--\r\n")


def long_lines(size: int) -> bytearray:
    """Body lines of 900 bytes (under SMTP's 1000 limit) in a cleartext message."""
    return fill(TOP + b"Content-Type: text/plain\r\n\r\n", b"x" * 898 + CRLF, size)


def packet_flood(size: int) -> bytearray:
    flood = b"\xc1\x00" * int(size * 0.73 / 2) + bytes([0xC0 | 18, 1, 0])
    return bytearray(pgp_mime(armor(flood)))


SHAPES: list[tuple[str, Callable[[int], bytearray], bool, bool]] = [
    # (name, generator, sized, recipient enforces E2EE): unsized is the small baseline.
    ("baseline 10 KiB valid", lambda _: valid_encrypted(10 * 1024), False, True),
    ("valid encrypted", valid_encrypted, True, True),
    ("many empty parts", many_parts, True, True),
    ("many short headers", many_headers, True, True),
    ("many folded lines", many_folded_lines, True, True),
    ("one huge header", huge_header, True, True),
    ("deep nesting", deep_nesting, True, True),
    ("one long armor line", long_armor_line, True, True),
    ("long lines (cleartext)", long_lines, True, True),
    ("packet-header flood", packet_flood, True, True),
    # Cleartext to an account without enforceE2EEincoming is accepted and re-injected:
    # this row measures the proxy's reinject path, not the gate.
    ("one long line, reinjected", long_armor_line, True, False),
]

# --- sink and client --------------------------------------------------------------------


def dot_stuff(data: bytes | bytearray) -> bytes:
    """RFC 5321 §4.5.2 transparency, plus a final CRLF if missing."""
    out = bytes(data)
    if not out.endswith(CRLF):
        out += CRLF
    out = out.replace(b"\r\n.", b"\r\n..")
    if out.startswith(b"."):
        out = b"." + out
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def send(port: int, pid: int, data: bytes) -> tuple[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)

    async def reply() -> str:
        while True:
            line = await reader.readuntil(b"\r\n")
            if line[3:4] != b"-":
                return line.decode(errors="replace").strip()

    try:
        await reply()
        cpu0 = cpu_seconds(pid)
        for cmd in (
            b"EHLO bench.example.net",
            b"MAIL FROM:<carol@example.net>",
            b"RCPT TO:<%s>" % RCPT.encode(),
            b"DATA",
        ):
            writer.write(cmd + CRLF)
            line = await reply()
            if line[:1] not in "23":
                return f"{cmd.decode()}: {line}", cpu_seconds(pid) - cpu0
        writer.write(dot_stuff(data))
        writer.write(b".\r\n")
        try:
            line = await asyncio.wait_for(reply(), 120)
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            line = f"connection closed ({type(e).__name__})"
        cpu = cpu_seconds(pid) - cpu0
        writer.write(b"QUIT\r\n")
        return line, cpu
    finally:
        writer.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_filtermail(tmp: Path, sink_port: int, enforcing: bool) -> tuple[subprocess.Popen, int]:
    port = free_port()
    # The recipient is an existing account (incoming refuses unknown ones at RCPT).
    account = tmp / "mail" / "example.org" / RCPT
    account.mkdir(parents=True)
    (account / "password").write_text("x")
    if enforcing:
        (account / "enforceE2EEincoming").touch()
    ini = tmp / "chatmail.ini"
    ini.write_text(
        "[params]\nmail_domain = example.org\n"
        f"mailboxes_dir = {tmp}/mail/example.org\n"
        f"filtermail_smtp_port_incoming = {port}\npostfix_reinject_port_incoming = {sink_port}\n"
    )
    return smtpsink.spawn_filtermail(ini, "incoming"), port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size-mib", type=float, default=29.9, help="size of the hostile shapes (default 29.9)"
    )
    args = parser.parse_args()
    size = int(args.size_mib * 1024 * 1024)
    sink_port = free_port()
    with smtpsink.running(sink_port):
        print(f"cpus: {os.cpu_count()}  python: {sys.version.split()[0]}  filtermail incoming")
        print(f"{'shape':24} {'size MiB':>8}  {'idle MB':>7} {'peak MB':>7} {'CPU s':>6}  reply")
        for name, gen, sized, enforcing in SHAPES:
            data = gen(size if sized else 0)
            with tempfile.TemporaryDirectory() as tmp:
                proc, port = start_filtermail(Path(tmp), sink_port, enforcing)
                try:
                    time.sleep(0.2)
                    idle = status_mb(proc.pid, "VmRSS")
                    reply, cpu = asyncio.run(send(port, proc.pid, data))
                    peak = status_mb(proc.pid, "VmHWM")
                finally:
                    proc.terminate()
                    proc.wait(10)
            print(
                f"{name:24} {len(data) / 2**20:8.2f}  {idle:7.1f} {peak:7.1f} {cpu:6.2f}  {reply[:70]}",
                flush=True,
            )


if __name__ == "__main__":
    main()
