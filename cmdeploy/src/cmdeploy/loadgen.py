"""Bounded mail load: many senders submit encrypted messages, delivery is counted over IMAP.

Used by the lab fault tests and ``cmdeploy bench``. It must run where the relay's name
resolves and its address is reachable; in the lab that is the client namespace, which
:func:`run_in_lab` takes care of. Every attempt is recorded, so a test can tell a message
that got a 250 from one that only got temporary failures. The load stops by itself after
``count`` messages or ``duration`` seconds, and on SIGTERM (after the sends in flight).

``python -m cmdeploy.loadgen send|delivered SPEC.json OUT.json`` runs one of the two with
the keyword arguments in SPEC (accounts as ``[addr, password]`` pairs).
"""

from __future__ import annotations

import functools
import imaplib
import json
import random
import re
import secrets
import signal
import smtplib
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from chatmaild.testkit import mailgen

# Phases of an attempt; a failure in "end-of-data" may still have been accepted (the
# reply was lost), so a retry after it can deliver the message twice (RFC 5321 §6.1).
PHASES = ("connect", "auth", "envelope", "data", "end-of-data")
RETRY_DELAY = 1.0
TIMEOUT = 30.0
MESSAGE_ID = re.compile(rb"<([0-9a-f]{24})@loadgen>")
# Dot-stuffing (RFC 5321 §4.5.2); messages end in CRLF, so ".\r\n" ends DATA.
DOT_LINE = re.compile(rb"(?m)^\.")


@dataclass(frozen=True)
class Account:
    addr: str
    password: str


def accounts(
    domain: str, n: int, prefix: str = "ld", password: str | None = None, length: int = 9
) -> list[Account]:
    """``n`` accounts with random names of ``length`` characters (chatmail's default is
    exactly 9) under ``domain``, sharing one password."""
    password = password or secrets.token_urlsafe(12)
    fill = length - len(prefix)
    return [
        Account(f"{prefix}{secrets.token_hex(fill)[:fill]}@{domain}", password) for _ in range(n)
    ]


@functools.cache
def client_context() -> ssl.SSLContext:
    # Lab and underscore relays have self-signed certificates. One shared context: making
    # one loads the system CA store (~30 ms CPU), which capped new-session runs at ~30 msg/s.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def create_accounts(host: str, accts: list[Account], port: int = 993) -> list[str]:
    """Log each account in once (chatmail creates accounts on first login); returns errors."""
    errors = []
    for a in accts:
        try:
            with imaplib.IMAP4_SSL(host, port, ssl_context=client_context(), timeout=TIMEOUT) as c:
                c.login(a.addr, a.password)
        except (imaplib.IMAP4.error, OSError) as e:
            errors.append(f"{a.addr}: {e}")
    return errors


def new_token() -> str:
    return secrets.token_hex(12)


def message(sender: str, rcpt: str, token: str, size: int = 300) -> bytes:
    """An encrypted-shaped PGP/MIME message that passes the relay's gate (Message-ID = token)."""
    payload = mailgen.encrypted_payload(random.Random(token), size=size)
    return mailgen.pgp_mime(mailgen.armor(payload), from_addr=sender, to=rcpt,
                            message_id=f"<{token}@loadgen>")  # fmt: skip


@dataclass
class Attempt:
    t: float
    code: int  # 0: no SMTP reply (connection refused, reset, timeout)
    text: str
    phase: str


@dataclass
class Send:
    token: str
    sender: str
    rcpt: str
    attempts: list[Attempt] = field(default_factory=list)
    accepted_at: float | None = None

    @property
    def codes(self) -> list[int]:
        return [a.code for a in self.attempts]

    @property
    def maybe_twice(self) -> bool:
        """Whether a reply was lost after the whole message went out, before a retry."""
        return any(a.code == 0 and a.phase == "end-of-data" for a in self.attempts[:-1]) and bool(
            self.accepted_at
        )


