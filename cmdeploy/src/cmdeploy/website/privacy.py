"""The privacy check of ``cmdeploy run``, made before it changes anything.

A public relay's privacy page must name who runs it and how to reach them.
"""

from __future__ import annotations

from chatmaild.config import Config, ConfigError


class PrivacyContactError(ConfigError):
    """A public relay without the contacts its privacy page must name."""


def is_test_domain(domain: str) -> bool:
    """Lab and test relays use underscore domains, which no public DNS name can have."""
    return domain.startswith("_")


def check_privacy(config: Config) -> None:
    """Raise PrivacyContactError when a public relay lacks privacy contacts.

    A privacy page must name who runs the relay (``privacy_postal``) and how to reach them
    (``privacy_mail``); ``cmdeploy run`` calls this before changing anything.
    """
    if is_test_domain(config.mail_domain):
        return
    missing = [key for key in ("privacy_mail", "privacy_postal") if not getattr(config, key)]
    where = config.config_path or "chatmail.ini"
    if missing:
        raise PrivacyContactError(
            f"{where}: set {' and '.join(missing)} so the privacy page of "
            f"{config.mail_domain} names who runs it and how to reach them "
            "(only test domains starting with '_' may leave them empty)"
        )
    if "@" not in config.privacy_mail:
        raise PrivacyContactError(
            f"{where}: privacy_mail = {config.privacy_mail!r} is not a mail address, "
            "set it to the address visitors should write to about their data"
        )
