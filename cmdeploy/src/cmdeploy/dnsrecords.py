"""``cmdeploy dns`` (named so that it never shadows dnspython's ``dns``): the relay's DNS records as a BIND zone, checked at the authoritative server.

Values that only the relay knows (its DKIM public key, its addresses) are read over SSH.
The check asks the zone's own nameserver, not a cache, so a record just set shows at once.
"""

from __future__ import annotations

import ipaddress
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdatatype
import dns.resolver
from chatmaild.config import LETSENCRYPT_DIRECTORY, Config

from cmdeploy.cmdline import add_ssh_host, fail, load_config, red, remote_for
from cmdeploy.remote import Remote, RemoteError

TTL = 3600
RECOMMENDED_MARK = "; Recommended"


@dataclass(frozen=True)
class Record:
    name: str
    rtype: str
    value: str
    required: bool

    def zone_line(self) -> str:
        return f"{self.name:<40} {TTL} IN {self.rtype:<5} {self.value}"


@dataclass(frozen=True)
class RelayFacts:
    ipv4: list[str]
    ipv6: list[str]
    dkim_public_key: str
    acme_account_url: str | None
    sts_id: str


def txt_value(text: str) -> str:
    """TXT rdata in 255-byte strings (RFC 1035 §3.3.14), as DNS servers want long values."""
    chunks = [text[i : i + 255] for i in range(0, len(text), 255)] or [""]
    return " ".join(f'"{c}"' for c in chunks)


def records(config: Config, facts: RelayFacts) -> list[Record]:
    d = config.mail_domain + "."
    req: list[tuple[str, str, str]] = []
    req += [(d, "A", ip) for ip in facts.ipv4]
    req += [(d, "AAAA", ip) for ip in facts.ipv6]
    req.append((d, "MX", f"10 {d}"))
    if config.tls_cert_mode == "acme":
        req.append((f"_mta-sts.{d}", "TXT", txt_value(f"v=STSv1; id={facts.sts_id}")))
        req.append((f"mta-sts.{d}", "CNAME", d))
    req.append((f"www.{d}", "CNAME", d))
    dkim = f"v=DKIM1;k=rsa;p={facts.dkim_public_key};s=email;t=s"
    req.append((f"opendkim._domainkey.{d}", "TXT", txt_value(dkim)))
    rec: list[tuple[str, str, str]] = [
        (d, "TXT", txt_value("v=spf1 a ~all")),
        (f"_dmarc.{d}", "TXT", txt_value("v=DMARC1;p=reject;adkim=s;aspf=s")),
        (f"_adsp._domainkey.{d}", "TXT", txt_value("dkim=discardable")),
        (f"_submission._tcp.{d}", "SRV", f"0 1 587 {d}"),
        (f"_submissions._tcp.{d}", "SRV", f"0 1 465 {d}"),
        (f"_imap._tcp.{d}", "SRV", f"0 1 143 {d}"),
        (f"_imaps._tcp.{d}", "SRV", f"0 1 993 {d}"),
    ]
    # The CAA issuer name is known for Let's Encrypt only; another ACME server's would be
    # a guess, and a wrong one makes every CA that checks CAA refuse the domain.
    if facts.acme_account_url and config.acme_directory_url == LETSENCRYPT_DIRECTORY:
        rec.append((d, "CAA", f'0 issue "letsencrypt.org;accounturi={facts.acme_account_url}"'))
    return [Record(*r, required=True) for r in req] + [Record(*r, required=False) for r in rec]


def zone_text(config: Config, facts: RelayFacts) -> str:
    recs = records(config, facts)
    lines = [f"; DNS records of the chatmail relay {config.mail_domain}", "; Required"]
    lines += [r.zone_line() for r in recs if r.required]
    lines.append(RECOMMENDED_MARK)
    lines += [r.zone_line() for r in recs if not r.required]
    return "\n".join(lines) + "\n"


def gather_facts(remote: Remote, config: Config, resolver: dns.resolver.Resolver) -> RelayFacts:
    """What only the relay knows, plus its addresses."""
    key = "/etc/dkimkeys/opendkim.private"
    proc = remote.run(f"openssl pkey -in {key} -pubout 2>/dev/null", check=False)
    if proc.returncode != 0:
        raise RemoteError(f"no DKIM key at {key} on {remote.host}: run 'cmdeploy run' first")
    dkim = "".join(line for line in proc.stdout.splitlines() if not line.startswith("-----"))
    acme = None
    if config.tls_cert_mode == "acme":
        out = remote.run("acmetool account-url 2>/dev/null", check=False).stdout.strip()
        acme = out or None
    # The records describe the server being talked to: when SSH reaches it by address
    # (a new server during a migration, a lab host), that address; else today's DNS.
    host = remote.resolved().get("hostname", remote.host)
    try:
        ip = ipaddress.ip_address(host)
        ipv4, ipv6 = ([str(ip)], []) if ip.version == 4 else ([], [str(ip)])
    except ValueError:
        ipv4 = _addresses(resolver, config.mail_domain, "A")
        ipv6 = _addresses(resolver, config.mail_domain, "AAAA")
    sts_id = _existing_sts_id(resolver, config) or time.strftime("%Y%m%d%H%M", time.gmtime())
    return RelayFacts(ipv4, ipv6, dkim, acme, sts_id)