@dataclass
class LoadResult:
    started: float
    ended: float
    sends: list[Send]

    @property
    def accepted(self) -> list[Send]:
        return [s for s in self.sends if s.accepted_at is not None]

    @property
    def submitted_per_s(self) -> float:
        if not self.accepted:
            return 0.0
        last = max(s.accepted_at for s in self.accepted)
        return len(self.accepted) / max(last - self.started, 1e-6)

    def summary(self) -> dict:
        codes: dict[str, int] = {}
        for s in self.sends:
            for a in s.attempts:
                key = "no reply" if a.code == 0 else str(a.code)
                codes[key] = codes.get(key, 0) + 1
        return {
            "messages": len(self.sends),
            "accepted": len(self.accepted),
            "retried": sum(1 for s in self.sends if len(s.attempts) > 1),
            "permanent": sum(1 for s in self.sends if s.attempts and s.attempts[-1].code >= 500),
            "replies": dict(sorted(codes.items())),
            "submitted_per_s": round(self.submitted_per_s, 1),
            "seconds": round(self.ended - self.started, 1),
        }

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LoadResult:
        sends = [
            Send(
                s["token"],
                s["sender"],
                s["rcpt"],
                [Attempt(**a) for a in s["attempts"]],
                s["accepted_at"],
            )  # fmt: skip
            for s in d["sends"]
        ]
        return cls(d["started"], d["ended"], sends)


class _Session:
    """One SMTP submission session of one sender, kept open when sessions are reused."""

    def __init__(self, host: str, port: int, account: Account):
        self.host, self.port, self.account = host, port, account
        self.conn: smtplib.SMTP | None = None

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.quit()
            except (smtplib.SMTPException, OSError):
                self.conn.close()
            self.conn = None

    def _open(self, phase: list[str]) -> smtplib.SMTP:
        phase[0] = "connect"
        if self.port == 465:
            conn = smtplib.SMTP_SSL(self.host, self.port, context=client_context(),
                                    timeout=TIMEOUT)  # fmt: skip
        else:
            conn = smtplib.SMTP(self.host, self.port, timeout=TIMEOUT)
            conn.ehlo()
            if conn.has_extn("starttls"):
                conn.starttls(context=client_context())
        phase[0] = "auth"
        conn.login(self.account.addr, self.account.password)
        return conn

    def send(self, rcpt: str, msg: bytes) -> tuple[int, str, str]:
        """(code, text, phase) of one attempt; the session is dropped after any failure."""
        phase = ["connect"]
        try:
            if self.conn is None:
                self.conn = self._open(phase)
            conn = self.conn
            phase[0] = "envelope"
            code, text = conn.mail(self.account.addr)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, text, self.account.addr)
            code, text = conn.rcpt(rcpt)
            if code not in (250, 251):
                raise smtplib.SMTPRecipientsRefused({rcpt: (code, text)})
            phase[0] = "data"
            conn.putcmd("data")
            code, text = conn.getreply()
            if code != 354:
                raise smtplib.SMTPDataError(code, text)
            conn.send(DOT_LINE.sub(b"..", msg) + b".\r\n")
            phase[0] = "end-of-data"
            code, text = conn.getreply()
            if code != 250:
                raise smtplib.SMTPDataError(code, text)
            return 250, text.decode(errors="replace"), phase[0]
        except smtplib.SMTPRecipientsRefused as e:
            ((code, text),) = e.recipients.values()
            self._reset()
            return code, text.decode(errors="replace"), phase[0]
        except smtplib.SMTPResponseException as e:
            text = e.smtp_error
            self._drop()
            return e.smtp_code, text.decode(errors="replace") if isinstance(text, bytes) else str(text), phase[0]  # fmt: skip
        except (smtplib.SMTPException, OSError) as e:
            self._drop()
            return 0, f"{type(e).__name__}: {e}", phase[0]

    def _reset(self) -> None:
        try:
            self.conn.rset()
        except (smtplib.SMTPException, OSError, AttributeError):
            self._drop()

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None


