"""The mtail program counts the log lines our services and the mail daemons really print.

Lines of our own code are produced by running it (doveauth, chatmail-quota-expire, a real
Dovecot LMTP delivery) or read from the filtermail sources' logging calls; Postfix and
OpenDKIM lines are samples in those programs' documented formats.
"""

import ast
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import chatmaild
from chatmaild.filtermail.mxdeliv import LOG_FORMAT as MXDELIV_LOG
from chatmaild.quota_expire import expire_to_quota
from chatmaild.testkit.dovecot_instance import DOMAIN, DovecotInstance
from chatmaild.testkit.procs import free_port
from chatmaild.testkit.waiting import connect_unix, wait_until

PKG = Path(chatmaild.__file__).parent
MTAIL = PKG / "chatmail.mtail"
ADDR = f"abcdefghi@{DOMAIN}"


def journal(ident: str, text: str) -> str:
    """A line as ``journalctl -o short-iso`` shows a service's stderr line."""
    return f"2026-11-25T13:00:00+0000 relay {ident}[4242]: {text}"


def dict_lookup(sock: Path, key: str) -> str:
    with connect_unix(sock) as s:
        s.sendall(f"L{key}\t{ADDR}\n".encode())
        return s.recv(4096).decode()


def doveauth_rejection_line(tmp_path) -> str:
    """doveauth's stderr when free disk space is below the configured minimum."""
    (tmp_path / "mail").mkdir()
    ini = tmp_path / "chatmail.ini"
    ini.write_text(
        f"[params]\nmail_domain = {DOMAIN}\nmailboxes_dir = {tmp_path}/mail\n"
        f"nocreate_file = {tmp_path}/nocreate\nmax_load_1m = 1000\n"
        "min_available_memory = 0\nmin_free_disk_space = 100000000G\n"
    )
    sock = tmp_path / "auth.socket"
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatmaild.doveauth", str(sock), str(ini)],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_until(sock.exists, "doveauth socket")
        assert dict_lookup(sock, f'shared/passdb/password123"{ADDR}').startswith("F")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    (line,) = [ln for ln in err.splitlines() if "registration rejected" in ln]
    return line


def dovecot_lines() -> tuple[str, str]:
    """doveauth's 'Created address' and Dovecot's LMTP delivery line, from real runs."""
    directory = Path(tempfile.mkdtemp(prefix="chatmail-mtail-"))
    inst = DovecotInstance(directory)
    try:
        inst.start()
        with socket.create_connection(("127.0.0.1", inst.imap_port), timeout=20) as s:
            f = s.makefile("rwb")
            f.readline()
            f.write(f"a LOGIN {ADDR} password123\r\n".encode())
            f.flush()
            assert f.readline().startswith(b"a OK")
        with smtplib.LMTP("127.0.0.1", inst.lmtp_port) as lmtp:
            lmtp.sendmail(f"x@{DOMAIN}", [ADDR], f"From: x@{DOMAIN}\r\n\r\nhi\r\n")
        wait_until(lambda: "saved mail to" in inst.dovecot_log(), "LMTP log line")
        created = [ln for ln in inst.log_text("doveauth").splitlines() if "Created" in ln]
        saved = [ln for ln in inst.dovecot_log().splitlines() if "saved mail to" in ln]
    finally:
        inst.stop()
        shutil.rmtree(directory, ignore_errors=True)
    # Dovecot's own log prefix is a date; on the relay it logs to journald as "dovecot".
    saved_text = saved[0].split(" ", 3)[3]
    return created[0], saved_text


def quota_expire_line(tmp_path, capfd) -> str:
    maildir = tmp_path / ADDR
    (maildir / "cur").mkdir(parents=True)
    msg = maildir / "cur" / "1.M1.host,S=10:2,"
    msg.write_bytes(b"x" * 10)
    old = time.time() - 3 * 86400
    os.utime(msg, (old, old))
    capfd.readouterr()
    assert expire_to_quota(maildir, 0) == 1
    return capfd.readouterr().err.strip()


