import imaplib
import json
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import chatmaild
from chatmaild.metadata import TOKEN_MAX_AGE, MetadataDict, MetadataStore
from chatmaild.testkit.config import make_config, write_ini
from chatmaild.testkit.dovecot_instance import DOMAIN, DovecotInstance
from chatmaild.testkit.pushserver import HANG, PushServer
from chatmaild.testkit.waiting import connect_unix, wait_until

ADDR = f"abcdefghi@{DOMAIN}"
TOKEN_KEY = "priv/0123456789abcdef/devicetoken"
MESSAGENEW_KEY = "priv/0123456789abcdef/messagenew"
SERVER_KEY = "shared/0123456789abcdef/vendor/vendor.dovecot/pvt/server/vendor/deltachat/"
LUA = Path(chatmaild.__file__).parent / "push_notification.lua"


pytestmark = pytest.mark.usefixtures("no_proxy")


@pytest.fixture
def config(tmp_path):
    config = make_config(tmp_path)
    (config.mailboxes_dir / ADDR).mkdir()
    return config


class Clock:
    def __init__(self, now=1_800_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


class FakeNotifier:
    def __init__(self):
        self.calls = []

    def notify(self, addr, tokens):
        self.calls.append((addr, list(tokens)))


# --- token storage ---


def test_tokens_accumulate_and_are_returned_oldest_first(config):
    clock = Clock()
    store = MetadataStore(config, clock)
    store.add_token(ADDR, "1111")
    clock.now += 1
    store.add_token(ADDR, "2222")
    clock.now += 1
    store.add_token(ADDR, "1111")
    assert store.get_tokens(ADDR) == ["2222", "1111"]
    stored = json.loads((config.mailboxes_dir / ADDR / "metadata.json").read_text())
    assert stored == {"devicetoken": {"2222": clock.now - 1, "1111": clock.now}}


def test_tokens_expire_after_90_days(config):
    clock = Clock()
    store = MetadataStore(config, clock)
    store.add_token(ADDR, "old")
    clock.now += TOKEN_MAX_AGE / 2
    store.add_token(ADDR, "new")
    clock.now += TOKEN_MAX_AGE / 2 + 1
    assert store.get_tokens(ADDR) == ["new"]
    store.add_token(ADDR, "newer")
    assert (
        "old"
        not in json.loads((config.mailboxes_dir / ADDR / "metadata.json").read_text())[
            "devicetoken"
        ]
    )


def test_token_stamped_in_the_future_is_ignored(config):
    (config.mailboxes_dir / ADDR / "metadata.json").write_text(
        json.dumps({"devicetoken": {"future": 1_900_000_000, "ok": 1_799_999_000}})
    )
    assert MetadataStore(config, Clock()).get_tokens(ADDR) == ["ok"]


def test_legacy_token_list_is_migrated(config):
    path = config.mailboxes_dir / ADDR / "metadata.json"
    path.write_text(json.dumps({"devicetoken": ["a", "b"]}))
    store = MetadataStore(config, Clock())
    assert sorted(store.get_tokens(ADDR)) == ["a", "b"]
    store.add_token(ADDR, "c")
    assert sorted(json.loads(path.read_text())["devicetoken"]) == ["a", "b", "c"]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\xff\xfe", ""])
def test_corrupt_metadata_file_is_logged_and_read_as_empty(config, caplog, content):
    path = config.mailboxes_dir / ADDR / "metadata.json"
    path.write_text(content, encoding="latin-1")
    store = MetadataStore(config, Clock())
    assert store.get_tokens(ADDR) == []
    assert "metadata.json" in caplog.text
    store.add_token(ADDR, "1111")
    assert store.get_tokens(ADDR) == ["1111"]


def test_remove_token_keeps_the_others(config):
    store = MetadataStore(config, Clock())
    store.add_token(ADDR, "a")
    store.add_token(ADDR, "b")
    store.remove_token(ADDR, "a")
    store.remove_token(ADDR, "not-there")
    assert store.get_tokens(ADDR) == ["b"]


def test_number_of_tokens_is_capped(config):
    clock = Clock()
    store = MetadataStore(config, clock)
    for i in range(60):
        clock.now += 1
        store.add_token(ADDR, f"t{i}")
    tokens = store.get_tokens(ADDR)
    assert len(tokens) == 50
    assert tokens[-1] == "t59" and "t0" not in tokens


def test_no_tmp_files_are_left_behind(config):
    store = MetadataStore(config, Clock())
    for i in range(5):
        store.add_token(ADDR, f"t{i}")
    assert sorted(os.listdir(config.mailboxes_dir / ADDR)) == [
        "metadata.json",
        "metadata.json.lock",
    ]


# --- dict handler ---


def test_devicetoken_set_and_lookup_through_the_dict(config):
    handler = MetadataDict(config, MetadataStore(config, Clock()), FakeNotifier())
    assert handler.lookup(TOKEN_KEY, ADDR) is None
    assert handler.set(ADDR, TOKEN_KEY, "1111")
    assert handler.set(ADDR, TOKEN_KEY, "2222")
    assert handler.lookup(TOKEN_KEY, ADDR) == "1111 2222"


def test_messagenew_queues_a_notification_for_all_tokens(config):
    notifier = FakeNotifier()
    handler = MetadataDict(config, MetadataStore(config, Clock()), notifier)
    assert handler.set(ADDR, MESSAGENEW_KEY, "")
    assert notifier.calls == []
    handler.set(ADDR, TOKEN_KEY, "1111")
    handler.set(ADDR, TOKEN_KEY, "2222")
    assert handler.set(ADDR, MESSAGENEW_KEY, "")
    assert notifier.calls == [(ADDR, ["1111", "2222"])]


def test_server_entries(config, tmp_path):
    handler = MetadataDict(config, MetadataStore(config), None)
    assert handler.lookup(SERVER_KEY + "irohrelay", None) is None
    assert handler.lookup(SERVER_KEY + "maxsmtprecipients", None) == "1000"
    assert handler.lookup(SERVER_KEY + "other", None) is None
    with_iroh = make_config(tmp_path, iroh_relay="https://iroh.example.org")
    handler = MetadataDict(with_iroh, MetadataStore(with_iroh), None)
    assert handler.lookup(SERVER_KEY + "irohrelay", None) == "https://iroh.example.org"


@pytest.mark.parametrize(
    "user,key,value",
    [
        (ADDR, "priv/guid/unknown", "x"),
        (ADDR, TOKEN_KEY, None),
        (ADDR, TOKEN_KEY, "has space"),
        (ADDR, "shared/guid/devicetoken", "x"),
        ("../../etc@" + DOMAIN, TOKEN_KEY, "x"),
        ("someone@other.org", TOKEN_KEY, "x"),
        (f"nomaildir1@{DOMAIN}", TOKEN_KEY, "x"),
        (None, TOKEN_KEY, "x"),
    ],
)
def test_unsupported_or_invalid_writes_fail_without_touching_files(config, user, key, value):
    before = sorted(p for p in config.mailboxes_dir.rglob("*"))
    handler = MetadataDict(config, MetadataStore(config), FakeNotifier())
    assert handler.set(user, key, value) is False
    assert sorted(p for p in config.mailboxes_dir.rglob("*")) == before


# --- the service over its socket ---


def dict_request(sock_path, lines: list[str], replies: int) -> list[str]:
    with connect_unix(sock_path) as s:
        s.sendall("".join(line + "\n" for line in lines).encode())
        data = b""
        while data.count(b"\n") < replies:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode().splitlines()


@pytest.fixture
def service(tmp_path):
    """chatmail-metadata as a process, with a push server that holds every request."""
    mailboxes = tmp_path / "mail"
    (mailboxes / ADDR).mkdir(parents=True)
    with PushServer(lambda n, body: HANG) as server:
        ini = write_ini(tmp_path, notification_url=server.url)
        sock = tmp_path / "metadata.socket"
        proc = subprocess.Popen(
            [sys.executable, "-m", "chatmaild.metadata", str(sock), str(ini)],
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            wait_until(sock.exists, "metadata socket")
            yield sock, server, mailboxes
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            proc.stderr.close()


def test_messagenew_commit_does_not_wait_for_a_dead_push_server(service):
    sock, server, mailboxes = service
    assert dict_request(sock, [f"B1\t{ADDR}", f"S1\t{TOKEN_KEY}\ttok", "C1"], 1) == ["O1"]
    for i in range(6):
        reply = dict_request(sock, [f"B{i}\t{ADDR}", f"S{i}\t{MESSAGENEW_KEY}\t", f"C{i}"], 1)
        assert reply == [f"O{i}"]
    # All level-0 workers now hang in HTTP, and the dict still answered every commit.
    wait_until(lambda: server.hanging == 4, "four requests held by the push server")
    reply = dict_request(sock, [f"B9\t{ADDR}", f"S9\t{MESSAGENEW_KEY}\t", "C9"], 1)
    assert reply == ["O9"]
    assert dict_request(sock, [f"L{TOKEN_KEY}\t{ADDR}"], 1) == ["Otok"]
    assert len(os.listdir(mailboxes / "pending_notifications")) == 7


def test_service_start_sends_what_a_previous_run_left_queued(tmp_path):
    mailboxes = tmp_path / "mail"
    queue = mailboxes / "pending_notifications"
    queue.mkdir(parents=True)
    (queue / "0123abcd").write_text(f"{ADDR}\n{time.time()}\nleft-over-token")
    with PushServer() as server:
        ini = write_ini(tmp_path, notification_url=server.url)
        proc = subprocess.Popen(
            [sys.executable, "-m", "chatmaild.metadata", str(tmp_path / "s"), str(ini)],
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_until(lambda: not os.listdir(queue), "queue to drain")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        assert server.received() == ["left-over-token"]


def test_service_exits_when_mailboxes_dir_is_missing(tmp_path):
    # write_ini would create the mailboxes_dir.
    ini = tmp_path / "chatmail.ini"
    ini.write_text(f"[params]\nmail_domain = {DOMAIN}\nmailboxes_dir = {tmp_path}/missing\n")
    result = subprocess.run(
        [sys.executable, "-m", "chatmaild.metadata", str(tmp_path / "s"), str(ini)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "does not exist" in result.stderr


# --- real Dovecot: IMAP METADATA and the LMTP push hook ---


@pytest.fixture
def dovecot():
    servers = []

    def start(script=None, **overrides):
        server = PushServer(script).start()
        servers.append(server)
        # Dovecot's mail processes (nobody) must traverse the directory; pytest's are 0700.
        directory = Path(tempfile.mkdtemp(prefix="chatmail-push-"))
        dirs.append(directory)
        overrides.setdefault("notification_url", server.url)
        inst = DovecotInstance(directory, overrides, push_lua=LUA)
        instances.append(inst)
        inst.start()
        return inst, server

    instances, dirs = [], []
    yield start
    for inst in instances:
        inst.stop()
    for server in servers:
        server.stop()
    for directory in dirs:
        shutil.rmtree(directory, ignore_errors=True)


def imap_login(inst, addr, password="password-1234"):
    conn = imaplib.IMAP4("127.0.0.1", inst.imap_port)
    conn.login(addr, password)
    return conn


def metadata_values(conn, *args):
    conn.untagged_responses.pop("METADATA", None)
    typ, _ = conn.xatom("GETMETADATA", *args)
    assert typ == "OK"
    values = {}
    for item in conn.untagged_responses.pop("METADATA", []):
        if isinstance(item, tuple):
            entry = item[0].decode().rsplit(" ", 2)[-2].lstrip("(")
            values[entry] = item[1].decode()
    return values


def test_imap_setmetadata_accumulates_device_tokens(dovecot):
    inst, _ = dovecot()
    conn = imap_login(inst, ADDR)
    try:
        for token in ("1111", "2222"):
            typ, _ = conn.xatom("SETMETADATA", "INBOX", f'(/private/devicetoken "{token}")')
            assert typ == "OK"
        values = metadata_values(conn, "INBOX", "/private/devicetoken")
        assert values == {"/private/devicetoken": "1111 2222"}
    finally:
        conn.logout()


def test_imap_server_metadata(dovecot):
    inst, _ = dovecot(iroh_relay="https://iroh.example.org")
    conn = imap_login(inst, ADDR)
    try:
        values = metadata_values(
            conn,
            '""',
            "(/shared/vendor/deltachat/irohrelay /shared/vendor/deltachat/maxsmtprecipients)",
        )
        assert values == {
            "/shared/vendor/deltachat/irohrelay": "https://iroh.example.org",
            "/shared/vendor/deltachat/maxsmtprecipients": "1000",
        }
    finally:
        conn.logout()


def lmtp_deliver(inst, sender, rcpt, subject="hi"):
    msg = f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n\r\nbody\r\n"
    with smtplib.LMTP("127.0.0.1", inst.lmtp_port) as lmtp:
        refused = lmtp.sendmail(sender, [rcpt], msg)
    assert refused == {}


def test_lmtp_delivery_posts_the_token_but_not_for_self_sent_mail(dovecot):
    inst, server = dovecot()
    conn = imap_login(inst, ADDR)
    try:
        conn.xatom("SETMETADATA", "INBOX", '(/private/devicetoken "tok-abc")')
    finally:
        conn.logout()
    queue = inst.mailboxes_dir / "pending_notifications"

    lmtp_deliver(inst, ADDR, ADDR, "self-sent")
    lmtp_deliver(inst, f"other1234@{DOMAIN}", ADDR, "from someone else")

    wait_until(lambda: server.received() and not os.listdir(queue), "push to be sent")
    # An empty queue means every queued notification was posted: only one was queued.
    assert server.received() == ["tok-abc"]
    assert len(os.listdir(inst.mailboxes_dir / ADDR / "new")) == 2


def test_lmtp_delivery_is_not_held_up_by_a_hanging_push_server(dovecot):
    inst, server = dovecot(lambda n, body: HANG)
    conn = imap_login(inst, ADDR)
    try:
        conn.xatom("SETMETADATA", "INBOX", '(/private/devicetoken "tok-abc")')
    finally:
        conn.logout()
    for i in range(6):
        lmtp_deliver(inst, f"other1234@{DOMAIN}", ADDR, f"message {i}")
    wait_until(lambda: server.hanging == 4, "level-0 workers stuck in HTTP")
    lmtp_deliver(inst, f"other1234@{DOMAIN}", ADDR, "one more")
    assert len(os.listdir(inst.mailboxes_dir / ADDR / "new")) == 7
