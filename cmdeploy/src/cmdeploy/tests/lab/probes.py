"""Mail probes that run inside the lab's client namespace.

Called as ``python -m cmdeploy.tests.lab.probes NAME JSON_KWARGS``; prints a JSON result.
Tests use :func:`call` to run them there and get the result back.
"""

from __future__ import annotations

import base64
import imaplib
import json
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time

# Lab relays have self-signed certificates (underscore domains).
CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE


def smtp_send(host, msg_b64, mail_from, rcpts, user=None, password=None, port=465,
              starttls=False, helo=None) -> dict:  # fmt: skip
    """Send one message; the server's final reply (code, text) or the refusal."""
    msg = base64.b64decode(msg_b64)
    try:
        if port == 465:
            conn = smtplib.SMTP_SSL(host, port, context=CTX, timeout=30)
        else:
            conn = smtplib.SMTP(host, port, timeout=30, local_hostname=helo)
            conn.ehlo()
            if starttls:
                conn.starttls(context=CTX)
                conn.ehlo()
        with conn:
            if user:
                conn.login(user, password)
            refused = conn.sendmail(mail_from, rcpts, msg)
            return {"code": 250, "text": "", "refused": {k: list(v) for k, v in refused.items()}}
    except smtplib.SMTPRecipientsRefused as e:
        ((code, text),) = list(e.recipients.values())[:1]
        return {"code": code, "text": text.decode(errors="replace")}
    except smtplib.SMTPResponseException as e:
        return {"code": e.smtp_code, "text": e.smtp_error.decode(errors="replace")}


def imap_messages(host, user, password, wait=0.0, min_count=1) -> dict:
    """Log in (creating the account) and return the INBOX messages, waiting up to ``wait`` s."""
    deadline = time.monotonic() + wait
    while True:
        conn = imaplib.IMAP4_SSL(host, 993, ssl_context=CTX, timeout=30)
        try:
            conn.login(user, password)
            conn.select("INBOX")
            _, data = conn.search(None, "ALL")
            nums = data[0].split()
            msgs = []
            for num in nums:
                _, parts = conn.fetch(num, "(RFC822)")
                msgs.append(base64.b64encode(parts[0][1]).decode())
        finally:
            try:
                conn.logout()
            except (imaplib.IMAP4.abort, OSError):
                pass
        if len(msgs) >= min_count or time.monotonic() >= deadline:
            return {"messages": msgs}
        time.sleep(0.5)


def imap_login(host, user, password) -> dict:
    conn = imaplib.IMAP4_SSL(host, 993, ssl_context=CTX, timeout=30)
    try:
        conn.login(user, password)
        return {"ok": True, "capabilities": list(conn.capabilities)}
    except imaplib.IMAP4.error as e:
        return {"ok": False, "error": str(e)}
    finally:
        try:
            conn.logout()
        except (imaplib.IMAP4.abort, OSError):
            pass


