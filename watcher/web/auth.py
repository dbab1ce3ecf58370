"""Who may read the HTTP endpoints: bearer tokens and basic auth with an scrypt password hash.

Pure and stdlib-only (config validation imports it). `python -m watcher.web.auth` prints a
hash for `http.auth.basic.password_hash`.

Hash format (PHC string, as passlib and libsodium write scrypt):
`$scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt>$<key>`, salt and key in unpadded standard base64,
key 32 bytes from `hashlib.scrypt`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass

from watcher.model import HttpAuth

__all__ = [
    "PasswordHash",
    "Verifier",
    "hash_password",
    "is_loopback",
    "parse_password_hash",
]

_PHC = re.compile(
    r"\$scrypt\$ln=(?P<ln>\d{1,2}),r=(?P<r>\d{1,2}),p=(?P<p>\d{1,2})"
    r"\$(?P<salt>[A-Za-z0-9+/]{11,})\$(?P<key>[A-Za-z0-9+/]{43})"
)
_KEY_BYTES = 32
_DEFAULT_LN, _DEFAULT_R, _DEFAULT_P = 15, 8, 1  # N=32768: ~0.1 s, 32 MiB, per OWASP


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """A parsed `$scrypt$` hash."""

    ln: int
    r: int
    p: int
    salt: bytes
    key: bytes

    def matches(self, password: str) -> bool:
        derived = _scrypt(password, self.salt, self.ln, self.r, self.p)
        return hmac.compare_digest(derived, self.key)


def parse_password_hash(text: str) -> PasswordHash:
    """The hash in `text`; ValueError says what is wrong (never echoing the text)."""
    match = _PHC.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            "expected an scrypt hash like $scrypt$ln=15,r=8,p=1$SALT$KEY "
            "(make one with: python -m watcher.web.auth)"
        )
    ln, r, p = int(match["ln"]), int(match["r"]), int(match["p"])
    if not (10 <= ln <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
        raise ValueError("scrypt parameters out of range (ln 10..20, r 1..32, p 1..16)")
    try:
        salt, key = _b64decode(match["salt"]), _b64decode(match["key"])
    except (binascii.Error, ValueError):
        raise ValueError("the salt or key of the scrypt hash is not valid base64") from None
    if len(key) != _KEY_BYTES:
        raise ValueError(f"the key of the scrypt hash must be {_KEY_BYTES} bytes")
    return PasswordHash(ln, r, p, salt, key)


def hash_password(
    password: str, *, ln: int = _DEFAULT_LN, r: int = _DEFAULT_R, p: int = _DEFAULT_P
) -> str:
    """A fresh `$scrypt$` hash of `password` with a random 16-byte salt."""
    salt = os.urandom(16)
    key = _scrypt(password, salt, ln, r, p)
    return f"$scrypt$ln={ln},r={r},p={p}${_b64encode(salt)}${_b64encode(key)}"


def is_loopback(host: str) -> bool:
    """Whether a listen host is reachable only from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to anything


class Verifier:
    """Decides whether an `Authorization` header value grants access under `auth`.

    A scrypt check costs ~0.1 s of CPU, and the page refreshes every few seconds: headers
    that passed are remembered by their SHA-256 (never the password), a bounded few.
    """

    def __init__(self, auth: HttpAuth, remember: int = 32) -> None:
        self._auth = auth
        self._hash = (
            parse_password_hash(auth.basic_password_hash.reveal())
            if auth.basic_password_hash is not None
            else None
        )
        self._token_digest = (
            hashlib.sha256(auth.token.reveal().encode()).digest() if auth.token else None
        )
        self._passed: OrderedDict[bytes, None] = OrderedDict()
        self._remember = remember

    def allows(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            return self._token_matches(value)
        if scheme.lower() != "basic":
            return False
        seen = hashlib.sha256(header.encode("utf-8", "surrogatepass")).digest()
        if seen in self._passed:
            self._passed.move_to_end(seen)
            return True
        if not self._basic_matches(value):
            return False
        self._passed[seen] = None
        while len(self._passed) > self._remember:
            self._passed.popitem(last=False)
        return True

    def _token_matches(self, token: str) -> bool:
        if self._token_digest is None or not token:
            return False
        return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self._token_digest)

    def _basic_matches(self, value: str) -> bool:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        # A browser can only prompt for user and password: the token works as the password.
        if self._token_matches(password):
            return True
        if self._hash is None or self._auth.basic_user is None:
            return False
        user_ok = hmac.compare_digest(user.encode(), self._auth.basic_user.encode())
        password_ok = self._hash.matches(password)  # always run: no timing hint on the user
        return user_ok and password_ok


def _scrypt(password: str, salt: bytes, ln: int, r: int, p: int) -> bytes:
    n = 1 << ln
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=256 * n * r + (1 << 20),
        dklen=_KEY_BYTES,
    )


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def main() -> int:
    """Prompt for a password twice (or read one line from a pipe) and print its hash."""
    if sys.stdin.isatty():
        import getpass  # termios and all: only this prompt needs it

        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        print("use at least 8 characters", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


if __name__ == "__main__":
    sys.exit(main())
