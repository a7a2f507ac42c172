"""Postfix's transport for mail to other relays: ``chatmail-mxtransport <ini>``.

Postfix hands every non-local message over LMTP (``default_transport``, postfix/main.cf.j2).
Per destination domain the MX hosts are tried by preference; on each host first
``POST https://<host>/mxdeliv`` (the wire format of the newest reference relay, for
providers that block outgoing port 25), then SMTP on port 25 with STARTTLS required.
Each recipient gets its own LMTP reply in RCPT order: 2xx delivered, 4xx Postfix keeps
the mail queued and retries (with both paths down it waits there), 5xx it bounces.

A path is abandoned for the next one only when the message surely did not arrive
(connection or TLS refused, an HTTP error status, an SMTP refusal before the data): an
answer lost after the body went out defers instead, so one message never arrives twice
through the two paths.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import random
import re
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from . import sdnotify
from .config import Config, ConfigError, read_config
from .filtermail.smtpserver import GateSMTP, MemoryBudget

log = logging.getLogger("mxtransport")

HOST = "127.0.0.1"
# Per request and per SMTP step, as the reference; Postfix's lmtp_data_done_timeout
# (600 s) stays above DELIVERY_DEADLINE so Postfix never gives up on a reply still coming.
HTTPS_TIMEOUT = 60.0
SMTP_TIMEOUT = 60.0
CONNECT_TIMEOUT = 30.0
DELIVERY_DEADLINE = 400.0
# After an SMTP success to a host, HTTPS to it is skipped this long (a relay without
# /mxdeliv costs one failed request per message otherwise).
COOLDOWN = 30 * 60.0
# Deliveries at once; Postfix's maxproc of the mxdeliv service (master.cf.j2) is the same.
MAX_SESSIONS = 25
# Sessions beyond Postfix's: a `cmdeploy status` probe gets its greeting also while Postfix
# holds every mxdeliv process (and cached connections) open.
SPARE_SESSIONS = 3
# Message bodies all sessions may hold at once, in units of max_message_size (as filtermail).
BUDGET_MESSAGES = 4
# The HTTP answer is one SMTP reply line; nothing longer is read.
MAX_ANSWER = 4096

OK_HTTPS = "250 OK (HTTPS)"
OK_SMTP = "250 OK (SMTP)"
BUSY = "451 4.3.2 Transport busy, try again later"
LOCAL_ERROR = "451 4.3.0 Local error in the transport"
NULL_MX = "556 5.1.10 Recipient address has null MX"

_REPLY_LINE = re.compile(r"^([245])\d\d[ -]")


class SMTPFailure(Exception):
    """Nothing was accepted by this host; another host or path may still work."""


class Ambiguous(Exception):
    """The body went out but no final answer came: it may have been delivered."""


@dataclass
class Destination:
    """All recipients of one domain in one message, and where to send them."""

    domain: str
    recipients: list[str]
    # Certificate checks: off for IP literals and underscore domains (self-signed relays).
    verify: bool
    starttls_required: bool


def recipient_domain(addr: str) -> str:
    return addr.rpartition("@")[2].lower()


def ip_literal(domain: str) -> str | None:
    """The address inside ``[1.2.3.4]`` or ``[IPv6:..]``, else None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def stuff(content: bytes | bytearray) -> bytes:
    """Dot-stuff unstuffed DATA again (RFC 5321 4.5.2): the bytes as they came over the wire."""
    out = bytes(content).replace(b"\r\n.", b"\r\n..")
    return b"." + out if out.startswith(b".") else out


