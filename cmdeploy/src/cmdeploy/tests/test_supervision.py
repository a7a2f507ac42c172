"""Supervision: every unit restarts after a crash; ``cmdeploy status`` checks answers.

The unit files and drop-ins are checked as rendered; the probes of ``cmdeploy status``
run here against small local servers, and its verdicts are checked on probe output.
What happens on a relay after a SIGKILL is in tests/lab/test_relay_supervision.py.
"""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from chatmaild.config import parse_config, render_initial_config

from cmdeploy import status, status_probe
from cmdeploy.deployer_base import DeployOptions
from cmdeploy.dovecot.deployer import DovecotDeployer
from cmdeploy.echobot.deployer import EchobotDeployer
from cmdeploy.mtail.deployer import MtailDeployer
from cmdeploy.nginx.deployer import NginxDeployer
from cmdeploy.opendkim.deployer import OpenDKIMDeployer
from cmdeploy.postfix.deployer import PostfixDeployer
from cmdeploy.services.deployer import DAEMONS, ServicesDeployer, unit_limits
from cmdeploy.unbound.deployer import UnboundDeployer

SERVICES_DIR = Path(ServicesDeployer.templates)


def config_with(**settings):
    return parse_config(render_initial_config("chat.example.org", settings))


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file in order; repeated keys kept (systemd semantics)."""
    section, out = "", []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def effective(text: str, section: str, key: str) -> list[str]:
    """The values of ``key`` after systemd's reset rule (an empty assignment clears)."""
    values: list[str] = []
    for sec, k, v in unit_entries(text):
        if sec == section and k == key:
            values = [] if v == "" else [*values, v]
    return values


def assert_restarts_quickly(text: str, restart: str = "always") -> None:
    assert effective(text, "Service", "Restart") == [restart]
    (delay,) = effective(text, "Service", "RestartSec")
    assert float(delay) <= 2
    # A burst of crashes must not leave the unit failed for good.
    assert effective(text, "Unit", "StartLimitIntervalSec") == ["0"]


# Units and drop-ins.


def test_chatmaild_daemons_are_notify_units_that_restart_within_a_second():
    config = config_with()
    d = ServicesDeployer(config, DeployOptions())
    for name in DAEMONS:
        text = d.render("daemon.service.j2", description=name, exec_start="/bin/true",
                        runtime_dir=None, socket_unit=False, **unit_limits(name, config))  # fmt: skip
        assert_restarts_quickly(text)
        assert effective(text, "Service", "Type") == ["notify"], name


def test_echobot_restarts_within_two_seconds():
    config = config_with()
    text = EchobotDeployer(config, DeployOptions()).render(
        "echobot.service.j2", **unit_limits("echobot", config)
    )
    assert_restarts_quickly(text)


def test_mtail_unit_restarts_quickly():
    text = MtailDeployer(config_with(mtail_address="127.0.0.1"), DeployOptions()).render(
        "chatmail-mtail.service.j2"
    )
    assert_restarts_quickly(text)


def test_postfix_dropin_runs_the_master_in_the_foreground():
    text = PostfixDeployer(config_with(), DeployOptions()).render("supervise.conf")
    assert effective(text, "Service", "Type") == ["simple"]
    assert effective(text, "Service", "ExecStart") == ["/usr/sbin/postfix start-fg"]
    assert effective(text, "Service", "ExecReload") == ["/usr/sbin/postfix reload"]
    (ready,) = effective(text, "Service", "ExecStartPost")
    assert 'ss -Hltn "sport = :25"' in ready and "$$(seq 100)" in ready
    # Debian's "postmulti -p stop" is cleared: systemd's SIGTERM reaches the master.
    assert effective(text, "Service", "ExecStop") == []
    assert_restarts_quickly(text)