def alpn_greeting(host, alpn=None) -> dict:
    """First bytes on port 443 for an ALPN protocol (HTTP request when there is none)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols([alpn])
    import socket

    with socket.create_connection((host, 443), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as conn:
            if not alpn:
                conn.sendall(
                    f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
                )
            return {"greeting": conn.recv(200).decode(errors="replace")}


def http_get(url) -> dict:
    """GET without following redirects: status and Location."""
    import http.client
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPSConnection(u.hostname, u.port or 443, context=CTX, timeout=20)
    conn.request("GET", u.path or "/")
    resp = conn.getresponse()
    return {"status": resp.status, "location": resp.getheader("Location")}


def served_cert(host, port, cafile, starttls=None, server_name=None) -> dict:
    """The certificate a port serves, verified against ``cafile`` for ``server_name``.

    ``starttls`` is "smtp" or "imap" for ports that start in cleartext. Returns the serial
    (hex) and expiry, or the verification error.
    """
    ctx = ssl.create_default_context(cafile=cafile)
    name = server_name or host
    try:
        if starttls == "smtp":
            conn = smtplib.SMTP(host, port, timeout=20)
            conn.ehlo()
            conn._host = name  # smtplib verifies the name it connected to
            conn.starttls(context=ctx)
            tls = conn.sock
        elif starttls == "imap":
            conn = imaplib.IMAP4(host, port, timeout=20)
            conn.host = name
            conn.starttls(ssl_context=ctx)
            tls = conn.sock
        else:
            if port == 443:
                ctx.set_alpn_protocols(["http/1.1"])
            raw = socket.create_connection((host, port), timeout=20)
            tls = ctx.wrap_socket(raw, server_hostname=name)
            conn = tls
        cert = tls.getpeercert()
        # imaplib's close() is the IMAP CLOSE command (illegal before login): just hang up.
        conn.shutdown() if starttls == "imap" else conn.close()
    except (ssl.SSLError, OSError, smtplib.SMTPException, imaplib.IMAP4.error) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    return {"serial": cert["serialNumber"], "not_after": cert["notAfter"],
            "issuer": dict(x[0] for x in cert["issuer"]).get("commonName", "")}  # fmt: skip


def _read_replies(conn, want: int, timeout: float) -> tuple[list[str], bool]:
    """Up to ``want`` complete SMTP replies (RFC 5321 4.2), and whether the server closed."""
    buf, replies, lines = b"", [], []
    deadline = time.monotonic() + timeout
    while len(replies) < want:
        conn.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            chunk = conn.recv(65536)
        except (TimeoutError, OSError):
            return replies, False
        if not chunk:
            return replies, True
        buf += chunk
        while b"\r\n" in buf:
            line, buf = buf.split(b"\r\n", 1)
            text = line.decode(errors="replace")
            lines.append(text)
            # "250-..." continues a reply, "250 ..." ends it.
            if len(text) < 4 or text[3] != "-":
                replies.append("\n".join(lines))
                lines = []
    return replies, False


def smtp_script(host, steps, port=25, helo="lab.test", timeout=30.0) -> dict:
    """Raw SMTP after EHLO and STARTTLS: send each step's bytes in one write, then read
    as many replies as the step expects. For protocol attacks that smtplib cannot make.

    ``steps`` is a list of ``[bytes_b64, replies_expected, optional seconds to wait for
    them]``; the result lists the replies
    read after each step (multi-line replies joined) and whether the server hung up.
    """
    import socket

    raw = socket.create_connection((host, port), timeout=timeout)
    greeting, _ = _read_replies(raw, 1, timeout)
    raw.sendall(f"EHLO {helo}\r\n".encode())
    _read_replies(raw, 1, timeout)
    raw.sendall(b"STARTTLS\r\n")
    started, _ = _read_replies(raw, 1, timeout)
    conn = CTX.wrap_socket(raw, server_hostname=host)
    out, closed = [], False
    try:
        for data_b64, want, *wait in steps:
            try:
                conn.sendall(base64.b64decode(data_b64))
            except OSError:
                closed = True
                break
            replies, closed = _read_replies(conn, want, wait[0] if wait else timeout)
            out.append(replies)
            if closed:
                break
    finally:
        conn.close()
    return {"greeting": greeting, "starttls": started, "replies": out, "closed": closed}


def smtp_auth(host, user, password, port=465) -> dict:
    """AUTH PLAIN only: the server's reply (code, text) and how long it took."""
    started = time.monotonic()
    try:
        conn = smtplib.SMTP_SSL(host, port, context=CTX, timeout=60)
        with conn:
            code, text = conn.login(user, password)
    except smtplib.SMTPResponseException as e:
        code, text = e.smtp_code, e.smtp_error
    except (OSError, smtplib.SMTPException) as e:
        code, text = 0, repr(e).encode()
    return {"code": code, "text": text.decode(errors="replace"),
            "seconds": round(time.monotonic() - started, 2)}  # fmt: skip


