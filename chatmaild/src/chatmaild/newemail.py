#!/usr/local/lib/chatmaild/venv/bin/python3
"""``/new``: hand out credentials for a fresh random account (a CGI program).

nginx passes ``/new`` to fcgiwrap, which runs this file. POST answers
``{"email": …, "password": …}``; the account itself is created by doveauth on the first
login, so the local part obeys doveauth's rules (``username_max_length`` characters of
``a-z0-9``) and the password is longer than ``password_min_length``. GET (a browser or a
scanned link) is redirected to ``dcaccount:https://<domain>/new`` for Delta Chat.
The config is ``/usr/local/lib/chatmaild/chatmail.ini`` unless ``$CHATMAIL_INI`` says
otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import sys

# Absolute import: fcgiwrap runs this file as a script, not as part of the package.
from chatmaild.config import Config, read_config

DEFAULT_INI = "/usr/local/lib/chatmaild/chatmail.ini"
LOCALPART_CHARS = string.ascii_lowercase + string.digits
PASSWORD_CHARS = string.ascii_letters + string.digits + string.punctuation


def create_credentials(config: Config) -> dict[str, str]:
    """A random address of this relay and a password, both from a CSPRNG."""
    localpart = "".join(secrets.choice(LOCALPART_CHARS) for _ in range(config.username_max_length))
    password = "".join(
        secrets.choice(PASSWORD_CHARS) for _ in range(config.password_min_length + 3)
    )
    return {"email": f"{localpart}@{config.mail_domain}", "password": password}


def respond(config: Config, method: str) -> str:
    """The complete CGI response (headers, blank line, body) for ``method``."""
    if method == "POST":
        body = json.dumps(create_credentials(config))
        return f"Content-Type: application/json\n\n{body}\n"
    if method in ("GET", "HEAD"):
        return (
            "Status: 302 Found\n"
            f"Location: dcaccount:https://{config.mail_domain}/new\n"
            "Content-Type: text/plain\n\n"
        )
    return "Status: 405 Method Not Allowed\nAllow: GET, POST\nContent-Type: text/plain\n\n"


def main() -> None:
    config = read_config(os.environ.get("CHATMAIL_INI", DEFAULT_INI))
    # CGI (RFC 3875): a request without REQUEST_METHOD is someone running it by hand;
    # they want credentials, as the seed's script printed them.
    method = os.environ.get("REQUEST_METHOD", "POST").upper()
    sys.stdout.write(respond(config, method))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
