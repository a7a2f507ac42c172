"""A minimal TURN client (RFC 5389 STUN, RFC 5766 TURN over UDP), written for the tests.

Run as ``python -m cmdeploy.tests.lab.turn_client NAME JSON_KWARGS`` (in the lab's client
namespace, see :func:`call`); prints a JSON result. It allocates with long-term
credentials, creates permissions and relays data between two allocations with Send and
Data indications, which is what a WebRTC client does before media flows.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import socket
import struct
import sys
import time

from cmdeploy.tests.lab.probes import call_in_client_ns

MAGIC = 0x2112A442
ALLOCATE, REFRESH, SEND, DATA, CREATE_PERMISSION = 0x003, 0x004, 0x016, 0x017, 0x008
SUCCESS, ERROR = 0x100, 0x110
USERNAME, MESSAGE_INTEGRITY, ERROR_CODE, LIFETIME = 0x0006, 0x0008, 0x0009, 0x000D
XOR_PEER, DATA_ATTR, REALM, NONCE = 0x0012, 0x0013, 0x0014, 0x0015
XOR_RELAYED, REQUESTED_TRANSPORT, XOR_MAPPED = 0x0016, 0x0019, 0x0020
UDP = 17


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def _xor_address(host: str, port: int) -> bytes:
    ip = ipaddress.IPv4Address(host)
    xport = port ^ (MAGIC >> 16)
    return struct.pack("!BBHI", 0, 1, xport, int(ip) ^ MAGIC)


def _parse_xor_address(value: bytes) -> tuple[str, int]:
    _, family, xport = struct.unpack("!BBH", value[:4])
    if family != 1:
        raise ValueError("only IPv4 addresses are handled")
    (xaddr,) = struct.unpack("!I", value[4:8])
    return str(ipaddress.IPv4Address(xaddr ^ MAGIC)), xport ^ (MAGIC >> 16)


def encode(method: int, cls: int, txid: bytes, attrs: list[tuple[int, bytes]],
           key: bytes | None = None) -> bytes:  # fmt: skip
    """A STUN message; with ``key`` a MESSAGE-INTEGRITY (RFC 5389 15.4) is appended."""
    body = b"".join(_attr(k, v) for k, v in attrs)
    kind = method | cls
    if key is None:
        return struct.pack("!HHI", kind, len(body), MAGIC) + txid + body
    # The length covers the MESSAGE-INTEGRITY attribute (24 bytes) the HMAC is computed for.
    head = struct.pack("!HHI", kind, len(body) + 24, MAGIC) + txid
    mac = hmac.new(key, head + body, hashlib.sha1).digest()
    return head + body + _attr(MESSAGE_INTEGRITY, mac)


def decode(data: bytes) -> tuple[int, bytes, dict[int, bytes]]:
    """(type, transaction id, attributes) of a STUN message; the first of each attribute."""
    if len(data) < 20:
        raise ValueError("short STUN message")
    kind, length, magic = struct.unpack("!HHI", data[:8])
    if magic != MAGIC:
        raise ValueError("not a STUN message")
    attrs: dict[int, bytes] = {}
    pos, end = 20, 20 + length
    while pos + 4 <= end:
        akind, alen = struct.unpack("!HH", data[pos : pos + 4])
        attrs.setdefault(akind, data[pos + 4 : pos + 4 + alen])
        pos += 4 + alen + (-alen % 4)
    return kind, data[8:20], attrs


def _error(attrs: dict[int, bytes]) -> tuple[int, str]:
    value = attrs.get(ERROR_CODE, b"\0\0\0\0")
    return value[2] * 100 + value[3], value[4:].decode(errors="replace")


class Client:
    """One UDP socket, one allocation."""

    def __init__(self, host: str, port: int, username: str, password: str, timeout=5.0):
        self.server = (socket.gethostbyname(host), port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)
        self.sock.connect(self.server)
        self.username, self.password = username, password
        self.realm = self.nonce = b""
        self.key: bytes | None = None

    def close(self) -> None:
        self.sock.close()

    def _transact(self, method: int, attrs: list[tuple[int, bytes]], auth: bool):
        txid = os.urandom(12)
        if auth:
            attrs = [*attrs, (USERNAME, self.username.encode()), (REALM, self.realm),
                     (NONCE, self.nonce)]  # fmt: skip
        self.sock.send(encode(method, 0, txid, attrs, self.key if auth else None))
        deadline = time.monotonic() + self.sock.gettimeout()
        while time.monotonic() < deadline:
            kind, rtxid, rattrs = decode(self.sock.recv(4096))
            if rtxid == txid:
                return kind, rattrs
        raise TimeoutError("no reply")

    def allocate(self) -> dict:
        """Allocate a UDP relay: {"ok", "code", "reason", "relayed", "mapped", "lifetime"}."""
        transport = [(REQUESTED_TRANSPORT, bytes([UDP, 0, 0, 0]))]
        kind, attrs = self._transact(ALLOCATE, transport, auth=False)
        if kind == ALLOCATE | ERROR and _error(attrs)[0] == 401:
            # The challenge: realm and nonce for the long-term credential (RFC 5389 10.2).
            self.realm, self.nonce = attrs.get(REALM, b""), attrs.get(NONCE, b"")
            text = f"{self.username}:{self.realm.decode()}:{self.password}"
            self.key = hashlib.md5(text.encode()).digest()
            kind, attrs = self._transact(ALLOCATE, transport, auth=True)
        if kind != ALLOCATE | SUCCESS:
            code, reason = _error(attrs)
            return {"ok": False, "code": code, "reason": reason, "realm": self.realm.decode()}
        return {
            "ok": True,
            "relayed": _parse_xor_address(attrs[XOR_RELAYED]),
            "mapped": _parse_xor_address(attrs[XOR_MAPPED]),
            "lifetime": struct.unpack("!I", attrs[LIFETIME])[0] if LIFETIME in attrs else None,
            "realm": self.realm.decode(),
        }

    def permit(self, peer_host: str) -> tuple[bool, int]:
        kind, attrs = self._transact(CREATE_PERMISSION, [(XOR_PEER, _xor_address(peer_host, 0))],
                                     auth=True)  # fmt: skip
        return kind == CREATE_PERMISSION | SUCCESS, _error(attrs)[0]

    def send(self, peer: tuple[str, int], data: bytes) -> None:
        attrs = [(XOR_PEER, _xor_address(*peer)), (DATA_ATTR, data)]
        self.sock.send(encode(SEND, 0, os.urandom(12), attrs))

    def receive(self) -> tuple[tuple[str, int], bytes]:
        """The next Data indication: (peer, data)."""
        deadline = time.monotonic() + self.sock.gettimeout()
        while time.monotonic() < deadline:
            kind, _, attrs = decode(self.sock.recv(4096))
            if kind == DATA:
                return _parse_xor_address(attrs[XOR_PEER]), attrs[DATA_ATTR]
        raise TimeoutError("no data indication")

    def release(self) -> None:
        try:
            self._transact(REFRESH, [(LIFETIME, struct.pack("!I", 0))], auth=True)
        except (OSError, ValueError):
            pass


# Entry points (JSON in, JSON out).


def allocate(host, port, username, password) -> dict:
    """One Allocate with these credentials, released again if it succeeded."""
    client = Client(host, port, username, password)
    try:
        got = client.allocate()
        if got["ok"]:
            client.release()
        return got
    except (OSError, ValueError) as e:
        return {"ok": False, "code": None, "reason": f"{type(e).__name__}: {e}"}
    finally:
        client.close()


def relay_round_trip(host, port, username, password) -> dict:
    """Two allocations that exchange one datagram each way through the server."""
    a = Client(host, port, username, password)
    b = Client(host, port, username, password)
    out: dict = {}
    try:
        ra, rb = a.allocate(), b.allocate()
        out.update(a=ra, b=rb)
        if not (ra["ok"] and rb["ok"]):
            return out
        a_relay, b_relay = tuple(ra["relayed"]), tuple(rb["relayed"])
        out["permit_a"], out["permit_b"] = a.permit(b_relay[0]), b.permit(a_relay[0])
        a.send(b_relay, b"ping from a")
        out["b_got"] = _received(b)
        b.send(a_relay, b"pong from b")
        out["a_got"] = _received(a)
        out["a_relay"], out["b_relay"] = a_relay, b_relay
        return out
    finally:
        for c in (a, b):
            c.release()
            c.close()


def permit_peer(host, port, username, password, peer) -> dict:
    """An allocation and a CreatePermission for ``peer`` (an IPv4 address)."""
    client = Client(host, port, username, password)
    try:
        got = client.allocate()
        if not got["ok"]:
            return {"allocated": False, **got}
        ok, code = client.permit(peer)
        client.release()
        return {"allocated": True, "permitted": ok, "code": code}
    finally:
        client.close()


def _received(client: Client):
    try:
        peer, data = client.receive()
        return [list(peer), data.decode(errors="replace")]
    except (OSError, ValueError) as e:
        return f"{type(e).__name__}: {e}"


def call(lab, name: str, **kwargs):
    """Run entry point ``name`` in the lab's client namespace and return its result."""
    return call_in_client_ns(lab, "cmdeploy.tests.lab.turn_client", name, kwargs)


def main(argv: list[str]) -> None:
    name, kwargs = argv[0], json.loads(argv[1])
    entry = {"allocate": allocate, "relay_round_trip": relay_round_trip,
             "permit_peer": permit_peer}[name]  # fmt: skip
    print(json.dumps(entry(**kwargs)))


if __name__ == "__main__":
    main(sys.argv[1:])
