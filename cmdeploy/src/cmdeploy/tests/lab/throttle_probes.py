"""Probes for the throttling lab test; run inside the lab's client namespace (or a host).

Called as ``python -m cmdeploy.tests.lab.throttle_probes NAME JSON_KWARGS``; prints JSON.
"""

from __future__ import annotations

import http.client
import imaplib
import json
import smtplib
import socket
import ssl
import sys
import time


def _context(alpn: str | None = None) -> ssl.SSLContext:
    # Lab relays have self-signed certificates (underscore domains).
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols([alpn])
    return ctx


def _login(host: str, user: str, password: str, port: int) -> dict:
    """One IMAP LOGIN on 993, or on 443 asking for ALPN "imap" (nginx's multiplexer)."""
    start = time.monotonic()
    ctx = _context("imap" if port == 443 else None)
    try:
        conn = imaplib.IMAP4_SSL(host, port, ssl_context=ctx, timeout=60)
    except OSError as e:
        return {"ok": False, "error": f"connect: {e}", "secs": time.monotonic() - start}
    try:
        conn.login(user, password)
        ok, error = True, ""
    except imaplib.IMAP4.error as e:
        ok, error = False, str(e)
    finally:
        try:
            conn.logout()
        except (imaplib.IMAP4.abort, OSError):
            pass
    return {"ok": ok, "error": error, "secs": time.monotonic() - start}


def smtp_logins(host: str, users: list[str], password: str) -> list[dict]:
    """SMTP AUTH of each user on 443 with ALPN "smtp" (nginx passes it on to Postfix)."""
    results = []
    for user in users:
        start = time.monotonic()
        try:
            with smtplib.SMTP_SSL(host, 443, context=_context("smtp"), timeout=60) as conn:
                conn.login(user, password)
            ok, error = True, ""
        except (smtplib.SMTPException, OSError) as e:
            ok, error = False, str(e)
        results.append({"ok": ok, "error": error, "secs": time.monotonic() - start})
    return results


def logins(host: str, users: list[str], password: str, port: int = 993) -> list[dict]:
    """Log in as each user in turn (creating the accounts that do not exist)."""
    return [_login(host, user, password, port) for user in users]


def guesses(host: str, user: str, count: int, port: int = 993) -> list[dict]:
    """``count`` wrong passwords for ``user``, one connection each, one after another."""
    return [_login(host, user, f"wrong-guess-{i:04d}", port) for i in range(count)]


def post_new(host: str, count: int) -> list[int]:
    """POST https://host/new ``count`` times; the HTTP status of each."""
    statuses = []
    for _ in range(count):
        conn = http.client.HTTPSConnection(host, 443, context=_context(), timeout=20)
        try:
            conn.request("POST", "/new")
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
        except (OSError, http.client.HTTPException):
            statuses.append(0)
        finally:
            conn.close()
    return statuses


def main(argv: list[str]) -> None:
    name, kwargs = argv[0], json.loads(argv[1])
    socket.setdefaulttimeout(60)
    print(json.dumps(globals()[name](**kwargs)))


if __name__ == "__main__":
    main(sys.argv[1:])
