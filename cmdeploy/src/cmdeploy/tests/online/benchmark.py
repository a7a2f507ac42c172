"""``cmdeploy bench``: figures for a deployed relay (and a second one), not pass/fail.

Each benchmark runs a few times; the table at the end shows median, min and max seconds.
"""

from __future__ import annotations

import imaplib
import os
import smtplib
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from cmdeploy import idleclients, loadgen, unitstats
from cmdeploy.lab import stock
from cmdeploy.remote import Remote, RemoteError
from cmdeploy.tests.online.dcutil import next_event, wait_text
from cmdeploy.tests.online.dcutil import online_account as _online

RESULTS: dict[str, list[float]] = {}


def measure(name: str, func, n: int) -> None:
    for _ in range(n):
        start = time.perf_counter()
        func()
        RESULTS.setdefault(name, []).append(time.perf_counter() - start)


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    lines = ["", "benchmark results", f"{'benchmark name':36} {'median':>8} {'min':>8} {'max':>8}"]
    for name, values in RESULTS.items():
        lines.append(
            f"{name:36} {statistics.median(values):8.3f} {min(values):8.3f} {max(values):8.3f}"
        )
    lines += latency_table()
    lines += throughput_table()
    print("\n".join(lines))


def test_tls_connect_imap(domain, ssl_context):
    measure(
        "tls connect imap (993)",
        lambda: imaplib.IMAP4_SSL(domain, 993, ssl_context=ssl_context).logout(),
        10,
    )


def test_tls_connect_smtp(domain, ssl_context):
    measure(
        "tls connect smtp (465)",
        lambda: smtplib.SMTP_SSL(domain, 465, context=ssl_context).quit(),
        10,
    )


def _first_reply(domain: str, port: int, ssl_context, *, wrap: bool, alpn: str | None = None,
                 starttls: bool = False) -> tuple[float, float]:  # fmt: skip
    """(TLS handshake done, first reply after it) in seconds from connect, raw sockets.

    The reply after the handshake is the greeting (implicit TLS) or the 250 to EHLO
    (STARTTLS); without TLS, the greeting."""
    import socket

    start = time.perf_counter()
    sock = socket.create_connection((domain, port), timeout=30)
    try:
        if starttls:
            f = sock.makefile("rb")
            f.readline()
            sock.sendall(b"EHLO bench\r\n")
            while f.readline()[3:4] == b"-":
                pass
            sock.sendall(b"STARTTLS\r\n")
            f.readline()
        if wrap or starttls:
            if alpn:
                ssl_context.set_alpn_protocols([alpn])
            sock = ssl_context.wrap_socket(sock, server_hostname=domain)
        handshake = time.perf_counter() - start
        if starttls:
            sock.sendall(b"EHLO bench\r\n")
        sock.recv(4096)
        return handshake, time.perf_counter() - start
    finally:
        sock.close()


def test_first_reply_per_port(domain, ssl_context):
    """Connect to the first server reply on each port, and the part of it after TLS.

    A stall after the handshake on 465 and 443 shows in "after TLS": it was ~42 ms while
    those services sent a TLS 1.3 session ticket before the greeting (the client delays its
    ACK of the ticket and Nagle holds the greeting until then, see docs/operating.md)."""
    import ssl

    cases = [("smtps 465", 465, dict(wrap=True)), ("imaps 993", 993, dict(wrap=True)),
             ("smtp 443 alpn", 443, dict(wrap=True, alpn="smtp")),
             ("submission 587 starttls", 587, dict(wrap=False, starttls=True)),
             ("smtp 25 greeting", 25, dict(wrap=False))]  # fmt: skip
    for name, port, kw in cases:
        for _ in range(10):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname, ctx.verify_mode = (
                ssl_context.check_hostname,
                ssl_context.verify_mode,
            )
            if ssl_context.verify_mode != ssl.CERT_NONE:
                ctx.load_default_certs()
            try:
                handshake, reply = _first_reply(domain, port, ctx, **kw)
            except OSError:
                break  # e.g. port 25 closed to this client: no row
            RESULTS.setdefault(f"first reply {name}", []).append(reply)
            if kw.get("wrap") or kw.get("starttls"):
                RESULTS.setdefault(f"  after TLS {name}", []).append(reply - handshake)


