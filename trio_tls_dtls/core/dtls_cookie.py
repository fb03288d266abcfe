"""Stateless DTLS cookies: HMAC-SHA256 over the peer's address and its ClientHello (sans-IO).

A cookie is 32 bytes: one byte naming the secret's *epoch*, then the first
31 bytes of HMAC-SHA256(epoch key, address || ClientHello fields). Nothing is
stored per client; checking a cookie recomputes it.

Epoch keys come from one master secret: ``key(n) = HMAC-SHA256(master,
"trio-tlsd cookie key" || n)`` where ``n = floor(unix time / rotation
interval)``. So the key in use changes every interval (60 s by default) with
no coordination, a cookie from the previous interval is still accepted (a
client that got its HelloVerifyRequest just before the change is not
refused), and every process or host given the same master secret — from a
file, see :meth:`CookieSecrets.from_file` — issues and accepts the same
cookies. The next interval's key is accepted too, which absorbs clock skew of
up to one interval between hosts. Learning one epoch key reveals neither the
master nor any other epoch's key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
import secrets
from pathlib import Path

from .dtls_records import ClientHello, cookie_input
from .errors import CookieError
from .peer_info import Address

__all__ = [
    "COOKIE_SIZE",
    "MIN_SECRET_SIZE",
    "CookieSecrets",
    "new_secret_text",
    "write_secret_file",
]

COOKIE_SIZE = 32
MIN_SECRET_SIZE = 32
_LABEL = b"trio-tlsd cookie key"
_MAC_SIZE = COOKIE_SIZE - 1


class CookieSecrets:
    """Issues and verifies cookies from a master secret; see the module docstring."""

    __slots__ = ("_keys", "_master", "rotation_interval")

    def __init__(self, master: bytes, *, rotation_interval: float = 60.0) -> None:
        if len(master) < MIN_SECRET_SIZE:
            raise CookieError(
                f"a cookie secret needs at least {MIN_SECRET_SIZE} bytes, got {len(master)}"
            )
        if not (rotation_interval > 0 and math.isfinite(rotation_interval)):
            raise CookieError(f"cookie rotation interval must be positive, not {rotation_interval}")
        self._master = bytes(master)
        self.rotation_interval = float(rotation_interval)
        self._keys: dict[int, bytes] = {}

    @property
    def fingerprint(self) -> str:
        """A short public tag of the master secret: equal tags, shared secret.

        Logged at startup so an operator can check that workers and hosts
        behind one load balancer really share their secret. It is a hash
        prefix and reveals nothing usable about the secret.
        """
        return hashlib.sha256(b"trio-tlsd cookie fingerprint" + self._master).hexdigest()[:16]

    @classmethod
    def random(cls, *, rotation_interval: float = 60.0) -> CookieSecrets:
        """A fresh master secret, known to this process only."""
        return cls(secrets.token_bytes(MIN_SECRET_SIZE), rotation_interval=rotation_interval)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, rotation_interval: float = 60.0
    ) -> CookieSecrets:
        """The master secret in *path*: hex, base64, or raw bytes, at least 32 bytes of it."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise CookieError(f"cookie secret file not found: {path}") from None
        except OSError as exc:
            raise CookieError(f"cannot read cookie secret file {path}: {exc.strerror}") from None
        master = _decode_secret(raw)
        if len(master) < MIN_SECRET_SIZE:
            raise CookieError(
                f"cookie secret file {path} holds {len(master)} bytes of secret; "
                f"at least {MIN_SECRET_SIZE} are needed "
                "(make one with: trio-tlsd cookie-secret FILE)"
            )
        return cls(master, rotation_interval=rotation_interval)

    def epoch(self, now: float) -> int:
        return math.floor(now / self.rotation_interval)

    def _key(self, epoch: int) -> bytes:
        key = self._keys.get(epoch)
        if key is None:
            if len(self._keys) > 8:
                self._keys.clear()
            key = hmac.digest(
                self._master, _LABEL + epoch.to_bytes(8, "big", signed=True), "sha256"
            )
            self._keys[epoch] = key
        return key

    def _mac(self, epoch: int, address: Address, hello: ClientHello) -> bytes:
        host, port = address[0], address[1]
        message = b"%s|%d|" % (host.encode(), port) + cookie_input(hello)
        return hmac.digest(self._key(epoch), message, "sha256")[:_MAC_SIZE]

    def generate(self, address: Address, hello: ClientHello, now: float) -> bytes:
        """The cookie for *hello* from *address* at time *now* (unix seconds)."""
        epoch = self.epoch(now)
        return bytes([epoch & 0xFF]) + self._mac(epoch, address, hello)

    def verify(self, cookie: bytes, address: Address, hello: ClientHello, now: float) -> bool:
        """Whether *cookie* was issued for *hello* from *address* in this epoch or next to it."""
        if len(cookie) != COOKIE_SIZE:
            return False
        current = self.epoch(now)
        for epoch in (current, current - 1, current + 1):
            if cookie[0] == epoch & 0xFF:
                return hmac.compare_digest(cookie[1:], self._mac(epoch, address, hello))
        return False


def _decode_secret(raw: bytes) -> bytes:
    """Hex or base64 text (surrounding whitespace ignored), else the raw bytes."""
    text = raw.strip()
    if text and all(32 < byte < 127 for byte in text):
        try:
            return bytes.fromhex(text.decode("ascii"))
        except ValueError:
            pass
        try:
            return base64.b64decode(text, validate=True)
        except binascii.Error:
            pass
    return raw


def new_secret_text() -> str:
    """A new random master secret as the files hold it: hex, one line."""
    return secrets.token_hex(MIN_SECRET_SIZE) + "\n"


def write_secret_file(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write a new random master secret to *path* as hex, readable by its owner only."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise CookieError(f"{path} already exists (refusing to overwrite it)") from None
    except OSError as exc:
        raise CookieError(f"cannot write cookie secret file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as file:
        file.write(new_secret_text())
    return path