def send_load(
    host: str,
    senders: list[Account],
    recipients: list[Account],
    *,
    port: int = 465,
    count: int | None = None,
    duration: float | None = None,
    rate: float | None = None,
    concurrency: int = 8,
    reuse_sessions: bool = False,
    retry_for: float = 120.0,
    size: int = 300,
    stop: threading.Event | None = None,
) -> LoadResult:
    """Send messages from ``senders`` to ``recipients`` (round-robin) until ``count`` or
    ``duration``, paced to ``rate`` msg/s overall; 4xx and lost connections are retried."""
    if count is None and duration is None:
        raise ValueError("send_load needs count or duration, it must stop by itself")
    stop = stop or threading.Event()
    lock = threading.Lock()
    sends: list[Send] = []
    next_index = [0]
    started = time.time()
    t0 = time.monotonic()

    def take() -> int | None:
        with lock:
            i = next_index[0]
            if stop.is_set() or (count is not None and i >= count):
                return None
            if duration is not None:
                # With a rate, a message due after the end is not sent (workers take ahead).
                due = i / rate if rate else time.monotonic() - t0
                if due >= duration:
                    return None
            next_index[0] += 1
            return i

    def worker(w: int) -> None:
        mine = senders[w % len(senders) :: concurrency] or [senders[w % len(senders)]]
        sessions = {a.addr: _Session(host, port, a) for a in mine}
        n = 0
        try:
            while (i := take()) is not None:
                if rate:
                    delay = t0 + i / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                account = mine[n % len(mine)]
                n += 1
                rcpt = recipients[i % len(recipients)].addr
                s = Send(new_token(), account.addr, rcpt)
                with lock:
                    sends.append(s)
                _deliver(sessions[account.addr], s, size, retry_for)
                if not reuse_sessions:
                    sessions[account.addr].close()
        finally:
            for session in sessions.values():
                session.close()

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return LoadResult(started, time.time(), sends)


def _deliver(session: _Session, s: Send, size: int, retry_for: float) -> None:
    msg = message(s.sender, s.rcpt, s.token, size)
    first = time.monotonic()
    while True:
        code, text, phase = session.send(s.rcpt, msg)
        s.attempts.append(Attempt(time.time(), code, text[:200], phase))
        if code == 250:
            s.accepted_at = time.time()
            return
        if code >= 500 or time.monotonic() - first > retry_for:
            return
        session.close()
        time.sleep(RETRY_DELAY)


@dataclass
class Delivery:
    counts: dict[str, int]
    last_seen: float | None
    errors: list[str]

    def missing(self, tokens) -> list[str]:
        return [t for t in tokens if not self.counts.get(t)]

    def duplicated(self) -> list[str]:
        return [t for t, n in self.counts.items() if n > 1]


class _Inbox:
    def __init__(self, host: str, port: int, account: Account):
        self.host, self.port, self.account = host, port, account
        self.conn: imaplib.IMAP4_SSL | None = None
        self.seen = 0

    def poll(self) -> list[str]:
        """Tokens of messages that arrived since the last poll."""
        if self.conn is None:
            self.conn = imaplib.IMAP4_SSL(self.host, self.port, ssl_context=client_context(),
                                          timeout=TIMEOUT)  # fmt: skip
            self.conn.login(self.account.addr, self.account.password)
            self.seen = 0
        _, data = self.conn.select("INBOX", readonly=True)
        exists = int(data[0])
        if exists <= self.seen:
            return []
        _, parts = self.conn.fetch(f"{self.seen + 1}:{exists}",
                                   "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")  # fmt: skip
        self.seen = exists
        raw = b"".join(p[1] for p in parts if isinstance(p, tuple))
        return [m.decode() for m in MESSAGE_ID.findall(raw)]

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.logout()
            except (imaplib.IMAP4.error, OSError):
                pass
            self.conn = None


def wait_delivered(
    host: str,
    recipients: list[Account],
    tokens: list[str],
    *,
    timeout: float,
    settle: float = 0.0,
    port: int = 993,
    interval: float = 0.3,
) -> Delivery:
    """Poll the recipients' INBOXes until every token arrived (then ``settle`` s more, to
    see duplicates) or ``timeout``; IMAP errors are retried (the relay may be restarting)."""
    wanted = set(tokens)
    counts: dict[str, int] = {}
    last_seen = None
    errors: list[str] = []
    inboxes = [_Inbox(host, port, a) for a in recipients]
    deadline = time.monotonic() + timeout
    settle_until = None
    try:
        while time.monotonic() < deadline:
            for box in inboxes:
                try:
                    new = box.poll()
                except (imaplib.IMAP4.error, OSError) as e:
                    errors.append(f"{box.account.addr}: {type(e).__name__}: {e}"[:200])
                    box.close()
                    continue
                for tok in new:
                    counts[tok] = counts.get(tok, 0) + 1
                    if tok in wanted:
                        last_seen = time.time()
            if settle_until is None and wanted <= counts.keys():
                settle_until = time.monotonic() + settle
            if settle_until is not None and time.monotonic() >= settle_until:
                break
            time.sleep(interval)
    finally:
        for box in inboxes:
            box.close()
    return Delivery(counts, last_seen, errors[-50:])