@pytest.mark.parametrize(
    "deployer,restart",
    [(DovecotDeployer, "always"), (NginxDeployer, "always"), (UnboundDeployer, "always")],
)
def test_stock_units_get_restart_dropins(deployer, restart):
    assert_restarts_quickly(
        deployer(config_with(), DeployOptions()).render("supervise.conf"), restart
    )


def test_opendkim_and_fcgiwrap_dropins():
    text = OpenDKIMDeployer(config_with(), DeployOptions()).render("restart.conf")
    assert_restarts_quickly(text)
    assert effective(text, "Service", "RuntimeMaxSec") == ["1d"]
    # Socket-activated: a clean exit may stay down, the socket starts it on the next request.
    assert_restarts_quickly((SERVICES_DIR / "fcgiwrap-supervise.conf").read_text(), "on-failure")


def test_postfix_dropin_merges_with_debians_unit(tmp_path):
    """systemd-analyze accepts Debian's postfix@.service with the drop-in beside it."""
    debian = Path("/usr/lib/systemd/system/postfix@.service")
    if not (debian.exists() and shutil.which("systemd-analyze")):
        pytest.fail(
            "needs Debian's postfix package and systemd-analyze (scripts/test-packages.txt)"
        )
    (tmp_path / "postfix@.service").write_text(debian.read_text())
    dropin = tmp_path / "postfix@-.service.d"
    dropin.mkdir()
    text = PostfixDeployer(config_with(), DeployOptions()).render("supervise.conf")
    (dropin / "chatmail-supervise.conf").write_text(text)
    unit = tmp_path / "postfix@-.service"
    unit.symlink_to(tmp_path / "postfix@.service")
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    problems = [line for line in out.stderr.splitlines() if "chatmail-supervise" in line]
    assert not problems, out.stderr


# What cmdeploy status checks.


def test_status_checks_every_component_on_the_configured_ports():
    config = config_with(filtermail_smtp_port="11080", filtermail_smtp_port_incoming="11081",
                         postfix_reinject_port="11025", postfix_reinject_port_incoming="11026")  # fmt: skip
    comps = {c.name: c for c in status.components(config)}
    for name in ("postfix", "dovecot", "opendkim", "nginx", "unbound", "doveauth", "lastlogin",
                 "chatmail-metadata", "filtermail", "filtermail-incoming", "fcgiwrap"):  # fmt: skip
        assert comps[name].checks, name
    assert comps["postfix"].unit == "postfix@-"
    ports = {(c.name, ch.get("port")) for c in comps.values() for ch in c.checks}
    for port in (25, 587, 465, 11025, 11026):
        assert ("postfix", port) in ports
    assert ("filtermail", 11080) in ports and ("filtermail-incoming", 11081) in ports
    paths = {ch.get("path") for c in comps.values() for ch in c.checks}
    assert "/run/doveauth/doveauth.socket" in paths
    assert "/run/chatmail-lastlogin/lastlogin.socket" in paths
    assert "mtail" not in comps
    assert "mtail" in {c.name for c in status.components(config_with(mtail_address="127.0.0.1"))}


def probe_output(*lines: str) -> str:
    return "\n".join("\t".join(line.split("|")) for line in lines)


def two_components():
    return [
        status.Component("postfix", "postfix@-", ({"label": "smtp 25"}, {"label": "smtps 465"})),
        status.Component("echobot", "echobot"),
    ]


def test_all_active_and_answering_is_all_well():
    report = status.parse(probe_output(
        "unit|postfix@-|active", "unit|echobot|active",
        "check|postfix|smtp 25|ok|220 x ESMTP", "check|postfix|smtps 465|ok|220 x ESMTP",
        "cert|Jan  1 00:00:00 2030 GMT", "queue|0", "version|abc",
    ))  # fmt: skip
    results = status.verdicts(two_components(), report)
    assert [v.state for v in results] == ["active", "active"]
    assert status.down_message(results) is None
    assert report.extras == {"cert": "Jan  1 00:00:00 2030 GMT", "queue": "0", "version": "abc"}