class Router:
    """Delivers one message to its remote domains; holds the HTTP pool and the cooldowns."""

    def __init__(
        self,
        mail_domain: str,
        resolver: dns.asyncresolver.Resolver | None = None,
        https_port: int = 443,
        smtp_port: int = 25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mail_domain = mail_domain
        self.resolver = resolver or dns.asyncresolver.Resolver()
        self.https_port = https_port
        self.smtp_port = smtp_port
        self.clock = clock
        self.cooldown: dict[str, float] = {}  # host -> until when HTTPS is skipped
        self.verified_tls = ssl.create_default_context()
        self.unverified_tls = ssl.create_default_context()
        self.unverified_tls.check_hostname = False
        self.unverified_tls.verify_mode = ssl.CERT_NONE
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=MAX_SESSIONS * 2, ttl_dns_cache=60),
                skip_auto_headers=("Content-Type",),
                headers={"User-Agent": "chatmail-mxtransport"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def deliver(self, mail_from: str, rcpts: Sequence[str], body: bytes) -> list[str]:
        """One reply per recipient, in order; ``body`` is the dot-stuffed DATA."""
        groups: dict[str, list[str]] = {}
        for rcpt in rcpts:
            groups.setdefault(recipient_domain(rcpt), []).append(rcpt)
        results = await asyncio.gather(
            *(self._deliver_domain(d, r, mail_from, body) for d, r in groups.items())
        )
        # Every domain's replies are in its recipients' order; hand them out in RCPT order.
        queues = {d: iter(r) for d, r in zip(groups, results, strict=True)}
        return [next(queues[recipient_domain(r)]) for r in rcpts]

    async def _deliver_domain(self, domain, rcpts, mail_from, body) -> list[str]:
        try:
            replies = await asyncio.wait_for(
                self._try_hosts(domain, rcpts, mail_from, body), DELIVERY_DEADLINE
            )
        except TimeoutError:
            replies = [f"451 4.4.7 Delivery to {domain} took too long"] * len(rcpts)
        except Exception as e:
            log.exception("Delivery to %s failed: %s", domain, e)
            replies = [LOCAL_ERROR] * len(rcpts)
        # One line per domain and outcome; chatmail.mtail counts them per path.
        https = sum(r == OK_HTTPS for r in replies)
        if https:
            log.info("Delivered via HTTPS to %s: %d recipients", domain, https)
        smtp = sum(r == OK_SMTP for r in replies)
        if smtp:
            log.info("Delivered via SMTP to %s: %d recipients", domain, smtp)
        deferred = [r for r in replies if r.startswith("4")]
        if deferred:
            log.info(
                "Deferred delivery to %s: %d recipients: %s", domain, len(deferred), deferred[0]
            )
        bounced = [r for r in replies if r.startswith("5")]
        if bounced:
            log.info("Bounced delivery to %s: %d recipients: %s", domain, len(bounced), bounced[0])
        return replies

    async def hosts(self, domain: str) -> list[str] | str:
        """The hosts to try, by MX preference, or the reply for every recipient."""
        ip = ip_literal(domain)
        if ip is not None:
            return [ip]
        try:
            answer = await self.resolver.resolve(domain + ".", dns.rdatatype.MX)
        except dns.resolver.NXDOMAIN:
            return f"550 5.1.2 Domain {domain} does not exist"
        except dns.resolver.NoAnswer:
            return [domain]  # no MX: the domain itself (RFC 5321 5.1)
        except (dns.exception.DNSException, OSError) as e:
            log.warning("DNS lookup of %s failed: %s", domain, e.__class__.__name__)
            return f"451 4.4.3 DNS resolution failed for {domain}"
        mxs = [(r.preference, random.random(), r.exchange.to_text().rstrip(".").lower())
               for r in answer]  # fmt: skip
        if any(name == "" for _, _, name in mxs):
            return NULL_MX  # RFC 7505: "MX 0 ." says the domain takes no mail
        return [name for _, _, name in sorted(mxs)]

    async def _try_hosts(self, domain, rcpts, mail_from, body) -> list[str]:
        hosts = await self.hosts(domain)
        if isinstance(hosts, str):
            return [hosts] * len(rcpts)
        dest = Destination(
            domain=domain,
            recipients=list(rcpts),
            verify=not (domain.startswith("_") or ip_literal(domain) is not None),
            starttls_required=domain != "nauta.cu",
        )
        last = "no host"
        https_reply = None
        for host in hosts:
            if self.clock() >= self.cooldown.get(host, 0.0):
                try:
                    reply = await self.post(host, dest, mail_from, body)
                except Ambiguous as e:
                    return [f"451 4.4.2 No answer from {host} over HTTPS ({e})"] * len(rcpts)
                if reply is None:
                    return [OK_HTTPS] * len(rcpts)
                answered, line = reply
                if answered and line.startswith("5"):
                    if len(rcpts) > 1:
                        # One refused recipient refuses the whole request, which delivered
                        # nothing (one reply line for all): alone, each gets its own answer.
                        singles = [await self._try_hosts(domain, [r], mail_from, body)
                                   for r in rcpts]  # fmt: skip
                        return [reply[0] for reply in singles]
                    # The receiving relay's own checks refused it: a permanent answer.
                    return [f"{line} (forwarded from {host})"]
                if answered:
                    https_reply = https_reply or line
            try:
                replies = await self.smtp(host, dest, mail_from, body)
            except Ambiguous as e:
                self.cooldown.pop(host, None)
                return [f"451 4.4.2 No answer from {host} over SMTP ({e})"] * len(rcpts)
            except SMTPFailure as e:
                self.cooldown.pop(host, None)
                last = f"{host}: {e}"
                continue
            if any(r == OK_SMTP for r in replies):
                self.cooldown[host] = self.clock() + COOLDOWN
            return replies
        if https_reply and https_reply.startswith("4"):
            return [f"{https_reply} (forwarded from HTTPS)"] * len(rcpts)
        failed = f"451 4.4.1 Failed to connect to any mail server; last attempt to {last}"
        return [failed] * len(rcpts)

    async def post(
        self, host: str, dest: Destination, mail_from: str, body: bytes
    ) -> tuple[bool, str] | None:
        """None if delivered; else (whether the receiver refused it, an SMTP reply line).

        Raises Ambiguous when the request went out but no status came back.
        """
        headers = []
        if mail_from:
            headers.append(("X-MAIL-FROM", mail_from))
        headers += [("X-MAIL-TO", rcpt) for rcpt in dest.recipients]
        port = "" if self.https_port == 443 else f":{self.https_port}"
        url = f"https://{url_host(host)}{port}/mxdeliv"
        timeout = aiohttp.ClientTimeout(total=HTTPS_TIMEOUT, sock_connect=CONNECT_TIMEOUT)
        sent = False
        try:
            async with self.session().post(
                url,
                data=body,
                headers=headers,
                ssl=self.verified_tls if dest.verify else self.unverified_tls,
                timeout=timeout,
                allow_redirects=False,
            ) as resp:
                sent = True
                if 200 <= resp.status < 300:
                    return None
                answer = (await resp.content.read(MAX_ANSWER)).decode("utf-8", "replace")
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
            log.info("HTTPS to %s failed: %s", host, e.__class__.__name__)
            return False, f"451 4.4.1 HTTPS connection to {host} failed"
        except (TimeoutError, aiohttp.ClientError) as e:
            if not sent:
                # Lost before any status line: whether the receiver took the mail is unknown.
                raise Ambiguous(e.__class__.__name__) from None
            return False, f"451 4.4.2 HTTPS answer from {host} broken"
        except ValueError as e:  # e.g. a header value aiohttp refuses
            log.warning("HTTPS request to %s impossible: %s", host, e)
            return False, "451 4.3.0 HTTPS request impossible"
        line = answer.strip().splitlines()[0] if answer.strip() else ""
        log.info("HTTPS to %s answered %d %s", host, resp.status, line[:200])
        if resp.status == 400 and _REPLY_LINE.match(line):
            return True, line[:500]
        # 404 (no /mxdeliv), 413 (a proxy's body limit) and the like: not this path.
        return False, f"451 4.4.0 HTTPS status {resp.status} from {host}"

    async def smtp(self, host: str, dest: Destination, mail_from: str, body: bytes) -> list[str]:
        """Per-recipient replies of one SMTP transaction with ``host``.

        Raises SMTPFailure if nothing was handed over, Ambiguous if the data went out and
        no final reply came.
        """
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, self.smtp_port, happy_eyeballs_delay=0.25),
                CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError) as e:
            raise SMTPFailure(f"connect: {e.__class__.__name__}") from None
        client = _SMTPClient(reader, writer, host)
        try:
            return await client.transaction(self, dest, mail_from, body)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            if client.data_sent:
                raise Ambiguous(e.__class__.__name__) from None
            raise SMTPFailure(f"{e.__class__.__name__} {e}".strip()) from None
        finally:
            client.close()


