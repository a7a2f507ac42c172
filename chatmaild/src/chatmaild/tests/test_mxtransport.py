"""mxtransport against real local servers: a DNS server (dnspython on UDP), an aiohttp
HTTPS server for /mxdeliv and an aiosmtpd SMTP server with STARTTLS, all on loopback,
driven through the transport's own LMTP listener as Postfix would."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import dns.asyncresolver
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP

from chatmaild import mxtransport
from chatmaild.testkit.config import make_config
from chatmaild.testkit.procs import free_port

pytestmark = pytest.mark.timeout(60)

BODY = (
    b"From: <alice@here.test>\r\nTo: <bob@_relay.test>\r\nSubject: hi\r\n\r\n"
    b".a line that starts with a dot\r\n..two dots\r\nend\r\n"
)
# What Postfix writes on the LMTP connection for BODY, and what /mxdeliv must get.
STUFFED = BODY.replace(b"\r\n.", b"\r\n..")

ZONE = {
    "_relay.test.": [(10, "127.0.0.1.")],
    "_other.test.": [(10, "127.0.0.1.")],
    # The first host refuses every connection (nothing listens on 127.0.0.2).
    "_backup.test.": [(20, "127.0.0.1."), (10, "127.0.0.2.")],
    "plain.test.": [(10, "127.0.0.1.")],
    "nullmx.test.": [(0, ".")],
}
NXDOMAIN = {"gone.test."}
SERVFAIL = {"broken.test."}


class DNSServer:
    """Authoritative answers from ZONE on a UDP port of 127.0.0.1, in a thread."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopped:
            try:
                wire, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(wire)
            resp = dns.message.make_response(query)
            resp.flags |= dns.flags.AA
            q = query.question[0]
            name = q.name.to_text().lower()
            if name in NXDOMAIN:
                resp.set_rcode(dns.rcode.NXDOMAIN)
            elif name in SERVFAIL:
                resp.set_rcode(dns.rcode.SERVFAIL)
            elif q.rdtype == dns.rdatatype.MX and name in ZONE:
                texts = [f"{pref} {host}" for pref, host in ZONE[name]]
                resp.answer.append(dns.rrset.from_text_list(name, 60, "IN", "MX", texts))
            self.sock.sendto(resp.to_wire(), peer)

    def stop(self) -> None:
        self.stopped = True
        self.thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def dns_server():
    server = DNSServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", str(key),
         "-out", str(crt), "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return crt, key