def test_active_unit_that_does_not_answer_is_named():
    report = status.parse(probe_output(
        "unit|postfix@-|active", "unit|echobot|active",
        "check|postfix|smtp 25|down|[Errno 111] Connection refused",
        "check|postfix|smtps 465|ok|220 x ESMTP",
    ))  # fmt: skip
    results = status.verdicts(two_components(), report)
    assert results[0].state == "not-answering"
    assert status.down_message(results) == (
        "not answering: postfix (smtp 25: [Errno 111] Connection refused)"
    )


def test_stopped_unit_is_named_even_when_nothing_was_probed():
    report = status.parse(probe_output("unit|postfix@-|active", "unit|echobot|failed",
                                       "check|postfix|smtp 25|ok|220", "check|postfix|smtps 465|ok|220"))  # fmt: skip
    results = status.verdicts(two_components(), report)
    assert [v.state for v in results] == ["active", "failed"]
    assert status.down_message(results) == "not answering: echobot (unit echobot is failed)"


def test_missing_probe_results_count_as_down():
    report = status.parse(probe_output("unit|postfix@-|active", "unit|echobot|active",
                                       "check|postfix|smtp 25|ok|220", "garbage line"))  # fmt: skip
    results = status.verdicts(two_components(), report)
    assert results[0].down and results[0].state == "not-answering"


def test_table_has_one_line_per_component_and_indented_answers():
    report = status.parse(probe_output(
        "unit|postfix@-|active", "unit|echobot|inactive",
        "check|postfix|smtp 25|ok|220 x", "check|postfix|smtps 465|down|timed out",
    ))  # fmt: skip
    table = status.render(status.verdicts(two_components(), report))
    # Component lines: two columns; answers indented deeper (what tests/lab parse).
    assert re.findall(r"^  (\S+)\s+(\S+)$", table, re.M) == [
        ("postfix", "not-answering"), ("echobot", "inactive")
    ]  # fmt: skip
    assert re.search(r"^      smtps 465\s+DOWN\s+timed out$", table, re.M)


# The probes themselves, against small local servers.


def serve_once(reply: bytes, family=socket.AF_INET, path: str | None = None, greet=False):
    """A server that sends ``reply`` to its first client: at once (a greeting) or after
    reading the client's request."""
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.bind(path if path else ("127.0.0.1", 0))
    srv.listen(1)

    def run():
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(5)
            if greet:
                conn.sendall(reply)
            else:
                try:
                    conn.recv(65536)
                except OSError:
                    pass
                try:
                    conn.sendall(reply)
                except OSError:  # the client may have hung up already
                    pass
            if reply:  # wait for the client's goodbye; an empty reply hangs up at once
                try:
                    conn.recv(65536)
                except OSError:
                    pass
        srv.close()

    threading.Thread(target=run, daemon=True).start()
    return srv.getsockname()


def test_smtp_probe_wants_a_220_greeting():
    _, port = serve_once(b"220 x ESMTP\r\n", greet=True)
    assert status_probe.run_check({"kind": "smtp", "host": "127.0.0.1", "port": port}) == (
        True, "220 x ESMTP"
    )  # fmt: skip
    _, port = serve_once(b"421 4.3.2 shutting down\r\n", greet=True)
    ok, seen = status_probe.run_check({"kind": "smtp", "host": "127.0.0.1", "port": port})
    assert (ok, seen) == (False, "421 4.3.2 shutting down")


def test_closed_port_is_down_with_the_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ok, seen = status_probe.run_check({"kind": "imap", "host": "127.0.0.1", "port": port})
    assert not ok and "refused" in seen.lower()


