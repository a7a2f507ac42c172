"""echobot: a Delta Chat bot at ``echo@<mail_domain>`` that sends every message back.

The account: ``echo`` is shorter than ``username_min_length``, so doveauth refuses to
create it on a login, and it should: short names are not for the public. Instead of an
exception in doveauth, the bot provisions its own account the way doveauth would have
created it, by writing the SHA512-CRYPT hash of its password to
``<mailboxes_dir>/echo@<domain>/password``. doveauth then serves it as an existing account
and the creation rules stay the same for everybody else.

``echobot provision [ini]`` does only that and needs write access to ``mailboxes_dir`` (the
systemd unit runs it as ``ExecStartPre=+``, as root); ``echobot [ini]`` runs the bot and
needs only its state directory, where the password (mode 0600) and the Delta Chat account
live. Run as root, both hand new files to the owner of their directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import string
import sys
from pathlib import Path

from .config import Config, User, read_config
from .fsutil import remove_stale_temporary_files, write_atomic
from .hashing import hash_password, verify_password

log = logging.getLogger("echobot")

LOCALPART = "echo"
DEFAULT_INI = "/usr/local/lib/chatmaild/chatmail.ini"
DEFAULT_STATE_DIR = "/var/lib/echobot"
HELP_TEXT = "Send me any message and I will echo it back."
# Letters and digits only: nothing to escape in Dovecot keys or IMAP LOGIN.
PASSWORD_CHARS = string.ascii_letters + string.digits
PASSWORD_LENGTH = 32


def bot_user(config: Config) -> User:
    return config.get_user(f"{LOCALPART}@{config.mail_domain}")


def _give_to_dir_owner(path: Path) -> None:
    # As root, files must belong to whoever owns the directory (vmail, echobot), because
    # that user runs the process that reads them.
    if os.geteuid() == 0:
        st = path.parent.stat()
        os.chown(path, st.st_uid, st.st_gid)


def load_password(config: Config, state_dir: Path) -> str:
    """The bot's password from ``state_dir``; generated and stored on first use."""
    path = Path(state_dir) / "password"
    try:
        password = path.read_text().strip()
    except FileNotFoundError:
        password = ""
    if len(password) >= config.password_min_length:
        return password
    length = max(PASSWORD_LENGTH, config.password_min_length)
    password = "".join(secrets.choice(PASSWORD_CHARS) for _ in range(length))
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    write_atomic(path, password, dir_owner=True)
    return password


def provision_account(config: Config, password: str) -> bool:
    """Make ``echo@<domain>`` log in with ``password``; True if the hash was (re)written."""
    user = bot_user(config)
    stored = user.get_password_hash()
    if stored is not None and verify_password(password, stored):
        return False
    if not user.maildir.exists():
        user.maildir.mkdir(mode=0o700)
        _give_to_dir_owner(user.maildir)
    write_atomic(user.password_path, hash_password(password), dir_owner=True)
    log.info("provisioned %s", user.addr)
    return True


def reply_for(snapshot) -> dict | None:
    """What to send back for a received message (``send_message`` arguments), or None."""
    if snapshot.is_info:
        return None
    text = snapshot.text or ""
    if text.strip() == "/help":
        return {"text": HELP_TEXT}
    if not text and not snapshot.file:
        return None
    reply = {"text": text or None}
    if snapshot.file:
        reply.update(file=snapshot.file, filename=snapshot.file_name, viewtype=snapshot.view_type)
    return reply


def on_new_message(event) -> None:
    snapshot = event.message_snapshot
    reply = reply_for(snapshot)
    if reply is not None:
        snapshot.chat.send_message(**reply)


def transport_params(config: Config, password: str) -> dict:
    """Delta Chat login settings of the bot's own account."""
    params = {
        "addr": bot_user(config).addr,
        "password": password,
        "imapServer": config.mail_domain,
        "smtpServer": config.mail_domain,
    }
    # Delta Chat trusts only the public web CAs: a certificate from a private ACME CA or an
    # operator's own CA would never verify, and the bot would never log in. It talks only to
    # the relay it runs on, so it relaxes the check there; with a public CA it stays strict.
    if config.acme_ca_file or config.tls_external_cert_and_key:
        params["certificateChecks"] = "acceptInvalidCertificates"
    return params


def write_invite(state_dir: Path, invite: str) -> Path:
    """Store the bot's SecureJoin invite as ``<state_dir>/invite`` (readable by all)."""
    path = state_dir / "invite"
    write_atomic(path, invite + "\n", mode=0o644)
    return path


def run_bot(config: Config, state_dir: Path, password: str) -> None:
    """Log in (configuring the account on first start) and echo forever."""
    from deltachat_rpc_client import Bot, DeltaChat, Rpc, events

    # systemd's PATH lacks the venv; the server binary comes with our dependencies.
    server = Path(sys.executable).parent / "deltachat-rpc-server"
    rpc_kwargs = {"rpc_server_path": str(server)} if server.exists() else {}
    with Rpc(accounts_dir=str(Path(state_dir) / "accounts"), **rpc_kwargs) as rpc:
        deltachat = DeltaChat(rpc)
        accounts = deltachat.get_all_accounts()
        account = accounts[0] if accounts else deltachat.add_account()
        bot = Bot(account, hooks=[(on_new_message, events.NewMessage(is_info=False))])
        if not bot.is_configured():
            account.set_config("bot", "1")
            account.set_config("displayname", "Echo Bot")
            # The bot runs on its relay: naming the servers skips autoconfig over HTTPS,
            # which may not be served yet while a deploy is still running.
            account.add_or_update_transport(transport_params(config, password))
        # Relays only carry encrypted mail, so a user first needs the bot's key: its
        # SecureJoin invite link is kept here.
        write_invite(Path(state_dir), account.get_qr_code())
        bot.run_forever()


def main(argv: list[str] | None = None) -> None:
    """``echobot [provision] [ini] [--state-dir DIR]``"""
    args = list(sys.argv[1:] if argv is None else argv)
    provision_only = bool(args) and args[0] == "provision"
    if provision_only:
        args.pop(0)
    parser = argparse.ArgumentParser(prog="echobot", description="Delta Chat echo bot")
    parser.add_argument("ini", nargs="?", default=DEFAULT_INI, help="chatmail.ini path")
    parser.add_argument("--state-dir", type=Path, default=Path(DEFAULT_STATE_DIR))
    opts = parser.parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = read_config(opts.ini)
    # Left by an earlier start killed while writing its password or invite.
    remove_stale_temporary_files(opts.state_dir)
    password = load_password(config, opts.state_dir)
    if provision_only:
        provision_account(config, password)
        return
    try:
        provision_account(config, password)
    except PermissionError:
        # The normal case under systemd: ExecStartPre=+ did it with the needed rights.
        log.info("no write access to %s, relying on 'echobot provision'", config.mailboxes_dir)
    run_bot(config, opts.state_dir, password)


if __name__ == "__main__":
    main()
