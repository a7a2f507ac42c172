"""chatmaild on the relay: a venv with the wheel built by ``cmdeploy run``, the config,
systemd units for each service, timers for expiry and metrics, and the ``/new`` CGI."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pyinfra import host
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server, systemd

from cmdeploy.deployer_base import Deployer, DeployError
from cmdeploy.relaypaths import (
    DIST,
    DOVEAUTH_SOCKET,
    DOVECOT_SASL_SOCKET,
    INI,
    LASTLOGIN_SOCKET,
    METADATA_SOCKET,
    SASL_DIR,
    SASL_SOCKET,
    VENV,
)

# Each dict service's socket belongs to a socket unit, which keeps listening while its
# service restarts or is stopped.
SOCKETS = {
    "doveauth": DOVEAUTH_SOCKET,
    "lastlogin": LASTLOGIN_SOCKET,
    "chatmail-metadata": METADATA_SOCKET,
}

# name -> (ExecStart arguments after the console script, socket runtime dir or None)
DAEMONS = {
    "doveauth": (f"doveauth {SOCKETS['doveauth']} {{ini}}", None),
    "lastlogin": (f"lastlogin {SOCKETS['lastlogin']} {{ini}}", None),
    "chatmail-metadata": (f"chatmail-metadata {SOCKETS['chatmail-metadata']} {{ini}}", None),
    "filtermail": ("filtermail {ini} outgoing", None),
    "filtermail-incoming": ("filtermail {ini} incoming", None),
    # Postfix's default_transport (postfix/main.cf.j2): remote mail over HTTPS or SMTP.
    "chatmail-mxtransport": ("chatmail-mxtransport {ini}", None),
    # Postfix's SASL path (postfix/master.cf.j2) -> Dovecot's auth (dovecot/dovecot.conf.j2).
    "chatmail-saslproxy": (f"chatmail-saslproxy {SASL_SOCKET} {DOVECOT_SASL_SOCKET}", None),
}  # fmt: skip
TIMERS = {
    "chatmail-expire": ("chatmail-expire {ini} --remove", "*-*-* 00:02:00"),
    "chatmail-metrics": ("chatmail-metrics {ini} /var/lib/chatmail-metrics/metrics", "*:0/5"),
}

MiB = 1024 * 1024
# glibc reads the zone file once instead of checking /etc/localtime at every conversion.
TZ_LINE = "TZ=:/etc/localtime"


def unit_limits(name: str, config) -> dict:
    """MemoryHigh/MemoryMax/TasksMax of a chatmaild unit, for the unit templates.

    The caps are 5-20 times the peak RSS measured in the lab. filtermail buffers the
    messages it gates: its DATA budget is 4 x max_message_size (filtermail/proxy.py) and a
    buffered message costs up to about twice its size while it is parsed and reinjected,
    so MemoryHigh is 192 MiB + 8 x max_message_size (432 MiB for the default 30 MiB) and
    MemoryMax 128 MiB above. Measured: 24 MB idle, 111 MB with six 16 MB messages at once.
    """
    # chatmail-mxtransport holds bodies under the same kind of budget (mxtransport.py).
    if name.startswith("filtermail") or name == "chatmail-mxtransport":
        high = 192 * MiB + 8 * config.max_message_size
        return _limits(high, high + 128 * MiB, 64)
    mib, tasks = UNIT_MEMORY_MIB.get(name, (256, 32))
    return _limits(mib * MiB * 3 // 4, mib * MiB, tasks)


def _limits(high: int, max_: int, tasks: int) -> dict:
    return {"memory_high": f"{high // MiB}M", "memory_max": f"{max_ // MiB}M", "tasks_max": tasks}


# name -> (MemoryMax in MiB, TasksMax) for the units whose memory does not scale with mail.
# Peak RSS measured in the lab (online suite, then 6 concurrent 16 MB messages): doveauth
# 23 MB, lastlogin 21 MB, chatmail-metadata 30 MB (16 dict workers + 12 notifier threads),
# echobot 21 MB + 21 MB (its deltachat-rpc-server, whose tokio runtime starts a thread per
# CPU and more for blocking work), chatmail-expire and chatmail-metrics 15 MB each.
UNIT_MEMORY_MIB = {
    "doveauth": (256, 64),
    "lastlogin": (128, 32),
    "chatmail-metadata": (256, 64),
    "chatmail-expire": (512, 16),
    "chatmail-metrics": (256, 16),
    "echobot": (512, 256),
}


class ServicesDeployer(Deployer):
    name = "chatmaild"
    templates = Path(__file__).parent

    def install(self) -> None:
        apt.packages(name="chatmaild: packages", packages=["python3-venv", "fcgiwrap"])

    def configure(self) -> None:
        wheel, constraints_file = self.options.wheel, self.options.constraints
        if wheel is None or constraints_file is None:
            raise DeployError("no chatmaild wheel to install: deploy with 'cmdeploy run'")
        files.directory(name="chatmaild: dist dir", path=DIST)
        upload = files.put(name="chatmaild: wheel", src=str(wheel), dest=f"{DIST}/{wheel.name}")
        self.track(upload, f"{DIST}/{wheel.name}")
        constraints = _read(constraints_file)
        self.put_text(constraints, f"{DIST}/constraints.txt")
        # What is installed is recorded beside the venv: an upload whose install failed
        # (or was interrupted) is installed by the next run.
        wanted = hashlib.sha256(wheel.read_bytes() + constraints.encode()).hexdigest()
        marker = f"{VENV}/.chatmaild-installed"
        if host.get_fact(Command, f"cat {marker} 2>/dev/null || true") != wanted:
            pip = f"{VENV}/bin/pip install -q --disable-pip-version-check -c {DIST}/constraints.txt"
            self.track(server.shell(
                name="chatmaild: install into venv",
                commands=[
                    f"[ -x {VENV}/bin/python ] || python3 -m venv --copies {VENV}",
                    f"{pip} --force-reinstall --no-deps {DIST}/{wheel.name}",
                    f"{pip} {DIST}/{wheel.name}",
                    f"echo {wanted} > {marker}",
                ],
            ), marker)  # fmt: skip
        self.put_text(_read(self.config.config_path), INI)
        # Login sessions (ssh, an operator's tools) as the reference sets it; the units
        # set TZ themselves (systemd does not read /etc/environment).
        files.line(name="chatmaild: TZ in /etc/environment", path="/etc/environment",
                   line="^TZ=.*$", replace=TZ_LINE, ensure_newline=True)  # fmt: skip
        for name, (args, runtime_dir) in DAEMONS.items():
            self.put_template("daemon.service.j2", f"/etc/systemd/system/{name}.service",
                              description=name, exec_start=f"{VENV}/bin/" + args.format(ini=INI),
                              runtime_dir=runtime_dir, socket_unit=name in SOCKETS,
                              **unit_limits(name, self.config))  # fmt: skip
        for name, path in SOCKETS.items():
            self.put_template("daemon.socket.j2", f"/etc/systemd/system/{name}.socket",
                              description=name, path=path)  # fmt: skip
        for name, (args, when) in TIMERS.items():
            self.put_template("oneshot.service.j2", f"/etc/systemd/system/{name}.service",
                              description=name, exec_start=f"{VENV}/bin/" + args.format(ini=INI),
                              **unit_limits(name, self.config))  # fmt: skip
            self.put_template("timer.j2", f"/etc/systemd/system/{name}.timer",
                              description=name, when=when)  # fmt: skip
        files.directory(name="chatmaild: metrics dir", path="/var/lib/chatmail-metrics",
                        user="vmail", group="vmail", mode="755")  # fmt: skip
        files.directory(name="chatmaild: cgi-bin", path="/usr/lib/cgi-bin")
        # In Postfix's chroot, where smtpd (user postfix) reaches it; vmail's with group
        # postfix (setgid), so the proxy's socket is too.
        files.directory(name="chatmaild: saslproxy dir", path=SASL_DIR, user="vmail",
                        group="postfix", mode="2750")  # fmt: skip
        self.put_text(f"#!{VENV}/bin/python3\nfrom chatmaild.newemail import main\n\nmain()\n",
                      "/usr/lib/cgi-bin/newemail.py", mode="755")  # fmt: skip
        # Not a put_text: a change of fcgiwrap's drop-in needs no restart of the daemons above.
        self._fcgiwrap_unit = files.put(
            name="chatmaild: fcgiwrap restarts after a crash",
            src=str(self.templates / "fcgiwrap-supervise.conf"),
            dest="/etc/systemd/system/fcgiwrap.service.d/chatmail-supervise.conf",
        )

    def _units_changed(self) -> bool:
        fcgiwrap = getattr(self, "_fcgiwrap_unit", None)  # unset when configure did not run
        return self.changed() or bool(fcgiwrap and fcgiwrap.did_change())

    def activate(self) -> None:
        systemd.daemon_reload(name="chatmaild: reload units", _if=self._units_changed)
        for name, path in SOCKETS.items():
            socket_state = host.get_fact(Command, f"systemctl is-active {name}.socket || true")
            if socket_state.strip() != "active":
                # Once, when the service still binds its own socket (deployed before its
                # socket unit existed): stopped first, so that systemd listens on a free path.
                server.shell(name=f"chatmaild: {name}.socket takes over {path}",
                             commands=[f"systemctl stop {name}.service",
                                       f"systemctl start {name}.socket"])  # fmt: skip
            systemd.service(name=f"chatmaild: {name}.socket", service=f"{name}.socket",
                            running=True, enabled=True)  # fmt: skip
        for name in DAEMONS:
            self.check_then_restart(name)
        for name in TIMERS:
            systemd.service(name=f"chatmaild: {name}.timer", service=f"{name}.timer",
                            running=True, enabled=True)  # fmt: skip
        systemd.service(name="chatmaild: fcgiwrap", service="fcgiwrap.socket", running=True, enabled=True)  # fmt: skip


def _read(path) -> str:
    return Path(path).read_text()
