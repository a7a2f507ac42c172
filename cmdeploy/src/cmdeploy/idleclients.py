"""Raw IMAP IDLE clients: delivery latency to an IDLE client, and many clients held at once.

One asyncio process holds the connections (TLS, LOGIN, SELECT INBOX, IDLE); a reader task
per connection stamps every ``* N EXISTS`` the moment it arrives, so a message's latency is
that stamp minus the moment the sender saw the 250 after its final DATA.

``python -m cmdeploy.idleclients hold SPEC.json OUT.json`` runs :func:`hold_and_sample` with
the keyword arguments in SPEC (accounts as ``[addr, password]`` pairs); it stops by itself at
its deadline or on SIGTERM, logs every client out and writes its figures to OUT. Progress
goes to stdout as JSON lines (``{"phase": ...}``), so a caller can sample the relay's memory
when all clients are held.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import signal
import ssl
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cmdeploy import loadgen
from cmdeploy.loadgen import Account

EXISTS = re.compile(rb"^\* (\d+) EXISTS\r?$")
TIMEOUT = 30.0


def parse_exists(line: bytes) -> int | None:
    """The message count of an untagged ``* N EXISTS`` line, else None."""
    m = EXISTS.match(line.rstrip(b"\n"))
    return int(m.group(1)) if m else None


def quoted(text: str) -> str:
    """An IMAP quoted string (RFC 3501 §4.3)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def latency_summary(seconds: list[float]) -> dict:
    """n, median, p90, mean, min and max in milliseconds (empty dict for no values)."""
    if not seconds:
        return {"n": 0}
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "median": round(statistics.median(ms), 1),
        "p90": round(percentile(ms, 90), 1),
        "mean": round(statistics.fmean(ms), 1),
        "min": round(min(ms), 1),
        "max": round(max(ms), 1),
    }


class ImapError(Exception):
    pass


@dataclass
class IdleClient:
    """One logged-in connection in IDLE on INBOX; EXISTS lines are stamped as they come."""

    account: Account
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    exists: int = 0
    arrivals: list[tuple[int, float]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task | None = None
    _tag: int = 0

    async def _command(self, text: str, timeout: float) -> list[bytes]:
        """Send a tagged command; the untagged lines before its OK (ImapError on NO/BAD)."""
        self._tag += 1
        tag = f"c{self._tag}".encode()
        self.writer.write(tag + b" " + text.encode() + b"\r\n")
        lines = []
        async with asyncio.timeout(timeout):
            while True:
                line = await self.reader.readline()
                if not line:
                    raise ImapError(f"connection closed during {text.split()[0]}")
                if line.startswith(tag + b" "):
                    if not line[len(tag) + 1 :].startswith(b"OK"):
                        raise ImapError(line.decode(errors="replace").strip())
                    return lines
                lines.append(line)

    async def login_select_idle(self, timeout: float = TIMEOUT) -> None:
        async with asyncio.timeout(timeout):
            greeting = await self.reader.readline()
        if not greeting.startswith(b"* OK"):
            raise ImapError(f"greeting: {greeting[:100]!r}")
        await self._command(f"LOGIN {quoted(self.account.addr)} {quoted(self.account.password)}",
                            timeout)  # fmt: skip
        for line in await self._command("SELECT INBOX", timeout):
            n = parse_exists(line)
            if n is not None:
                self.exists = n
        self._tag += 1
        self.writer.write(f"c{self._tag} IDLE\r\n".encode())
        async with asyncio.timeout(timeout):
            while not (line := await self.reader.readline()).startswith(b"+"):
                if not line:
                    raise ImapError("connection closed before IDLE")
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        # Ends when the server closes or resets the connection: the client counts as dropped.
        try:
            while line := await self.reader.readline():
                n = parse_exists(line)
                if n is not None:
                    self.exists = n
                    self.arrivals.append((n, time.perf_counter()))
                    self._changed.set()
        except (OSError, ValueError):
            pass

    @property
    def dropped(self) -> bool:
        return self._task is not None and self._task.done()

    async def wait_exists(self, above: int, timeout: float) -> float:
        """perf_counter() of the first EXISTS with a count above ``above``."""
        async with asyncio.timeout(timeout):
            while True:
                for n, t in self.arrivals:
                    if n > above:
                        return t
                self._changed.clear()
                await self._changed.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        try:
            self.writer.write(b"DONE\r\nz LOGOUT\r\n")
            await asyncio.wait_for(self.writer.drain(), 5)
        except (TimeoutError, OSError):
            pass
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (TimeoutError, OSError):
            pass


async def connect_idle(host: str, account: Account, port: int = 993,
                       timeout: float = TIMEOUT, tls: bool = True) -> IdleClient:  # fmt: skip
    """A new TLS connection of ``account``, logged in and in IDLE on INBOX."""
    tls_args = {"ssl": loadgen.client_context(), "server_hostname": host} if tls else {}
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port, limit=2**16, **tls_args)
    client = IdleClient(account, reader, writer)
    try:
        await client.login_select_idle(timeout)
    except BaseException:
        writer.close()
        raise
    return client


