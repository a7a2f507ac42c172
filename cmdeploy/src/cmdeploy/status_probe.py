"""Probes that ``cmdeploy status`` runs on the relay: does each service answer?

This file is sent to the relay as it is and run by its ``python3`` (standard library only,
Python 3.11): ``python3 -c <this file> <JSON spec>``. The spec lists systemd units and
checks; one line per result goes to stdout, tab separated:

    unit     <unit>       <state of systemctl is-active>
    check    <component>  <label>  ok|down  <what was seen>
    cert     <expiry date of the TLS certificate>
    served   <port>  <expiry date of the certificate that port serves>
    queue    <messages in Postfix's active and deferred queues>
    version  <the deployed chatmail version>

A check is "ok" when the service gives the first answer of its protocol: an SMTP 220
greeting, an LMTP 220 greeting and 250 to LHLO, an IMAP ``* OK``, an HTTP status line below 500, a DNS reply, a dict reply, a
milter option negotiation, a FastCGI response, a STUN binding response.
"""

from __future__ import annotations

import json
import os
import random
import socket
import ssl
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

TIMEOUT = 5.0


def _tls(sock: socket.socket, server_name: str | None) -> ssl.SSLSocket:
    # Only "does it answer" matters here; certificate validity is reported separately.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx.wrap_socket(sock, server_hostname=server_name)


def _connect(check: dict) -> socket.socket:
    if "path" in check:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(check["path"])
        return sock
    sock = socket.create_connection((check["host"], check["port"]), timeout=TIMEOUT)
    if check.get("proxy"):
        # HAProxy PROXY protocol v1, as nginx sends it to Postfix's 443 listener.
        sock.sendall(f"PROXY TCP4 127.0.0.1 127.0.0.1 1 {check['port']}\r\n".encode())
    if check.get("tls"):
        sock = _tls(sock, check.get("server_name"))
    return sock


def _first_line(sock: socket.socket) -> str:
    data = b""
    while b"\n" not in data and len(data) < 4096:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode("utf-8", "replace").strip()


def probe_smtp(check: dict) -> tuple[bool, str]:
    with _connect(check) as sock:
        line = _first_line(sock)
        sock.sendall(b"QUIT\r\n")
    return line.startswith("220"), line or "no greeting"


def _reply_complete(data: bytes) -> bool:
    """A whole SMTP/LMTP reply: its last line has a space after the code (RFC 5321 §4.2.1)."""
    lines = data.split(b"\r\n")
    return data.endswith(b"\r\n") and len(lines) >= 2 and lines[-2][3:4] != b"-"


def probe_lmtp(check: dict) -> tuple[bool, str]:
    """Greeting, then LHLO (RFC 2033 §4.1): the server reads and answers a command."""
    with _connect(check) as sock:
        greeting = _first_line(sock)
        if not greeting.startswith("220"):
            return False, greeting or "no greeting"
        sock.sendall(b"LHLO status.probe\r\n")
        data = b""
        while not _reply_complete(data) and len(data) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        sock.sendall(b"QUIT\r\n")
    last = data.decode("utf-8", "replace").strip().rpartition("\n")[2].strip()
    return last.startswith("250 "), f"LHLO: {last or 'no reply'}"


def probe_imap(check: dict) -> tuple[bool, str]:
    with _connect(check) as sock:
        line = _first_line(sock)
        sock.sendall(b"a LOGOUT\r\n")
    return line.startswith("* OK"), line or "no greeting"


def probe_http(check: dict) -> tuple[bool, str]:
    host = check.get("server_name") or check["host"]
    request = f"GET {check.get('url', '/')} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    with _connect(check) as sock:
        sock.sendall(request.encode())
        line = _first_line(sock)
    parts = line.split()
    ok = len(parts) >= 2 and parts[0].startswith("HTTP/") and parts[1].isdigit()
    return ok and int(parts[1]) < 500, line or "no response"


RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}


def dns_query(name: str, qid: int) -> bytes:
    """An RFC 1035 query for the A record of ``name`` with recursion desired."""
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.strip(".").split(".") if p)
    return (
        struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", 1, 1)
    )


