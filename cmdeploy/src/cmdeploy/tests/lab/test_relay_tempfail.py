"""A dependency that is down gives temporary failures, never permanent ones.

Two deployed lab relays. For each service relay1 depends on, the service is stopped (or,
for doveauth, hung with SIGSTOP) and an existing account tries what a client does: SMTP
AUTH, IMAP LOGIN and METADATA, submitting to a local and a remote recipient, and receiving
from relay2 over port 25. Every refusal must be a 4xx or ``NO [UNAVAILABLE]``; nothing may
bounce. After the service is back, the same actions succeed, and every message that was
accepted or deferred meanwhile arrives exactly once.

Run with ``-s`` to see the table of replies per service.
"""

from __future__ import annotations

import base64
import time

import pytest
from chatmaild.testkit.waiting import wait_until

from cmdeploy.lab.relay import lab_relay
from cmdeploy.services.deployer import SOCKETS
from cmdeploy.tests.lab.probes import call
from cmdeploy.tests.lab.test_relay_hostile import encrypted, mail_log, name, since

pytestmark = pytest.mark.lab

PASSWORD = "password123"
# Hung doveauth (SIGSTOP): Postfix gives up on Dovecot's auth after 10 s (454), IMAP
# LOGIN got its NO [UNAVAILABLE] after 61.5 s in the lab (Dovecot 2.3's dict client waits
# 30 s per lookup, a timeout without a setting): bounded, if long.
HUNG_SMTP_BOUND = 20
HUNG_IMAP_BOUND = 90
TOKEN = "tempfail-device-token"

# case -> (unit, how it is taken down). "stop" stops a dict service together with its
# socket unit (really down); "stop-service" stops only the service, whose socket unit then
# starts it again at the next request (services/daemon.socket.j2).
CASES = {
    "doveauth": ("doveauth", "stop"),
    "doveauth-service-only": ("doveauth", "stop-service"),
    "doveauth-hung": ("doveauth", "hang"),
    "lastlogin": ("lastlogin", "stop"),
    "chatmail-metadata": ("chatmail-metadata", "stop"),
    "chatmail-metadata-service-only": ("chatmail-metadata", "stop-service"),
    "filtermail": ("filtermail", "stop"),
    "filtermail-incoming": ("filtermail-incoming", "stop"),
    "opendkim": ("opendkim", "stop"),
}
TABLE: dict[str, dict] = {}


