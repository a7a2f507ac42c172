"""``cmdeploy status``: what the relay is running, and what needs attention."""

from __future__ import annotations

from cmdeploy.remote import Remote, RemoteError

# fcgiwrap starts per request of /new: its socket is what must be listening.
SERVICES = [
    "postfix", "dovecot", "opendkim", "nginx", "unbound", "doveauth", "lastlogin",
    "chatmail-metadata", "filtermail", "filtermail-incoming", "echobot", "fcgiwrap.socket",
    "chatmail-expire.timer", "chatmail-metrics.timer",
]  # fmt: skip

SCRIPT = """
for s in {services}; do printf '%s %s\\n' "$s" "$(systemctl is-active "$s" 2>/dev/null)"; done
echo "cert $(openssl x509 -enddate -noout -in {cert} 2>/dev/null | cut -d= -f2)"
echo "queue $(find /var/spool/postfix/deferred /var/spool/postfix/active -type f 2>/dev/null | wc -l)"
echo "version $(cat /etc/chatmail-version 2>/dev/null)"
"""


def status_cmd(args) -> int:
    from cmdeploy.cli import fail, load_config

    config = load_config(args)
    remote = Remote(args.ssh_host or config.mail_domain, ssh_config=args.ssh_config)
    print(f"chatmail domain: {config.mail_domain}")
    if config.has_privacy_contacts:
        print("privacy settings: present")
    else:
        print("no privacy settings")
    script = SCRIPT.format(services=" ".join(SERVICES), cert=config.tls_cert_path)
    try:
        out = remote.run(script).stdout
    except RemoteError as e:
        return fail(str(e))
    down = []
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if key in SERVICES:
            print(f"  {key:22} {value}")
            if value != "active":
                down.append(key)
        elif key == "cert":
            print(f"certificate expires: {value or 'unknown (no certificate?)'}")
        elif key == "queue":
            print(f"mail queue: {value} message(s)")
        elif key == "version":
            print(f"deployed version: {value or 'unknown'}")
    if down:
        return fail(f"not running: {', '.join(down)}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("status", help="show services, certificate and queue of the relay")
    p.add_argument("--ssh-host", help="connect to this host instead of mail_domain")
    p.set_defaults(func=status_cmd)
