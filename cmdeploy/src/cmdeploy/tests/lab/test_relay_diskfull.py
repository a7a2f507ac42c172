"""A full disk on a deployed lab relay: refused for now, nothing lost, back by itself.

The relay gets small filesystems (tmpfs mounted inside the lab host over a copy of the
original directory, owners and modes kept): one over the mailboxes (``/home/vmail/mail``),
then one over Postfix's queue (``/var/spool/postfix``). Its ``max_message_size`` is 1 MiB,
so Postfix refuses MAIL FROM below 3 MiB free (``queue_minfree``; it is the reinjection
listener behind filtermail that refuses, and the client gets the 452 after DATA), and
``min_free_disk_space`` is 2 MiB. Every mount is undone at the end of its test, also on
failure, before the lab fixture tears the host down.

Run with ``-s`` to see the replies and how long the queued mail took once space was back.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Iterator

import pytest
from chatmaild.testkit.waiting import wait_until

from cmdeploy.lab.relay import lab_relay
from cmdeploy.tests.lab.probes import call
from cmdeploy.tests.lab.test_relay_hostile import encrypted, mail_log, name, since

pytestmark = pytest.mark.lab

PASSWORD = "password123"
MAILBOXES = "/home/vmail/mail"
SPOOL = "/var/spool/postfix"
FILLER = "zz-diskfull-filler"
MAX_MESSAGE = 1024 * 1024
# Postfix's retry times (main.cf) bound the wait once space is back: about a minute.
REDELIVERY_BOUND = 90


@pytest.fixture(scope="module")
def relay(lab, tmp_path_factory):
    overrides = {
        "max_message_size": MAX_MESSAGE,
        "min_free_disk_space": "2M",
        # Lab hosts share the machine's load average; refusals here must be for disk.
        "max_load_1m": 1000,
    }
    return lab_relay(lab, "relay1", tmp_path_factory.mktemp("diskfull"), overrides)


def sh(lab, relay, command: str, check: bool = True) -> str:
    proc = lab.ssh_run(relay.name, command, check=check)
    return proc.stdout


@contextlib.contextmanager
def small_fs(lab, relay, path: str, size: str, units: list[str]) -> Iterator[None]:
    """A tmpfs of ``size`` over ``path`` with its contents; ``units`` are stopped around
    each mount change (they hold files or sockets in there)."""
    stage = f"/run/diskfull-{name(6)}"
    stop, start = " ".join(units), " ".join(reversed(units))
    sh(lab, relay, f"systemctl stop {stop}")
    try:
        try:
            sh(lab, relay, f"mkdir {stage} && mount -t tmpfs -o size={size} tmpfs {stage}"
                           f" && cp -a {path}/. {stage}/ && chown --reference={path} {stage}"
                           f" && chmod --reference={path} {stage}"
                           f" && mount --bind {stage} {path}")  # fmt: skip
        finally:
            # The bind mount keeps the tmpfs alive; the staging mount point goes.
            sh(lab, relay, f"umount -l {stage}; rmdir {stage}", check=False)
            sh(lab, relay, f"systemctl start {start}")
        wait_listening(lab, relay, units)
        yield
    finally:
        sh(lab, relay, f"systemctl stop {stop}", check=False)
        sh(lab, relay, f"mountpoint -q {path} && umount -l {path}", check=False)
        sh(lab, relay, f"systemctl start {start}", check=False)
        mounts = sh(lab, relay, "findmnt -rn -o TARGET", check=False).split()
        assert path not in mounts and stage not in mounts, f"{path} still mounted"
        wait_listening(lab, relay, units)


def wait_listening(lab, relay, units: list[str], timeout: float = 30) -> None:
    """Until SMTP submission and IMAP answer again: Postfix's unit is active before its
    master listens."""

    def listening() -> bool:
        ports = sh(lab, relay, "ss -ltnH", check=False)
        return ":465 " in ports and ":993 " in ports

    def journal() -> str:
        units_log = sh(lab, relay, f"journalctl -n 60 --no-pager -u {' -u '.join(units)}",
                       check=False)  # fmt: skip
        return f"465/993 to listen:\n{units_log}"

    wait_until(listening, journal, timeout, interval=0.5)


def spool_units(lab, relay) -> list[str]:
    """Postfix first, then every unit that listens on a socket in the spool (Dovecot's
    auth and LMTP, OpenDKIM, chatmail-saslproxy): they must bind again on the new mount."""
    pids = sh(lab, relay, f"ss -xlpH | grep ' {SPOOL}/' | grep -o 'pid=[0-9]*' | cut -d= -f2"
                          " | sort -u | xargs -r ps -o unit= -p", check=False)  # fmt: skip
    found = {u for u in pids.split() if u.endswith(".service")}
    known = {"dovecot.service", "opendkim.service", "chatmail-saslproxy.service"}
    found = sorted((found | known) - {"postfix@-.service"})
    return ["postfix@-.service", *found]


def fill(lab, relay, path: str, leave: int = 0) -> None:
    """Fill the filesystem of ``path`` until ``leave`` bytes are free (0: none at all)."""
    if leave:
        avail = int(sh(lab, relay, f"df -B1 --output=avail {path} | tail -1"))
        sh(lab, relay, f"fallocate -l {avail - leave} {path}/{FILLER}")
    else:
        # dd ends with "No space left on device"; the last page byte by byte is not needed:
        # tmpfs hands out whole pages.
        sh(lab, relay, f"dd if=/dev/zero of={path}/{FILLER} bs=64k 2>/dev/null;"
                       f" dd if=/dev/zero of={path}/{FILLER}2 bs=4k 2>/dev/null; true")  # fmt: skip
        assert int(sh(lab, relay, f"df -B1 --output=avail {path} | tail -1")) < 4096


def free(lab, relay, path: str) -> None:
    sh(lab, relay, f"rm -f {path}/{FILLER} {path}/{FILLER}2")


def login(lab, relay, addr: str) -> dict:
    return call(lab, "imap_login", host=relay.domain, user=addr, password=PASSWORD)


def submit(lab, relay, sender: str, to: str) -> tuple[dict, str]:
    msgid = f"{name(16)}@diskfull.test"
    msg = encrypted(sender, to, msgid)
    reply = call(lab, "smtp_send", host=relay.domain, port=465, user=sender, password=PASSWORD,
                 msg_b64=base64.b64encode(msg).decode(), mail_from=sender, rcpts=[to])  # fmt: skip
    return reply, msgid


def inbox(lab, relay, addr: str, wait: float = 0, min_count: int = 0) -> list[bytes]:
    out = call(lab, "imap_messages", host=relay.domain, user=addr, password=PASSWORD,
               wait=wait, min_count=min_count)  # fmt: skip
    return [base64.b64decode(m) for m in out["messages"]]


def with_msgid(messages: list[bytes], msgid: str) -> int:
    return sum(f"<{msgid}>".encode() in m for m in messages)


def leftovers(lab, relay) -> list[str]:
    """Half-written files in the mailboxes: our temporary files and Dovecot's maildir tmp/."""
    out = sh(lab, relay, f"find {MAILBOXES} -type f \\( -name '*.tmp-*' -o -path '*/tmp/*' \\)"
                         f" ! -name '{FILLER}*'")  # fmt: skip
    return out.split()


