"""Headless Chromium driven over the DevTools protocol, for the web page tests.

A page records console errors, uncaught exceptions and failed loads, takes full-page
screenshots at a given viewport and evaluates JavaScript.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import websocket
from chatmaild.testkit.procs import stop_process
from chatmaild.testkit.waiting import wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ZBARIMG = shutil.which("zbarimg")
REPO = Path(__file__).resolve().parents[4]
ARTIFACTS = REPO / "test-artifacts" / "www"

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]
START_TIMEOUT = 30


class Chromium:
    """One headless browser process with a fresh profile under ``tmp_dir``."""

    def __init__(self, tmp_dir: Path):
        self.tmp_dir = tmp_dir
        self.profile = tmp_dir / "chromium-profile"
        self.profile.mkdir(parents=True)
        self.log_path = tmp_dir / "chromium.log"
        self._log = open(self.log_path, "wb")
        # The crash handler detaches from the browser; with HOME in tmp_dir its command line
        # names tmp_dir, which is how close() finds it, and it writes nothing to the real HOME.
        env = {**os.environ, "HOME": str(tmp_dir), "XDG_CONFIG_HOME": str(tmp_dir / "config")}
        self.proc = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            self.port = self._wait_for_port()
        except BaseException:
            self.close()
            raise

    def _wait_for_port(self) -> int:
        port_file = self.profile / "DevToolsActivePort"

        def port() -> int | None:
            try:
                return int(port_file.read_text().split()[0])
            except (FileNotFoundError, IndexError, ValueError):
                return None

        what = f"chromium's DevTools port (see {self.log_path})"
        return wait_until(port, what, START_TIMEOUT, interval=0.05, proc=self.proc)

    def new_page(self) -> Page:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT"
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            target = json.load(r)
        return Page(target["webSocketDebuggerUrl"])

    def _helper_pids(self) -> list[int]:
        """Processes of this browser, found by the temp dir in their command line."""
        marker = str(self.tmp_dir).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.proc.pid:
                continue
            try:
                if marker in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids

    def close(self) -> None:
        helpers = self._helper_pids()
        stop_process(self.proc)
        for pid in helpers + self._helper_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()


class Page:
    """One tab; every console error, exception and failed request lands in ``errors``."""

    def __init__(self, ws_url: str):
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self._next_id = 0
        self.events: list[dict] = []
        self.errors: list[str] = []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")

    def send(self, method: str, **params) -> dict:
        self._next_id += 1
        my_id = self._next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = self._recv()
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def _recv(self) -> dict:
        msg = json.loads(self.ws.recv())
        if "method" in msg:
            self._note(msg)
        return msg

    def _note(self, event: dict) -> None:
        self.events.append(event)
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            self.errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            self.errors.append(f"exception: {params['exceptionDetails'].get('text')}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            self.errors.append(f"log: {entry.get('text')} {entry.get('url', '')}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            self.errors.append(f"load failed: {params.get('errorText')}")

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        """The next ``method`` event (from now on)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self._recv()
            if msg.get("method") == method:
                return msg.get("params", {})
        raise TimeoutError(f"no {method} within {timeout}s")

    def navigate(self, url: str) -> None:
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise RuntimeError(f"navigating to {url}: {result['errorText']}")
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def set_viewport(self, width: int, height: int, mobile: bool, scale: float = 1) -> None:
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=scale,
            mobile=mobile,
        )
        # screenshots then cover exactly the page width, without a scrollbar beside it
        self.send("Emulation.setScrollbarsHidden", hidden=True)
        # one frame, so that layout reflects the new width before anyone measures it
        self.evaluate("new Promise(r => requestAnimationFrame(() => r(true)))")

    def screenshot(self, path: Path) -> Path:
        """The whole page, not only the viewport, as PNG."""
        metrics = self.send("Page.getLayoutMetrics")["cssContentSize"]
        shot = self.send(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={
                "x": 0,
                "y": 0,
                "width": metrics["width"],
                "height": metrics["height"],
                "scale": 1,
            },
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        self.ws.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


class StaticServer:
    """Serves a folder on 127.0.0.1 at a free port, like nginx serves the built page."""

    def __init__(self, folder: Path):
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def decode_qr(png: Path) -> list[str]:
    """Every QR code zbarimg finds in an image."""
    out = subprocess.run(
        [ZBARIMG, "--quiet", "--raw", "-Sdisable", "-Sqrcode.enable", str(png)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.splitlines()
