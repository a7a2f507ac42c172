"""Where chatmaild lives on the relay and where its services meet Dovecot and Postfix.

One place for paths that a deployer writes or starts a service with and that another
component's config names too. Every template gets this module as ``paths``
(``{{ paths.DOVEAUTH_SOCKET }}``), so a path is changed here and nowhere else.

chatmaild's Config names none of these: each service gets its socket and chatmail.ini on
its command line. Only chatmaild's own default for chatmail.ini (``DEFAULT_INI`` of its
command-line tools) repeats ``INI``; tests/test_deploy_inputs.py checks that they agree.
"""

from __future__ import annotations

# chatmaild: the venv with the wheel that ``cmdeploy run`` builds, and the relay's config.
BASE = "/usr/local/lib/chatmaild"
VENV = f"{BASE}/venv"
DIST = f"{BASE}/dist"
INI = f"{BASE}/chatmail.ini"

# The dict services Dovecot asks (dovecot/auth.conf.j2, dovecot/dovecot.conf.j2); systemd
# socket units listen on them (services/daemon.socket.j2).
DOVEAUTH_SOCKET = "/run/doveauth/doveauth.socket"
LASTLOGIN_SOCKET = "/run/chatmail-lastlogin/lastlogin.socket"
METADATA_SOCKET = "/run/chatmail-metadata/metadata.socket"

# Postfix's queue directory, the chroot of its smtpd: paths in master.cf and main.cf are
# relative to it.
POSTFIX_QUEUE_DIR = "/var/spool/postfix"

# SASL: Postfix's smtpd -> chatmail-saslproxy -> Dovecot's auth. The proxy's socket is in
# Postfix's chroot; Dovecot's listener is a name in Dovecot's base_dir (/run/dovecot).
SASL_DIR = f"{POSTFIX_QUEUE_DIR}/chatmail-sasl"
SASL_SOCKET = f"{SASL_DIR}/auth"
DOVECOT_SASL_LISTENER = "chatmail-sasl"
DOVECOT_SASL_SOCKET = f"/run/dovecot/{DOVECOT_SASL_LISTENER}"

# Dovecot's LMTP listener, where Postfix delivers local mail.
LMTP_SOCKET = f"{POSTFIX_QUEUE_DIR}/private/dovecot-lmtp"


def in_postfix_queue(path: str) -> str:
    """``path`` as Postfix's smtpd and lmtp client name it: relative to the queue directory."""
    prefix = POSTFIX_QUEUE_DIR + "/"
    if not path.startswith(prefix):
        raise ValueError(f"{path} is not inside {POSTFIX_QUEUE_DIR}")
    return path.removeprefix(prefix)