def imap_commands(host, user, password, commands) -> dict:
    """LOGIN, then each raw command line (tagged by us); every command's tagged reply.

    The replies are the IMAP status lines as the server sent them (``t1 OK ...``), for
    commands imaplib has no method for, such as GETMETADATA and SETMETADATA; ``untagged``
    has every other line.
    """
    import socket

    started = time.monotonic()
    raw = socket.create_connection((host, 993), timeout=60)
    conn = CTX.wrap_socket(raw, server_hostname=host)
    f = conn.makefile("rb")
    f.readline()
    quoted = password.replace("\\", "\\\\").replace('"', '\\"')
    lines = [f'LOGIN "{user}" "{quoted}"', *commands, "LOGOUT"]
    replies, untagged = [], []
    try:
        for i, line in enumerate(lines):
            tag = f"t{i}"
            conn.sendall(f"{tag} {line}\r\n".encode())
            while True:
                got = f.readline()
                if not got:
                    replies.append("(connection closed)")
                    break
                text = got.decode(errors="replace").rstrip()
                if not got.startswith(tag.encode() + b" "):
                    untagged.append(text)
                    continue
                replies.append(text)
                break
            if replies[-1] == "(connection closed)":
                break
            if i == 0 and not replies[0].startswith(f"{tag} OK"):
                break
    finally:
        conn.close()
    seconds = round(time.monotonic() - started, 2)
    return {"replies": replies, "untagged": untagged, "seconds": seconds}


def imap_login_poller(host, users, password, duration, interval=0.5, timeout=10.0) -> dict:
    """LOGIN and SELECT INBOX as each user in turn, again and again, until SIGTERM or
    ``duration`` s; every outcome that is not a plain success is listed with its time.

    Kinds: ``ok``, ``auth-failed`` (``[AUTHENTICATIONFAILED]``, what a client shows as a
    wrong password), ``unavailable`` (``[UNAVAILABLE]``, a temporary failure), ``no``
    (any other NO/BAD) and ``dropped`` (no connection, or it broke).
    """
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    counts = {"ok": 0, "auth-failed": 0, "unavailable": 0, "no": 0, "dropped": 0}
    events = []
    deadline = time.monotonic() + duration
    i = 0
    while not stop.is_set() and time.monotonic() < deadline:
        user = users[i % len(users)]
        i += 1
        try:
            conn = imaplib.IMAP4_SSL(host, 993, ssl_context=CTX, timeout=timeout)
            try:
                conn.login(user, password)
                conn.select("INBOX")
                kind, text = "ok", ""
            finally:
                try:
                    conn.logout()
                except (imaplib.IMAP4.error, OSError):
                    pass
        except imaplib.IMAP4.abort as e:
            kind, text = "dropped", str(e)
        except imaplib.IMAP4.error as e:
            text = str(e)
            kind = ("auth-failed" if "AUTHENTICATIONFAILED" in text
                    else "unavailable" if "UNAVAILABLE" in text else "no")  # fmt: skip
        except OSError as e:
            kind, text = "dropped", f"{type(e).__name__}: {e}"
        counts[kind] += 1
        if kind != "ok" and len(events) < 500:
            events.append({"t": time.time(), "kind": kind, "user": user, "text": text[:200]})
        stop.wait(interval)
    return {"counts": counts, "events": events}


class Background:
    """A probe running in the client namespace; :meth:`result` stops it (SIGTERM) and
    returns what it printed."""

    def __init__(self, lab, name: str, kwargs: dict):
        argv = [sys.executable, "-m", "cmdeploy.tests.lab.probes", name, json.dumps(kwargs)]
        self.proc = subprocess.Popen(lab.client_ns_cmd(argv), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)  # fmt: skip

    def result(self, timeout: float = 60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate()
        if self.proc.returncode != 0:
            raise RuntimeError(f"background probe failed: {err[-3000:]}")
        return json.loads(out)


def call_background(lab, name: str, **kwargs) -> Background:
    """Start probe ``name`` in the lab's client namespace; it runs until ``.result()``."""
    return Background(lab, name, kwargs)


def call_in_client_ns(lab, module: str, name: str, kwargs: dict):
    """Run entry point ``name`` of ``module`` (its ``main``: name, JSON arguments) in the
    lab's client namespace and return its JSON result."""
    proc = lab.client_ns_run([sys.executable, "-m", module, name, json.dumps(kwargs)])
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {name} failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def call(lab, name: str, **kwargs):
    """Run probe ``name`` in the lab's client namespace and return its result."""
    return call_in_client_ns(lab, "cmdeploy.tests.lab.probes", name, kwargs)


def main(argv: list[str]) -> None:
    name, kwargs = argv[0], json.loads(argv[1])
    print(json.dumps(globals()[name](**kwargs)))


if __name__ == "__main__":
    main(sys.argv[1:])
