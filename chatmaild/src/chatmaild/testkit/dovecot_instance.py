"""A throw-away Debian Dovecot on loopback, wired to our dict services over unix sockets.

Used by the tests and by ``bench/``. Everything lives in one directory;
``stop()`` ends every process it started, by PID.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from chatmaild.config import Config, read_config, render_initial_config
from chatmaild.testkit.config import DOMAIN, settings
from chatmaild.testkit.procs import free_port
from chatmaild.testkit.waiting import wait_until

# prctl(2): the signal a child gets when the thread that started it dies.
PR_SET_PDEATHSIG = 1


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


DOVECOT_CONF = """\
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
auth_failure_delay = {auth_failure_delay}
default_internal_user = dovecot
default_login_user = dovenull
# The relay uses vmail; tests use nobody (our services run as root and hand
# new maildirs to the owner of the mailboxes directory).
mail_uid = nobody
mail_gid = nogroup
default_client_limit = 20000
mail_location = maildir:{mailboxes_dir}/%u
imap_capability = +XDELTAPUSH XCHATMAIL

haproxy_trusted_networks = 127.0.0.1
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  # As the relay's port-443 listener: the client's IP comes in a PROXY protocol header.
  inet_listener imap_haproxy {{
    address = 127.0.0.1
    port = {haproxy_port}
    haproxy = yes
  }}
  service_count = 0
  process_min_avail = 2
  vsz_limit = 1G
}}
service imap {{
  process_limit = 10000
  # As deployed (dovecot.conf.j2): one session per imap process, so a bench of logins
  # pays for a process start each, as on the relay.
  service_count = 1
  process_min_avail = 4
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp_port}
  }}
}}
{anvil}passdb {{
  driver = dict
  args = {d}/auth.conf
}}
userdb {{
  driver = dict
  args = {d}/auth.conf
}}
protocol imap {{
  mail_plugins = $mail_plugins last_login
  # Default 10: several devices of one user behind one NAT would be refused.
  mail_max_userip_connections = 100
}}
plugin {{
  last_login_dict = proxy:{lastlogin_socket}:lastlogin
  last_login_precision = s
}}
"""

# Without auth_penalty: tests log in and fail hundreds of times from 127.0.0.1, and
# Dovecot's per-IP penalty would slow every later login of the module by seconds.
NO_PENALTY_CONF = """\
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
"""

# Appended to DOVECOT_CONF; a repeated protocol/plugin section adds to the first one.
METADATA_CONF = """
mail_attribute_dict = proxy:{metadata_socket}:metadata
protocol imap {{
  imap_metadata = yes
}}
"""

PUSH_CONF = """
protocol lmtp {{
  mail_plugins = $mail_plugins mail_lua notify push_notification push_notification_lua
}}
plugin {{
  push_notification_driver = lua:file={lua}
}}
"""

AUTH_CONF = """\
uri = proxy:{auth_socket}:auth
iterate_disable = no
iterate_prefix = userdb/
default_pass_scheme = plain
password_key = passdb/%Ew"%Eu"%E{{rip}}
user_key = userdb/%Eu
"""


def _end_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process dies, even by SIGKILL or a
    timeout, so that no Dovecot or service of a killed test run is left behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class DovecotInstance:
    """Dovecot + doveauth + lastlogin in ``directory``."""

    def __init__(
        self,
        directory: Path | None = None,
        ini_overrides: dict | None = None,
        *,
        metadata: bool = False,
        push_lua: Path | None = None,
        auth_penalty: bool = False,
        auth_failure_delay: str = "0",
    ):
        """``metadata`` adds chatmail-metadata as the IMAP METADATA dict; ``push_lua`` also
        loads that push_notification_lua script into LMTP. The relay keeps Dovecot's per-IP
        ``auth_penalty`` and ``auth_failure_delay = 2s``; tests switch both off."""
        # Dovecot's mail user must traverse every parent directory, which pytest's
        # private tmp dirs (0700) do not allow; by default we use our own under /tmp.
        self.owns_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="chatmail-dovecot-"))
        self.imap_port = free_port()
        self.lmtp_port = free_port()
        self.haproxy_port = free_port()
        self.auth_socket = self.dir / "doveauth.socket"
        self.lastlogin_socket = self.dir / "lastlogin.socket"
        self.metadata = metadata or push_lua is not None
        self.push_lua = push_lua
        self.auth_penalty = auth_penalty
        self.auth_failure_delay = auth_failure_delay
        self.metadata_socket = self.dir / "metadata.socket"
        self.ini_path = self.dir / "chatmail.ini"
        self.overrides = settings(self.dir, **(ini_overrides or {}))
        self.mailboxes_dir = Path(self.overrides["mailboxes_dir"])
        self.nocreate_file = Path(self.overrides["nocreate_file"])
        self.procs: list[subprocess.Popen] = []
        self.services: dict[str, tuple[subprocess.Popen, Path]] = {}
        self.logs: dict[str, Path] = {}

    @property
    def config(self) -> Config:
        return read_config(self.ini_path)

    def start(self) -> DovecotInstance:
        if not shutil.which("dovecot"):
            raise RuntimeError(
                "dovecot is not installed: apt-get install dovecot-imapd dovecot-lmtpd"
            )
        # Dovecot's unprivileged processes must reach the sockets and the config.
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        self.mailboxes_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.mailboxes_dir, "nobody", "nogroup")
        self.ini_path.write_text(render_initial_config(DOMAIN, self.overrides))
        try:
            self._start_service("doveauth", self.auth_socket)
            self._start_service("lastlogin", self.lastlogin_socket)
            if self.metadata:
                self._start_service("metadata", self.metadata_socket)
            fmt = dict(
                d=self.dir,
                mailboxes_dir=self.mailboxes_dir,
                imap_port=self.imap_port,
                lmtp_port=self.lmtp_port,
                haproxy_port=self.haproxy_port,
                auth_socket=self.auth_socket,
                lastlogin_socket=self.lastlogin_socket,
                auth_failure_delay=self.auth_failure_delay,
                anvil="" if self.auth_penalty else NO_PENALTY_CONF,
            )
            (self.dir / "auth.conf").write_text(AUTH_CONF.format(**fmt))
            conf = self.dir / "dovecot.conf"
            conf.write_text(DOVECOT_CONF.format(**fmt) + self._extra_conf())
            proc = self._spawn("dovecot", ["dovecot", "-F", "-c", str(conf)])
            wait_until(lambda: _port_open(self.imap_port), "dovecot IMAP port", 15, proc=proc)
        except BaseException:
            self.stop()
            raise
        return self

    def _extra_conf(self) -> str:
        """Settings of the optional metadata and push parts ('' when they are off)."""
        parts = []
        if self.metadata:
            parts.append(METADATA_CONF.format(metadata_socket=self.metadata_socket))
        if self.push_lua is not None:
            # Mail processes run as nobody and must be able to read the script.
            lua = self.dir / "push_notification.lua"
            shutil.copyfile(self.push_lua, lua)
            lua.chmod(0o644)
            parts.append(PUSH_CONF.format(lua=lua))
        return "".join(parts)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        logfile = self.dir / f"{name}.stderr"
        self.logs[name] = logfile
        with open(logfile, "ab") as err:
            proc = subprocess.Popen(argv, stdout=err, stderr=err, start_new_session=True,
                                    preexec_fn=_end_with_parent)  # fmt: skip
        self.procs.append(proc)
        return proc

    def _start_service(self, name: str, sock: Path) -> None:
        env_argv = [sys.executable, "-m", f"chatmaild.{name}", str(sock), str(self.ini_path)]
        proc = self._spawn(name, env_argv)
        self.services[name] = (proc, sock)
        wait_until(sock.exists, f"{name} socket", 15, proc=proc)
        sock.chmod(0o666)

    def signal_service(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to our service ``name`` (doveauth, lastlogin, metadata); SIGKILL
        waits for its end and leaves its socket file behind, as a crash does."""
        proc, _ = self.services[name]
        proc.send_signal(sig)
        if sig == signal.SIGKILL:
            proc.wait(10)

    def restart_service(self, name: str) -> None:
        """Start service ``name`` again after :meth:`signal_service` ended it."""
        proc, sock = self.services[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        # A socket file left by the old process must not count as the new one's.
        sock.unlink(missing_ok=True)
        self._start_service(name, sock)

    def login_from(self, client_ip: str, addr: str, password: str) -> bool:
        """IMAP LOGIN through the PROXY protocol listener, as if from ``client_ip``."""
        family = "TCP6" if ":" in client_ip else "TCP4"
        server_ip = "::1" if family == "TCP6" else "127.0.0.1"
        # PROXY protocol v1 (haproxy's proxy-protocol.txt §2.1): one line before the data.
        header = f"PROXY {family} {client_ip} {server_ip} 40000 143\r\n"
        quoted = password.replace("\\", "\\\\").replace('"', '\\"')
        with socket.create_connection(("127.0.0.1", self.haproxy_port), timeout=60) as sock:
            sock.sendall(header.encode())
            f = sock.makefile("rb")
            f.readline()  # greeting
            sock.sendall(f'a LOGIN "{addr}" "{quoted}"\r\n'.encode())
            while True:
                line = f.readline()
                if not line or line.startswith(b"a "):
                    break
            ok = line.startswith(b"a OK")
            if line:
                sock.sendall(b"b LOGOUT\r\n")
            return ok

    def log_text(self, name: str) -> str:
        path = self.logs.get(name) or self.dir / name
        return path.read_text(errors="replace") if path.exists() else ""

    def dovecot_log(self) -> str:
        return self.log_text("dovecot.log")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
        if self.owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> DovecotInstance:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
