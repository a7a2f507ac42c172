"""Dot-stuffing of the reinject client (RFC 5321 §4.5.2) across its write chunks."""

import asyncio

import pytest

from chatmaild.filtermail import reinject


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data

    async def drain(self) -> None:
        pass


def _unstuff(wire: bytes) -> bytes:
    assert wire.endswith(b"\r\n.\r\n")
    body = wire[: -len(b".\r\n")]
    lines = body.split(b"\n")
    return b"\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def _stuffed(data: bytes) -> bytes:
    writer = _Writer()
    asyncio.run(reinject._write_dot_stuffed(writer, data))
    return bytes(writer.out)


@pytest.mark.parametrize("offset", [-2, -1, 0, 1])
def test_dot_at_chunk_boundary_is_stuffed(offset):
    chunk = reinject._WRITE_CHUNK
    head = b"x" * (chunk + offset - 2) + b"\r\n"
    data = head + b".\r\n.hidden\r\nend\r\n"
    wire = _stuffed(data)
    # No line of the transmission is a lone dot before the end: nothing is cut early.
    assert b"\r\n.\r\n" not in wire[:-3]
    assert _unstuff(wire) == data


def test_long_line_and_bare_lf_dots():
    data = b"." + b"y" * (3 * reinject._WRITE_CHUNK) + b"\n.\n..\r\n"
    wire = _stuffed(data)
    assert wire.startswith(b"..")
    assert b"\n.\n" not in wire
    assert _unstuff(wire) == data