def smtp_sender(host: str, senders: list[Account], per_sender: int, port: int = 465):
    """A blocking ``send(rcpt) -> perf_counter() at the 250 of the final DATA``.

    Each sender sends at most ``per_sender`` messages (within the relay's burst allowance)
    over one kept session, then the next sender takes over.
    """
    sessions: list[loadgen._Session] = []
    count = [0]

    def send(rcpt: str) -> float:
        i = count[0] // per_sender
        if i >= len(senders):
            raise RuntimeError(f"out of senders after {count[0]} messages")
        if len(sessions) <= i:
            if sessions:
                sessions[-1].close()
            sessions.append(loadgen._Session(host, port, senders[i]))
        count[0] += 1
        session = sessions[i]
        msg = loadgen.message(session.account.addr, rcpt, loadgen.new_token())
        code, text, _ = session.send(rcpt, msg)
        t250 = time.perf_counter()
        if code != 250:
            raise RuntimeError(f"{session.account.addr} -> {rcpt}: {code} {text}")
        return t250

    def close() -> None:
        for s in sessions:
            s.close()

    send.close = close
    return send


async def latency_series(send, client: IdleClient, n: int, gap: float = 0.0,
                         timeout: float = 15.0) -> list[float]:  # fmt: skip
    """Seconds from each send's 250 to the EXISTS on ``client`` for ``n`` messages in turn."""
    out = []
    for _ in range(n):
        before = client.exists
        t250 = await asyncio.to_thread(send, client.account.addr)
        t = await client.wait_exists(before, timeout)
        out.append(t - t250)
        if gap:
            await asyncio.sleep(gap)
    return out


def measure_latency(send_host: str, rcpt_host: str, senders: list[Account], rcpt: Account,
                    n: int = 30, per_sender: int = 9, gap: float = 0.1) -> list[float]:  # fmt: skip
    """SMTP 250 -> EXISTS latencies (s) of ``n`` messages from ``send_host`` to ``rcpt`` in
    IDLE at ``rcpt_host``; blocking, for benches."""

    async def run() -> list[float]:
        client = await connect_idle(rcpt_host, rcpt)
        send = smtp_sender(send_host, senders, per_sender)
        try:
            return await latency_series(send, client, n, gap)
        finally:
            await asyncio.to_thread(send.close)
            await client.close()

    return asyncio.run(run())


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit towards ``wanted``; the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _emit(**record) -> None:
    print(json.dumps(record), flush=True)


