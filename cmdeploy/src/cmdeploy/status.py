"""``cmdeploy status``: whether every service of the relay answers, and what needs attention.

A unit that systemd calls active is not enough (Debian's Postfix unit stays "active" with
no master running, lab-facts 18): each component is also asked on its port or socket, by
the probes in :mod:`cmdeploy.status_probe`, run on the relay in one SSH command.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from cmdeploy.cmdline import add_ssh_host, fail, load_config, remote_for
from cmdeploy.relaypaths import SASL_SOCKET
from cmdeploy.remote import RemoteError
from cmdeploy.services.deployer import DAEMONS

PROBE_SOURCE = Path(__file__).with_name("status_probe.py")
# Fixed paths of config files that are not chatmail.ini keys.
OPENDKIM_SOCKET = "/var/spool/postfix/opendkim/opendkim.sock"  # opendkim/opendkim.conf.j2
FCGIWRAP_SOCKET = "/run/fcgiwrap.socket"  # nginx/nginx.conf.j2, Debian's fcgiwrap.socket
SMTP_FROM_443 = 8465  # postfix/master.cf.j2: what nginx hands ALPN "smtp" to
MTAIL_PORT = 3903  # mtail/chatmail-mtail.service.j2
LOCAL = "127.0.0.1"


@dataclass(frozen=True)
class Component:
    """What the operator reads as one line: a systemd unit and the checks of its answers."""

    name: str
    unit: str
    checks: tuple[dict, ...] = ()


def dict_socket(daemon: str) -> str:
    """The socket path a chatmaild dict daemon is started with (services/deployer.py)."""
    return DAEMONS[daemon][0].split()[1]


def components(config) -> list[Component]:
    """Every long-running part of the relay and how to tell that it answers."""
    d = config.mail_domain

    def tcp(label, kind, port, host=LOCAL, **extra):
        return {"label": label, "kind": kind, "host": host, "port": port, "server_name": d, **extra}

    def unix(label, kind, path, **extra):
        return {"label": label, "kind": kind, "path": path, **extra}

    comps = [
        Component("postfix", "postfix@-", (
            tcp("smtp 25", "smtp", 25),
            tcp("submission 587", "smtp", 587),
            tcp("smtps 465", "smtp", 465, tls=True),
            tcp(f"smtps from 443 ({SMTP_FROM_443})", "smtp", SMTP_FROM_443, tls=True, proxy=True),
            tcp(f"reinject {config.postfix_reinject_port}", "smtp", config.postfix_reinject_port),
            tcp(f"reinject incoming {config.postfix_reinject_port_incoming}", "smtp",
                config.postfix_reinject_port_incoming),
            tcp(f"reinject local {config.postfix_reinject_port_local}", "smtp",
                config.postfix_reinject_port_local),
        )),
        Component("dovecot", "dovecot", (
            tcp("imaps 993", "imap", 993, tls=True),
            tcp("imap 143", "imap", 143),
        )),
        Component("opendkim", "opendkim", (unix("milter socket", "milter", OPENDKIM_SOCKET),)),
        Component("nginx", "nginx", (
            tcp("https 443", "http", 443, tls=True),
            tcp("http 80", "http", 80),
        )),
        Component("unbound", "unbound", (tcp("dns 53", "dns", 53),)),
        # Lookups of names no account can have: answered without touching any mailbox.
        Component("doveauth", "doveauth", (
            unix("dict socket", "dict", dict_socket("doveauth"), dict="auth",
                 request="Lshared/userdb/chatmail-status-probe"),
        )),
        Component("lastlogin", "lastlogin", (
            unix("dict socket", "dict", dict_socket("lastlogin"), dict="lastlogin",
                 request="I0\t1\tshared/chatmail-status-probe"),
        )),
        Component("chatmail-metadata", "chatmail-metadata", (
            unix("dict socket", "dict", dict_socket("chatmail-metadata"), dict="metadata",
                 request="Lshared/chatmail-status-probe"),
        )),
        Component("filtermail", "filtermail", (
            tcp(f"smtp {config.filtermail_smtp_port}", "smtp", config.filtermail_smtp_port),
        )),
        Component("filtermail-incoming", "filtermail-incoming", (
            tcp(f"smtp {config.filtermail_smtp_port_incoming}", "smtp",
                config.filtermail_smtp_port_incoming),
            # /mxdeliv answers a GET with 405: the HTTP side is up.
            tcp(f"http {config.filtermail_http_port_incoming}", "http",
                config.filtermail_http_port_incoming, url="/mxdeliv"),
        )),
        # Its LMTP greeting and LHLO reply: Postfix's default_transport answers.
        Component("chatmail-mxtransport", "chatmail-mxtransport", (
            tcp(f"lmtp {config.mxdeliv_transport_port}", "lmtp", config.mxdeliv_transport_port),
        )),
        # It only relays Dovecot's auth protocol: accepting a connection is its answer.
        Component("chatmail-saslproxy", "chatmail-saslproxy",
                  (unix("socket", "connect", SASL_SOCKET),)),
        Component("coturn", "coturn", (tcp("stun udp 3478", "stun", 3478),)),
        Component("echobot", "echobot"),
        # fcgiwrap itself starts per request of /new: its socket must answer.
        Component("fcgiwrap", "fcgiwrap.socket", (unix("socket", "fastcgi", FCGIWRAP_SOCKET),)),
    ]  # fmt: skip
    if config.mtail_address:
        host = LOCAL if config.mtail_address in ("0.0.0.0", "::") else config.mtail_address
        comps.append(Component("mtail", "chatmail-mtail", (
            tcp(f"metrics {MTAIL_PORT}", "http", MTAIL_PORT, host=host, url="/metrics"),
        )))  # fmt: skip
    comps += [
        Component("chatmail-expire.timer", "chatmail-expire.timer"),
        Component("chatmail-metrics.timer", "chatmail-metrics.timer"),
    ]
    return comps


# Every TLS port a client or relay uses, with the protocol of its STARTTLS if it has one:
# each must serve the certificate file (a renewal that one service did not pick up shows).
SERVED_PORTS = [[443, ""], [465, ""], [587, "smtp"], [993, ""], [143, "imap"], [25, "smtp"]]


def probe_spec(comps: list[Component], cert: str | None = None, server_name: str = "") -> dict:
    """The JSON argument of the probe script for these components."""
    checks = [{"component": c.name, **check} for c in comps for check in c.checks]
    spec: dict = {"units": [c.unit for c in comps], "checks": checks}
    if cert:
        spec["cert"] = cert
        spec["served"] = SERVED_PORTS
        spec["server_name"] = server_name
    return spec


def probe_command(spec: dict) -> str:
    """The shell command that runs the probes on the relay."""
    return f"python3 -c {shlex.quote(PROBE_SOURCE.read_text())} {shlex.quote(json.dumps(spec))}"


@dataclass
class CheckResult:
    label: str
    ok: bool
    seen: str


@dataclass
class Report:
    """The probe script's output, parsed."""

    units: dict[str, str] = field(default_factory=dict)
    checks: dict[str, list[CheckResult]] = field(default_factory=dict)
    extras: dict[str, str] = field(default_factory=dict)
    served: dict[int, str] = field(default_factory=dict)


