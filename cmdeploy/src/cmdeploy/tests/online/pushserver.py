"""A local stand-in for the public push notification server (it speaks the same HTTP)."""

from __future__ import annotations

import http.server
import ipaddress
import socket
import threading
import time
import urllib.parse


class PushServer:
    """Records the bodies (device tokens) POSTed to it, and when each arrived."""

    def __init__(self, host: str, port: int, path: str):
        self.tokens: list[str] = []
        # time.perf_counter() at each POST's arrival, in the order of ``tokens``.
        self.arrivals: list[float] = []
        self.path = path
        received, arrivals = self.tokens, self.arrivals
        cond = self._cond = threading.Condition()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                now = time.perf_counter()
                with cond:
                    received.append(body)
                    arrivals.append(now)
                    cond.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @classmethod
    def for_url(cls, url: str) -> PushServer | None:
        """A server for ``url`` if its address belongs to this machine (e.g. the lab)."""
        u = urllib.parse.urlsplit(url)
        try:
            ip = ipaddress.ip_address(u.hostname)
        except ValueError:
            return None
        with socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET) as s:
            try:
                s.bind((str(ip), 0))
            except OSError:
                return None
        return cls(str(ip), u.port or 80, u.path)

    def wait_for(self, token: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while token not in self.tokens:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def wait_count(self, token: str, count: int, timeout: float) -> float | None:
        """perf_counter() at the ``count``-th POST of ``token``, or None on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                times = [t for b, t in zip(self.tokens, self.arrivals, strict=True) if b == token]
                if len(times) >= count:
                    return times[count - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def __enter__(self) -> PushServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)
