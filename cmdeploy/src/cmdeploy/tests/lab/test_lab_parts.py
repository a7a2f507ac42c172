"""Parts of the lab that need no containers: zone parsing, DNS encodings, prerequisites."""

from __future__ import annotations

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from cmdeploy.cli import build_parser
from cmdeploy.lab import LabError
from cmdeploy.lab import dns as labdns
from cmdeploy.lab import host as labhost
from cmdeploy.lab import lab as labmod


def test_bind_zone_lines_become_dnsmasq_records():
    text = "\n".join(
        [
            "; Required",
            "_r.lab.                                  3600 IN A      10.77.0.11",
            "_r.lab.                                  3600 IN MX     10 _r.lab.",
            "www                                      3600 IN CNAME  @",
            'key._domainkey._r.lab. 3600 IN TXT "v=DKIM1;p=AB" "CD\\"E"',
            "_imaps._tcp._r.lab.                      IN SRV 0 1 993 _r.lab.",
            '_r.lab. 3600 IN CAA 0 issue "letsencrypt.org;accounturi=x"',
        ]
    )
    lines = labdns.dnsmasq_lines("_r.lab", labdns.parse_zone("_r.lab", text))
    assert "host-record=_r.lab,10.77.0.11" in lines
    assert "mx-host=_r.lab,_r.lab,10" in lines
    assert "cname=www._r.lab,_r.lab" in lines
    assert 'txt-record=key._domainkey._r.lab,"v=DKIM1;p=AB","CD\\"E"' in lines
    assert "srv-host=_imaps._tcp._r.lab,_r.lab,993,0,1" in lines
    assert any(line.startswith("dns-rr=_r.lab,257,") for line in lines)


def test_unreadable_zone_line_is_refused_with_its_number():
    with pytest.raises(LabError, match="zone line 2"):
        labdns.parse_zone("_r.lab", "_r.lab. 3600 IN A 10.0.0.1\n_r.lab. 3600 IN HINFO x y\n")


def _decode(rtype: str, rdata: bytes) -> str:
    rd = dns.rdata.from_wire(
        dns.rdataclass.IN, dns.rdatatype.from_text(rtype), rdata, 0, len(rdata)
    )
    return rd.to_text()


def test_soa_and_caa_wire_encodings_decode_as_intended():
    soa = _decode("SOA", labdns.soa_rdata("_r.lab", 7))
    assert soa == "ns.lab. hostmaster._r.lab. 7 3600 600 86400 60"
    caa = _decode("CAA", labdns.caa_rdata("0", "issue", "letsencrypt.org;accounturi=x"))
    assert caa == '0 issue "letsencrypt.org;accounturi=x"'


def test_missing_root_is_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(labmod.os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match="needs root"):
        labmod.check_prerequisites(tmp_path)


def test_lab_subcommands_parse():
    parser = build_parser()
    assert parser.parse_args(["lab", "up", "--hosts", "3"]).hosts == 3
    args = parser.parse_args(["lab", "ssh", "relay1", "systemctl", "status"])
    assert args.name == "relay1" and args.remote == ["systemctl", "status"]
    for cmd in ("status", "down"):
        assert parser.parse_args(["lab", cmd]).lab_command == cmd


def test_loading_a_zone_needs_a_running_lab(tmp_path):
    with pytest.raises(LabError, match="lab up"):
        labmod.Lab(state_dir=tmp_path).load_zone("_r.lab", "_r.lab. 3600 IN A 10.77.0.11\n")


def test_a_host_root_gets_the_lab_resolver_proxy_and_key(monkeypatch, tmp_path):
    root = tmp_path / "root"
    for d in ("etc/systemd/network", "etc/apt/apt.conf.d", "etc/ssh"):
        (root / d).mkdir(parents=True)
    (root / "etc/machine-id").write_text("")
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("")
    ran = []
    monkeypatch.setattr(labhost, "run", lambda argv, **kw: ran.append(argv))
    monkeypatch.setattr(labhost, "HOST_CA_DIR", tmp_path / "no-cas")
    settings = labhost.RootSettings(
        dns_ip="10.9.0.1",
        proxy_url="http://10.9.0.1:3142",
        subnet="10.9.0.0/24",
        authorized_keys="ssh-ed25519 AAAA cmlab\n",
    )
    labhost.configure_root(root, labhost.make_host(3, "10.9.0"), settings)
    etc = root / "etc"
    assert (etc / "hostname").read_text() == "relay3\n"
    assert (etc / "resolv.conf").read_text().startswith("nameserver 10.9.0.1\n")
    assert (
        "Address=10.9.0.13/24\nDNS=10.9.0.1\n"
        in (etc / "systemd/network/10-cmlab.network").read_text()
    )
    assert (
        "no_proxy=localhost,127.0.0.1,::1,.lab,10.9.0.0/24\n" in (etc / "environment").read_text()
    )
    assert (
        'Acquire::https::Proxy "http://10.9.0.1:3142";'
        in (etc / "apt/apt.conf.d/80cmlab-proxy").read_text()
    )
    assert (root / "root/.ssh/authorized_keys").read_text() == "ssh-ed25519 AAAA cmlab\n"
    assert len((etc / "machine-id").read_text().strip()) == 32
    assert ran == [["chroot", str(root), "update-ca-certificates"]]