def dns_verdict(reply: bytes, qid: int) -> tuple[bool, str]:
    """Whether ``reply`` answers query ``qid`` with NOERROR or NXDOMAIN."""
    if len(reply) < 12:
        return False, "short reply"
    rid, flags, _, answers = struct.unpack("!HHHH", reply[:8])
    if rid != qid or not flags & 0x8000:
        return False, "not a reply to the query"
    rcode = flags & 0xF
    text = f"{RCODES.get(rcode, f'rcode {rcode}')}, {answers} answer(s)"
    return rcode in (0, 3), text


def probe_dns(check: dict) -> tuple[bool, str]:
    qid = random.randrange(1, 0xFFFF)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        # Connected: a closed port fails at once (ICMP port unreachable) instead of timing out.
        sock.connect((check["host"], check["port"]))
        sock.send(dns_query(check.get("name", "localhost."), qid))
        reply = sock.recv(4096)
    return dns_verdict(reply, qid)


def probe_dict(check: dict) -> tuple[bool, str]:
    # Dovecot dict protocol: hello (no reply), then one request whose reply is a line.
    hello = f"H3\t2\t0\t\t{check['dict']}\n"
    with _connect(check) as sock:
        sock.sendall((hello + check["request"] + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    if not data.endswith(b"\n"):
        return False, "no reply"
    # Only the reply's type, never a value.
    first = data[:1].decode("ascii", "replace")
    return True, {"N": "not found", "O": "found", "F": "failure reply", "\n": "end of rows"}.get(
        first, "reply"
    )


def milter_packet(command: bytes, data: bytes = b"") -> bytes:
    """One milter protocol packet: 32-bit length, command byte, data."""
    return struct.pack("!I", len(data) + 1) + command + data


def probe_milter(check: dict) -> tuple[bool, str]:
    # SMFIC_OPTNEG with protocol version 6; a milter answers with its own OPTNEG.
    with _connect(check) as sock:
        sock.sendall(milter_packet(b"O", struct.pack("!III", 6, 0x1FF, 0)))
        header = b""
        while len(header) < 5:
            chunk = sock.recv(5 - len(header))
            if not chunk:
                break
            header += chunk
        sock.sendall(milter_packet(b"Q"))
    if len(header) == 5 and header[4:5] == b"O":
        return True, "option negotiation answered"
    return False, "no option negotiation"


def _fcgi_record(kind: int, content: bytes) -> bytes:
    return struct.pack("!BBHHBx", 1, kind, 1, len(content), 0) + content


def _fcgi_params(params: dict[str, str]) -> bytes:
    out = b""
    for key, value in params.items():
        k, v = key.encode(), value.encode()
        out += bytes([len(k), len(v)]) + k + v  # all shorter than 128 bytes
    return out


def probe_fastcgi(check: dict) -> tuple[bool, str]:
    # A request for a script that does not exist: fcgiwrap answers it without running one.
    params = {"SCRIPT_FILENAME": "/nonexistent/chatmail-status", "REQUEST_METHOD": "GET",
              "SCRIPT_NAME": "/chatmail-status", "SERVER_PROTOCOL": "HTTP/1.1"}  # fmt: skip
    request = (
        _fcgi_record(1, struct.pack("!HB5x", 1, 0))  # BEGIN_REQUEST, responder
        + _fcgi_record(4, _fcgi_params(params))
        + _fcgi_record(4, b"")
        + _fcgi_record(5, b"")  # empty STDIN
    )
    with _connect(check) as sock:
        sock.sendall(request)
        data = b""
        while len(data) < 8:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    if len(data) >= 8 and data[0] == 1 and data[1] in (3, 6, 7):  # END_REQUEST, STDOUT, STDERR
        length = struct.unpack("!H", data[4:6])[0]
        body = data[8 : 8 + length].split(b"\r\n", 1)[0].decode("utf-8", "replace")
        return True, body or "answered"
    return False, "no FastCGI response"


STUN_MAGIC = 0x2112A442


def probe_stun(check: dict) -> tuple[bool, str]:
    # An RFC 5389 Binding request over UDP: a TURN server answers it without credentials.
    txid = os.urandom(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect((check["host"], check["port"]))
        sock.send(struct.pack("!HHI", 0x0001, 0, STUN_MAGIC) + txid)
        reply = sock.recv(2048)
    if len(reply) >= 20 and reply[4:8] == struct.pack("!I", STUN_MAGIC) and reply[8:20] == txid:
        kind = struct.unpack("!H", reply[:2])[0]
        return kind == 0x0101, "binding success" if kind == 0x0101 else f"reply type {kind:#06x}"
    return False, "not a STUN reply to the request"


def probe_connect(check: dict) -> tuple[bool, str]:
    with _connect(check):
        pass
    return True, "accepts connections"


PROBES = {
    "connect": probe_connect,
    "smtp": probe_smtp,
    "lmtp": probe_lmtp,
    "imap": probe_imap,
    "http": probe_http,
    "dns": probe_dns,
    "dict": probe_dict,
    "milter": probe_milter,
    "fastcgi": probe_fastcgi,
    "stun": probe_stun,
}


def run_check(check: dict) -> tuple[bool, str]:
    """Run one check; any error is a "down" with the error as what was seen."""
    try:
        return PROBES[check["kind"]](check)
    except (OSError, ssl.SSLError, ValueError) as e:
        return False, (str(e) or type(e).__name__).strip()


def unit_states(units: list[str]) -> dict[str, str]:
    out = subprocess.run(["systemctl", "is-active", *units], capture_output=True, text=True)
    states = out.stdout.split()
    return {u: (states[i] if i < len(states) else "unknown") for i, u in enumerate(units)}


def _clean(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())[:100]


def _read_until(sock: socket.socket, done) -> bytes:
    data = b""
    while not done(data) and len(data) < 65536:
        chunk = sock.recv(4096)
        if not chunk:
            raise OSError("connection closed before STARTTLS")
        data += chunk
    return data


def served_cert_expiry(port: int, starttls: str, server_name: str) -> str:
    """The expiry date of the certificate a local port serves (after STARTTLS if named)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    with sock:
        if starttls == "smtp":
            _read_until(sock, lambda d: d.endswith(b"\r\n") and d[3:4] == b" ")
            sock.sendall(b"EHLO status.probe\r\n")
            _read_until(sock, lambda d: b"\r\n250 " in b"\r\n" + d and d.endswith(b"\r\n"))
            sock.sendall(b"STARTTLS\r\n")
            _read_until(sock, lambda d: d.endswith(b"\r\n"))
        elif starttls == "imap":
            _read_until(sock, lambda d: d.endswith(b"\r\n"))
            sock.sendall(b"s STARTTLS\r\n")
            _read_until(sock, lambda d: b"s OK" in d and d.endswith(b"\r\n"))
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if port == 443:
            ctx.set_alpn_protocols(["http/1.1"])
        with ctx.wrap_socket(sock, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    pem = ssl.DER_cert_to_PEM_cert(der)
    out = subprocess.run(["openssl", "x509", "-enddate", "-noout"], input=pem,
                         capture_output=True, text=True).stdout  # fmt: skip
    return out.strip().partition("=")[2]


def _extras(spec: dict) -> list[str]:
    lines = []
    cert = subprocess.run(["openssl", "x509", "-enddate", "-noout", "-in", spec["cert"]],
                          capture_output=True, text=True).stdout  # fmt: skip
    lines.append(f"cert\t{cert.strip().partition('=')[2]}")
    for port, starttls in spec.get("served", []):
        try:
            expiry = served_cert_expiry(port, starttls, spec.get("server_name", ""))
        except (OSError, ssl.SSLError) as e:
            expiry = f"not served ({_clean(str(e) or type(e).__name__)})"
        lines.append(f"served\t{port}\t{expiry}")
    queued = 0
    for sub in ("active", "deferred"):
        for _, _, names in os.walk(f"/var/spool/postfix/{sub}"):
            queued += len(names)
    lines.append(f"queue\t{queued}")
    try:
        with open("/etc/chatmail-version") as f:
            version = f.read().strip()
    except OSError:
        version = ""
    lines.append(f"version\t{version}")
    return lines


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    lines = [f"unit\t{u}\t{s}" for u, s in unit_states(spec.get("units", [])).items()]
    checks = spec.get("checks", [])
    with ThreadPoolExecutor(max_workers=max(1, len(checks))) as pool:
        results = list(pool.map(run_check, checks))
    for check, (ok, seen) in zip(checks, results, strict=True):
        verdict = "ok" if ok else "down"
        lines.append(f"check\t{check['component']}\t{check['label']}\t{verdict}\t{_clean(seen)}")
    if spec.get("cert"):
        lines.extend(_extras(spec))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
