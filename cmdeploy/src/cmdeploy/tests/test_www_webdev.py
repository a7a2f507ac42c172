"""``cmdeploy webdev``: serves the page, rebuilds on change, the open page reloads itself."""

from __future__ import annotations

import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from chatmaild.config import render_initial_config
from chatmaild.testkit.procs import stop_process
from chatmaild.testkit.waiting import wait_until

from cmdeploy.tests.www_browser import CHROMIUM, Chromium
from cmdeploy.website.build import REPO_WWW
from cmdeploy.website.webdev import VERSION_PATH

START_TIMEOUT = 30
# The command promises a rebuild within a second; the poll allows for a loaded test machine.
REBUILD_WAIT = 5


class Webdev:
    """A running ``cmdeploy webdev`` on a temp copy of www/src."""

    def __init__(self, tmp_path: Path):
        self.src = Path(shutil.copytree(REPO_WWW / "src", tmp_path / "www" / "src"))
        self.build = tmp_path / "www" / "build"
        self.ini = tmp_path / "chatmail.ini"
        self.ini.write_text(render_initial_config("chat.example.org"))
        cmd = [sys.executable, "-m", "cmdeploy.cli", "--config", str(self.ini), "webdev"]
        cmd += ["--src", str(self.src), "--build", str(self.build), "--port", "0", "--no-open"]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        # drain the pipe for the whole run, so the server never blocks on a full pipe
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._wait_for_url()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            m = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
            if m:
                return m.group(1)
        raise AssertionError(f"webdev did not start serving: {''.join(self.output)}")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return r.read().decode()

    def wait_until_served(self, path: str, text: str) -> str:
        def page_with_text() -> str | None:
            page = self.get(path)
            return page if text in page else None

        return wait_until(page_with_text, f"{text!r} in {path}", REBUILD_WAIT, interval=0.1)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc.stdout.close()


@pytest.fixture
def webdev(tmp_path):
    dev = Webdev(tmp_path)
    yield dev
    dev.stop()


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_webdev_serves_the_built_page_on_localhost(webdev):
    index = webdev.get("index.html")
    assert "<title>chat.example.org · home</title>" in index
    assert webdev.get("robots.txt").startswith("#")
    assert (webdev.build / "qr-chatmail-invite-chat.example.org.png").is_file()
    # pages built by webdev carry the reload script, pointing at a version the server knows
    build_id = webdev.get(VERSION_PATH.lstrip("/"))
    assert f'data-webdev-build="{build_id}"' in index


def test_edit_in_src_is_served_after_rebuild(webdev):
    append(webdev.src / "index.md", "\nFreshly-edited-paragraph\n")
    page = webdev.wait_until_served("index.html", "Freshly-edited-paragraph")
    assert "<p>Freshly-edited-paragraph</p>" in page


def test_config_change_is_served_after_rebuild(webdev):
    append(webdev.ini, "delete_mails_after = 11\n")
    page = webdev.wait_until_served("info.html", "11 days at most")
    assert "11 days at most" in page


def test_broken_source_keeps_last_good_page_until_fixed(webdev):
    info = webdev.src / "info.md"
    good = info.read_text()
    info.write_text(good + "\n{{ no_such_variable }}\n")
    wait_until(lambda: any("build failed" in line for line in webdev.output),
               lambda: f"'build failed' in webdev's output: {''.join(webdev.output)}",
               REBUILD_WAIT, interval=0.1)  # fmt: skip
    assert any("no_such_variable" in line for line in webdev.output)
    assert "How chat.example.org works" in webdev.get("info.html")
    info.write_text(good + "\nRepaired-again\n")
    assert "Repaired-again" in webdev.wait_until_served("info.html", "Repaired-again")


@pytest.mark.skipif(CHROMIUM is None, reason="needs the Debian package chromium")
def test_open_page_reloads_itself_after_an_edit(webdev, tmp_path):
    browser = Chromium(tmp_path / "browser")
    try:
        page = browser.new_page()
        page.navigate(webdev.url + "info.html")
        # a mark that only survives if the page is not reloaded
        page.evaluate("window.notReloaded = true")
        append(webdev.src / "info.md", "\nLive-reload-marker\n")
        # mid-reload the new document may have no body yet
        shown = "document.body ? document.body.innerText : ''"
        wait_until(lambda: "Live-reload-marker" in page.evaluate(shown),
                   "the page to show the edit", REBUILD_WAIT, interval=0.1)  # fmt: skip
        assert page.evaluate("window.notReloaded === undefined")
        assert page.errors == []
        page.close()
    finally:
        browser.close()