def test_login_new_account_imap(domain, ssl_context, creds):
    def login():
        conn = imaplib.IMAP4_SSL(domain, 993, ssl_context=ssl_context)
        conn.login(creds.addr(), creds.password())
        conn.logout()

    measure("login new account imap", login, 10)


def test_login_new_account_smtp(domain, ssl_context, creds):
    def login():
        conn = smtplib.SMTP_SSL(domain, 465, context=ssl_context)
        conn.login(creds.addr(), creds.password())
        conn.quit()

    measure("login new account smtp", login, 10)


def online_account(dc, creds, domain):
    return _online(dc, creds.addr(domain), creds.password(), domain)


def test_configure_to_online(dc, creds, domain):
    measure("delta chat configure to online", lambda: online_account(dc, creds, domain), 5)


PING_PONG_PAUSE = 2.0


def _ping_pong(dc, creds, d1, d2, name):
    a, b = online_account(dc, creds, d1), online_account(dc, creds, d2)
    chat_ab, chat_ba = a.create_chat(b), b.create_chat(a)

    def round_trip():
        chat_ab.send_text("ping")
        wait_text(b, "ping")
        chat_ba.send_text("pong")
        wait_text(a, "pong")

    round_trip()  # warm up: key exchange, first IDLE
    for _ in range(5):
        # Delta Chat's own send limiter holds a client's next message for up to ~0.9 s once
        # it has sent a few within a second or two ("smtp got rate limited" in its log):
        # back-to-back round trips measured that, 0.6-0.9 s, not the relay. A chat reply
        # comes seconds apart, so the round trips are too.
        time.sleep(PING_PONG_PAUSE)
        measure(name, round_trip, 1)


def test_ping_pong_one_relay(dc, creds, domain):
    _ping_pong(dc, creds, domain, domain, "ping-pong one relay")


def test_ping_pong_two_relays(dc, creds, domain, domain2):
    _ping_pong(dc, creds, domain, domain2, "ping-pong two relays")


def bench_password(ini: Path) -> str:
    """The password of the bench accounts, kept beside chatmail.ini (made on first use)."""
    return stock.bench_password(ini.parent / "bench-password")


def test_send_burst_receive(dc, creds, domain, config):
    exempt = sorted(a for a in config.rate_limit_exempt if a.endswith(f"@{domain}"))
    if len(exempt) >= 2:
        # The documented override (rate_limit_exempt) lifts the send limit for this pair.
        password = bench_password(Path(os.environ["CHATMAIL_INI"]))
        a, b = (_online(dc, addr, password, domain) for addr in exempt[:2])
        n = 50
    else:
        # Within the sender's burst allowance (less the one message GCRA may already
        # count), so the relay's rate limit does not shape the figure.
        a, b = online_account(dc, creds, domain), online_account(dc, creds, domain)
        n = max(1, min(10, config.max_user_send_burst_size - 1))
    b.create_chat(a)  # accepted: messages of a contact request raise no INCOMING_MSG
    chat = a.create_chat(b)

    def burst():
        for i in range(n):
            chat.send_text(f"burst {i}")
        wait_text(b, f"burst {n - 1}", timeout=120)

    measure(f"send {n}, receive {n}", burst, 1)


# -- delivery latency: SMTP 250 -> IMAP IDLE EXISTS, and a Delta Chat ping series ---------

LATENCY_MESSAGES = 30
LATENCY: list[dict] = []


def _latency_row(topology: str, system: str, send_host: str, rcpt_host: str,
                 senders: list[loadgen.Account], rcpt: loadgen.Account, per_sender: int) -> None:  # fmt: skip
    """Raw protocol: the recipient IDLEs on INBOX, each message is timed from the 250 after
    its final DATA to the ``* N EXISTS`` (one at a time, each sender within its burst)."""
    try:
        seconds = idleclients.measure_latency(send_host, rcpt_host, senders, rcpt,
                                              LATENCY_MESSAGES, per_sender)  # fmt: skip
        LATENCY.append({"what": "SMTP 250 -> IDLE EXISTS", "topology": topology,
                        "system": system, **idleclients.latency_summary(seconds)})  # fmt: skip
    except (OSError, RuntimeError, TimeoutError, idleclients.ImapError) as e:
        LATENCY.append({"what": "SMTP 250 -> IDLE EXISTS", "topology": topology,
                        "system": system, "n": 0, "error": f"{type(e).__name__}: {e}"[:200]})  # fmt: skip