def test_http_probe_accepts_statuses_below_500():
    _, port = serve_once(b"HTTP/1.1 301 Moved\r\n\r\n")
    assert status_probe.run_check({"kind": "http", "host": "127.0.0.1", "port": port})[0]
    _, port = serve_once(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
    assert not status_probe.run_check({"kind": "http", "host": "127.0.0.1", "port": port})[0]


def test_dns_verdict_wants_a_reply_to_the_same_query():
    query = status_probe.dns_query("localhost.", 4242)
    assert query[-4:] == struct.pack("!HH", 1, 1) and b"\x09localhost\x00" in query
    reply = struct.pack("!HHHHHH", 4242, 0x8180, 1, 1, 0, 0)
    assert status_probe.dns_verdict(reply, 4242) == (True, "NOERROR, 1 answer(s)")
    assert status_probe.dns_verdict(reply, 4243)[0] is False
    servfail = struct.pack("!HHHHHH", 4242, 0x8182, 1, 0, 0, 0)
    assert status_probe.dns_verdict(servfail, 4242) == (False, "SERVFAIL, 0 answer(s)")


def test_dict_probe_against_a_real_dict_service(tmp_path):
    import asyncio

    from chatmaild.dictproxy import DictHandler, DictProxyServer

    path = tmp_path / "d.socket"
    server = DictProxyServer(DictHandler(), path, workers=1)
    loop = asyncio.new_event_loop()
    ready = asyncio.Event()
    task = loop.create_task(server.serve(ready))

    def run():
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if path.exists():
                break
            threading.Event().wait(0.05)
        check = {"kind": "dict", "path": str(path), "dict": "x", "request": "I0\t1\tshared/none"}
        assert status_probe.run_check(check) == (True, "end of rows")
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(5)
        server.executor.shutdown()


def test_milter_probe_wants_option_negotiation(tmp_path):
    path = str(tmp_path / "milter.sock")
    serve_once(status_probe.milter_packet(b"O", struct.pack("!III", 6, 0, 0)), socket.AF_UNIX, path)
    assert status_probe.run_check({"kind": "milter", "path": path}) == (
        True, "option negotiation answered"
    )  # fmt: skip
    path2 = str(tmp_path / "other.sock")
    serve_once(b"", socket.AF_UNIX, path2)
    assert status_probe.run_check({"kind": "milter", "path": path2})[0] is False


def test_fastcgi_probe_reads_the_first_record(tmp_path):
    path = str(tmp_path / "fcgi.sock")
    body = b"Status: 403 Forbidden\r\nContent-type: text/plain\r\n\r\n"
    serve_once(struct.pack("!BBHHBx", 1, 6, 1, len(body), 0) + body, socket.AF_UNIX, path)
    assert status_probe.run_check({"kind": "fastcgi", "path": path}) == (
        True, "Status: 403 Forbidden"
    )  # fmt: skip


def test_probe_script_runs_as_sent_to_the_relay():
    """The exact command status sends over SSH, run here: quoting and output format."""
    assert shutil.which("python3")
    _, port = serve_once(b"220 local ESMTP\r\n", greet=True)
    comps = [
        status.Component("fake", "chatmail-no-such-unit", (
            {"label": "smtp", "kind": "smtp", "host": "127.0.0.1", "port": port},
            {"label": "dns", "kind": "dns", "host": "127.0.0.1", "port": 9},
        )),
    ]  # fmt: skip
    cmd = status.probe_command(status.probe_spec(comps))
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    report = status.parse(out.stdout)
    assert report.units["chatmail-no-such-unit"] in ("inactive", "unknown")
    smtp, dns = report.checks["fake"]
    assert (smtp.ok, smtp.seen) == (True, "220 local ESMTP")
    assert dns.ok is False
    (v,) = status.verdicts(comps, report)
    assert v.down


def test_connect_probe_on_a_unix_socket(tmp_path):
    path = str(tmp_path / "auth")
    serve_once(b"", socket.AF_UNIX, path)
    assert status_probe.run_check({"kind": "connect", "path": path}) == (
        True,
        "accepts connections",
    )
    ok, seen = status_probe.run_check({"kind": "connect", "path": str(tmp_path / "none")})
    assert not ok and "No such file" in seen
