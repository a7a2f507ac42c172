"""Server side of Dovecot's dict proxy protocol, on a unix socket.

One line per request, the first byte is the command, fields are TAB separated and
tab-escaped (Dovecot ``str_tabescape``: ``\\x01`` introduces ``1 t r n 0``). Commands
(Dovecot 2.3 ``lib-dict/dict-client.h``):

- ``H<major>\\t<minor>\\t<value type>\\t<user>\\t<dict>``: hello, no reply;
- ``L<key>[\\t<user>]``: lookup, reply ``O<value>`` / ``N`` / ``F<error>``;
- ``I<flags>\\t<max rows>\\t<path>[\\t<user>]``: iterate, reply ``O<key>\\t<value>`` rows and
  an empty line, or ``F`` after the rows when the listing failed;
- ``B<id>[\\t<user>]`` begin, ``S<id>\\t<key>\\t<value>`` set, ``U<id>\\t<key>`` unset,
  ``R<id>`` rollback (no replies); ``C<id>`` / ``D<id>`` commit (sync / async), reply
  ``O<id>`` or ``F<id>``.

Dovecot pipelines requests on one connection and matches replies by order, so requests run
concurrently in a thread pool but replies are written in request order. Transactions are
per connection (Dovecot reuses id 1 on every connection). A commit waits for earlier requests
of its connection and later requests wait for the commit, so a lookup sees earlier writes.

A handler may answer a lookup without a thread (:meth:`DictHandler.lookup_nowait`, e.g. from
a cache): that reply is written at once when nothing is pending on the connection. The thread
hop and the reply queue cost more than the lookup itself (doveauth: ~4.7k lookups/s through
them, see bench/doveauth_bench.py).

Malformed input is logged and answered with a failure where the peer waits for a reply; it
never ends the service. Request contents are never logged: lookup keys carry passwords.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import sdnotify
from .config import Config, read_config

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024
# Connections waiting to be accepted: a burst of Dovecot processes connecting at once.
BACKLOG = 1000
MAX_PENDING_PER_CONNECTION = 256

_UNESCAPE = {"1": "\x01", "t": "\t", "r": "\r", "n": "\n", "0": "\x00"}
_ESCAPE = {"\x01": "\x011", "\t": "\x01t", "\r": "\x01r", "\n": "\x01n", "\x00": "\x010"}
# Above this many unsent bytes an immediate reply waits for the peer to read.
WRITE_HIGH_WATER = 64 * 1024

# lookup_nowait's answer when the lookup needs the thread pool.
NOT_CACHED = type("NotCached", (), {"__repr__": lambda self: "NOT_CACHED"})()


def tabunescape(text: str) -> str:
    if "\x01" not in text:
        return text
    out = []
    it = iter(text)
    for ch in it:
        if ch == "\x01":
            nxt = next(it, "")
            out.append(_UNESCAPE.get(nxt, nxt))
        else:
            out.append(ch)
    return "".join(out)


def tabescape(text: str) -> str:
    if not any(c in text for c in _ESCAPE):
        return text
    return "".join(_ESCAPE.get(c, c) for c in text)


class DictFailure(Exception):
    """Raised by a handler to answer ``F`` (a failure Dovecot reports, not a crash)."""


class DictHandler:
    """What a dict service answers; subclasses override the operations they support."""

    def lookup(self, key: str, user: str | None) -> str | None:
        log.warning("lookup ignored: unsupported key namespace")
        return None

    def lookup_nowait(self, key: str, user: str | None):
        """The value (or None) if known without blocking, else NOT_CACHED; runs on the loop."""
        return NOT_CACHED

    def iterate(self, path: str, user: str | None) -> Iterable[tuple[str, str]]:
        return ()

    def set(self, user: str | None, key: str, value: str | None) -> bool:
        """Apply one write of a committed transaction (value None = unset)."""
        log.warning("set ignored: this dict is read-only")
        return False

    def close(self) -> None:
        """Stop what the handler started (threads), once the server has stopped."""


@dataclass
class _Transaction:
    user: str | None
    ops: list[tuple[str, str | None]] = field(default_factory=list)
    failed: bool = False


class _Connection:
    """Per-connection state: open transactions and the ordered reply pipeline."""

    def __init__(self, server: DictProxyServer, writer: asyncio.StreamWriter):
        self.server = server
        self.writer = writer
        self.transactions: dict[str, _Transaction] = {}
        self.replies: asyncio.Queue = asyncio.Queue()
        self.inflight: list[asyncio.Future] = []
        self.barrier: asyncio.Future | None = None
        self.slots = asyncio.Semaphore(MAX_PENDING_PER_CONNECTION)
        # Replies queued and not yet written: while there are any, a new reply must queue.
        self.pending = 0

    async def write_replies(self) -> None:
        while True:
            fut = await self.replies.get()
            if fut is None:
                return
            try:
                reply = await fut
            except Exception:
                log.exception("dict request failed")
                reply = None
            finally:
                self.slots.release()
            try:
                if reply:
                    try:
                        self.writer.write(reply.encode("utf-8"))
                        await self.writer.drain()
                    except (ConnectionError, RuntimeError):
                        return
            finally:
                self.pending -= 1

    async def submit(self, reply_for, *args, barrier: bool = False) -> None:
        """Queue a request whose reply text comes from ``reply_for(*args)`` in a thread."""
        await self.slots.acquire()
        self.pending += 1
        loop = asyncio.get_running_loop()
        before = self.barrier
        if barrier:
            before_all = [f for f in self.inflight if not f.done()]
            if before is not None:
                before_all.append(before)

            async def run():
                if before_all:
                    await asyncio.wait(before_all)
                return await loop.run_in_executor(self.server.executor, reply_for, *args)
        else:

            async def run():
                if before is not None:
                    await asyncio.wait([before])
                return await loop.run_in_executor(self.server.executor, reply_for, *args)

        fut = asyncio.ensure_future(run())
        if barrier:
            self.barrier = fut
            self.inflight = []
        else:
            self.inflight = [f for f in self.inflight if not f.done()]
            self.inflight.append(fut)
        await self.replies.put(fut)

    async def reply_now(self, text: str) -> None:
        """Queue a reply that needs no work (keeps ordering with pending replies)."""
        if self.pending == 0:
            # Nothing before it: no queue, no writer task wake-up.
            try:
                self.writer.write(text.encode("utf-8"))
                if self.writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                    await self.writer.drain()
            except (ConnectionError, RuntimeError):
                pass  # the connection is going away; the read loop ends it
            return
        await self.slots.acquire()
        self.pending += 1
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(text)
        await self.replies.put(fut)

    def can_answer_now(self) -> bool:
        """No commit is pending, so an immediate lookup sees every earlier write."""
        return self.barrier is None or self.barrier.done()


class DictProxyServer:
    """Serve a :class:`DictHandler` on a unix socket."""

    def __init__(self, handler: DictHandler, socket_path, workers: int = 16):
        self.handler = handler
        self.socket_path = Path(socket_path)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dict")
        self._connections: set[asyncio.Task] = set()

    # Each _reply_* runs in a worker thread and returns the reply text.

    def _reply_lookup(self, key: str, user: str | None) -> str:
        try:
            value = self.handler.lookup(key, user)
        except DictFailure as e:
            return f"F{tabescape(str(e))}\n"
        except Exception:
            log.exception("lookup failed")
            return "F\n"
        return "N\n" if value is None else f"O{tabescape(value)}\n"

    def _reply_lookup_nowait(self, key: str, user: str | None) -> str | None:
        """The reply if the handler knows it without blocking, else None."""
        try:
            value = self.handler.lookup_nowait(key, user)
        except DictFailure as e:
            return f"F{tabescape(str(e))}\n"
        except Exception:
            log.exception("immediate lookup failed, trying the slow path")
            return None
        if value is NOT_CACHED:
            return None
        return "N\n" if value is None else f"O{tabescape(value)}\n"

    def _reply_iterate(self, path: str, user: str | None, max_rows: int) -> str:
        rows = []
        try:
            for key, value in self.handler.iterate(path, user):
                rows.append(f"O{tabescape(key)}\t{tabescape(value)}\n")
                if max_rows and len(rows) >= max_rows:
                    break
        except Exception:
            # F ends the iteration as failed: Dovecot must not take a partial or empty
            # listing for the whole one.
            log.exception("iterate failed")
            rows.append("F\n")
            return "".join(rows)
        rows.append("\n")
        return "".join(rows)

    def _reply_commit(self, txid: str, tx: _Transaction | None) -> str:
        if tx is None:
            log.warning("commit of unknown transaction")
            return f"F{txid}\n"
        ok = not tx.failed
        for key, value in tx.ops:
            try:
                if not self.handler.set(tx.user, key, value):
                    ok = False
            except Exception:
                log.exception("set failed")
                ok = False
        if not ok:
            log.error("transaction failed for user %r", tx.user)
        return f"{'O' if ok else 'F'}{txid}\n"

    async def _dispatch(self, conn: _Connection, raw: bytes) -> None:
        cmd = raw[:1]
        try:
            line = raw[1:].decode("utf-8")
        except UnicodeDecodeError:
            log.warning("invalid UTF-8 in %r request of %d bytes", cmd, len(raw))
            await self._fail(conn, cmd, raw)
            return
        args = [tabunescape(a) for a in line.split("\t")]
        if cmd == b"H":
            return
        if cmd == b"L":
            key, user = args[0], args[1] if len(args) > 1 else None
            if conn.can_answer_now():
                reply = self._reply_lookup_nowait(key, user)
                if reply is not None:
                    await conn.reply_now(reply)
                    return
            await conn.submit(self._reply_lookup, key, user)
        elif cmd == b"I":
            if len(args) < 3:
                log.warning("iterate request with %d fields, expected 3 or 4", len(args))
                await conn.reply_now("\n")
                return
            max_rows = int(args[1]) if args[1].isdigit() else 0
            user = args[3] if len(args) > 3 else None
            await conn.submit(self._reply_iterate, args[2], user, max_rows)
        elif cmd == b"B":
            conn.transactions[args[0]] = _Transaction(user=args[1] if len(args) > 1 else None)
        elif cmd in (b"S", b"U"):
            tx = conn.transactions.get(args[0])
            if tx is None:
                log.warning("%r for unknown transaction", cmd)
            elif cmd == b"S" and len(args) >= 3:
                tx.ops.append((args[1], args[2]))
            elif cmd == b"U" and len(args) >= 2:
                tx.ops.append((args[1], None))
            else:
                log.warning("%r request with missing fields", cmd)
                tx.failed = True
        elif cmd in (b"A", b"T"):
            # Atomic increments and timestamps are not used by our dicts.
            log.warning("unsupported transaction command %r", cmd)
            tx = conn.transactions.get(args[0])
            if tx is not None:
                tx.failed = True
        elif cmd in (b"C", b"D"):
            tx = conn.transactions.pop(args[0], None)
            await conn.submit(self._reply_commit, args[0], tx, barrier=True)
        elif cmd == b"R":
            conn.transactions.pop(args[0], None)
        else:
            log.warning("unknown dict command %r ignored", cmd)

    async def _fail(self, conn: _Connection, cmd: bytes, raw: bytes) -> None:
        """Answer an unparsable request so that a waiting peer is not left hanging."""
        if cmd == b"L":
            await conn.reply_now("F\n")
        elif cmd == b"I":
            await conn.reply_now("\n")
        elif cmd in (b"C", b"D"):
            txid = raw[1:].split(b"\t")[0].decode("ascii", "replace")
            conn.transactions.pop(txid, None)
            await conn.reply_now(f"F{txid}\n")

    async def _serve_connection(self, reader, writer) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            await self._serve_lines(reader, writer)
        finally:
            self._connections.discard(task)

    async def _serve_lines(self, reader, writer) -> None:
        conn = _Connection(self, writer)
        replier = asyncio.ensure_future(conn.write_replies())
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as e:
                    if e.partial:
                        log.warning("connection closed in the middle of a request")
                    break
                except asyncio.LimitOverrunError:
                    log.warning("request longer than %d bytes, closing connection", MAX_LINE)
                    break
                raw = raw.rstrip(b"\n").rstrip(b"\r")
                if raw:
                    await self._dispatch(conn, raw)
        except ConnectionError:
            log.info("connection reset by peer")
        except Exception:
            log.exception("unexpected error on dict connection")
        finally:
            conn.replies.put_nowait(None)
            try:
                await replier
            finally:
                writer.close()

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        """Listen until cancelled (on the socket systemd passed, if it did)."""
        passed = sdnotify.listen_socket()
        if passed is not None:
            server = await asyncio.start_unix_server(
                self._serve_connection, sock=passed, limit=MAX_LINE
            )
            log.info("listening on the socket passed by systemd")
        else:
            server = await asyncio.start_unix_server(
                # asyncio listen()s again with its own backlog (100) when it starts serving.
                self._serve_connection,
                sock=self._listening_socket(),
                limit=MAX_LINE,
                backlog=BACKLOG,
            )
            log.info("listening on %s", self.socket_path)
        sdnotify.ready()
        if ready is not None:
            ready.set()
        try:
            async with server:
                await server.serve_forever()
        finally:
            # Open client connections outlive the listener unless cancelled.
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)

    def _listening_socket(self) -> socket.socket:
        """A socket listening under a temporary name, then renamed to ``socket_path``.

        bind() makes the file before listen() makes it accept: whoever waits for the file
        (tests, benchmarks) and connects in between got ECONNREFUSED on a busy machine.
        """
        tmp = self.socket_path.with_name(self.socket_path.name + ".new")
        tmp.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(tmp))
            sock.listen(BACKLOG)
            os.replace(tmp, self.socket_path)
        except BaseException:
            sock.close()
            tmp.unlink(missing_ok=True)
            raise
        return sock

    def run(self) -> None:
        try:
            asyncio.run(self.serve())
        except KeyboardInterrupt:
            pass
        finally:
            self.executor.shutdown(wait=False, cancel_futures=True)


def setup_logging() -> None:
    """Log to stderr (journald adds time and unit); level from $CHATMAIL_LOGLEVEL."""
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("CHATMAIL_LOGLEVEL", "INFO").upper(),
        format="%(levelname)s %(name)s: %(message)s",
    )


def main(prog: str, make_handler: Callable[[Config], DictHandler], argv: list[str] | None) -> None:
    """``<prog> <socket> <chatmail.ini>``: the command line of every dict service."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.exit(f"usage: {prog} SOCKET CHATMAIL_INI")
    setup_logging()
    handler = make_handler(read_config(args[1]))
    try:
        DictProxyServer(handler, args[0]).run()
    finally:
        handler.close()
