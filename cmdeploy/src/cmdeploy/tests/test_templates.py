"""The rendered configuration files are accepted by the real programs that read them."""

import shutil
import subprocess

import pytest
from chatmaild.config import parse_config, render_initial_config
from chatmaild.filtermail.mxdeliv import body_limit

from cmdeploy import relaypaths
from cmdeploy.deployer_base import DeployOptions
from cmdeploy.dovecot.deployer import DovecotDeployer
from cmdeploy.echobot.deployer import EchobotDeployer
from cmdeploy.nginx.deployer import NginxDeployer
from cmdeploy.opendkim.deployer import OpenDKIMDeployer
from cmdeploy.postfix.deployer import MAPS, PostfixDeployer
from cmdeploy.services.deployer import DAEMONS, SOCKETS, TIMERS, ServicesDeployer, unit_limits
from cmdeploy.unbound.deployer import UnboundDeployer


def need(program):
    if not shutil.which(program):
        pytest.fail(f"{program} missing: scripts/test.sh installs it (scripts/test-packages.txt)")


@pytest.fixture
def cert(tmp_path):
    key, crt = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-noenc", "-days", "2", "-subj", "/CN=x", "-keyout", key, "-out", crt],
        check=True, capture_output=True,
    )  # fmt: skip
    return crt, key


@pytest.fixture(
    params=[{}, {"disable_ipv6": "true", "imap_compress": "true", "imap_rawlog": "true"}]
)
def config(request, cert):
    overrides = {"tls_external_cert_and_key": f"{cert[0]} {cert[1]}", **request.param}
    return parse_config(render_initial_config("chat.example.org", overrides))


def doveconf_n(config, tmp_path) -> subprocess.CompletedProcess:
    """``doveconf -n`` of the rendered dovecot.conf and auth.conf (no certificate read)."""
    need("doveconf")
    d = DovecotDeployer(config, DeployOptions())
    text = d.render("dovecot.conf.j2")
    (tmp_path / "auth.conf").write_text(d.render("auth.conf.j2"))
    conf = tmp_path / "dovecot.conf"
    conf.write_text(text.replace("/etc/dovecot/auth.conf", str(tmp_path / "auth.conf")))
    return subprocess.run(["doveconf", "-c", conf, "-n"], capture_output=True, text=True)


