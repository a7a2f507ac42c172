"""Submission over implicit TLS (465, and 443 with ALPN "smtp"): TLS 1.3 and no session ticket.

A TLS 1.3 ticket written just before the greeting made every greeting wait ~42 ms: the
client, with nothing to send, delays its ACK of the ticket and Nagle holds the greeting in
the relay's send queue until that ACK arrives. Without the ticket nothing holds it back.
"""

from __future__ import annotations

import socket
import ssl

import pytest


def _greeting(domain: str, port: int, ssl_context: ssl.SSLContext, alpn: str | None):
    """(TLS version, first reply, whether the server sent a session ticket before it)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = ssl_context.check_hostname, ssl_context.verify_mode
    if alpn:
        ctx.set_alpn_protocols([alpn])
    with socket.create_connection((domain, port), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname=domain) as conn:
            # Records arrive in order: a ticket sent before the greeting is processed by
            # the time the greeting is read.
            reply = conn.recv(4096)
            return conn.version(), reply, conn.session.has_ticket


@pytest.mark.parametrize("port,alpn", [(465, None), (443, "smtp")])
def test_greeting_comes_without_a_session_ticket(domain, ssl_context, port, alpn):
    version, reply, ticket = _greeting(domain, port, ssl_context, alpn)
    assert version == "TLSv1.3"
    assert reply.startswith(b"220 "), reply
    assert not ticket, "a TLS session ticket came before the greeting (Nagle holds the 220)"
