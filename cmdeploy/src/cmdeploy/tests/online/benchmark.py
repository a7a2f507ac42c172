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

from cmdeploy import loadgen, unitstats
from cmdeploy.lab import stock
from cmdeploy.remote import Remote, RemoteError
from cmdeploy.tests.online.dcutil import online_account as _online
from cmdeploy.tests.online.dcutil import wait_text

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


def _ping_pong(dc, creds, d1, d2, name):
    a, b = online_account(dc, creds, d1), online_account(dc, creds, d2)
    chat_ab, chat_ba = a.create_chat(b), b.create_chat(a)

    def round_trip():
        chat_ab.send_text("ping")
        wait_text(b, "ping")
        chat_ba.send_text("pong")
        wait_text(a, "pong")

    round_trip()  # warm up: key exchange, first IDLE
    measure(name, round_trip, 5)


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
