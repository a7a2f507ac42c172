"""A local stand-in for the notification server (it speaks the same HTTP): the unit tests
script its answers, the online tests and ``cmdeploy bench`` time the POSTs of a lab relay."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HANG = "hang"


class PushServer:
    """Records POST bodies (device tokens) and when each arrived.

    ``script(n, body)`` gives the answer to request ``n`` (from 0): an HTTP status, or
    ``HANG`` to hold the request until :meth:`release`. The default answers 200."""

    def __init__(
        self,
        script: Callable[[int, str], int | str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/notify",
    ):
        self.script = script or (lambda n, body: 200)
        self.bodies: list[str] = []
        # time.perf_counter() at each POST's arrival, in the order of ``bodies``.
        self.arrivals: list[float] = []
        self.hanging = 0
        self.max_hanging = 0
        # One condition guards the lists and counters and wakes the waits below.
        self.cond = threading.Condition()
        self.released = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length).decode("utf-8")
                now = time.perf_counter()
                with outer.cond:
                    n = len(outer.bodies)
                    outer.bodies.append(body)
                    outer.arrivals.append(now)
                    answer = outer.script(n, body)
                    if answer == HANG:
                        outer.hanging += 1
                        outer.max_hanging = max(outer.max_hanging, outer.hanging)
                    outer.cond.notify_all()
                if answer == HANG:
                    outer.released.wait(60)
                    with outer.cond:
                        outer.hanging -= 1
                    self.close_connection = True
                    return
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family})
        self.httpd = server_class((host, port), Handler)
        self.httpd.daemon_threads = True
        bound = f"[{host}]" if family == socket.AF_INET6 else host
        self.url = f"http://{bound}:{self.httpd.server_address[1]}{path}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @classmethod
    def for_url(cls, url: str) -> PushServer | None:
        """A server for ``url`` if its address belongs to this machine (e.g. the lab's)."""
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
        return cls(host=str(ip), port=u.port or 80, path=u.path)

    def start(self) -> PushServer:
        self.thread.start()
        return self

    def release(self) -> None:
        """Answer the held (``HANG``) requests by closing them, and every later one too."""
        self.released.set()

    def stop(self) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)

    def received(self) -> list[str]:
        with self.cond:
            return list(self.bodies)

    def wait_for(self, token: str, timeout: float) -> bool:
        """Whether ``token`` was POSTed within ``timeout`` seconds."""
        return self.wait_count(token, 1, timeout) is not None

    def wait_count(self, token: str, count: int, timeout: float) -> float | None:
        """perf_counter() at the ``count``-th POST of ``token``, or None on timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                times = [t for b, t in zip(self.bodies, self.arrivals, strict=True) if b == token]
                if len(times) >= count:
                    return times[count - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def __enter__(self) -> PushServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