def test_dovecot_config_is_valid(config, tmp_path):
    out = doveconf_n(config, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "imap_capability = +XDELTAPUSH XCHATMAIL" in out.stdout
    assert "quota_rule = *:storage=500M" in out.stdout


def test_postfix_config_is_valid(config, tmp_path):
    need("postconf")
    p = PostfixDeployer(config, DeployOptions())
    (tmp_path / "main.cf").write_text(p.render("main.cf.j2"))
    (tmp_path / "master.cf").write_text(p.render("master.cf.j2"))
    out = subprocess.run(["postconf", "-c", tmp_path, "-n"], capture_output=True, text=True)
    assert out.returncode == 0 and "warning" not in out.stderr, out.stderr
    master = subprocess.run(["postconf", "-c", tmp_path, "-M"], capture_output=True, text=True)
    assert master.returncode == 0 and "warning" not in master.stderr, master.stderr
    services = {line.split()[0] for line in master.stdout.splitlines()}
    assert {"smtp", "submission", "smtps", "127.0.0.1:10025", "127.0.0.1:10026"} <= services
    assert "smtpd_proxy_filter=127.0.0.1:10080" in master.stdout
    assert "smtpd_proxy_filter=127.0.0.1:10081" in master.stdout
    # SMTP hardening in main.cf, and no service of master.cf overrides it.
    hardening = {
        "allow_percent_hack": "no",
        "swap_bangpath": "no",
        "smtpd_forbid_bare_newline": "normalize",
        "smtpd_forbid_bare_newline_exclusions": "",
        "smtpd_forbid_unauth_pipelining": "yes",
        "strict_rfc821_envelopes": "yes",
    }
    main = dict(line.split(" = ", 1) if " = " in line else (line.rstrip(" ="), "")
                for line in out.stdout.splitlines())  # fmt: skip
    assert {k: main.get(k) for k in hardening} == hardening
    overrides = subprocess.run(["postconf", "-c", tmp_path, "-P"], capture_output=True, text=True)
    assert not [line for line in overrides.stdout.splitlines()
                if line.split("=")[0].rsplit("/", 1)[-1] in hardening]  # fmt: skip
    assert "smtp/inet/smtpd_data_restrictions = reject_unauth_pipelining" in overrides.stdout
    # Only the signing listener has the milter; the local one takes only local domains.
    per_service = {}
    for line in overrides.stdout.splitlines():
        key, _, value = line.partition("=")
        service, _, param = key.strip().rpartition("/")
        per_service.setdefault(service, {})[param] = value.strip()
    local, signing = per_service["127.0.0.1:10027/inet"], per_service["127.0.0.1:10025/inet"]
    assert local["smtpd_milters"] == "" and "opendkim" in signing["smtpd_milters"]
    assert local["smtpd_relay_restrictions"] == "reject_unauth_destination"
    assert local["cleanup_service_name"] == signing["cleanup_service_name"] == "authclean"
    # Disk full: MAIL FROM refused below 3 x the message size limit; deferred mail retried
    # within a minute once space is back.
    assert main["queue_minfree"] == str(3 * config.max_message_size)
    assert int(main["queue_minfree"]) >= 1.5 * int(main["message_size_limit"])
    disk_full = ("queue_run_delay", "minimal_backoff_time", "maximal_backoff_time")
    assert [main[k] for k in disk_full] == ["10s", "10s", "60s"]
    # A dependency that restarts must not keep submission down for a minute.
    assert main["service_throttle_time"] == "2s"


def test_postfix_maps_are_valid_regexp_tables(config, tmp_path):
    need("postmap")
    p = PostfixDeployer(config, DeployOptions())
    for name in MAPS:
        (tmp_path / name).write_text(p.render(name))

    def query(table, key):
        return subprocess.run(["postmap", "-q", key, f"regexp:{tmp_path / table}"],
                              capture_output=True, text=True).stdout.strip()  # fmt: skip

    assert query("login_map", "abc@chat.example.org") == "abc@chat.example.org"
    assert query("submission_header_cleanup", "Subject: secret plans") == "REPLACE Subject: [...]"
    # "Subject : x" (white space before the colon) is replaced as well.
    for odd in ("Subject : secret", "SUBJECT:secret", "subject\t: secret"):
        assert query("submission_header_cleanup", odd) == "REPLACE Subject: [...]", odd
    # The allow-list: headers of Delta Chat's outer message pass, anything else is dropped.
    for allowed in ALLOWED_HEADERS:
        assert query("submission_header_cleanup", allowed) == "DUNNO", allowed
    for dropped in (
        "User-Agent: x",
        "X-Secret: x",
        "Received: from x",
        "X-Anything: " + "A" * 50_000,
        "From : a@b",
        "Chat-Version-X: 1",
        "Autocrypt-X: 1",
        "Bcc: a@b",
        "Sender: a@b",
    ):
        assert query("submission_header_cleanup", dropped) == "IGNORE", dropped[:40]
    assert query("lmtp_header_cleanup", "DKIM-Signature: v=1") == "IGNORE"
    assert query("smtp_tls_policy_map", "_relay2.lab") == "encrypt"
    assert query("smtp_tls_policy_map", "example.org") == ""


# Top-level headers of what Delta Chat 2.65 sends (captured in the lab, docs/operating.md).
ALLOWED_HEADERS = [
    "From: <a@chat.example.org>",
    "To: <b@other.example>",
    "Cc: <c@other.example>",
    "Date: Tue, 01 Dec 2026 10:00:00 +0000",
    "Message-ID: <Mr.x@localhost>",
    "In-Reply-To: <Mr.y@localhost>",
    "References: <Mr.y@localhost>",
    "MIME-Version: 1.0",
    'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="x"',
    "Content-Transfer-Encoding: 7bit",
    "Chat-Version: 1.0",
    "Autocrypt: addr=a@chat.example.org; prefer-encrypt=mutual; keydata=xsDNBF",
    "Autocrypt-Setup-Message: v1",
    "Secure-Join: vc-request",
    "Secure-Join-Invitenumber: abc",
    "Auto-Submitted: auto-replied",
]


def test_units_have_memory_and_task_caps(cert, tmp_path):
    need("systemd-analyze")
    config = parse_config(render_initial_config("chat.example.org", {}))
    d = ServicesDeployer(config, DeployOptions())
    units = []
    for name in DAEMONS:
        text = d.render("daemon.service.j2", description=name, exec_start="/bin/true",
                        runtime_dir=None, socket_unit=name in SOCKETS,
                        **unit_limits(name, config))  # fmt: skip
        units.append((name, text))
    for name, path in SOCKETS.items():
        socket_unit = d.render("daemon.socket.j2", description=name, path=path)
        assert f"ListenStream={path}\n" in socket_unit and "SocketUser=vmail\n" in socket_unit
        (tmp_path / f"{name}.socket").write_text(socket_unit)
    for name in TIMERS:
        text = d.render("oneshot.service.j2", description=name, exec_start="/bin/true",
                        **unit_limits(name, config))  # fmt: skip
        units.append((name, text))
    echobot = EchobotDeployer(config, DeployOptions())
    units.append(
        ("echobot", echobot.render("echobot.service.j2", **unit_limits("echobot", config)))
    )
    for name, text in units:
        assert "MemoryMax=" in text and "TasksMax=" in text, name
        text = text.replace(f"{relaypaths.VENV}/bin/echobot", "/bin/true")
        (tmp_path / f"{name}.service").write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", *sorted(tmp_path.glob("*.service")),
                          *sorted(tmp_path.glob("*.socket"))],
                         capture_output=True, text=True)  # fmt: skip
    problems = [line for line in out.stderr.splitlines() if "User=" not in line]
    assert out.returncode == 0 and not problems, out.stderr
    # filtermail holds whole messages: its cap grows with max_message_size.
    big = parse_config(render_initial_config("chat.example.org", {"max_message_size": "104857600"}))
    assert int(unit_limits("filtermail", big)["memory_max"][:-1]) > 8 * 100
    assert unit_limits("doveauth", big) == unit_limits("doveauth", config)


