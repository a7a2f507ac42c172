"""The real filtermail process between smtplib and a stand-in for Postfix's reinject
listener."""

from __future__ import annotations

import shutil
import smtplib
import subprocess
import sys
import threading
from pathlib import Path

from chatmaild.testkit.mailgen import ALICE, BOB
from chatmaild.testkit.procs import free_port, stop_process


class SinkHandler:
    """A stand-in for Postfix's reinject listener that records what it gets."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []
        self.refuse_rcpt: dict[str, str] = {}
        self.refuse_data: str | None = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse_rcpt:
            return self.refuse_rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.refuse_data:
            return self.refuse_data
        self.received.append(
            (envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        )
        return "250 2.0.0 Ok: queued as TEST"


class Filtermail:
    """One filtermail process; stderr lines are collected by a reader thread."""

    def __init__(self, tmp_path: Path, mode: str, reinject_port: int, **overrides) -> None:
        self.port = free_port()
        self.mode = mode
        self.mailboxes = tmp_path / "mailboxes"
        settings = {
            "mail_domain": "example.org",
            "mailboxes_dir": str(self.mailboxes),
            "filtermail_smtp_port": self.port,
            "filtermail_smtp_port_incoming": self.port,
            "postfix_reinject_port": reinject_port,
            "postfix_reinject_port_incoming": reinject_port,
            "postfix_reinject_port_local": reinject_port,
        }
        settings.update(overrides)
        ini = tmp_path / f"chatmail-{mode}.ini"
        ini.write_text("[params]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        script = shutil.which("filtermail", path=str(Path(sys.executable).parent))
        cmd = [script] if script else [sys.executable, "-m", "chatmaild.filtermail.proxy"]
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [*cmd, str(ini), mode], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self._ready.wait(30) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("filtermail did not start:\n" + "\n".join(self.lines))

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
            if "entering serving loop" in line:
                self._ready.set()
        self._ready.set()

    def logged(self, text: str) -> bool:
        """Whether ``text`` is (or within a few seconds becomes) a line of stderr."""
        with self._changed:
            return self._changed.wait_for(lambda: text in self.lines, timeout=10)

    def stop(self) -> None:
        stop_process(self.proc)
        self._reader.join(10)

    def send(self, data: bytes, mail_from: str = ALICE, rcpts=(BOB,), **kw):
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
            return client.sendmail(mail_from, list(rcpts), data, **kw)

    def account(self, addr: str) -> Path:
        """Create the account ``addr`` (its password file is what makes it exist)."""
        maildir = self.mailboxes / addr
        maildir.mkdir(parents=True, exist_ok=True)
        (maildir / "password").write_text("{SHA512-CRYPT}$6$x$" + "x" * 86)
        return maildir

    def enforce(self, addr: str) -> None:
        (self.account(addr) / "enforceE2EEincoming").touch()


def rcpt_reply(fm: Filtermail, rcpt: str, mail_from: str = "x@example.net") -> tuple[int, bytes]:
    """The reply of ``fm`` to RCPT TO ``rcpt`` (after EHLO and MAIL FROM)."""
    with smtplib.SMTP("127.0.0.1", fm.port, timeout=30) as client:
        client.ehlo()
        assert client.mail(mail_from)[0] == 250
        return client.rcpt(rcpt)
