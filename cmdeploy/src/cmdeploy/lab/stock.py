"""A stock floor host in the lab: Debian's Postfix + Dovecot and none of the chatmail services.

``cmdeploy bench`` measures a chatmail relay against this floor: the same lab host shape, the
same mail path (submission on 465 with SASL via Dovecot, LMTP into Maildir, IMAP on 993, and
relay to relay on 25), but no encryption gate, no DKIM, no doveauth. Accounts come from a
passwd-file (one static ``vmail`` uid); TLS uses Debian's snakeoil certificate.

Set up from Python with :func:`stock_relay` (idempotent: a second call changes nothing), or
``python -m cmdeploy.lab.stock relay3 relay4 --password-file F``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .dns import host_zone
from .lab import Lab

PACKAGES = ["postfix", "dovecot-imapd", "dovecot-lmtpd", "ssl-cert"]
# Bench account names have 9-character local parts, as chatmail's default username rules
# demand, so one naming scheme serves both the chatmail relays and the floor.
# Where Dovecot keeps a bench account's mail on a floor host (userdb home + mail_location).
MAILDIR = "/home/vmail/{domain}/{local}/Maildir"
SENDERS = 32
RECIPIENTS = 160

# Postfix on top of Debian's "Internet Site" defaults; everything else stays stock.
POSTFIX_MAIN = {
    "myhostname": "{domain}",
    "mydestination": "localhost",
    "mynetworks": "127.0.0.0/8",
    "inet_interfaces": "all",
    "inet_protocols": "ipv4",
    "virtual_mailbox_domains": "{domain}",
    "virtual_mailbox_maps": "texthash:/etc/postfix/stock-vmailbox",
    "virtual_transport": "lmtp:unix:private/dovecot-lmtp",
    "smtpd_tls_cert_file": "/etc/ssl/certs/ssl-cert-snakeoil.pem",
    "smtpd_tls_key_file": "/etc/ssl/private/ssl-cert-snakeoil.key",
    "smtpd_tls_security_level": "may",
    "smtp_tls_security_level": "may",
    "smtpd_sasl_type": "dovecot",
    "smtpd_sasl_path": "private/auth",
    "smtpd_relay_restrictions": "permit_sasl_authenticated, reject_unauth_destination",
    "message_size_limit": "31457280",
}
# Implicit TLS submission (RFC 8314), like the relay's port 465.
SUBMISSIONS = "submissions inet n - y - - smtpd"
SUBMISSIONS_OPTS = {
    "syslog_name": "postfix/submissions",
    "smtpd_tls_wrappermode": "yes",
    "smtpd_sasl_auth_enable": "yes",
    "smtpd_recipient_restrictions": "permit_sasl_authenticated,reject",
}

DOVECOT_CONF = """\
# Stock floor for cmdeploy bench (cmdeploy/lab/stock.py): no chatmail services.
protocols = imap lmtp
listen = *
ssl = required
ssl_cert = </etc/ssl/certs/ssl-cert-snakeoil.pem
ssl_key = </etc/ssl/private/ssl-cert-snakeoil.key
auth_mechanisms = plain
mail_location = maildir:~/Maildir
first_valid_uid = 100
passdb {
  driver = passwd-file
  args = scheme=SHA512-CRYPT /etc/dovecot/stock-users
}
userdb {
  driver = static
  args = uid=vmail gid=vmail home=/home/vmail/%d/%n
}
service imap-login {
  inet_listener imap {
    port = 0
  }
  inet_listener imaps {
    port = 993
    ssl = yes
  }
}
service lmtp {
  unix_listener /var/spool/postfix/private/dovecot-lmtp {
    mode = 0600
    user = postfix
    group = postfix
  }
}
service auth {
  unix_listener /var/spool/postfix/private/auth {
    mode = 0660
    user = postfix
    group = postfix
  }
}
protocol lmtp {
  postmaster_address = postmaster@{domain}
}
"""

# Runs on the stock host (its python3) with the settings as JSON on stdin; prints what changed.
REMOTE_SETUP = r"""
import hashlib, json, os, subprocess, sys

cfg = json.load(sys.stdin)
changed = []

def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True, **kw)

def put(path, text, mode=0o644):
    try:
        with open(path) as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.chmod(path + ".tmp", mode)
    os.replace(path + ".tmp", path)
    changed.append(path)
    return True

missing = [p for p in cfg["packages"] if subprocess.run(
    ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True
).stdout != "install ok installed"]
if missing:
    sh("echo 'postfix postfix/main_mailer_type select Internet Site' | debconf-set-selections")
    sh(f"echo 'postfix postfix/mailname string {cfg['domain']}' | debconf-set-selections")
    sh("apt-get update -q")
    sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
       + " ".join(missing))
    changed.append("packages " + " ".join(missing))

if subprocess.run(["id", "vmail"], capture_output=True).returncode != 0:
    sh("useradd --system --create-home --home-dir /home/vmail --shell /usr/sbin/nologin vmail")
    changed.append("user vmail")

def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()