def watch_arrivals(
    host: str,
    recipients: list[Account],
    *,
    duration: float,
    stop: threading.Event | None = None,
    port: int = 993,
    interval: float = 0.5,
) -> dict:
    """When each loadgen token first shows up in the recipients' INBOXes (wall clock), polled
    while a load runs, until ``stop`` or ``duration`` s; for delivery delays under faults.

    Counting for exactly-once stays with :func:`wait_delivered`; this only times arrivals.
    """
    stop = stop or threading.Event()
    first_seen: dict[str, float] = {}
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    # One thread per INBOX: a host that went away stalls each connection for TIMEOUT.
    def watch(box: _Inbox) -> None:
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    new = box.poll()
                except (imaplib.IMAP4.error, OSError) as e:
                    with lock:
                        errors.append(f"{box.account.addr}: {type(e).__name__}: {e}"[:200])
                    box.close()
                    new = []
                now = time.time()
                with lock:
                    for tok in new:
                        first_seen.setdefault(tok, now)
                stop.wait(interval)
        finally:
            box.close()

    threads = [threading.Thread(target=watch, args=(_Inbox(host, port, a),), daemon=True)
               for a in recipients]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"first_seen": first_seen, "errors": errors[-50:]}


def _accounts(pairs) -> list[Account]:
    return [Account(*p) for p in pairs]


def _main(argv: list[str]) -> int:
    what, spec_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text())
    for key in ("senders", "recipients"):
        if key in spec:
            spec[key] = _accounts(spec[key])
    if what == "send":
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        result = send_load(stop=stop, **spec).to_dict()
    elif what == "delivered":
        result = asdict(wait_delivered(**spec))
    elif what == "arrivals":
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        result = watch_arrivals(stop=stop, **spec)
    elif what == "create":
        result = {"errors": create_accounts(spec["host"], spec["recipients"],
                                            spec.get("port", 993))}  # fmt: skip
    else:
        raise SystemExit(f"unknown command {what!r}: send, delivered, arrivals or create")
    tmp = Path(out_path + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(out_path)
    return 0


class LabRun:
    """A loadgen command running in the lab's client namespace."""

    def __init__(self, proc: subprocess.Popen, out: Path, tmpdir: tempfile.TemporaryDirectory):
        self.proc, self.out, self._tmpdir = proc, out, tmpdir

    def stop(self) -> None:
        """Ask a ``send`` to stop starting new messages (those in flight finish), or an
        ``arrivals`` to stop watching."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> dict:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        try:
            if self.proc.returncode != 0:
                raise RuntimeError(f"loadgen failed ({self.proc.returncode}): {err[-3000:]}")
            return json.loads(self.out.read_text())
        finally:
            self._tmpdir.cleanup()


def jsonable(spec: dict) -> dict:
    """A run spec as JSON can carry it: accounts become ``[addr, password]`` pairs."""
    out = {}
    for k, v in spec.items():
        if isinstance(v, list) and v and isinstance(v[0], Account):
            v = [[a.addr, a.password] for a in v]
        out[k] = v
    return out


def run_in_lab(lab, what: str, spec: dict, background: bool = False):
    """Run ``send``, ``delivered`` or ``create`` in the lab's client namespace.

    Returns the result dict, or with ``background=True`` a :class:`LabRun` to ``wait()`` on.
    """
    tmpdir = tempfile.TemporaryDirectory(prefix="loadgen-")
    spec_path, out = Path(tmpdir.name) / "spec.json", Path(tmpdir.name) / "out.json"
    spec_path.write_text(json.dumps(jsonable(spec)))
    argv = lab.client_ns_cmd([sys.executable, "-m", "cmdeploy.loadgen", what, str(spec_path),
                              str(out)])  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = LabRun(proc, out, tmpdir)
    return run if background else run.wait()


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
