"""A local stand-in for the notification server, answering as a test scripts it."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HANG = "hang"


class PushServer:
    """Records POST bodies; ``script(n, body)`` gives the answer to request ``n`` (from 0):
    an HTTP status, or ``HANG`` to hold the request until :meth:`release`."""

    def __init__(self, script=None):
        self.script = script or (lambda n, body: 200)
        self.bodies: list[str] = []
        self.hanging = 0
        self.max_hanging = 0
        self.lock = threading.Lock()
        self.released = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length).decode("utf-8")
                with outer.lock:
                    n = len(outer.bodies)
                    outer.bodies.append(body)
                    answer = outer.script(n, body)
                    if answer == HANG:
                        outer.hanging += 1
                        outer.max_hanging = max(outer.max_hanging, outer.hanging)
                if answer == HANG:
                    outer.released.wait(60)
                    with outer.lock:
                        outer.hanging -= 1
                    self.close_connection = True
                    return
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/notify"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> PushServer:
        self.thread.start()
        return self

    def release(self) -> None:
        self.released.set()

    def stop(self) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)

    def received(self) -> list[str]:
        with self.lock:
            return list(self.bodies)

    def __enter__(self) -> PushServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_until(check, what: str, timeout: float = 20.0) -> None:
    """Poll ``check`` until true; a bounded wait, never a timing assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def connect_unix(path, timeout: float = 20.0) -> socket.socket:
    """Connect to a service's unix socket; the file exists a moment before listen()."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            return s
        except (ConnectionRefusedError, FileNotFoundError):
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