class _SMTPClient:
    def __init__(self, reader, writer, host: str) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host
        self.data_sent = False

    def close(self) -> None:
        self.writer.close()

    async def reply(self) -> tuple[int, str, list[str]]:
        lines = []
        while len(lines) < 100:
            raw = await asyncio.wait_for(self.reader.readuntil(b"\n"), SMTP_TIMEOUT)
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            lines.append(line)
            if line[3:4] != "-":
                break
        else:
            raise ValueError("endless multi-line reply")
        if not lines[0][:3].isdigit():
            raise ValueError("reply without a code")
        return int(lines[0][:3]), lines[0], [line[4:] for line in lines]

    async def command(self, line: str) -> tuple[int, str, list[str]]:
        self.writer.write(line.encode() + b"\r\n")
        await asyncio.wait_for(self.writer.drain(), SMTP_TIMEOUT)
        return await self.reply()

    def refused(self, text: str) -> str:
        return f"{text} (forwarded from {self.host})"

    async def transaction(self, router: Router, dest, mail_from: str, body: bytes) -> list[str]:
        n = len(dest.recipients)
        code, text, _ = await self.reply()
        if code != 220:
            raise SMTPFailure(f"greeting {text}")
        code, text, ehlo = await self.command(f"EHLO {router.mail_domain}")
        if code != 250:
            raise SMTPFailure(f"EHLO {text}")
        caps = {line.split(" ", 1)[0].upper() for line in ehlo[1:]}
        if "STARTTLS" in caps:
            code, text, _ = await self.command("STARTTLS")
            if code != 220:
                raise SMTPFailure(f"STARTTLS {text}")
            ctx = router.verified_tls if dest.verify else router.unverified_tls
            try:
                await asyncio.wait_for(
                    self.writer.start_tls(ctx, server_hostname=self.host), SMTP_TIMEOUT
                )
            except ssl.SSLError as e:
                raise SMTPFailure(f"TLS: {e.reason or e}") from None
            code, text, ehlo = await self.command(f"EHLO {router.mail_domain}")
            if code != 250:
                raise SMTPFailure(f"EHLO {text}")
            caps = {line.split(" ", 1)[0].upper() for line in ehlo[1:]}
        elif dest.starttls_required:
            raise SMTPFailure("STARTTLS not offered")
        params = f" SIZE={len(body)}" if "SIZE" in caps else ""
        if "8BITMIME" in caps:
            params += " BODY=8BITMIME"
        if "SMTPUTF8" in caps and not (mail_from + "".join(dest.recipients)).isascii():
            params += " SMTPUTF8"
        code, text, _ = await self.command(f"MAIL FROM:<{mail_from}>{params}")
        if code != 250:
            return [self.refused(text)] * n
        replies: list[str | None] = []
        for rcpt in dest.recipients:
            code, text, _ = await self.command(f"RCPT TO:<{rcpt}>")
            replies.append(None if code in (250, 251) else self.refused(text))
        if all(r is not None for r in replies):
            await self.quit()
            return replies  # type: ignore[return-value]
        code, text, _ = await self.command("DATA")
        if code != 354:
            return [r or self.refused(text) for r in replies]
        self.data_sent = True
        self.writer.write(body)
        if body and not body.endswith(b"\r\n"):
            self.writer.write(b"\r\n")
        self.writer.write(b".\r\n")
        await asyncio.wait_for(self.writer.drain(), SMTP_TIMEOUT)
        code, text, _ = await self.reply()
        final = OK_SMTP if code == 250 else self.refused(text)
        await self.quit()
        return [r or final for r in replies]

    async def quit(self) -> None:
        try:
            self.writer.write(b"QUIT\r\n")
            await asyncio.wait_for(self.writer.drain(), 5)
        except (OSError, TimeoutError):
            pass