def test_full_mailboxes_keep_accepted_mail_queued_and_deliver_it_once_space_is_back(lab, relay):
    sender, recipient = f"{name()}@{relay.domain}", f"{name()}@{relay.domain}"
    assert login(lab, relay, sender)["ok"] and login(lab, relay, recipient)["ok"]
    start = since(lab, relay)
    units = ["dovecot", "doveauth", "lastlogin", "chatmail-metadata"]
    with small_fs(lab, relay, MAILBOXES, "16m", units):
        assert login(lab, relay, recipient)["ok"], "the copied accounts must work"
        fill(lab, relay, MAILBOXES)

        reply, msgid = submit(lab, relay, sender, recipient)
        print(f"\nsubmission with full mailboxes: {reply}")
        assert reply["code"] == 250, reply  # the queue has space: accepted

        log = wait_until(lambda: mail_log(lab, relay, start), "a deferral in the mail log",
                         30, interval=1, until=lambda log: "status=deferred" in log)  # fmt: skip
        deferral = next(line for line in log.splitlines()
                        if f"to=<{recipient}>" in line and "status=deferred" in line)  # fmt: skip
        print(f"LMTP on the full disk: {deferral.split('status=', 1)[1]}")
        assert "said: 4" in deferral, deferral  # a 4xx from Dovecot, so Postfix keeps it

        newcomer = f"{name()}@{relay.domain}"
        refused = login(lab, relay, newcomer)
        print(f"new account login on the full disk: {refused}")
        assert not refused["ok"] and "[UNAVAILABLE]" in refused["error"], refused
        # Twice: the first AUTH of an smtpd that was connected to the Dovecot before the
        # mount may only see that connection gone (also a 454).
        for attempt in (1, 2):
            refused, _ = submit(lab, relay, newcomer, recipient)
            print(f"new account SMTP AUTH on the full disk ({attempt}): {refused}")
            assert refused["code"] == 454, refused
        assert "Temporary authentication failure" in refused["text"], refused
        assert "Mail queue is empty" not in sh(lab, relay, "postqueue -p"), "mail was dropped"

        free(lab, relay, MAILBOXES)
        freed = time.monotonic()
        got = inbox(lab, relay, recipient, wait=REDELIVERY_BOUND, min_count=1)
        waited = time.monotonic() - freed
        print(f"queued message in the INBOX {waited:.1f}s after space was freed")
        assert with_msgid(got, msgid) == 1, f"expected exactly one copy, got {len(got)}"
        assert waited < REDELIVERY_BOUND

        assert login(lab, relay, newcomer)["ok"], "new accounts work again"
        reply, msgid2 = submit(lab, relay, sender, recipient)
        assert reply["code"] == 250, reply
        got = inbox(lab, relay, recipient, wait=30, min_count=2)
        assert with_msgid(got, msgid2) == 1 and with_msgid(got, msgid) == 1

        log = mail_log(lab, relay, start)
        assert "status=bounced" not in log, log[-3000:]
        assert inbox(lab, relay, sender) == [], "the sender got a bounce"
        assert leftovers(lab, relay) == []
        assert sh(lab, relay, f"find {MAILBOXES} -name password -empty").split() == []