before = [digest("/etc/postfix/main.cf"), digest("/etc/postfix/master.cf")]
sh("postconf -e " + " ".join(f"'{k}={v}'" for k, v in cfg["main"].items()))
sh(f"postconf -M submissions/inet='{cfg['submissions']}'")
for k, v in cfg["submissions_opts"].items():
    sh(f"postconf -P 'submissions/inet/{k}={v}'")
postfix_changed = before != [digest("/etc/postfix/main.cf"), digest("/etc/postfix/master.cf")]
if postfix_changed:
    changed.append("postfix config")
accounts = cfg["accounts"]
postfix_changed |= put("/etc/postfix/stock-vmailbox", "".join(f"{a} OK\n" for a, _ in accounts))

# One hash per password: reuse the stored one while it still verifies, so a rerun is a no-op.
users_path = "/etc/dovecot/stock-users"
hashes = {}
try:
    with open(users_path) as f:
        for line in f:
            addr, _, h = line.rstrip("\n").partition(":")
            hashes[addr] = h
except FileNotFoundError:
    pass
known = {}
lines = []
for addr, pw in accounts:
    h = known.get(pw) or hashes.get(addr)
    if h and pw not in known:
        ok = subprocess.run(["doveadm", "pw", "-t", h, "-p", pw], capture_output=True)
        h = h if ok.returncode == 0 else None
    if not h:
        h = sh(f"doveadm pw -s SHA512-CRYPT -p '{pw}'").stdout.strip()
    known[pw] = h
    lines.append(f"{addr}:{h}\n")
dovecot_changed = put(users_path, "".join(lines), 0o640)
sh(f"chgrp dovecot {users_path}")
dovecot_changed |= put("/etc/dovecot/dovecot.conf", cfg["dovecot_conf"])

if dovecot_changed:
    sh("systemctl restart dovecot")
if postfix_changed:
    sh("systemctl restart postfix")
sh("systemctl is-active --quiet dovecot || systemctl start dovecot")
sh("systemctl is-active --quiet postfix || systemctl start postfix")
print(json.dumps({"changed": changed}))
"""


@dataclass
class StockRelay:
    """A stock Postfix + Dovecot lab host and the accounts it knows."""

    name: str
    domain: str
    ip: str
    accounts: list[tuple[str, str]]
    changed: list[str]


def bench_accounts(
    domain: str, password: str
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The bench's senders and recipients on ``domain``: fixed names, one password."""
    senders = [(f"benchs{i:03d}@{domain}", password) for i in range(SENDERS)]
    recipients = [(f"benchr{i:03d}@{domain}", password) for i in range(RECIPIENTS)]
    return senders, recipients


def bench_password(path: Path) -> str:
    """The bench accounts' password, kept in ``path`` (made on first use, mode 0600)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(18))
        path.chmod(0o600)
    return path.read_text().strip()


def stock_relay(lab: Lab, name: str, accounts: list[tuple[str, str]]) -> StockRelay:
    """Make lab host ``name`` a stock floor relay for ``accounts`` ([addr, password] pairs)."""
    index = int(name.removeprefix("relay"))
    lab.up(hosts=max(index, len(lab.hosts())))
    h = lab.host(name)
    cfg = {
        "domain": h.domain,
        "packages": PACKAGES,
        "main": {k: v.format(domain=h.domain) for k, v in POSTFIX_MAIN.items()},
        "submissions": SUBMISSIONS,
        "submissions_opts": SUBMISSIONS_OPTS,
        "dovecot_conf": DOVECOT_CONF.replace("{domain}", h.domain),
        "accounts": [list(a) for a in accounts],
    }
    proc = lab.ssh_run(h.name, "python3 -c " + _shell_quote(REMOTE_SETUP), input=json.dumps(cfg))
    changed = json.loads(proc.stdout.strip().splitlines()[-1])["changed"]
    # The lab's first zone is already A + MX; loading it again keeps it so after a relay deploy.
    lab.load_zone(h.domain, host_zone(h.domain, h.ip))
    return StockRelay(h.name, h.domain, h.ip, [tuple(a) for a in accounts], changed)


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cmdeploy.lab.stock",
        description="Set up lab hosts as stock Postfix + Dovecot floor relays for cmdeploy bench.",
    )
    p.add_argument("names", nargs="+", help="lab hosts, e.g. relay3 relay4")
    p.add_argument("--password-file", type=Path, required=True,
                   help="the bench accounts' password (made if missing)")  # fmt: skip
    args = p.parse_args(argv)
    lab = Lab()
    password = bench_password(args.password_file)
    lab.up(hosts=max([len(lab.hosts())] + [int(n.removeprefix("relay")) for n in args.names]))

    def setup(name: str) -> StockRelay:
        senders, recipients = bench_accounts(lab.host(name).domain, password)
        return stock_relay(lab, name, senders + recipients)

    # The hosts install their packages at the same time (most of the ~30 s each is apt).
    with ThreadPoolExecutor(len(args.names)) as pool:
        for relay in pool.map(setup, args.names):
            what = ", ".join(relay.changed) or "nothing changed"
            print(f"stock floor {relay.domain} ({relay.ip}): {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
