"""The web side: /new, autoconfig, MTA-STS, the invite QR code on the index page."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest


def fetch(url, ssl_context, method="GET"):
    req = urllib.request.Request(url, method=method)
    return urllib.request.urlopen(req, context=ssl_context, timeout=30)


def test_new_hands_out_fresh_credentials(domain, config, ssl_context):
    first = json.loads(fetch(f"https://{domain}/new", ssl_context, "POST").read())
    second = json.loads(fetch(f"https://{domain}/new", ssl_context, "POST").read())
    for creds in (first, second):
        local, _, d = creds["email"].partition("@")
        assert d == domain and len(local) == config.username_max_length
        assert len(creds["password"]) > config.password_min_length
    assert first["email"] != second["email"] and first["password"] != second["password"]


def test_new_credentials_log_in(domain, ssl_context, imap):
    creds = json.loads(fetch(f"https://{domain}/new", ssl_context, "POST").read())
    imap().login(creds["email"], creds["password"])


def test_autoconfig_names_all_ports(domain, ssl_context):
    xml = fetch(f"https://{domain}/.well-known/autoconfig/mail/config-v1.1.xml", ssl_context).read()
    text = xml.decode()
    assert f'<emailProvider id="{domain}">' in text
    for port in (993, 143, 443, 465, 587):
        assert f"<port>{port}</port>" in text


def test_mta_sts_policy(domain, ssl_context):
    text = fetch(f"https://{domain}/.well-known/mta-sts.txt", ssl_context).read().decode()
    assert "mode: enforce" in text and f"mx: {domain}" in text


def test_index_qr_code_decodes_to_the_invite_link(domain, ssl_context, tmp_path):
    html = fetch(f"https://{domain}/", ssl_context).read().decode()
    png = re.search(r'src="([^"]*qr-chatmail-invite[^"]*\.png)"', html).group(1)
    link = re.search(r'href="((?:dcaccount|DCACCOUNT):[^"]+)"', html).group(1)
    (tmp_path / "qr.png").write_bytes(
        fetch(f"https://{domain}/{png.lstrip('/')}", ssl_context).read()
    )
    if not shutil.which("zbarimg"):
        pytest.fail("zbarimg missing (apt-get install zbar-tools)")
    out = subprocess.run(
        ["zbarimg", "--raw", "-q", tmp_path / "qr.png"], capture_output=True, text=True
    )
    assert out.stdout.strip() == link


def test_metrics_are_served(domain, ssl_context, remote):
    remote.run("systemctl start chatmail-metrics.service")
    text = fetch(f"https://{domain}/metrics", ssl_context).read().decode()
    assert re.search(r"^accounts \d+$", text, re.M)
