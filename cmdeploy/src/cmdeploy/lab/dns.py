"""The lab DNS: BIND zone text turned into dnsmasq records, authoritative for the lab zones."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import LabError

NS_NAME = "ns.lab"
SUPPORTED = {"A", "AAAA", "MX", "TXT", "SRV", "CNAME", "CAA", "NS", "SOA"}
# Generic record types dnsmasq can only serve as raw RDATA (--dns-rr), RFC 1035 §3.2.2.
RR_NS, RR_SOA, RR_CAA = 2, 6, 257


@dataclass(frozen=True)
class Record:
    name: str
    rtype: str
    fields: tuple[str, ...]


def _tokens(value: str) -> list[str]:
    """Split an RDATA field list; quoted strings keep their spaces (RFC 1035 §5.1)."""
    tokens, pos = [], 0
    pattern = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|(\S+))')
    while pos < len(value):
        m = pattern.match(value, pos)
        if not m or m.end() == pos:
            break
        pos = m.end()
        if m.group(1) is not None:
            tokens.append(re.sub(r"\\(.)", r"\1", m.group(1)))
        elif m.group(2):
            tokens.append(m.group(2))
    return tokens


def _absolute(name: str, origin: str) -> str:
    if name == "@":
        return origin
    if name.endswith("."):
        return name.rstrip(".").lower()
    return f"{name}.{origin}".lower()


def parse_zone(domain: str, zone_text: str) -> list[Record]:
    """Records of zone text in the `cmdeploy dns --zonefile` shape (`name [ttl] [IN] TYPE value`)."""
    origin = domain.rstrip(".").lower()
    records = []
    for lineno, raw in enumerate(zone_text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(";") or line.startswith("$"):
            continue
        parts = line.split(None, 1)
        name, rest = parts[0], parts[1] if len(parts) > 1 else ""
        words = rest.split(None, 1)
        # TTL and class are optional and may come in either order.
        while words and (words[0].isdigit() or words[0].upper() == "IN"):
            words = words[1].split(None, 1) if len(words) > 1 else []
        if not words or words[0].upper() not in SUPPORTED:
            raise LabError(f"zone line {lineno}: cannot read {raw.strip()!r}")
        rtype = words[0].upper()
        fields = tuple(_tokens(words[1] if len(words) > 1 else ""))
        if not fields:
            raise LabError(f"zone line {lineno}: {rtype} record without a value")
        # Names inside RDATA are relative to the origin like owner names (RFC 1035 §5.1).
        target = {"MX": 1, "CNAME": 0, "SRV": 3}.get(rtype)
        if target is not None and len(fields) > target:
            fields = (*fields[:target], _absolute(fields[target], origin), *fields[target + 1 :])
        records.append(Record(_absolute(name, origin), rtype, fields))
    return records


def _wire_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def soa_rdata(zone: str, serial: int) -> bytes:
    """SOA RDATA (RFC 1035 §3.3.13): the lab DNS is the primary of every lab zone."""
    numbers = [serial, 3600, 600, 86400, 60]
    return (
        _wire_name(NS_NAME)
        + _wire_name(f"hostmaster.{zone}")
        + b"".join(n.to_bytes(4, "big") for n in numbers)
    )


def caa_rdata(flags: str, tag: str, value: str) -> bytes:
    """CAA RDATA (RFC 8659 §4.1): flags, tag length, tag, value."""
    return bytes([int(flags), len(tag)]) + tag.encode() + value.encode()


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dnsmasq_lines(zone: str, records: list[Record]) -> list[str]:
    """dnsmasq options serving the records, plus SOA and NS that mark the zone as ours."""
    zone = zone.rstrip(".").lower()
    serial = int(time.time()) & 0xFFFFFFFF
    lines = [
        f"# zone {zone}",
        f"dns-rr={zone},{RR_SOA},{soa_rdata(zone, serial).hex()}",
        f"dns-rr={zone},{RR_NS},{_wire_name(NS_NAME).hex()}",
    ]
    for r in records:
        f = r.fields
        if r.rtype in ("A", "AAAA"):
            lines.append(f"host-record={r.name},{f[0]}")
        elif r.rtype == "MX":
            lines.append(f"mx-host={r.name},{f[1].rstrip('.')},{f[0]}")
        elif r.rtype == "TXT":
            lines.append(f"txt-record={r.name}," + ",".join(_quote(s) for s in f))
        elif r.rtype == "SRV":
            prio, weight, port, target = f[:4]
            lines.append(f"srv-host={r.name},{target.rstrip('.')},{port},{prio},{weight}")
        elif r.rtype == "CNAME":
            lines.append(f"cname={r.name},{f[0].rstrip('.')}")
        elif r.rtype == "CAA":
            lines.append(f"dns-rr={r.name},{RR_CAA},{caa_rdata(*f[:3]).hex()}")
        # NS and SOA from zone text are replaced by the lab's own, written above.
    return lines


def host_zone(domain: str, ip: str) -> str:
    """The zone a lab host starts with, before a deploy loads its full zone file."""
    return f"{domain}. 3600 IN A {ip}\n{domain}. 3600 IN MX 10 {domain}.\n"


def dnsmasq_conf(listen_ip: str, zone_dir: Path, log_queries: bool = False) -> str:
    """Main dnsmasq configuration: answer only on the bridge, only from lab data."""
    return "\n".join(
        [
            "# Written by cmdeploy lab; records live in the zone files next to it.",
            "no-resolv",
            "no-hosts",
            "no-poll",
            "bind-interfaces",
            f"listen-address={listen_ip}",
            "port=53",
            "user=nobody",
            "group=nogroup",
            "pid-file=",
            # Every name is local: unknown names get NXDOMAIN at once instead of a timeout.
            "local=/#/",
            f"host-record={NS_NAME},{listen_ip}",
            *dnsmasq_lines("lab", []),
            f"conf-dir={zone_dir},*.conf",
            *(["log-queries"] if log_queries else []),
            "",
        ]
    )
