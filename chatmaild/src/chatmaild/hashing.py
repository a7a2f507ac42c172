"""SHA512-CRYPT password hashes in the format Dovecot verifies (``{SHA512-CRYPT}$6$…``).

The stdlib ``crypt`` module is gone in Python 3.13, so we call libxcrypt's ``crypt_rn``
(``libcrypt.so.1``, part of every Debian system) through ctypes. ``crypt_rn`` is reentrant
and ctypes drops the GIL during the call, so hashing runs in parallel across threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import secrets

SCHEME_PREFIX = "{SHA512-CRYPT}"

# crypt(3) salt alphabet; 16 characters is the maximum for $6$ (glibc/libxcrypt).
_SALT_CHARS = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SALT_LEN = 16
# sizeof(struct crypt_data) in libxcrypt (CRYPT_DATA_RESERVED_SIZE etc. add up to 32768).
_CRYPT_DATA_SIZE = 32768


def _load_libcrypt():
    name = ctypes.util.find_library("crypt") or "libcrypt.so.1"
    lib = ctypes.CDLL(name, use_errno=True)
    fn = lib.crypt_rn
    fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
    fn.restype = ctypes.c_char_p
    return fn


_crypt_rn = _load_libcrypt()


def crypt(password: str, setting: str) -> str:
    """crypt(3) of ``password`` with ``setting`` (e.g. ``$6$salt``); ValueError on failure."""
    if "\x00" in password:
        raise ValueError("password contains a NUL byte")
    data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
    result = _crypt_rn(password.encode("utf-8"), setting.encode("ascii"), data, _CRYPT_DATA_SIZE)
    if not result or result.startswith(b"*"):
        raise ValueError("crypt failed for the given setting")
    return result.decode("ascii")


def hash_password(password: str) -> str:
    """A new ``{SHA512-CRYPT}`` hash with a random salt."""
    salt = "".join(secrets.choice(_SALT_CHARS) for _ in range(_SALT_LEN))
    return SCHEME_PREFIX + crypt(password, f"$6${salt}")


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a hash made by :func:`hash_password`."""
    if not stored.startswith(SCHEME_PREFIX):
        return False
    digest = stored[len(SCHEME_PREFIX) :]
    try:
        return secrets.compare_digest(crypt(password, digest), digest)
    except ValueError:
        return False