def test_nginx_config_is_valid(config, tmp_path):
    need("nginx")
    text = NginxDeployer(config, DeployOptions()).render("nginx.conf.j2", ini_path="/x.ini")
    conf = tmp_path / "nginx.conf"
    conf.write_text(text.replace("pid /run/nginx.pid;", f"pid {tmp_path}/nginx.pid;"))
    out = subprocess.run(["nginx", "-t", "-q", "-c", conf, "-e", tmp_path / "error.log"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_opendkim_config_is_valid(config, tmp_path):
    need("opendkim")
    deployer = OpenDKIMDeployer(config, DeployOptions())
    for name in ("screen.lua", "final.lua", "KeyTable.j2", "SigningTable.j2"):
        text = deployer.render(name).replace("/etc/dkimkeys/", f"{tmp_path}/")
        (tmp_path / name.removesuffix(".j2")).write_text(text)
    text = deployer.render("opendkim.conf.j2")
    text = text.replace("/etc/opendkim/", f"{tmp_path}/").replace("/etc/dkimkeys/", f"{tmp_path}/")
    conf = tmp_path / "opendkim.conf"
    conf.write_text(text)
    # opendkim -n also runs both policy scripts with stub values; a Lua error kills it.
    out = subprocess.run(["opendkim", "-n", "-x", conf], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    need("luac5.3")
    lua = subprocess.run(["luac5.3", "-p", tmp_path / "screen.lua", tmp_path / "final.lua"],
                         capture_output=True, text=True)  # fmt: skip
    assert lua.returncode == 0, lua.stderr


def test_unbound_config_forwards_lab_zones(tmp_path):
    need("unbound-checkconf")
    config = parse_config(
        render_initial_config("_relay1.lab", {"dns_forward_zones": "lab@10.77.0.1"})
    )
    text = UnboundDeployer(config, DeployOptions()).render(
        "chatmail.conf.j2", zones=config.dns_forward_zones
    )
    conf = tmp_path / "unbound.conf"
    conf.write_text(text.replace("    interface: ::1\n", ""))
    out = subprocess.run(["unbound-checkconf", conf], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "forward-addr: 10.77.0.1" in text and 'domain-insecure: "lab"' in text


def test_nginx_mxdeliv_body_limit_is_the_backends(config):
    """nginx lets through exactly what filtermail's /mxdeliv reads, no 1 MiB default."""
    text = NginxDeployer(config, DeployOptions()).render("nginx.conf.j2", ini_path="/x.ini")
    location = text.split("location = /mxdeliv {", 1)[1].split("}", 1)[0]
    assert f"client_max_body_size {body_limit(config.max_message_size)};" in location
    assert f"proxy_pass http://127.0.0.1:{config.filtermail_http_port_incoming};" in location
