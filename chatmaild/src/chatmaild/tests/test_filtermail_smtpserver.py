"""The bulk DATA reader and the shared memory budget of filtermail's SMTP server."""

from __future__ import annotations

import asyncio

import pytest

from chatmaild.filtermail.smtpserver import NO_MEMORY, TOO_BIG, GateSMTP, MemoryBudget


def read(wire: bytes, pieces: int = 1, limit: int | None = None, budget=None):
    """Feed ``wire`` in ``pieces`` splits (every split point, when pieces is 0)."""

    async def run():
        smtp = GateSMTP(
            object(), data_size_limit=limit, budget=budget, loop=asyncio.get_running_loop()
        )
        reader = asyncio.StreamReader()
        smtp._reader = reader

        async def feed():
            step = 1 if pieces == 0 else max(1, -(-len(wire) // pieces))
            for pos in range(0, len(wire), step):
                reader.feed_data(wire[pos : pos + step])
                await asyncio.sleep(0)
            reader.feed_eof()

        feeder = asyncio.ensure_future(feed())
        content = await smtp._read_content()
        await feeder
        rest = await reader.read()
        return (None if content is None else bytes(content)), rest, smtp

    return asyncio.run(run())


@pytest.mark.parametrize("pieces", [1, 2, 3, 0])
@pytest.mark.parametrize(
    ("wire", "content"),
    [
        (b".\r\n", b""),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"\r\n.\r\n", b"\r\n"),
        (b"a\r\n.\r\n", b"a\r\n"),
        (b"a\r\n..b\r\n...\r\n.\r\n", b"a\r\n.b\r\n..\r\n"),
        (b"a\r\n.\rb\r\n.\r\n", b"a\r\n\rb\r\n"),  # ".\r" without LF is no end
        (b"a\n.\nb\r\n.\r\n", b"a\n.\nb\r\n"),  # bare LF ends nothing, unstuffs nothing
        (b"x" * 300_000 + b"\r\n.\r\n", b"x" * 300_000 + b"\r\n"),
    ],
)
def test_data_ends_at_the_first_lone_dot_and_pipelined_commands_stay(wire, content, pieces):
    got, rest, smtp = read(wire + b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", pieces)
    assert got == content
    assert rest == b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"


def test_budget_is_held_while_the_message_is_in_hand_and_refusal_keeps_sync():
    budget = MemoryBudget(1000)
    got, rest, smtp = read(b"x" * 600 + b"\r\n.\r\nNOOP\r\n", 3, budget=budget)
    assert len(got) == 602 and rest == b"NOOP\r\n"
    assert budget.used == 602 and smtp._held == 602
    smtp._release()
    assert budget.used == 0

    budget.take(500)  # another session holds half of it
    got, rest, smtp = read(b"y" * 600 + b"\r\n.\r\nNOOP\r\n", 3, budget=budget)
    assert (got, rest, smtp.data_refusal) == (None, b"NOOP\r\n", NO_MEMORY)
    assert budget.used == 500  # what the refused message took is given back already


def test_too_big_wins_over_the_budget():
    budget = MemoryBudget(100)
    got, rest, smtp = read(b"z" * 400 + b"\r\n.\r\nQUIT\r\n", 4, limit=300, budget=budget)
    assert (got, rest, smtp.data_refusal) == (None, b"QUIT\r\n", TOO_BIG)
    assert budget.used == 0


def test_a_connection_lost_mid_data_gives_the_budget_back():
    budget = MemoryBudget(None)
    with pytest.raises(asyncio.IncompleteReadError):
        read(b"a" * 5000 + b"\r\n.", 5, budget=budget)
    assert budget.used == 0