class Servers:
    """The receiving side: /mxdeliv over HTTPS and SMTP with STARTTLS, both on 127.0.0.1."""

    def __init__(self, cert: tuple[Path, Path]) -> None:
        self.cert = cert
        self.posts: list[dict] = []
        self.http_status = 200
        self.http_text = "250 OK"
        self.http_missing: set[str] = set()  # recipient domains answered 404
        self.http_hang_up = False  # read the body, then close without an answer
        # recipient -> the reply line of a 400 for any request that names it
        self.http_refused: dict[str, str] = {}
        self.mails: list[dict] = []
        self.rcpt_refused: dict[str, str] = {}
        self.data_reply = "250 OK queued"
        self.starttls = True
        self.https_port = free_port()
        self.smtp_port = free_port()
        self._runner = None
        self._smtp = None

    def server_tls(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*self.cert)
        return ctx

    async def mxdeliv(self, request: web.Request) -> web.Response:
        self.posts.append({
            "method": request.method,
            "path": request.path,
            "headers": list(request.headers.items()),
            "from": request.headers.getall("X-MAIL-FROM", []),
            "to": request.headers.getall("X-MAIL-TO", []),
            "body": await request.read(),
        })  # fmt: skip
        if self.http_hang_up:
            request.transport.close()
            raise ConnectionResetError("hung up")
        for rcpt in request.headers.getall("X-MAIL-TO"):
            if rcpt in self.http_refused:
                return web.Response(status=400, text=self.http_refused[rcpt])
        if request.headers["X-MAIL-TO"].rpartition("@")[2] in self.http_missing:
            self.posts.pop()
            return web.Response(status=404, text="Not Found")
        return web.Response(status=self.http_status, text=self.http_text)

    async def start_https(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/mxdeliv", self.mxdeliv)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, "127.0.0.1", self.https_port, ssl_context=self.server_tls()
        )
        await site.start()

    async def stop_https(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def start_smtp(self) -> None:
        servers = self

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, options):
                if address in servers.rcpt_refused:
                    return servers.rcpt_refused[address]
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server, session, envelope):
                servers.mails.append({
                    "from": envelope.mail_from,
                    "to": list(envelope.rcpt_tos),
                    "content": envelope.original_content,
                    "tls": session.ssl is not None,
                    "ehlo": session.host_name,
                })  # fmt: skip
                return servers.data_reply

        tls = self.server_tls() if self.starttls else None
        loop = asyncio.get_running_loop()
        self._smtp = await loop.create_server(
            lambda: SMTP(Handler(), tls_context=tls, require_starttls=tls is not None,
                         decode_data=False, hostname="receiver", loop=loop),
            host="127.0.0.1", port=self.smtp_port,
        )  # fmt: skip

    async def stop_smtp(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
            self._smtp = None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_router(dns_server, servers, clock=None, trust=None) -> mxtransport.Router:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = dns_server.port
    resolver.lifetime = 3
    router = mxtransport.Router(
        "here.test",
        resolver=resolver,
        https_port=servers.https_port,
        smtp_port=servers.smtp_port,
        clock=clock or Clock(),
    )
    if trust:
        router.verified_tls.load_verify_locations(cafile=str(trust))
    return router


async def lmtp(port: int, mail_from: str, rcpts: list[str], stuffed: bytes) -> list[str]:
    """Postfix's side of one LMTP transaction: the replies after the data, in order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> str:
        while True:
            line = (await reader.readline()).decode()
            assert line, "connection closed"
            if line[3:4] != "-":
                return line.rstrip("\r\n")

    async def cmd(line: str) -> str:
        writer.write(line.encode() + b"\r\n")
        await writer.drain()
        return await reply()

    assert (await reply()).startswith("220")
    assert (await cmd("LHLO postfix")).startswith("250")
    assert (await cmd(f"MAIL FROM:<{mail_from}>")).startswith("250")
    for rcpt in rcpts:
        assert (await cmd(f"RCPT TO:<{rcpt}>")).startswith("250")
    assert (await cmd("DATA")).startswith("354")
    writer.write(stuffed + b".\r\n")
    await writer.drain()
    replies = [await reply() for _ in rcpts]
    await cmd("QUIT")
    writer.close()
    return replies


def run(coro_fn, dns_server, cert, tmp_path, *, https=True, smtp=True, setup=None, **kw):
    """Start the servers and the transport, then ``coro_fn(servers, port, router)``."""

    async def main():
        servers = Servers(cert)
        if setup:
            setup(servers)
        if https:
            await servers.start_https()
        if smtp:
            await servers.start_smtp()
        router = make_router(dns_server, servers, **kw)
        config = make_config(tmp_path, "here.test")
        server, router = await mxtransport.start(config, router=router, port=0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await coro_fn(servers, port, router)
        finally:
            server.close()
            await router.close()
            await servers.stop_https()
            await servers.stop_smtp()

    return asyncio.run(main())


def test_stuff_inverts_unstuffing():
    assert mxtransport.stuff(b".x\r\n.\r\nend\r\n") == b"..x\r\n..\r\nend\r\n"
    assert mxtransport.stuff(b"a\r\nb\r\n") == b"a\r\nb\r\n"


def test_https_delivery_posts_the_wire_format(dns_server, cert, tmp_path):
    async def go(servers, port, router):
        rcpts = ["bob@_relay.test", "carol@_relay.test"]
        replies = await lmtp(port, "alice@here.test", rcpts, STUFFED)
        return servers, replies

    servers, replies = run(go, dns_server, cert, tmp_path)
    assert replies == ["250 OK (HTTPS)", "250 OK (HTTPS)"]
    assert len(servers.posts) == 1, "one request per destination domain"
    (post,) = servers.posts
    assert post["method"] == "POST" and post["path"] == "/mxdeliv"
    assert post["from"] == ["alice@here.test"]
    assert post["to"] == ["bob@_relay.test", "carol@_relay.test"]
    assert post["body"] == STUFFED, "the DATA bytes, still dot-stuffed, no final dot line"
    names = [k.lower() for k, _ in post["headers"]]
    assert "content-type" not in names
    assert servers.mails == [], "SMTP not used"


def test_null_sender_has_no_from_header(dns_server, cert, tmp_path):
    async def go(servers, port, router):
        return servers, await lmtp(port, "", ["bob@_relay.test"], STUFFED)

    servers, replies = run(go, dns_server, cert, tmp_path)
    assert replies == ["250 OK (HTTPS)"]
    assert servers.posts[0]["from"] == []
    assert "x-mail-from" not in [k.lower() for k, _ in servers.posts[0]["headers"]]


def test_recipients_of_several_domains_keep_rcpt_order(dns_server, cert, tmp_path):
    def setup(servers):
        servers.rcpt_refused = {"nobody@_other.test": "550 5.1.1 No such user"}
        # _other.test has no /mxdeliv, so it goes by SMTP.
        servers.http_missing = {"_other.test"}

    async def go(servers, port, router):
        rcpts = ["a@_relay.test", "nobody@_other.test", "b@_other.test", "c@_relay.test"]
        return servers, await lmtp(port, "alice@here.test", rcpts, STUFFED)

    servers, replies = run(go, dns_server, cert, tmp_path, setup=setup)
    assert replies == [
        "250 OK (HTTPS)",
        "550 5.1.1 No such user (forwarded from 127.0.0.1)",
        "250 OK (SMTP)",
        "250 OK (HTTPS)",
    ]
    assert [p["to"] for p in servers.posts] == [["a@_relay.test", "c@_relay.test"]]
    assert [m["to"] for m in servers.mails] == [["b@_other.test"]]


def test_https_failure_falls_back_to_smtp_with_starttls(dns_server, cert, tmp_path):
    def setup(servers):
        servers.http_status, servers.http_text = 404, "Not Found"

    async def go(servers, port, router):
        return servers, await lmtp(port, "alice@here.test", ["bob@_relay.test"], STUFFED)

    servers, replies = run(go, dns_server, cert, tmp_path, setup=setup)
    assert replies == ["250 OK (SMTP)"]
    assert len(servers.posts) == 1
    (mail,) = servers.mails
    assert mail["from"] == "alice@here.test" and mail["to"] == ["bob@_relay.test"]
    assert mail["content"] == BODY
    assert mail["tls"], "STARTTLS before MAIL"
    assert mail["ehlo"] == "here.test"


def test_https_down_smtp_delivers(dns_server, cert, tmp_path):
    async def go(servers, port, router):
        return servers, await lmtp(port, "alice@here.test", ["bob@_relay.test"], STUFFED)

    servers, replies = run(go, dns_server, cert, tmp_path, https=False)
    assert replies == ["250 OK (SMTP)"]
    assert servers.mails[0]["content"] == BODY


def test_cooldown_skips_https_after_smtp_success_then_expires(dns_server, cert, tmp_path):
    clock = Clock()

    def setup(servers):
        servers.http_status = 404

    async def go(servers, port, router):
        first = await lmtp(port, "alice@here.test", ["bob@_relay.test"], STUFFED)
        second = await lmtp(port, "alice@here.test", ["bob@_relay.test"], STUFFED)
        posts_during_cooldown = len(servers.posts)
        clock.now += mxtransport.COOLDOWN + 1
        servers.http_status = 200
        third = await lmtp(port, "alice@here.test", ["bob@_relay.test"], STUFFED)
        return servers, [first, second, third], posts_during_cooldown

    servers, replies, posts = run(go, dns_server, cert, tmp_path, setup=setup, clock=clock)
    assert replies == [["250 OK (SMTP)"], ["250 OK (SMTP)"], ["250 OK (HTTPS)"]]
    assert posts == 1, "HTTPS skipped for the host after the SMTP success"
    assert len(servers.posts) == 2 and len(servers.mails) == 2


def test_both_paths_down_defers_every_recipient(dns_server, cert, tmp_path):
    async def go(servers, port, router):
        return await lmtp(port, "alice@here.test", ["a@_relay.test", "b@_relay.test"], STUFFED)

    replies = run(go, dns_server, cert, tmp_path, https=False, smtp=False)
    assert len(replies) == 2
    for reply in replies:
        assert reply.startswith("451 4.4.1 Failed to connect to any mail server"), reply


def test_next_mx_by_preference(dns_server, cert, tmp_path):
    async def go(servers, port, router):
        return servers, await lmtp(port, "alice@here.test", ["bob@_backup.test"], STUFFED)

    servers, replies = run(go, dns_server, cert, tmp_path)
    assert replies == ["250 OK (HTTPS)"]
    assert len(servers.posts) == 1


def test_smtp_refusal_after_data_bounces(dns_server, cert, tmp_path):
    def setup(servers):
        servers.data_reply = "554 5.7.1 No valid DKIM signature found"

    async def go(servers, port, router):
        return await lmtp(port, "alice@here.test", ["a@_relay.test", "b@_relay.test"], STUFFED)

    replies = run(go, dns_server, cert, tmp_path, https=False, setup=setup)
    assert replies == ["554 5.7.1 No valid DKIM signature found (forwarded from 127.0.0.1)"] * 2


def test_https_permanent_refusal_is_not_retried_by_smtp(dns_server, cert, tmp_path):
    def setup(servers):
        servers.http_status = 400
        servers.http_text = "523 Encryption Needed: Invalid Unencrypted Mail"

    async def go(servers, port, router):
        return servers, await lmtp(port, "alice@here.test", ["bob@_relay.test"], STUFFED)

    servers, replies = run(go, dns_server, cert, tmp_path, setup=setup)
    assert replies == ["523 Encryption Needed: Invalid Unencrypted Mail (forwarded from 127.0.0.1)"]
    assert servers.mails == []


def test_https_temporary_refusal_tries_smtp_and_defers(dns_server, cert, tmp_path):
    def setup(servers):
        servers.http_status = 400
        servers.http_text = "451 4.7.1 Try again later"

    async def go(servers, port, router):
        return await lmtp(port, "alice@here.test", ["bob@_relay.test"], STUFFED)

    replies = run(go, dns_server, cert, tmp_path, smtp=False, setup=setup)
    assert replies == ["451 4.7.1 Try again later (forwarded from HTTPS)"]


def test_too_large_for_https_goes_by_smtp(dns_server, cert, tmp_path):
    def setup(servers):
        servers.http_status, servers.http_text = 413, "552 Message exceeds maximum size"

    async def go(servers, port, router):
        return await lmtp(port, "alice@here.test", ["bob@_relay.test"], STUFFED)

    assert run(go, dns_server, cert, tmp_path, setup=setup) == ["250 OK (SMTP)"]


@pytest.mark.parametrize(
    ("domain", "reply"),
    [
        ("nullmx.test", "556 5.1.10 Recipient address has null MX"),
        ("gone.test", "550 5.1.2 Domain gone.test does not exist"),
        ("broken.test", "451 4.4.3 DNS resolution failed for broken.test"),
    ],
)
def test_dns_answers(dns_server, cert, tmp_path, domain, reply):
    async def go(servers, port, router):
        return servers, await lmtp(port, "alice@here.test", [f"x@{domain}"], STUFFED)

    servers, replies = run(go, dns_server, cert, tmp_path)
    assert replies == [reply]
    assert servers.posts == [] and servers.mails == []


def test_no_mx_means_the_domain_itself_verified(dns_server, cert, tmp_path):
    async def go(servers, port, router):
        return servers, await lmtp(port, "alice@here.test", ["bob@localhost"], STUFFED)

    servers, replies = run(go, dns_server, cert, tmp_path, trust=cert[0])
    assert replies == ["250 OK (HTTPS)"]
    assert servers.posts[0]["to"] == ["bob@localhost"]


def test_unverifiable_certificate_is_refused_on_both_paths(dns_server, cert, tmp_path):
    # plain.test is no underscore domain: the self-signed certificate is not accepted.
    async def go(servers, port, router):
        return servers, await lmtp(port, "alice@here.test", ["bob@plain.test"], STUFFED)

    servers, replies = run(go, dns_server, cert, tmp_path)
    assert replies[0].startswith("451 4.4.1 Failed to connect to any mail server"), replies
    assert servers.posts == [] and servers.mails == []


def test_verified_certificate_is_accepted(dns_server, cert, tmp_path):
    async def go(servers, port, router):
        return await lmtp(port, "alice@here.test", ["bob@plain.test"], STUFFED)

    assert run(go, dns_server, cert, tmp_path, trust=cert[0]) == ["250 OK (HTTPS)"]


def test_ip_literal_needs_no_dns_and_no_verification(dns_server, cert, tmp_path):
    async def go(servers, port, router):
        return servers, await lmtp(port, "alice@here.test", ["bob@[127.0.0.1]"], STUFFED)

    servers, replies = run(go, dns_server, cert, tmp_path)
    assert replies == ["250 OK (HTTPS)"]
    assert servers.posts[0]["to"] == ["bob@[127.0.0.1]"]


def test_smtp_without_starttls_is_refused(dns_server, cert, tmp_path):
    def setup(servers):
        servers.starttls = False

    async def go(servers, port, router):
        return servers, await lmtp(port, "alice@here.test", ["bob@_relay.test"], STUFFED)

    servers, replies = run(go, dns_server, cert, tmp_path, https=False, setup=setup)
    assert replies == [
        "451 4.4.1 Failed to connect to any mail server; last attempt to "
        "127.0.0.1: STARTTLS not offered"
    ]
    assert servers.mails == []


def test_lost_https_answer_defers_instead_of_trying_smtp(dns_server, cert, tmp_path):
    # The receiver may have taken the mail: SMTP now could deliver it twice.
    def setup(servers):
        servers.http_hang_up = True

    async def go(servers, port, router):
        return servers, await lmtp(port, "alice@here.test", ["bob@_relay.test"], STUFFED)

    servers, replies = run(go, dns_server, cert, tmp_path, setup=setup)
    assert len(servers.posts) == 1
    assert replies[0].startswith("451 4.4.2 No answer from 127.0.0.1 over HTTPS"), replies
    assert servers.mails == []


def test_one_refused_recipient_does_not_bounce_the_others(dns_server, cert, tmp_path):
    # The receiver refuses a whole request for one unknown recipient and delivers nothing.
    refusal = "550 5.1.1 <nobody@_relay.test>: Recipient address rejected: User unknown"

    def setup(servers):
        servers.http_refused = {"nobody@_relay.test": refusal}

    async def go(servers, port, router):
        rcpts = ["a@_relay.test", "nobody@_relay.test", "b@_relay.test"]
        return servers, await lmtp(port, "alice@here.test", rcpts, STUFFED)

    servers, replies = run(go, dns_server, cert, tmp_path, setup=setup, smtp=False)
    assert replies == ["250 OK (HTTPS)", f"{refusal} (forwarded from 127.0.0.1)", "250 OK (HTTPS)"]
    assert [p["to"] for p in servers.posts] == [
        ["a@_relay.test", "nobody@_relay.test", "b@_relay.test"],
        ["a@_relay.test"],
        ["nobody@_relay.test"],
        ["b@_relay.test"],
    ]


def test_a_probe_is_greeted_while_postfix_holds_every_session(dns_server, cert, tmp_path):
    async def check(servers, port, router):
        held = []
        for _ in range(mxtransport.MAX_SESSIONS):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"220")
            held.append(writer)
        try:
            # What `cmdeploy status` does: connect, read the greeting.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            greeting = await asyncio.wait_for(reader.readline(), 5)
            writer.close()
            return greeting
        finally:
            for w in held:
                w.close()

    greeting = run(check, dns_server, cert, tmp_path)
    assert greeting.startswith(b"220 ")