@pytest.fixture(scope="module")
def relays(lab, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tempfail-relays")
    return lab_relay(lab, "relay1", workdir), lab_relay(lab, "relay2", workdir)


@pytest.fixture(scope="module")
def accounts(lab, relays):
    relay1, relay2 = relays
    addrs = {
        "alice": f"{name()}@{relay1.domain}",
        "bob": f"{name()}@{relay1.domain}",
        "carol": f"{name()}@{relay2.domain}",
    }
    for who, addr in addrs.items():
        host = relay2.domain if who == "carol" else relay1.domain
        login = call(lab, "imap_login", host=host, user=addr, password=PASSWORD)
        assert login["ok"], (addr, login)
    return addrs


@pytest.fixture(scope="module")
def started(lab, relays):
    """Journal start of the module on both relays, for the bounce check at the end."""
    return since(lab, relays[0]), since(lab, relays[1])


@pytest.fixture(scope="module")
def sent(relays):
    """Every message that must arrive in the end: (recipient, host, msgid)."""
    return []


def submit(lab, host: str, sender: str, to: str) -> tuple[dict, str]:
    msgid = f"{name(16)}@tempfail.test"
    msg = encrypted(sender, to, msgid)
    reply = call(lab, "smtp_send", host=host, port=465, user=sender, password=PASSWORD,
                 msg_b64=base64.b64encode(msg).decode(), mail_from=sender, rcpts=[to])  # fmt: skip
    return reply, msgid


def delivery_status(lab, relay, start: str, rcpt: str, msgid: str, timeout: float = 25) -> str:
    """The first ``status=`` of the relay's delivery attempts of message ``msgid`` to
    ``rcpt`` since ``start``: mail deferred by earlier tests may be delivered meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        log = mail_log(lab, relay, start).splitlines()
        # cleanup logs "<queue id>: message-id=<msgid>" once per queue file of the message;
        # delivery lines start with the same queue id (journalctl -o cat: no prefix).
        ids = {line.split(":", 1)[0] for line in log if f": message-id=<{msgid}>" in line}
        for line in log:
            if f"to=<{rcpt}>" in line and "status=" in line and line.split(":", 1)[0] in ids:
                return line.split("status=", 1)[1]
        if time.monotonic() > deadline:
            return "(no delivery attempt logged)"
        time.sleep(1)


def observe(lab, relays, accounts, sent) -> dict:
    """What each client action gets from relay1 right now."""
    relay1, relay2 = relays
    alice, bob, carol = accounts["alice"], accounts["bob"], accounts["carol"]
    out = {"auth": call(lab, "smtp_auth", host=relay1.domain, user=alice, password=PASSWORD)}
    out["imap"] = call(lab, "imap_commands", host=relay1.domain, user=alice, password=PASSWORD,
                       commands=["SELECT INBOX",
                                 f'SETMETADATA INBOX (/private/devicetoken "{TOKEN}")',
                                 "GETMETADATA INBOX (/private/devicetoken)"])  # fmt: skip
    for key, to, peer in (("submit_local", bob, relay1), ("submit_remote", carol, relay2)):
        reply, msgid = submit(lab, relay1.domain, alice, to)
        out[key] = reply
        if reply["code"] == 250:
            sent.append((to, peer.domain, msgid))
    # relay2 accepts carol's message and relays it to relay1's port 25.
    start2 = since(lab, relay2)
    reply, msgid = submit(lab, relay2.domain, carol, alice)
    assert reply["code"] == 250, reply
    sent.append((alice, relay1.domain, msgid))
    out["port25"] = delivery_status(lab, relay2, start2, alice, msgid)
    return out


def short(reply: dict) -> str:
    if "replies" in reply:
        return " | ".join(r.split(" ", 1)[-1] for r in reply["replies"]) + f" ({reply['seconds']}s)"
    text = f"{reply['code']} {reply['text']}"
    return text + (f" ({reply['seconds']}s)" if "seconds" in reply else "")


def is_temporary(reply: dict) -> bool:
    return 400 <= reply["code"] < 500


def take_down(lab, relay, unit: str, how: str) -> None:
    if how == "hang":
        lab.ssh_run(relay.name, f"systemctl kill -s SIGSTOP {unit}")
    elif how == "stop" and unit in SOCKETS:
        lab.ssh_run(relay.name, f"systemctl stop {unit}.socket {unit}.service")
    else:
        lab.ssh_run(relay.name, f"systemctl stop {unit}")


def bring_back(lab, relay, unit: str, how: str) -> None:
    if how == "hang":
        lab.ssh_run(relay.name, f"systemctl kill -s SIGCONT {unit}")
    elif unit in SOCKETS:
        lab.ssh_run(relay.name, f"systemctl start {unit}.socket {unit}.service")
    else:
        lab.ssh_run(relay.name, f"systemctl start {unit}")
    lab.ssh_run(relay.name, f"systemctl is-active {unit}")


@pytest.mark.parametrize("case", list(CASES))
def test_service_down_gives_temporary_failures_only(lab, relays, accounts, started, sent, case):
    relay1, relay2 = relays
    unit, how = CASES[case]
    take_down(lab, relay1, unit, how)
    try:
        down = observe(lab, relays, accounts, sent)
    finally:
        bring_back(lab, relay1, unit, how)
    TABLE[case] = {k: (v if isinstance(v, str) else short(v)) for k, v in down.items()}
    print(f"\n{case} down: " + "\n  ".join(f"{k}: {v}" for k, v in TABLE[case].items()))

    auth, imap = down["auth"], down["imap"]["replies"]
    if how == "stop-service":
        # The socket unit started the service again at the first request: nothing failed.
        assert auth["code"] == 235, auth
        assert all(r.startswith(f"t{i} OK") for i, r in enumerate(imap)), imap
        assert lab.ssh_run(relay1.name, f"systemctl is-active {unit}").stdout.strip() == "active"
    elif unit == "doveauth":
        assert auth["code"] == 454, auth
        assert "NO [UNAVAILABLE]" in imap[0], imap
        assert auth["seconds"] < HUNG_SMTP_BOUND and down["imap"]["seconds"] < HUNG_IMAP_BOUND
    else:
        assert auth["code"] == 235, auth
        assert imap[0].startswith("t0 OK") and imap[1].startswith("t1 OK"), imap
    if unit == "chatmail-metadata" and how == "stop":
        # IMAP keeps working; only the METADATA commands fail, temporarily (Dovecot's
        # chatmail-metadata-unavailable.patch: NO [UNAVAILABLE], not NO [SERVERBUG]).
        assert imap[2].startswith("t2 NO [UNAVAILABLE]"), imap
        assert imap[3].startswith("t3 NO [UNAVAILABLE]"), imap
        assert imap[4].startswith("t4 OK"), imap  # LOGOUT: the session survived
    for key in ("submit_local", "submit_remote"):
        reply = down[key]
        assert reply["code"] == 250 or is_temporary(reply), (key, reply)
    # relay1 may accept and defer internally, but never refuse permanently.
    assert not down["port25"].startswith("bounced"), down["port25"]
    if unit in ("filtermail-incoming", "opendkim"):
        assert down["port25"].startswith("deferred") and " said: 4" in down["port25"], down

    # Back up: the same actions succeed.
    wait_until(lambda: call(lab, "smtp_auth", host=relay1.domain, user=accounts["alice"],
                            password=PASSWORD),
               "SMTP AUTH to succeed again", 20, interval=1,
               until=lambda up: up["code"] == 235)  # fmt: skip
    again = observe(lab, relays, accounts, sent)
    replies = again["imap"]["replies"]
    assert all(r.startswith(f"t{i} OK") for i, r in enumerate(replies)), replies
    assert any(TOKEN in line for line in again["imap"]["untagged"]), again["imap"]
    assert again["submit_local"]["code"] == 250 and again["submit_remote"]["code"] == 250, again
    assert again["port25"].startswith("sent"), again["port25"]


def test_killed_doveauth_while_it_restarts_never_fails_a_login(lab, relays, accounts):
    """SIGKILL: systemd starts doveauth again within about a second; meanwhile only 454."""
    relay1 = relays[0]
    alice = accounts["alice"]
    lab.ssh_run(relay1.name, "systemctl kill -s SIGKILL doveauth")
    auths, imaps = [], []
    for _ in range(4):
        auths.append(call(lab, "smtp_auth", host=relay1.domain, user=alice, password=PASSWORD))
        imaps.append(call(lab, "imap_login", host=relay1.domain, user=alice, password=PASSWORD))
    TABLE["doveauth-killed"] = {
        "auth": ", ".join(short(a) for a in auths),
        "imap": ", ".join("OK" if r["ok"] else r["error"] for r in imaps),
    }
    print(
        "\ndoveauth killed: "
        + "\n  ".join(f"{k}: {v}" for k, v in TABLE["doveauth-killed"].items())
    )
    assert {a["code"] for a in auths} <= {235, 454}, auths
    assert all(r["ok"] or "UNAVAILABLE" in r["error"] for r in imaps), imaps
    assert auths[-1]["code"] == 235 and imaps[-1]["ok"], (auths, imaps)


def test_dovecot_down_mail_from_other_relays_waits_in_the_queue(lab, relays, accounts, sent):
    """Dovecot's LMTP is the next hop of every accepted message: Postfix defers, no bounce."""
    relay1, relay2 = relays
    alice, carol = accounts["alice"], accounts["carol"]
    start1, start2 = since(lab, relay1), since(lab, relay2)
    lab.ssh_run(relay1.name, "systemctl stop dovecot")
    try:
        reply, msgid = submit(lab, relay2.domain, carol, alice)
        assert reply["code"] == 250, reply
        sent.append((alice, relay1.domain, msgid))
        on_relay2 = delivery_status(lab, relay2, start2, alice, msgid)
        on_relay1 = delivery_status(lab, relay1, start1, alice, msgid)
        auth = call(lab, "smtp_auth", host=relay1.domain, user=alice, password=PASSWORD)
    finally:
        lab.ssh_run(relay1.name, "systemctl start dovecot")
    TABLE["dovecot"] = {"port25": on_relay2, "lmtp on relay1": on_relay1, "auth": short(auth)}
    print("\ndovecot down: " + "\n  ".join(f"{k}: {v}" for k, v in TABLE["dovecot"].items()))
    assert on_relay2.startswith("sent"), on_relay2
    assert on_relay1.startswith("deferred"), on_relay1
    # No SASL server to ask: the session ends or gets a 4xx, never a 535.
    assert not 500 <= auth["code"] < 600, auth


def test_everything_accepted_meanwhile_arrives_once_and_nothing_bounced(
    lab, relays, accounts, started, sent
):
    relay1, relay2 = relays
    for relay in relays:
        lab.ssh_run(relay.name, "postqueue -f")
    by_host = {}
    for rcpt, host, msgid in sent:
        by_host.setdefault((rcpt, host), []).append(msgid)
    for (rcpt, host), msgids in by_host.items():
        out = call(lab, "imap_messages", host=host, user=rcpt, password=PASSWORD,
                   wait=60, min_count=len(msgids))  # fmt: skip
        inbox = [base64.b64decode(m) for m in out["messages"]]
        for msgid in msgids:
            count = sum(f"<{msgid}>".encode() in m for m in inbox)
            assert count == 1, (rcpt, msgid, count)
        assert not any(b"MAILER-DAEMON" in m.upper() for m in inbox), rcpt
    for relay, start in zip(relays, started, strict=True):
        log = mail_log(lab, relay, start)
        assert "status=bounced" not in log, relay.name
        assert "sender non-delivery notification" not in log, relay.name
    pid = lab.ssh_run(relay1.name, "systemctl show -p MainPID --value chatmail-saslproxy").stdout
    rss = lab.ssh_run(relay1.name, f"ps -o rss= -p {pid.strip()}").stdout.strip()
    print(f"\nchatmail-saslproxy RSS after the module: {rss} KiB")
    print("\nreplies while each service was down:")
    for case, row in TABLE.items():
        print(f"{case}:\n  " + "\n  ".join(f"{k}: {v}" for k, v in row.items()))