def test_full_queue_refuses_new_mail_with_452_and_accepts_it_once_space_is_back(lab, relay):
    sender, recipient = f"{name()}@{relay.domain}", f"{name()}@{relay.domain}"
    assert login(lab, relay, sender)["ok"] and login(lab, relay, recipient)["ok"]
    start = since(lab, relay)
    units = spool_units(lab, relay)
    print(f"\nunits with sockets in {SPOOL}: {units}")
    with small_fs(lab, relay, SPOOL, "32m", units):
        try:
            reply, msgid = submit(lab, relay, sender, recipient)
        except RuntimeError as e:
            reply, msgid = {"error": str(e)[-300:]}, ""
        journal = sh(lab, relay, "journalctl -n 40 --no-pager -o cat -u postfix@- -u dovecot",
                     check=False)  # fmt: skip
        assert reply.get("code") == 250, f"no mail on the small spool: {reply}\n{journal}"
        assert with_msgid(inbox(lab, relay, recipient, wait=30, min_count=1), msgid) == 1

        fill(lab, relay, SPOOL, leave=2 * MAX_MESSAGE)  # below queue_minfree (3 x)
        refused, _ = submit(lab, relay, sender, recipient)
        print(f"\nsubmission with a full queue filesystem: {refused}")
        assert refused["code"] == 452, refused
        assert "Insufficient system storage" in refused["text"], refused

        free(lab, relay, SPOOL)
        reply, msgid2 = submit(lab, relay, sender, recipient)
        assert reply["code"] == 250, reply
        got = inbox(lab, relay, recipient, wait=30, min_count=2)
        assert with_msgid(got, msgid2) == 1
        # Nothing may stay behind in the spool that is about to be unmounted.
        wait_until(lambda: sh(lab, relay, "postqueue -p"), "an empty mail queue", 30,
                   interval=1, until=lambda queue: "Mail queue is empty" in queue)  # fmt: skip
    log = mail_log(lab, relay, start)
    assert "status=bounced" not in log, log[-3000:]
    refusals = [line for line in log.splitlines() if "Insufficient system storage" in line]
    print("\n".join(["Postfix logged:", *refusals[:2]]))
    assert refusals
    assert login(lab, relay, recipient)["ok"], "the relay works on its own disk again"