class TransportLMTP(GateSMTP):
    """LMTP (RFC 2033) server side: LHLO, and one reply per recipient after the data."""

    def __init__(self, router: Router, *args, **kwargs) -> None:
        super().__init__(_NoHandler(), *args, **kwargs)
        self.router = router

    async def smtp_LHLO(self, arg: str) -> None:
        await super().smtp_EHLO(arg)

    async def smtp_HELO(self, arg: str) -> None:
        await self.push('500 Error: command "HELO" not recognized')

    async def smtp_EHLO(self, arg: str) -> None:
        await self.push('500 Error: command "EHLO" not recognized')

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        rcpts = list(self.envelope.rcpt_tos)
        mail_from = self.envelope.mail_from or ""
        if mail_from == "<>":
            mail_from = ""
        try:
            content = await self._read_content()
            self._set_post_data_state()
            if content is None:
                replies = [self.data_refusal or BUSY] * len(rcpts)
            else:
                body = stuff(content)
                del content
                try:
                    replies = await self.router.deliver(mail_from, rcpts, body)
                except Exception as e:
                    log.exception("Transport failed: %s", e)
                    replies = [LOCAL_ERROR] * len(rcpts)
                del body
        finally:
            self._release()
        await self.push("\r\n".join(replies))


class _NoHandler:
    """Everything happens in TransportLMTP.smtp_DATA; aiosmtpd's defaults do the rest."""