def parse(out: str) -> Report:
    """Parse the probe script's lines; unknown lines are ignored."""
    report = Report()
    for line in out.splitlines():
        kind, *fields = line.split("\t")
        if kind == "unit" and len(fields) == 2:
            report.units[fields[0]] = fields[1]
        elif kind == "check" and len(fields) == 4:
            comp, label, verdict, seen = fields
            report.checks.setdefault(comp, []).append(CheckResult(label, verdict == "ok", seen))
        elif kind in ("cert", "queue", "version") and len(fields) == 1:
            report.extras[kind] = fields[0]
        elif kind == "served" and len(fields) == 2:
            report.served[int(fields[0])] = fields[1]
    return report


@dataclass(frozen=True)
class Verdict:
    """One component: ``state`` is "active" only when its unit is active and all answer."""

    name: str
    state: str
    checks: tuple[CheckResult, ...]
    problem: str | None

    @property
    def down(self) -> bool:
        return self.problem is not None


def verdicts(comps: list[Component], report: Report) -> list[Verdict]:
    out = []
    for c in comps:
        unit_state = report.units.get(c.unit, "unknown")
        results = tuple(report.checks.get(c.name, ()))
        failed = [r for r in results if not r.ok]
        missing = len(results) < len(c.checks)
        if unit_state != "active":
            state, problem = unit_state, f"unit {c.unit} is {unit_state}"
        elif failed or missing:
            state = "not-answering"
            problem = "; ".join(f"{r.label}: {r.seen}" for r in failed) or "not probed"
        else:
            state, problem = "active", None
        out.append(Verdict(c.name, state, results, problem))
    return out


def render(results: list[Verdict]) -> str:
    """The table: a line per component, indented below it a line per answer checked."""
    lines = []
    for v in results:
        lines.append(f"  {v.name:24} {v.state}")
        for r in v.checks:
            lines.append(f"      {r.label:30} {'ok' if r.ok else 'DOWN':5} {r.seen}")
    return "\n".join(lines)


def down_message(results: list[Verdict]) -> str | None:
    down = [v for v in results if v.down]
    if not down:
        return None
    return "not answering: " + ", ".join(f"{v.name} ({v.problem})" for v in down)


def served_lines(cert: str | None, served: dict[int, str]) -> str:
    """Which ports serve the certificate file, and each one that serves something else."""
    same = [str(p) for p, expiry in served.items() if cert and expiry == cert]
    lines = [f"  served on ports {', '.join(same)}"] if same else []
    for port, expiry in served.items():
        if expiry != cert:
            if expiry.startswith("not served"):
                lines.append(f"  port {port}: {expiry}")
            else:
                lines.append(f"  port {port} serves a certificate expiring {expiry}")
    return "\n".join(lines)


def status_cmd(args) -> int:
    config = load_config(args)
    remote = remote_for(args, config)
    print(f"chatmail domain: {config.mail_domain}")
    if config.has_privacy_contacts:
        print("privacy settings: present")
    else:
        print("no privacy settings")
    comps = components(config)
    try:
        out = remote.run(
            probe_command(
                probe_spec(comps, cert=str(config.tls_cert_path), server_name=config.mail_domain)
            )
        ).stdout
    except RemoteError as e:
        return fail(str(e))
    report = parse(out)
    results = verdicts(comps, report)
    print(render(results))
    cert = report.extras.get("cert")
    print(f"certificate expires: {cert or 'unknown (no certificate?)'}")
    print(served_lines(cert, report.served))
    print(f"mail queue: {report.extras.get('queue', '?')} message(s)")
    print(f"deployed version: {report.extras.get('version') or 'unknown'}")
    from cmdeploy.dovecot.build import SSHShell, status_line

    print(status_line(SSHShell(remote)))
    problem = down_message(results)
    if problem:
        return fail(problem)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "status", help="check that every service of the relay answers; certificate and queue"
    )
    add_ssh_host(p)
    p.set_defaults(func=status_cmd)