def filtermail_messages() -> list[str]:
    """Literal texts of filtermail's logging calls, ``%s`` filled with an address."""
    texts = []
    for source in sorted((PKG / "filtermail").glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("info", "warning", "error")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                texts.append(node.args[0].value.replace("%s", f"sender@{DOMAIN}"))
    return texts


# What each filtermail line must count, beyond nothing at all.
FILTERMAIL_EXPECTED = {
    "Outgoing: Filtering encrypted mail.": {
        "filtered_mail_count",
        "encrypted_mail_count",
        "outgoing_encrypted_mail_count",
    },
    "Outgoing: Filtering unencrypted mail.": {
        "filtered_mail_count",
        "unencrypted_mail_count",
        "outgoing_unencrypted_mail_count",
    },
    "Outgoing: Rejected unencrypted mail.": {
        "rejected_unencrypted_mail_count",
        "outgoing_rejected_unencrypted_mail_count",
    },
    f"Outgoing: Rate limited sender@{DOMAIN}": {"outgoing_rate_limited_count"},
    "Incoming: Filtering encrypted mail.": {
        "filtered_mail_count",
        "encrypted_mail_count",
        "incoming_encrypted_mail_count",
    },
    "Incoming: Filtering unencrypted mail.": {
        "filtered_mail_count",
        "unencrypted_mail_count",
        "incoming_unencrypted_mail_count",
    },
    "Incoming: Rejected unencrypted mail.": {
        "rejected_unencrypted_mail_count",
        "incoming_rejected_unencrypted_mail_count",
    },
    f"Incoming: Filtering mailer-daemon message from sender@{DOMAIN}": {
        "incoming_mailer_daemon_mail_count"
    },
    "Incoming: Rejected unknown recipient.": {"incoming_rejected_unknown_recipient_count"},
}


def mxdeliv_line(status: int, code: str) -> str:
    return journal("filtermail", MXDELIV_LOG % (status, code, "192.0.2.7", 1))


# chatmail-mxtransport's delivery lines, by the text they start with.
MXTRANSPORT_EXPECTED = {
    "Delivered via HTTPS to": {"outgoing_https_delivery_count"},
    "Delivered via SMTP to": {"outgoing_smtp_delivery_count"},
    "Deferred delivery to": {"outgoing_deferred_delivery_count"},
    "Bounced delivery to": {"outgoing_bounced_delivery_count"},
}


def mxtransport_lines() -> dict[str, set[str]]:
    """mxtransport's logging calls as journal lines (arguments filled in) -> counters."""
    lines = {}
    for node in ast.walk(ast.parse((PKG / "mxtransport.py").read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "info"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).startswith(tuple(MXTRANSPORT_EXPECTED))
        ):
            # Arguments in order: the domain, the number of recipients, the first reply.
            args = ("other.example.org", 2, "451 4.4.1 Failed to connect")
            text = node.args[0].value % args[: node.args[0].value.count("%")]
            key = next(k for k in MXTRANSPORT_EXPECTED if text.startswith(k))
            lines[journal("chatmail-mxtransport", text)] = MXTRANSPORT_EXPECTED[key]
    return lines


SAMPLE_LINES = {
    mxdeliv_line(200, "250"): {"mxdeliv_requests": 1, "mxdeliv_delivered": 1},
    mxdeliv_line(400, "554"): {"mxdeliv_requests": 1, "mxdeliv_refused": 1},
    mxdeliv_line(413, "552"): {"mxdeliv_requests": 1, "mxdeliv_refused": 1},
    mxdeliv_line(400, "451"): {"mxdeliv_requests": 1, "mxdeliv_deferred": 1},
    mxdeliv_line(503, "451"): {"mxdeliv_requests": 1, "mxdeliv_unavailable": 1},
    mxdeliv_line(405, "-"): {"mxdeliv_requests": 1},
    # OpenDKIM, dkimf_add_signature (syslog via journald)
    journal(
        "opendkim", "4Xk2Lq1T0Rz3: DKIM-Signature field added (s=opendkim, d=chat.example.org)"
    ): {"dkim_signed": 1},
    # Dovecot LMTP with Sieve (the relay's dedup.sieve): Pigeonhole's line, whose format is
    # "stored mail into mailbox %s" in libdovecot-sieve, the mailbox name quoted.
    journal(
        "dovecot",
        f"lmtp({ADDR})<77><abc>: Info: sieve: msgid=<m@x>: stored mail into mailbox 'INBOX'",
    ): {"delivered_mail": 1},
    journal("postfix/smtpd", "timeout after DATA (0 bytes) from unknown[192.0.2.7]"): {
        "postfix_timeouts": 1
    },
    journal(
        "postfix/smtpd",
        "NOQUEUE: reject: RCPT from unknown[192.0.2.7]: 554 5.7.1 <x@y>: Relay access denied",
    ): {"postfix_noqueue": 1},
    journal("postfix/smtpd", "warning: hostname example does not resolve to address"): {
        "warning_count": 1
    },
    journal(
        "dovecot",
        f"lmtp({ADDR})<77><abc>: Error: msgid=<m@x>: save failed to INBOX: "
        "Quota exceeded (mailbox for user is full)",
    ): {"quota_exceeded": 1},
}


def parse_mtail(text: str) -> list[tuple[re.Pattern, set[str]]]:
    """Top-level ``/regex/ { … }`` blocks and the counters incremented inside them."""
    blocks, depth, current = [], 0, None
    for line in text.splitlines():
        stripped = line.strip()
        if depth == 0:
            m = re.match(r"^/(.*)/ \{$", stripped)
            if m:
                current = (re.compile(m.group(1).replace("\\/", "/")), set())
                blocks.append(current)
                depth = 1
            continue
        depth += stripped.count("{") - stripped.count("}")
        m = re.match(r"^(\w+)\s*(\+\+|\+=)", stripped)
        if m:
            current[1].add(m.group(1))
    return blocks


def counters_for(line: str, blocks) -> set[str]:
    return {name for regex, names in blocks if regex.search(line) for name in names}


@pytest.fixture(scope="module")
def real_lines(tmp_path_factory):
    created, saved = dovecot_lines()
    rejected = doveauth_rejection_line(tmp_path_factory.mktemp("auth"))
    return {"created": created, "saved": saved, "rejected": rejected}


@pytest.fixture
def all_lines(real_lines, tmp_path, capfd):
    """Journal lines → the counters each must increment by one."""
    lines = {
        journal("doveauth", real_lines["created"]): {
            "created_accounts": 1,
            "created_nonci_accounts": 1,
        },
        journal("doveauth", real_lines["created"].replace("abcdefghi", "ci-abcdef")): {
            "created_accounts": 1,
            "created_ci_accounts": 1,
        },
        journal("doveauth", real_lines["rejected"]): {
            "rejected_registrations": 1,
            "warning_count": 1,
        },
        journal("dovecot", real_lines["saved"]): {"delivered_mail": 1},
        journal("dovecot", "quota-warning: " + quota_expire_line(tmp_path, capfd)): {
            "quota_expire_runs": 1,
            "quota_expire_removed_files": 1,
        },
        **SAMPLE_LINES,
    }
    for line, names in mxtransport_lines().items():
        lines[line] = dict.fromkeys(names, 1)
    for text in filtermail_messages():
        if text.startswith(("Outgoing:", "Incoming:")):
            lines[journal("filtermail", text)] = dict.fromkeys(FILTERMAIL_EXPECTED[text], 1)
    return lines


def test_real_lines_look_as_expected(real_lines):
    assert real_lines["created"] == f"Created address: {ADDR}"
    assert real_lines["saved"].endswith("saved mail to INBOX")
    assert "registration rejected: free disk" in real_lines["rejected"]


def test_filtermail_lines_are_all_known():
    texts = {t for t in filtermail_messages() if t.startswith(("Outgoing:", "Incoming:"))}
    assert texts == set(FILTERMAIL_EXPECTED)


def test_mxtransport_lines_are_all_known():
    starts = {next(k for k in MXTRANSPORT_EXPECTED if line.split(": ", 1)[1].startswith(k))
              for line in mxtransport_lines()}  # fmt: skip
    assert starts == set(MXTRANSPORT_EXPECTED)


def test_every_regex_matches_its_real_line(all_lines):
    blocks = parse_mtail(MTAIL.read_text())
    for line, expected in all_lines.items():
        assert set(expected) <= counters_for(line, blocks), line
    # Every counter of the program is exercised by some line.
    declared = set(re.findall(r"^counter (\w+)", MTAIL.read_text(), re.M))
    exercised = {name for expected in all_lines.values() for name in expected}
    assert declared == exercised


@pytest.mark.skipif(not shutil.which("mtail"), reason="mtail is not installed")
def test_mtail_counts_each_line(all_lines, tmp_path):
    progs = tmp_path / "progs"
    progs.mkdir()
    shutil.copy(MTAIL, progs)
    for line, expected in all_lines.items():
        log = tmp_path / "log"
        log.write_text(line + "\n")
        result = subprocess.run(
            ["mtail", "--one_shot", "--progs", str(progs), "--logs", str(log)]
            + ["--port", str(free_port()), "--address", "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        values = {
            name: entries[0]["LabelValues"][0]["Value"]["Value"]
            for name, entries in json.loads(result.stdout).items()
        }
        counted = {name: value for name, value in values.items() if value}
        assert counted == expected, line