async def hold_and_sample(
    host: str,
    accounts: list[Account],
    senders: list[Account],
    *,
    port: int = 993,
    concurrency: int = 40,
    sample: int = 20,
    per_sender: int = 9,
    hold: float = 60.0,
    deadline: float = 600.0,
    stop: asyncio.Event | None = None,
    on_phase: Callable[[str, dict], None] | None = None,
) -> dict:
    """Open one IDLE connection per account (``concurrency`` at a time), then, with all held,
    time a message to ``sample`` of them; hold ``hold`` s more (the caller samples memory),
    then log all out. Gives up at ``deadline`` s after the start.

    ``on_phase(name, figures)`` runs (in a thread) at "connecting" (every 1,000), "held",
    "sampled" and "releasing", e.g. to sample the relay's memory; by default each phase is
    printed as a JSON line."""
    stop = stop or asyncio.Event()

    async def phase(name: str, **data) -> None:
        if on_phase is None:
            _emit(phase=name, **data)
        else:
            await asyncio.to_thread(on_phase, name, data)

    started = time.perf_counter()
    end_by = started + deadline
    fd_limit = raise_fd_limit(len(accounts) + 1024)
    clients: list[IdleClient] = []
    errors: list[str] = []
    queue = list(reversed(accounts))
    progress = [0]

    async def opener() -> None:
        while queue and not stop.is_set() and time.perf_counter() < end_by:
            account = queue.pop()
            try:
                clients.append(await connect_idle(host, account, port))
            except (TimeoutError, OSError, ImapError, ssl.SSLError) as e:
                errors.append(f"{account.addr}: {type(e).__name__}: {e}"[:200])
            progress[0] += 1
            if progress[0] % 1000 == 0:
                await phase("connecting", done=progress[0], held=len(clients),
                      seconds=round(time.perf_counter() - started, 1))  # fmt: skip

    result: dict = {"requested": len(accounts), "fd_limit": fd_limit}
    try:
        await asyncio.gather(*(opener() for _ in range(concurrency)))
        connect_s = time.perf_counter() - started
        result.update(held=len(clients), connect_seconds=round(connect_s, 1),
                      connect_per_s=round(len(clients) / max(connect_s, 1e-6), 1),
                      errors=len(errors), first_errors=errors[:5])  # fmt: skip
        await phase("held", **result)
        step = max(1, len(clients) // max(1, sample))
        picked = clients[::step][:sample]
        send = smtp_sender(host, senders, per_sender)
        latencies, late = [], []
        try:
            for c in picked:
                if stop.is_set() or time.perf_counter() > end_by:
                    break
                try:
                    latencies += await latency_series(send, c, 1)
                except (TimeoutError, RuntimeError, OSError) as e:
                    late.append(f"{c.account.addr}: {type(e).__name__}: {e}"[:200])
        finally:
            await asyncio.to_thread(send.close)
        # Clients that dropped while held (the relay closed them) have a finished reader.
        dropped = sum(1 for c in clients if c.dropped)
        result.update(latency_ms=latency_summary(latencies), latency_failures=late[:5],
                      dropped_while_held=dropped)  # fmt: skip
        await phase("sampled", latency_ms=result["latency_ms"], dropped=dropped)
        hold_until = min(time.perf_counter() + hold, end_by)
        while time.perf_counter() < hold_until and not stop.is_set():
            await asyncio.sleep(min(1.0, hold_until - time.perf_counter()))
        result["dropped_at_end"] = sum(1 for c in clients if c.dropped)
        await phase("releasing", held=len(clients) - result["dropped_at_end"])
    finally:
        for i in range(0, len(clients), 500):
            await asyncio.gather(*(c.close() for c in clients[i : i + 500]))
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _main(argv: list[str]) -> int:
    what, spec_path, out_path = argv
    if what != "hold":
        raise SystemExit(f"unknown command {what!r}: hold")
    spec = json.loads(Path(spec_path).read_text())
    for key in ("accounts", "senders"):
        spec[key] = [Account(*p) for p in spec[key]]

    async def run() -> dict:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        return await hold_and_sample(stop=stop, **spec)

    result = asyncio.run(run())
    tmp = Path(out_path + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(out_path)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