def _addresses(resolver, name: str, rtype: str) -> list[str]:
    try:
        return sorted(r.to_text() for r in resolver.resolve(name, rtype))
    except dns.exception.DNSException:
        return []


def _existing_sts_id(resolver, config: Config) -> str | None:
    for value in _addresses(resolver, f"_mta-sts.{config.mail_domain}", "TXT"):
        for part in value.strip('"').split(";"):
            key, _, val = part.strip().partition("=")
            if key == "id" and val:
                return val
    return None


def make_resolver(server: str | None) -> dns.resolver.Resolver:
    """The system resolver, or one that asks ``server`` (e.g. the lab DNS)."""
    resolver = dns.resolver.Resolver(configure=server is None)
    if server:
        resolver.nameservers = [server]
    resolver.lifetime = 10
    return resolver


def authoritative_server(resolver, domain: str) -> str:
    """Address of a nameserver that is authoritative for the zone holding ``domain``."""
    name = dns.name.from_text(domain)
    while True:
        try:
            ns = resolver.resolve(name, "NS")
            host = str(sorted(r.target.to_text() for r in ns)[0])
            return sorted(r.to_text() for r in resolver.resolve(host, "A"))[0]
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            if name == dns.name.root or len(name.labels) <= 2:
                raise
            name = name.parent()


def lookup(server: str, name: str, rtype: str) -> list[str]:
    query = dns.message.make_query(name, rtype)
    reply = dns.query.udp(query, server, timeout=5)
    if reply.flags & dns.flags.TC:
        reply = dns.query.tcp(query, server, timeout=5)
    values = []
    for rrset in reply.answer:
        if rrset.rdtype == dns.rdatatype.from_text(rtype):
            values += [r.to_text() for r in rrset]
    return values


def _normal(rtype: str, value: str) -> str:
    if rtype == "TXT":
        # Chunking is transport detail: compare the joined text.
        return "".join(part for part in value.split('"')[1::2])
    return value.lower().rstrip(".")


def check(config: Config, facts: RelayFacts, resolver) -> tuple[list[Record], list[Record]]:
    """Records that the authoritative server lacks: (required, recommended)."""
    server = authoritative_server(resolver, config.mail_domain)
    missing_req, missing_rec = [], []
    for rec in records(config, facts):
        found = {_normal(rec.rtype, v) for v in lookup(server, rec.name, rec.rtype)}
        if _normal(rec.rtype, rec.value) not in found:
            (missing_req if rec.required else missing_rec).append(rec)
    return missing_req, missing_rec


def dns_cmd(args) -> int:
    config = load_config(args)
    remote = remote_for(args, config)
    resolver = make_resolver(args.dns_server)
    try:
        facts = gather_facts(remote, config, resolver)
    except RemoteError as e:
        return fail(str(e))
    if args.zonefile:
        args.zonefile.write_text(zone_text(config, facts))
        print(f"wrote the zone of {config.mail_domain} to {args.zonefile}")
        return 0
    try:
        missing_req, missing_rec = check(config, facts, resolver)
    except dns.exception.DNSException as e:
        return fail(f"cannot find the nameserver of {config.mail_domain}: {e}")
    if missing_req:
        print(red("Please set required DNS entries at your DNS provider:", sys.stdout))
        for rec in missing_req:
            print(rec.zone_line())
    if missing_rec:
        print("WARNING: these recommended DNS entries are not set:")
        for rec in missing_rec:
            print(rec.zone_line())
    if not missing_req and not missing_rec:
        print("Great! All your DNS entries are verified and correct.")
    return 1 if missing_req else 0


def register(subparsers) -> None:
    p = subparsers.add_parser("dns", help="show and check the DNS records of the relay")
    p.add_argument("--zonefile", type=Path, help="write the records as a BIND zone file")
    add_ssh_host(p)
    p.add_argument("--dns-server", help="resolver to find the zone's nameserver (e.g. the lab DNS)")
    p.set_defaults(func=dns_cmd)