async def start(config: Config, router: Router | None = None, port: int | None = None):
    """Listen on 127.0.0.1; returns (server, router)."""
    router = router or Router(config.mail_domain)
    budget = MemoryBudget(BUDGET_MESSAGES * config.max_message_size)
    sessions = asyncio.Semaphore(MAX_SESSIONS + SPARE_SESSIONS)
    loop = asyncio.get_running_loop()

    class Limited(TransportLMTP):
        async def _handle_client(self):
            # Connections beyond the cap wait here; Postfix's maxproc keeps them few.
            async with sessions:
                await super()._handle_client()

    def factory():
        return Limited(
            router,
            budget=budget,
            data_size_limit=config.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname="mxtransport",
            # aiosmtpd closes a session idle this long, also while DATA is being delivered:
            # above DELIVERY_DEADLINE, or a slow delivery would lose its reply.
            timeout=DELIVERY_DEADLINE + 60,
            ident="chatmail-mxtransport",
            loop=loop,
        )

    server = await loop.create_server(
        factory, host=HOST, port=config.mxdeliv_transport_port if port is None else port
    )
    return server, router


async def serve(config: Config) -> None:
    try:
        server, router = await start(config)
    except OSError as e:
        raise SystemExit(f"chatmail-mxtransport: cannot listen on {HOST}: {e}") from None
    await sdnotify.ready_until_stopped()
    # A delivery cut off here never answered Postfix, which defers and retries it.
    server.close()
    await router.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="chatmail-mxtransport", description=__doc__.splitlines()[0]
    )
    parser.add_argument("config", help="path to chatmail.ini")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    try:
        config = read_config(args.config)
    except ConfigError as e:
        print(f"chatmail-mxtransport: {e}", file=sys.stderr)
        return 2
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
