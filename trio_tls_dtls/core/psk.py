"""Pre-shared keys (RFC 4279): the PSK file, the server's key table, the suites.

The IoT case: devices that hold a symmetric key and an identity instead of a
certificate (CoAP and LwM2M over DTLS 1.2 mandate PSK suites). OpenSSL asks
for the key from a callback (:mod:`._ossl_callbacks`); this module holds
everything around it that is plain Python: parsing and checking the file,
the table the callback reads, and which cipher suites to offer.

The PSK file
------------
One ``IDENTITY:HEXKEY`` per line; blank lines and lines starting with ``#``
are ignored. The identity is everything before the *last* colon, so URN
identities (``urn:dev:mac:0004a30b001a2b3c``) work. The file holds secrets:
it is refused if its group or other users have any permission on it, and it
is read whenever the contexts are built, so a reload picks up a new key.

Timing
------
The identity is not a secret: TLS 1.2 sends it in clear in the
ClientKeyExchange. The key is, and it is never compared with anything the
peer sends: OpenSSL derives the session keys from it, and a wrong key shows
up as a Finished message (or a TLS 1.3 binder) that does not verify. The
lookup is a ``dict`` keyed by the identity. Python hashes the identity with
SipHash under a per-process random key, so where an identity lands, and
which entries it is compared with, is not something a peer can steer; the
only byte comparison that runs is against an entry whose 64-bit hash already
matched, i.e. the same identity. An identity that is not in the table gets a
*decoy* key in TLS 1.2 (random, made once per table): the handshake then
fails at the Finished message exactly as a wrong key does, with the same
alert and the same amount of work, so a peer cannot tell "unknown identity"
from "wrong key" (RFC 4279 section 2 allows either). In TLS 1.3 an unknown
identity is ignored as RFC 8446 asks (the server may go on with a
certificate, or with a session ticket, which travels in the same field).
"""

from __future__ import annotations

import secrets
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

from .errors import ConfigError
from .pem_files import read_file

__all__ = [
    "DEFAULT_PSK_CIPHERS",
    "MAX_PSK_BYTES",
    "MAX_PSK_IDENTITY_BYTES",
    "MIN_PSK_BYTES",
    "PSKTable",
    "check_identity",
    "check_key",
    "load_psk_file",
]

# TLS 1.2 / DTLS 1.2 PSK suites, AEAD only. ECDHE-PSK first: it alone gives
# forward secrecy (a key stolen later does not decrypt recorded traffic);
# OpenSSL has no ECDHE-PSK suite with AES-GCM. PSK-AES128-CCM8 is last: its
# 8-byte tag is weaker, but RFC 7252 (CoAP) makes it the suite every
# constrained device has.
DEFAULT_PSK_CIPHERS = ":".join(
    [
        "ECDHE-PSK-CHACHA20-POLY1305",
        "PSK-AES128-GCM-SHA256",
        "PSK-AES256-GCM-SHA384",
        "PSK-CHACHA20-POLY1305",
        "PSK-AES128-CCM",
        "PSK-AES128-CCM8",
    ]
)

# A key shorter than 128 bits can be found offline from one recorded
# handshake; OpenSSL's own buffer takes up to 512 bytes, 64 is plenty.
MIN_PSK_BYTES, MAX_PSK_BYTES = 16, 64
# OpenSSL accepts identities of up to 256 bytes; 128 keeps log lines sane.
MAX_PSK_IDENTITY_BYTES = 128


def check_identity(identity: object, where: str) -> str:
    """*identity* if it is a usable PSK identity, else a ConfigError naming *where*.

    Printable UTF-8 without spaces: it travels as a C string, and it is one
    field of the access log line.
    """
    if not isinstance(identity, str):
        raise ConfigError(f"{where}: a PSK identity must be a string, not {identity!r}")
    size = len(identity.encode())
    if not 0 < size <= MAX_PSK_IDENTITY_BYTES:
        raise ConfigError(
            f"{where}: a PSK identity must be 1-{MAX_PSK_IDENTITY_BYTES} bytes, not {size}"
        )
    if not identity.isprintable() or any(ch.isspace() for ch in identity):
        raise ConfigError(f"{where}: PSK identity {identity!r} has spaces or control characters")
    return identity


def check_key(key: object, where: str) -> bytes:
    """*key* as bytes if it is a usable PSK, else a ConfigError naming *where*."""
    if not isinstance(key, bytes | bytearray):
        raise ConfigError(f"{where}: a PSK must be bytes, not {type(key).__name__}")
    if not MIN_PSK_BYTES <= len(key) <= MAX_PSK_BYTES:
        raise ConfigError(
            f"{where}: a PSK must be {MIN_PSK_BYTES}-{MAX_PSK_BYTES} bytes "
            f"({2 * MIN_PSK_BYTES}-{2 * MAX_PSK_BYTES} hex digits), not {len(key)}"
        )
    return bytes(key)


class PSKTable(Mapping[str, bytes]):
    """Identity → key, read by OpenSSL's callback from any handshake thread.

    Immutable once made (a reload builds a new one with the new contexts),
    so threads need no lock. See the module docstring for the timing choices.
    """

    __slots__ = ("_decoy", "_keys")

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        self._keys = {
            check_identity(identity, "psk_keys").encode(): check_key(key, f"psk_keys[{identity!r}]")
            for identity, key in keys.items()
        }
        self._decoy = secrets.token_bytes(32)

    def key_for(self, identity: bytes) -> bytes | None:
        """The key for *identity* as the peer sent it, or None."""
        return self._keys.get(identity)

    @property
    def decoy(self) -> bytes:
        """A random key no peer has: what an unknown TLS 1.2 identity gets."""
        return self._decoy

    def __getitem__(self, identity: str) -> bytes:
        return self._keys[identity.encode()]

    def __iter__(self) -> Iterator[str]:
        return (identity.decode() for identity in self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:  # never the keys
        return f"PSKTable({len(self._keys)} identities)"


def _refuse_if_exposed(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:  # pragma: no cover - read_file just read it
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"psk_file {path} is open to other users (mode {stat.S_IMODE(mode):o}): "
            "it holds secret keys; chmod 600 it"
        )


def _parse_line(line: str, where: str) -> tuple[str, bytes]:
    identity, colon, hexkey = line.rpartition(":")
    if not colon or not identity:
        raise ConfigError(f"{where}: expected IDENTITY:HEXKEY")
    try:
        key = bytes.fromhex(hexkey.strip())
    except ValueError:
        raise ConfigError(f"{where}: the key after the last ':' is not hexadecimal") from None
    return check_identity(identity.strip(), where), check_key(key, where)


def load_psk_file(path: Path) -> dict[str, bytes]:
    """The identities and keys in *path*; ConfigError names the file and line at fault."""
    data = read_file(path, "psk_file")
    _refuse_if_exposed(path)
    keys: dict[str, bytes] = {}
    first_seen: dict[str, int] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        where = f"psk_file {path} line {number}"
        try:
            line = raw.decode().strip()
        except UnicodeDecodeError:
            raise ConfigError(f"{where}: not UTF-8 text") from None
        if not line or line.startswith("#"):
            continue
        identity, key = _parse_line(line, where)
        if identity in keys:
            raise ConfigError(
                f"{where}: identity {identity!r} again (first on line {first_seen[identity]})"
            )
        keys[identity] = key
        first_seen[identity] = number
    if not keys:
        raise ConfigError(f"psk_file {path} lists no IDENTITY:HEXKEY lines")
    return keys
