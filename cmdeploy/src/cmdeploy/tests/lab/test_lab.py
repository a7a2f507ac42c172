"""The local lab end to end: real Debian 12 hosts with systemd, lab DNS, proxy, client netns."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cmdeploy.cli import main as cmdeploy_main
from cmdeploy.lab import Lab, base, net

pytestmark = pytest.mark.lab

# A DKIM record as long as a real RSA-2048 one, so it needs two TXT strings (RFC 1035 §3.3.14).
DKIM_VALUE = "v=DKIM1;k=rsa;p=" + base64.b64encode(os.urandom(294)).decode() + ";s=email;t=s"


def zone_line(name: str, rtype: str, value: str) -> str:
    """One line in the `cmdeploy dns --zonefile` shape (reference-behaviour §6.3)."""
    return f"{name:<40} 3600 IN {rtype} {value}"


def make_zone(domain: str, ip: str) -> str:
    chunks = [DKIM_VALUE[i : i + 255] for i in range(0, len(DKIM_VALUE), 255)]
    lines = [
        "; Required",
        zone_line(f"{domain}.", "A", ip),
        zone_line(f"{domain}.", "MX", f"10 {domain}."),
        zone_line(f"www.{domain}.", "CNAME", f"{domain}."),
        zone_line(f"opendkim._domainkey.{domain}.", "TXT", '" "'.join(chunks).join('""')),
        "; Recommended",
        zone_line(f"{domain}.", "TXT", '"v=spf1 a ~all"'),
        zone_line(f"_dmarc.{domain}.", "TXT", '"v=DMARC1;p=reject;adkim=s;aspf=s"'),
        zone_line(f"{domain}.", "CAA", '0 issue "letsencrypt.org;accounturi=https://acme/acct/1"'),
        zone_line(f"_submissions._tcp.{domain}.", "SRV", f"0 1 465 {domain}."),
        zone_line(f"_imaps._tcp.{domain}.", "SRV", f"0 1 993 {domain}."),
    ]
    return "\n".join(lines) + "\n"


def dig(lab: Lab, host: str, args: str) -> str:
    return lab.ssh_run(host, f"dig +short {args}").stdout.strip()


def test_hosts_boot_systemd_to_running(lab):
    for h in lab.hosts():
        state = lab.ssh_run(h.name, "systemctl is-system-running", check=False).stdout.strip()
        failed = lab.ssh_run(h.name, "systemctl --failed --no-legend", check=False).stdout
        assert state == "running", f"{h.name} is {state}; failed units:\n{failed}"
        assert lab.ssh_run(h.name, "ps -p 1 -o comm=").stdout.strip() == "systemd"


def test_hosts_find_each_others_address_and_mx_through_lab_dns(lab):
    relay1, relay2 = lab.hosts()[:2]
    for me, peer in ((relay1, relay2), (relay2, relay1)):
        resolved = lab.ssh_run(me.name, f"getent hosts {peer.domain}").stdout.split()
        assert resolved[:2] == [peer.ip, peer.domain]
        assert dig(lab, me.name, f"MX {peer.domain}") == f"10 {peer.domain}."
        # The address works too: SSH of the peer answers from inside the lab.
        lab.ssh_run(me.name, f"timeout 5 bash -c '</dev/tcp/{peer.domain}/22'")


def test_unknown_names_get_nxdomain_at_once(lab):
    relay1 = lab.hosts()[0]
    # An outside name a lab host would want: this machine's own Debian mirror.
    mirror = urlsplit(base.archives()[0]).hostname
    out = lab.ssh_run(
        relay1.name,
        f"dig +tries=1 +time=5 autoconfig._relay1.lab; dig +tries=1 +time=5 {mirror}",
    ).stdout
    assert out.count("status: NXDOMAIN") == 2
    times = [int(t) for t in re.findall(r"Query time: (\d+) msec", out)]
    assert len(times) == 2 and max(times) < 500, out


def test_debian_package_installs_through_the_proxy_only(lab):
    relay1 = lab.hosts()[0]
    lab.ssh_run(relay1.name, "apt-get update -q")
    lab.ssh_run(relay1.name, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q hello")
    assert lab.ssh_run(relay1.name, "hello").stdout.strip() == "Hello, world!"
    # Without the proxy there is no way out of the lab: no route beyond the bridge.
    route = lab.ssh_run(relay1.name, "ip route get 151.101.0.223", check=False)
    assert route.returncode != 0 and "unreachable" in route.stderr


def test_pypi_package_installs_through_the_proxy(lab):
    relay2 = lab.hosts()[1]
    lab.ssh_run(relay2.name, "apt-get update -q")
    lab.ssh_run(relay2.name, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv")
    lab.ssh_run(
        relay2.name, "python3 -m venv /root/venv && /root/venv/bin/pip install -q iniconfig"
    )
    out = lab.ssh_run(relay2.name, "/root/venv/bin/python -c 'import iniconfig; print(1)'")
    assert out.stdout.strip() == "1"


def test_client_namespace_resolves_lab_hosts(lab):
    for h in lab.hosts():
        out = lab.client_ns_run(["getent", "hosts", h.domain], check=True).stdout.split()
        assert out[:2] == [h.ip, h.domain]
    code = (
        "import socket, time\n"
        "t = time.monotonic()\n"
        "try:\n    socket.getaddrinfo('autoconfig._relay1.lab', 443)\n"
        "except socket.gaierror:\n    print(round(time.monotonic() - t, 3))\n"
    )
    assert float(lab.client_ns_python(code, check=True).stdout) < 1.0
    ssh = lab.client_ns_run(["bash", "-c", f"</dev/tcp/{lab.hosts()[0].domain}/22"], timeout=10)
    assert ssh.returncode == 0


def test_client_namespace_runs_probes_and_wrapped_programs(lab, tmp_path):
    relay2 = lab.hosts()[1]
    code = (
        "import socket\n"
        f"s = socket.create_connection(('{relay2.domain}', 22), timeout=5)\n"
        "print(s.recv(64).decode().strip())\n"
    )
    assert lab.client_ns_python(code, check=True).stdout.startswith("SSH-2.0-OpenSSH")
    # How Delta Chat tests run the real client there: Rpc(rpc_server_path=wrapper).
    rpc_server = Path(sys.executable).parent / "deltachat-rpc-server"
    wrapper = lab.client_ns_wrapper(str(rpc_server), tmp_path / "rpc-server")
    version = subprocess.run([wrapper, "--version"], capture_output=True, text=True, check=True)
    assert re.match(r"\d+\.\d+", version.stderr.strip())


def test_loaded_zone_is_served_with_soa_and_ns(lab):
    relay1 = lab.hosts()[0]
    domain = "_zonetest.lab"
    lab.load_zone(domain, make_zone(domain, relay1.ip))
    chunks = [DKIM_VALUE[i : i + 255] for i in range(0, len(DKIM_VALUE), 255)]
    expected = {
        f"A {domain}": relay1.ip,
        f"MX {domain}": f"10 {domain}.",
        f"CNAME www.{domain}": f"{domain}.",
        f"TXT opendkim._domainkey.{domain}": " ".join(f'"{c}"' for c in chunks),
        f"TXT _dmarc.{domain}": '"v=DMARC1;p=reject;adkim=s;aspf=s"',
        f"CAA {domain}": '0 issue "letsencrypt.org;accounturi=https://acme/acct/1"',
        f"SRV _imaps._tcp.{domain}": f"0 1 993 {domain}.",
        f"NS {domain}": "ns.lab.",
    }
    for query, value in expected.items():
        assert dig(lab, relay1.name, query) == value, query
    # The authoritative check asks the zone's primary (SOA MNAME) directly (lab-facts 15).
    soa = dig(lab, relay1.name, f"SOA {domain}").split()
    assert soa[0] == "ns.lab."
    assert dig(lab, relay1.name, f"@{soa[0]} -r A {domain}") == relay1.ip
    # Loading again replaces the zone: records missing from the new text are gone.
    lab.load_zone(domain, zone_line(f"{domain}.", "A", "10.77.0.99"))
    assert dig(lab, relay1.name, f"A {domain}") == "10.77.0.99"
    assert dig(lab, relay1.name, f"MX {domain}") == ""


def test_inotify_limits_raised_on_the_host_kernel(lab):
    instances = int(open("/proc/sys/fs/inotify/max_user_instances").read())
    watches = int(open("/proc/sys/fs/inotify/max_user_watches").read())
    assert instances >= 65536 and watches >= 1048576


def test_status_cli_lists_hosts(lab, capsys):
    assert cmdeploy_main(["lab", "status"]) == 0
    out = capsys.readouterr().out
    for h in lab.hosts():
        assert f"{h.domain}" in out and h.ip in out


def test_reboot_clean_and_power_cut_keep_files_and_boot_to_running(lab, capsys):
    """`lab reboot` both ways; test_zz_... runs next and checks that down leaves nothing."""
    relay2 = lab.hosts()[1]
    lines = []
    for flags in ([], ["--hard"]):
        old_init = lab.records()["hosts"][relay2.name]["init"]["pid"]
        # No sync: what a process has written must survive the power cut of a container.
        # /run is a fresh tmpfs at every boot, so its marker tells that a boot happened.
        lab.ssh_run(relay2.name, "echo kept > /root/before-reboot; touch /run/this-boot")
        assert cmdeploy_main(["lab", "reboot", relay2.name, *flags]) == 0
        lines.append(capsys.readouterr().out.strip())
        assert lab.ssh_run(relay2.name, "cat /root/before-reboot").stdout == "kept\n"
        assert lab.ssh_run(relay2.name, "test -e /run/this-boot", check=False).returncode == 1
        test_hosts_boot_systemd_to_running(lab)
        # The records follow the new boot: down finds and stops the processes that run now.
        rec = lab.records()["hosts"][relay2.name]
        nspawn = rec["nspawn"]["pid"]
        children = open(f"/proc/{nspawn}/task/{nspawn}/children").read().split()
        assert rec["init"]["pid"] == int(children[0]) != old_init
        assert rec["links"] and set(rec["links"]) <= set(net.bridge_ports(lab.bridge))
        test_hosts_find_each_others_address_and_mx_through_lab_dns(lab)
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def test_zz_down_leaves_nothing_and_cached_up_is_fast(lab, capsys):
    """Runs last (pytest keeps file order): tears the lab down, checks, brings it up again."""
    first = dict(lab.last_up)
    records = lab.records()
    hosts = len(records["hosts"])
    lab.down()
    assert lab.leftovers(records) == []
    t0 = time.monotonic()
    second = lab.up(hosts=hosts)
    elapsed = time.monotonic() - t0
    with capsys.disabled():
        kind = "built the base" if first["base_built"] else "base was already cached"
        print(
            f"\nlab up --hosts {hosts}: first {first['seconds']:.1f} s ({kind}), "
            f"again with the cached base {elapsed:.1f} s"
        )
    assert not second["base_built"]
    if first["base_built"]:
        assert elapsed < first["seconds"] / 2
    assert elapsed < 120
    test_hosts_boot_systemd_to_running(lab)
