"""chatmail.ini, parsed once into a typed :class:`Config`.

Every service gets the Config object from its command line and passes it down; nothing
else reads the ini file.
"""

from __future__ import annotations

import configparser
import dataclasses
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .user import User, check_addr

log = logging.getLogger(__name__)

SECTION = "params"

# Labels of letters, digits, '-' and '_' (lab relays use '_relay1.lab'), at least two labels.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?"
_DOMAIN_RE = re.compile(rf"^(?:{_LABEL}\.)+{_LABEL}$")
_SIZE_RE = re.compile(r"^(\d+)\s*([kmg]?)b?$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

# Localparts allowed at account creation (newest reference rule).
LOCALPART_RE = re.compile(r"^[a-z0-9._-]+$")


class ConfigError(ValueError):
    """A chatmail.ini that cannot be used; the message names key and value."""


def parse_size(text: str) -> int:
    """Parse ``500M``, ``1G``, ``200MB``, ``31457280`` into bytes."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 500M, 1G or a number of bytes)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def is_valid_domain(domain: str) -> bool:
    return len(domain) <= 253 and bool(_DOMAIN_RE.match(domain))


def _domain(text: str) -> str:
    domain = text.strip().lower().rstrip(".")
    if not is_valid_domain(domain):
        raise ValueError(f"not a valid domain name: {text!r}")
    return domain


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise ValueError(f"must be at least 1: {text!r}")
    return value


def _port(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= 65535:
        raise ValueError(f"not a TCP port: {text!r}")
    return value


def _float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off", ""):
        return False
    raise ValueError(f"not a boolean (true/false): {text!r}")


def _size(text: str) -> int:
    return parse_size(text)


def _str(text: str) -> str:
    return text.strip()


def _abs_path(text: str) -> Path:
    path = Path(text.strip())
    if not path.is_absolute():
        raise ValueError(f"not an absolute path: {text!r}")
    return path


def _url(text: str) -> str:
    value = text.strip()
    if not re.match(r"^https?://[^\s/]+", value):
        raise ValueError(f"not an http(s) URL: {text!r}")
    return value


def _dovecot_package(text: str) -> str:
    if text not in ("patched", "stock"):
        raise ValueError(
            "expected 'patched' (Dovecot rebuilt without the 500 ms IDLE delay) "
            "or 'stock' (Debian's package)"
        )
    return text


def _forward_zones(text: str) -> tuple[tuple[str, str], ...]:
    zones = []
    for item in text.split():
        zone, sep, server = item.partition("@")
        if (
            not sep
            or not re.match(r"^[a-z0-9_.-]+$", zone)
            or not re.match(r"^[0-9a-f.:]+$", server)
        ):
            raise ValueError(f"expected ZONE@IP items like 'lab@10.77.0.1', got {item!r}")
        zones.append((zone.strip("."), server))
    return tuple(zones)


def _addresses(text: str) -> frozenset[str]:
    addrs = text.split()
    for addr in addrs:
        if addr.count("@") != 1 or addr.startswith("@") or addr.endswith("@"):
            raise ValueError(f"not an address: {addr!r}")
    return frozenset(a.lower() for a in addrs)


def _cert_and_key(text: str) -> tuple[Path, Path] | None:
    parts = text.split()
    if not parts:
        return None
    if len(parts) != 2:
        raise ValueError(f"expected two absolute paths 'CERT KEY', got {text!r}")
    cert, key = (_abs_path(p) for p in parts)
    return cert, key


LETSENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"


def _key(parse, default: str | None):
    """An ini key: its parser and its default as ini text (None: absent unless set)."""
    return field(metadata={"parse": parse, "default": default})


@dataclass(frozen=True)
class Config:
    """All settings of one relay. Sizes are bytes, durations are days."""

    mail_domain: str = _key(_domain, None)
    max_user_send_per_minute: int = _key(_positive_int, "60")
    max_user_send_burst_size: int = _key(_positive_int, "10")
    max_mailbox_size: int = _key(_size, "500M")
    max_message_size: int = _key(_size, "31457280")
    delete_mails_after: int = _key(_positive_int, "20")
    delete_large_after: int = _key(_positive_int, "7")
    delete_inactive_users_after: int = _key(_positive_int, "90")
    username_min_length: int = _key(_positive_int, "9")
    username_max_length: int = _key(_positive_int, "9")
    password_min_length: int = _key(_positive_int, "9")
    max_new_accounts_per_ip_per_hour: int = _key(_positive_int, "60")
    max_new_accounts_per_ip_burst: int = _key(_positive_int, "100")
    max_load_1m: float = _key(_float, "5")
    min_available_memory: int = _key(_size, "200M")
    min_free_disk_space: int = _key(_size, "1G")
    max_imap_connections: int = _key(_positive_int, "10000")
    max_smtp_connections: int = _key(_positive_int, "1000")
    tls_external_cert_and_key: tuple[Path, Path] | None = _key(_cert_and_key, "")
    www_folder: str = _key(_str, "")
    acme_email: str = _key(_str, "")
    acme_directory_url: str = _key(_url, LETSENCRYPT_DIRECTORY)
    acme_ca_file: str = _key(_str, "")
    disable_ipv6: bool = _key(_bool, "false")
    mxdeliv_outgoing: bool = _key(_bool, "true")
    imap_rawlog: bool = _key(_bool, "false")
    imap_compress: bool = _key(_bool, "false")
    dovecot_package: str = _key(_dovecot_package, "patched")
    dovecot_allow_outdated_source: bool = _key(_bool, "false")
    iroh_relay: str | None = _key(_str, None)
    mtail_address: str | None = _key(_str, None)
    filtermail_smtp_port: int = _key(_port, "10080")
    filtermail_smtp_port_incoming: int = _key(_port, "10081")
    filtermail_http_port_incoming: int = _key(_port, "10082")
    mxdeliv_transport_port: int = _key(_port, "10083")
    postfix_reinject_port: int = _key(_port, "10025")
    postfix_reinject_port_incoming: int = _key(_port, "10026")
    postfix_reinject_port_local: int = _key(_port, "10027")
    notification_url: str = _key(_url, "https://notifications.delta.chat/notify")
    privacy_postal: str = _key(_str, "")
    privacy_mail: str = _key(_str, "")
    privacy_pdo: str = _key(_str, "")
    privacy_supervisor: str = _key(_str, "")
    mailboxes_dir: Path = _key(_abs_path, None)
    nocreate_file: Path = _key(_abs_path, "/etc/chatmail-nocreate")
    dns_forward_zones: tuple[tuple[str, str], ...] = _key(_forward_zones, "")
    rate_limit_exempt: frozenset[str] = _key(_addresses, "")
    # Not ini keys: where the file came from and what in it was not understood.
    config_path: Path | None = None
    unknown_keys: tuple[str, ...] = field(default=())

    @property
    def max_mailbox_size_mb(self) -> int:
        return self.max_mailbox_size // 1024**2

    @property
    def tls_cert_mode(self) -> str:
        """``external``, ``self`` (underscore lab domains) or ``acme``."""
        if self.tls_external_cert_and_key:
            return "external"
        if self.mail_domain.startswith("_"):
            return "self"
        return "acme"

    @property
    def tls_cert_path(self) -> Path:
        mode = self.tls_cert_mode
        if mode == "external":
            return self.tls_external_cert_and_key[0]
        if mode == "self":
            return Path("/etc/ssl/certs/mailserver.pem")
        return Path(f"/var/lib/acme/live/{self.mail_domain}/fullchain")

    @property
    def tls_key_path(self) -> Path:
        mode = self.tls_cert_mode
        if mode == "external":
            return self.tls_external_cert_and_key[1]
        if mode == "self":
            return Path("/etc/ssl/private/mailserver.key")
        return Path(f"/var/lib/acme/live/{self.mail_domain}/privkey")

    @property
    def has_privacy_contacts(self) -> bool:
        return bool(self.privacy_mail or self.privacy_postal)

    def get_user(self, addr: str) -> User:
        """The account ``addr`` of this relay; ValueError for anything that is not one."""
        return User(self, check_addr(addr, self.mail_domain))

    def is_localpart_allowed(self, localpart: str) -> bool:
        """Whether a new account may use this local part (length and charset)."""
        return (
            self.username_min_length <= len(localpart) <= self.username_max_length
            and LOCALPART_RE.match(localpart) is not None
        )


# key -> (parser, default as ini text), in the order of the Config fields.
_KEYS: dict[str, tuple] = {
    f.name: (f.metadata["parse"], f.metadata["default"])
    for f in dataclasses.fields(Config)
    if "parse" in f.metadata
}


def parse_config(text: str, path: Path | None = None, overrides: dict | None = None) -> Config:
    """Parse ini text; ConfigError names the offending key and value."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    where = str(path) if path else "chatmail.ini"
    try:
        parser.read_string(text, source=where)
    except configparser.Error as e:
        raise ConfigError(f"{where}: cannot parse: {e}") from None
    if not parser.has_section(SECTION):
        raise ConfigError(f"{where}: missing the [{SECTION}] section")
    raw = dict(parser.items(SECTION))
    if overrides:
        raw.update({k: str(v) for k, v in overrides.items()})

    values = {}
    for key, (conv, default) in _KEYS.items():
        text_value = raw.get(key, default)
        if text_value is None:
            values[key] = None
            continue
        try:
            values[key] = conv(text_value)
        except ValueError as e:
            raise ConfigError(f"{where}: invalid value for {key} = {text_value!r}: {e}") from None

    if values["mail_domain"] is None:
        raise ConfigError(f"{where}: mail_domain is required, e.g. mail_domain = chat.example.org")
    if values["mailboxes_dir"] is None:
        values["mailboxes_dir"] = Path("/home/vmail/mail") / values["mail_domain"]
    if values["username_min_length"] > values["username_max_length"]:
        raise ConfigError(
            f"{where}: username_min_length = {values['username_min_length']} is larger "
            f"than username_max_length = {values['username_max_length']}"
        )

    # Unknown keys are the caller's to report (cmdeploy warns about them once).
    unknown = tuple(sorted(set(raw) - set(_KEYS)))
    return Config(**values, config_path=path, unknown_keys=unknown)


def read_config(path, overrides: dict | None = None) -> Config:
    """Read and parse a chatmail.ini file."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist, create it with 'cmdeploy init'"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    return parse_config(text, path=path, overrides=overrides)


def known_keys() -> list[str]:
    return list(_KEYS)


def replace(config: Config, **changes) -> Config:
    """A copy of ``config`` with some fields changed (tests, overrides)."""
    return dataclasses.replace(config, **changes)


def render_initial_config(mail_domain: str, overrides: dict | None = None) -> str:
    """The commented chatmail.ini that ``cmdeploy init`` writes."""
    template = (Path(__file__).parent / "ini" / "chatmail.ini.f").read_text("utf-8")
    text = template.replace("{mail_domain}", mail_domain)
    if overrides:
        lines = text.splitlines()
        pending = dict(overrides)
        for i, line in enumerate(lines):
            key = line.split("=", 1)[0].strip().lstrip("#").strip()
            if "=" in line and key in pending:
                lines[i] = f"{key} = {pending.pop(key)}"
        lines.extend(f"{key} = {value}" for key, value in pending.items())
        text = "\n".join(lines) + "\n"
    parse_config(text)  # never write a file we could not read back
    return text