def _chatmail_latency_accounts(config, send_host: str, rcpt_host: str):
    password = bench_password(Path(os.environ["CHATMAIL_INI"]))
    per_sender = max(1, config.max_user_send_burst_size - 1)
    senders = loadgen.accounts(send_host, -(-LATENCY_MESSAGES // per_sender), prefix="bl",
                               password=password)  # fmt: skip
    rcpt = loadgen.accounts(rcpt_host, 1, prefix="bi", password=password)[0]
    errors = loadgen.create_accounts(send_host, senders) + loadgen.create_accounts(
        rcpt_host, [rcpt]
    )
    assert not errors, errors[:3]
    return senders, rcpt, per_sender


def _floor_latency_accounts(send_host: str, rcpt_host: str):
    # The last bench accounts of the floor: the throughput runs take the first recipients.
    password = bench_password(Path(os.environ["CHATMAIL_INI"]))
    senders, _ = stock.bench_accounts(send_host, password)
    _, rcpts = stock.bench_accounts(rcpt_host, password)
    rcpt = rcpts[-1] if send_host == rcpt_host else rcpts[-2]
    return [loadgen.Account(*a) for a in senders[-4:]], loadgen.Account(*rcpt)


def test_idle_latency_one_relay(config, domain):
    senders, rcpt, per = _chatmail_latency_accounts(config, domain, domain)
    _latency_row("one relay", "chatmail", domain, domain, senders, rcpt, per)
    floor = _floor_hosts()
    if floor:
        senders, rcpt = _floor_latency_accounts(floor[0], floor[0])
        _latency_row("one relay", "floor", floor[0], floor[0], senders, rcpt, 9)


def test_idle_latency_two_relays(config, domain, domain2):
    senders, rcpt, per = _chatmail_latency_accounts(config, domain, domain2)
    _latency_row("two relays", "chatmail", domain, domain2, senders, rcpt, per)
    floor = _floor_hosts()
    if len(floor) >= 2:
        senders, rcpt = _floor_latency_accounts(floor[0], floor[1])
        _latency_row("two relays", "floor", floor[0], floor[1], senders, rcpt, 9)


def _ping_series(dc, creds, d1, d2, topology: str, n: int = 30, interval: float = 1.0) -> None:
    """cmping-style: ``n`` messages at ``interval`` s from a to b, each timed from the send
    call to b's INCOMING_MSG (both clients in this process, so one clock)."""
    from deltachat_rpc_client.const import EventType

    a, b = online_account(dc, creds, d1), online_account(dc, creds, d2)
    b.create_chat(a)  # accepted: messages of a contact request raise no INCOMING_MSG
    chat = a.create_chat(b)
    chat.send_text("warm up")  # key exchange, first IDLE
    wait_text(b, "warm up")
    sent: dict[str, float] = {}
    got: dict[str, float] = {}
    start = time.monotonic()
    deadline = start + n * interval + 15
    i = 0
    while len(got) < n and time.monotonic() < deadline:
        if i < n and time.monotonic() >= start + i * interval:
            sent[f"ping {i}"] = time.monotonic()
            chat.send_text(f"ping {i}")
            i += 1
            continue
        until = start + i * interval if i < n else deadline
        try:
            event = next_event(b, min(until, deadline))
        except TimeoutError:
            continue
        if event.kind == EventType.INCOMING_MSG:
            now = time.monotonic()
            text = b.get_message_by_id(event.msg_id).get_snapshot().text
            if text in sent:
                got.setdefault(text, now - sent[text])
    row = {"what": f"Delta Chat {n} pings at {interval:g} s", "topology": topology,
           "system": "chatmail", **idleclients.latency_summary(list(got.values()))}  # fmt: skip
    row["lost"] = n - len(got)
    LATENCY.append(row)


def test_ping_series_one_relay(dc, creds, domain):
    _ping_series(dc, creds, domain, domain, "one relay")


def test_ping_series_two_relays(dc, creds, domain, domain2):
    _ping_series(dc, creds, domain, domain2, "two relays")


IDLE_CLIENTS = int(os.environ.get("CHATMAIL_BENCH_IDLE_CLIENTS", "1000"))


def _services_pss_mib(remote: Remote) -> tuple[float, float]:
    """PSS (MiB) of all the relay's services, and of Dovecot's unit alone."""
    units = unitstats.sample(remote)["units"]
    total = sum(r.get("pss_kb", 0) for r in units.values()) / 1024
    dovecot = sum(r.get("pss_kb", 0) for k, r in units.items() if k.startswith("dovecot")) / 1024
    return total, dovecot


def test_idle_clients(config, domain, remote):
    """IDLE_CLIENTS new accounts held in IDLE (bench/idle_clients.py does 10,000 in the lab)."""
    import asyncio

    # Every account is new and comes from this one client IP.
    n = min(IDLE_CLIENTS, config.max_new_accounts_per_ip_burst // 2)
    password = bench_password(Path(os.environ["CHATMAIL_INI"]))
    accounts = loadgen.accounts(domain, n, prefix="ic", password=password)
    senders = loadgen.accounts(domain, 3, prefix="is", password=password)
    assert not loadgen.create_accounts(domain, senders)
    memory = {"before": _services_pss_mib(remote)}

    def on_phase(name: str, data: dict) -> None:
        if name in ("held", "releasing"):
            memory[name] = _services_pss_mib(remote)

    # Held past imap_hibernate_timeout (30 s), so the last figure is after hibernation.
    result = asyncio.run(idleclients.hold_and_sample(domain, accounts, senders, sample=20,
                                                     hold=40, deadline=300, on_phase=on_phase))  # fmt: skip
    held = result.get("held", 0)
    row = {"what": f"IDLE EXISTS, {held} held", "topology": "one relay", "system": "chatmail",
           **result.get("latency_ms", {"n": 0})}  # fmt: skip
    LATENCY.append(row)
    base = memory["before"][0]
    mem = ", ".join(f"{k} {v[0]:.0f} MiB (dovecot {v[1]:.0f})" for k, v in memory.items())
    per = {k: (v[0] - base) * 1024 / max(held, 1) for k, v in memory.items() if k != "before"}
    NOTES_IDLE.append(
        f"idle clients: {held} of {n} held ({result.get('errors')} failed, "
        f"{result.get('dropped_at_end')} dropped), connect+login+IDLE "
        f"{result.get('connect_per_s')}/s; services PSS {mem}; per connection "
        + ", ".join(f"{k} {v:.0f} KiB" for k, v in per.items())
    )


NOTES_IDLE: list[str] = []


def latency_table() -> list[str]:
    """Latency rows (ms), chatmail beside the stock floor measured in the same run."""
    if not LATENCY:
        return []
    lines = ["", "delivery latency (ms): SMTP 250 -> IDLE EXISTS over raw IMAP; Delta Chat: "
             "send call -> INCOMING_MSG at the recipient",  # fmt: skip
             f"{'measure':26} {'topology':11} {'system':9} {'n':>3} {'median':>7} {'p90':>7} "
             f"{'mean':>7} {'max':>7}"]  # fmt: skip
    for r in LATENCY:
        if not r.get("n"):
            why = r.get("error", "no values")
            lines.append(f"{r['what']:26} {r['topology']:11} {r['system']:9}   0 ({why})")
            continue
        lost = f"  lost {r['lost']}" if r.get("lost") else ""
        lines.append(f"{r['what']:26} {r['topology']:11} {r['system']:9} {r['n']:3} "
                     f"{r['median']:7.1f} {r['p90']:7.1f} {r['mean']:7.1f} {r['max']:7.1f}{lost}")  # fmt: skip
    return lines + NOTES_IDLE


# -- push: LMTP delivery -> POST at the notification server ---------------------------------

PUSH_MESSAGES = 20


def test_push_latency(config, domain):
    """SMTP 250 (the message is queued) -> the POST of the recipient's device token at the
    notification server; an upper bound of LMTP delivery -> POST (the lab push server)."""
    from chatmaild.testkit.pushserver import PushServer

    server = PushServer.for_url(config.notification_url)
    if server is None:
        pytest.skip(f"{config.notification_url} is not served from this machine")
    senders, rcpt, per_sender = _chatmail_latency_accounts(config, domain, domain)
    token = f"bench-{loadgen.new_token()}"
    imaplib.Commands.setdefault("SETMETADATA", ("AUTH", "SELECTED"))
    with imaplib.IMAP4_SSL(domain, 993, ssl_context=loadgen.client_context()) as conn:
        conn.login(rcpt.addr, rcpt.password)
        typ, data = conn._simple_command(
            "SETMETADATA", "INBOX", f'(/private/devicetoken "{token}")'
        )
        assert typ == "OK", data
    seconds = []
    with server:
        send = idleclients.smtp_sender(domain, senders, per_sender)
        try:
            for i in range(PUSH_MESSAGES):
                t250 = send(rcpt.addr)
                arrived = server.wait_count(token, i + 1, timeout=30)
                if arrived is None:
                    break
                seconds.append(arrived - t250)
                time.sleep(0.1)
        finally:
            send.close()
    row = {"what": "SMTP 250 -> push POST", "topology": "one relay", "system": "chatmail",
           **idleclients.latency_summary(seconds)}  # fmt: skip
    row["lost"] = PUSH_MESSAGES - len(seconds)
    LATENCY.append(row)


# -- throughput: encrypted messages/s against a stock floor ---------------------------------

THROUGHPUT_SECONDS = float(os.environ.get("CHATMAIL_BENCH_SECONDS", "6"))
CONCURRENCY = (8, 32)
RECIPIENTS_PER_RUN = 8
THROUGHPUT: list[dict] = []
NOTES: list[str] = []


@dataclass
class Target:
    """Where one throughput run sends: a submission host and the recipients' IMAP host."""

    system: str  # "chatmail" or "floor"
    host: str
    rcpt_host: str
    senders: list[loadgen.Account]
    recipients: list[loadgen.Account]  # fresh ones are taken per run
    remote: Remote | None = None
    rcpt_remote: Remote | None = None  # where the recipients' Maildirs are
    maildir: str = ""  # their Maildir, "{domain}" and "{local}" filled in per recipient
    limited: bool = False  # senders are rate-limited: count-bound runs within the burst
    refill: float = 0.0  # seconds until a limited sender's burst allowance is back


def _floor_hosts() -> list[str]:
    return [h for h in os.environ.get("CHATMAIL_FLOOR", "").split(",") if h]


def _chatmail_senders(config, domain: str, password: str) -> tuple[list[loadgen.Account], bool]:
    """Rate-limit exempt bench senders of relay 1, or many fresh ones within the burst."""
    # The throughput senders (benchs000@...), not the Delta Chat burst pair.
    exempt = sorted(config.rate_limit_exempt)
    names = [a for a in exempt if a.startswith("benchs") and a.endswith(f"@{domain}")]
    if len(names) >= max(CONCURRENCY):
        return [loadgen.Account(a, password) for a in names], False
    NOTES.append(
        f"chatmail senders: only {len(names)} of {domain}'s accounts are in rate_limit_exempt; "
        f"using fresh senders that send at most {config.max_user_send_burst_size - 1} messages "
        "each (within the burst), in count-bound runs"
    )
    return loadgen.accounts(domain, 128, prefix="bs", password=password), True


def _usage(remote: Remote | None) -> dict | None:
    """Per-unit CPU counters of the host, or None where SSH does not reach it."""
    if remote is None:
        return None
    try:
        return unitstats.sample(remote)
    except RemoteError:
        return None


def _last_delivery(target: Target, rcpts: list[loadgen.Account]) -> float | None:
    """When the last message reached the recipients' Maildirs (file mtimes on the server,
    moved onto this machine's clock), or None where SSH does not reach it."""
    if target.rcpt_remote is None:
        return None
    dirs = []
    for a in rcpts:
        local, domain = a.addr.split("@")
        dirs.append(target.maildir.format(local=local, domain=domain, addr=a.addr))
    cmd = ("date +%s.%N; find " + " ".join(f"{d}/new {d}/cur" for d in dirs)
           + " -type f -printf '%T@\\n' 2>/dev/null | sort -n | tail -1")  # fmt: skip
    try:
        out = target.rcpt_remote.run(cmd, check=False).stdout.split()
    except RemoteError:
        return None
    if len(out) < 2:
        return None
    offset = float(out[0]) - time.time()
    return float(out[1]) - offset


def _run_one(target: Target, n: int, reuse: bool, rcpts: list[loadgen.Account], burst: int) -> dict:
    senders = target.senders[:n] if not target.limited else target.senders
    if target.limited:
        # Round-robin over all senders: each sends at most burst-1 messages, after the
        # previous run's allowance has come back.
        time.sleep(target.refill)
        spec = dict(count=len(senders) * max(1, burst - 1), duration=3 * THROUGHPUT_SECONDS)
    else:
        spec = dict(duration=THROUGHPUT_SECONDS)
    before = _usage(target.remote)
    cpu0 = time.process_time()
    load = loadgen.send_load(target.host, senders, rcpts, concurrency=n, reuse_sessions=reuse,
                             retry_for=10.0, **spec)  # fmt: skip
    client_cpu = time.process_time() - cpu0
    after = _usage(target.remote)
    tokens = [s.token for s in load.accepted]
    delivery = loadgen.wait_delivered(target.rcpt_host, rcpts, tokens, timeout=60, interval=0.2)
    delivered = sum(1 for t in tokens if delivery.counts.get(t))
    # The IMAP poll sees the last message only at its next round; the Maildir knows better.
    last = _last_delivery(target, rcpts) or delivery.last_seen or load.ended
    span = last - load.started
    errors = sum(1 for s in load.sends for a in s.attempts if a.code != 250)
    row = {
        "system": target.system,
        "n": n,
        "sessions": "reused" if reuse else "new",
        "sent": len(load.accepted),
        "submitted_per_s": load.submitted_per_s,
        "delivered_per_s": delivered / span if delivered else 0.0,
        "lost": len(tokens) - delivered,
        "errors": errors,
        "failed": len(load.sends) - len(load.accepted),
        "client_cpu_s": client_cpu,
        "seconds": load.ended - load.started,
    }
    if before is not None and after is not None:
        row["cpu"] = unitstats.cpu_seconds(before["units"], after["units"])
        row["processes"] = unitstats.process_cpu(before["processes"], after["processes"])
    return row


def _throughput(topology: str, targets: list[Target], burst: int) -> None:
    for reuse in (False, True):
        for n in CONCURRENCY:
            for target in targets:
                rcpts = target.recipients[:RECIPIENTS_PER_RUN]
                del target.recipients[:RECIPIENTS_PER_RUN]
                THROUGHPUT.append({"topology": topology,
                                   **_run_one(target, n, reuse, rcpts, burst)})  # fmt: skip


def _chatmail_target(config, host, rcpt_host, remote, rcpt_remote, password) -> Target:
    senders, limited = _chatmail_senders(config, host, password)
    errors = loadgen.create_accounts(host, senders)
    assert not errors, errors[:3]
    runs = 2 * len(CONCURRENCY)
    rcpts = loadgen.accounts(rcpt_host, runs * RECIPIENTS_PER_RUN, prefix="br", password=password)
    errors = loadgen.create_accounts(rcpt_host, rcpts)
    assert not errors, errors[:3]
    refill = 60 * config.max_user_send_burst_size / config.max_user_send_per_minute
    maildir = f"{config.mailboxes_dir.parent}/{{domain}}/{{addr}}"
    return Target("chatmail", host, rcpt_host, senders, rcpts, remote, rcpt_remote, maildir,
                  limited, refill)  # fmt: skip


def _floor_target(host, rcpt_host, password) -> Target:
    senders, _ = stock.bench_accounts(host, password)
    _, rcpts = stock.bench_accounts(rcpt_host, password)
    ssh_config = os.environ.get("CHATMAIL_SSH_CONFIG")
    remote = Remote(host, ssh_config=Path(ssh_config) if ssh_config else None)
    rcpt_remote = Remote(rcpt_host, ssh_config=remote.ssh_config)
    maildir = stock.MAILDIR
    return Target("floor", host, rcpt_host, [loadgen.Account(*a) for a in senders],
                  [loadgen.Account(*a) for a in rcpts], remote, rcpt_remote, maildir)  # fmt: skip


def test_throughput_one_relay(config, domain, remote):
    password = bench_password(Path(os.environ["CHATMAIL_INI"]))
    targets = [_chatmail_target(config, domain, domain, remote, remote, password)]
    floor = _floor_hosts()
    if floor:
        targets.append(_floor_target(floor[0], floor[0], password))
    _throughput("one relay", targets, config.max_user_send_burst_size)


def test_throughput_two_relays(config, domain, domain2, remote, remote2):
    password = bench_password(Path(os.environ["CHATMAIL_INI"]))
    targets = [_chatmail_target(config, domain, domain2, remote, remote2, password)]
    floor = _floor_hosts()
    if len(floor) >= 2:
        targets.append(_floor_target(floor[0], floor[1], password))
    _throughput("two relays", targets, config.max_user_send_burst_size)


def _process_name(key: str) -> str:
    """ "postfix@-.service lmtp" -> "postfix/lmtp" (Dovecot has an lmtp too)."""
    unit, comm = key.split(" ", 1)
    group = unitstats.group_name(unit)
    return comm if comm.startswith(group[:15]) else f"{group}/{comm}"


def throughput_table() -> list[str]:
    """The throughput rows with each chatmail figure's ratio to the matching floor figure."""
    if not THROUGHPUT:
        return []
    lines = [
        "",
        f"throughput: encrypted messages for {THROUGHPUT_SECONDS:g} s per run; delivered/s = "
        "messages / (first submit to last one in a Maildir)",
    ]
    if not _floor_hosts():
        lines.append("floor: not measured (cmdeploy bench --floor HOST[,HOST2])")
    lines += [f"note: {n}" for n in NOTES]
    head = (f"{'topology':11} {'system':9} {'N':>3} {'sessions':8} {'sent':>5} "
            f"{'submit/s':>9} {'deliv/s':>8} {'ratio':>6} {'errors':>6} {'lost':>4}")  # fmt: skip
    lines.append(head)
    floor = {
        (r["topology"], r["n"], r["sessions"]): r for r in THROUGHPUT if r["system"] == "floor"
    }
    for r in THROUGHPUT:
        ref = floor.get((r["topology"], r["n"], r["sessions"]))
        ratio = "-"
        if r["system"] == "chatmail" and ref and ref["delivered_per_s"]:
            ratio = f"{r['delivered_per_s'] / ref['delivered_per_s']:.2f}"
        lines.append(
            f"{r['topology']:11} {r['system']:9} {r['n']:3} {r['sessions']:8} {r['sent']:5} "
            f"{r['submitted_per_s']:9.1f} {r['delivered_per_s']:8.1f} {ratio:>6} "
            f"{r['errors'] + r['failed']:6} {r['lost']:4}"
        )
    lines.append("CPU seconds per run on the submission host (busiest units) and in this client:")
    for r in THROUGHPUT:
        if "cpu" in r:
            busiest = ", ".join(f"{k} {v:.1f}" for k, v in list(r["cpu"].items())[:6])
            lines.append(f"  {r['topology']:11} {r['system']:9} N={r['n']:<3} {r['sessions']:6} "
                         f"({r['seconds']:.1f}s): {busiest}; client {r['client_cpu_s']:.1f}")  # fmt: skip
            top = ", ".join(
                f"{_process_name(k)} {v:.1f}" for k, v in list(r["processes"].items())[:8]
            )
            lines.append(f"    processes: {top}")
    return lines
