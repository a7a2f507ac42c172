"""The throttling parts of the rendered nginx, Dovecot and doveauth configuration."""

import re

from chatmaild.testkit import dovecot_instance
from chatmaild.testkit.config import init_config

from cmdeploy.deployer_base import DeployOptions
from cmdeploy.dovecot.deployer import DovecotDeployer
from cmdeploy.nginx.deployer import NginxDeployer
from cmdeploy.tests.test_templates import doveconf_n


def nginx_conf(cfg) -> str:
    return NginxDeployer(cfg, DeployOptions()).render("nginx.conf.j2", ini_path="/x.ini")


def test_new_is_limited_per_client_ip_at_doveauths_pace():
    text = nginx_conf(init_config())
    assert re.search(r"limit_req_zone \$binary_remote_addr zone=new_account:\d+m rate=1r/m;", text)
    assert "limit_req zone=new_account burst=99 nodelay;" in text
    assert "limit_req_status 429;" in text
    text = nginx_conf(
        init_config(max_new_accounts_per_ip_per_hour=600, max_new_accounts_per_ip_burst=5)
    )
    assert "rate=10r/m;" in text and "burst=4 nodelay;" in text


def test_port_443_passes_the_client_address_to_every_backend():
    text = nginx_conf(init_config())
    assert "proxy_protocol on;" in text
    assert "~\\bimap\\b 127.0.0.1:8993;" in text
    assert "~\\bsmtp\\b 127.0.0.1:8465;" in text
    assert "listen 127.0.0.1:8443 ssl http2 proxy_protocol;" in text
    assert "real_ip_header proxy_protocol;" in text


def dovecot_conf(tmp_path) -> str:
    out = doveconf_n(init_config(), tmp_path)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_dovecot_keeps_its_auth_penalty_and_reads_proxy_headers_from_nginx(tmp_path):
    text = dovecot_conf(tmp_path)
    assert "anvil-auth-penalty" not in text
    assert "login_trusted_networks" not in text
    assert "haproxy_trusted_networks = 127.0.0.1" in text
    listener = re.search(r"inet_listener imaps_from_443 \{(.*?)\}", text, re.S).group(1)
    assert "port = 8993" in listener and "haproxy = yes" in listener
    assert "ssl = yes" in listener and "address = 127.0.0.1" in listener


def test_passdb_key_of_the_relay_and_of_the_test_dovecot_agree():
    relay = DovecotDeployer(init_config(), DeployOptions()).render("auth.conf.j2")
    (relay_key,) = re.findall(r"^password_key = (.*)$", relay, re.M)
    test_conf = dovecot_instance.AUTH_CONF.format(auth_socket="/x")
    (test_key,) = re.findall(r"^password_key = (.*)$", test_conf, re.M)
    assert relay_key == test_key == 'passdb/%Ew"%Eu"%E{rip}'
