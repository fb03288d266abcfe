"""Settings: plain frozen dataclasses, validated when made.

Settings hold values and paths only. Turning them into pyOpenSSL contexts
(reading files, checking keys against certificates) is :mod:`.context`'s job,
so that a settings object can be made, printed and compared without touching
the disk. Every error is a :class:`~trio_tls_dtls.core.errors.ConfigError` whose
message names the setting.
"""

from __future__ import annotations

import enum
import math
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .client_identity import ClientIdentityRules
from .errors import ConfigError
from .networks import Network, address_in, parse_networks
from .path_fields import OptionalPathField, PathInput, as_path, show_path_inputs
from .psk import DEFAULT_PSK_CIPHERS, check_identity, check_key

__all__ = [
    "DEFAULT_DTLS_MTU",
    "DEFAULT_PROXY_TRUSTED",
    "DEFAULT_PSK_CIPHERS",
    "DEFAULT_TLS12_CIPHERS",
    "MAX_DTLS_MTU",
    "MIN_DTLS_MTU",
    "CertificateSettings",
    "ClientSettings",
    "OffloadSettings",
    "ServerSettings",
    "TLSVersion",
    "VerifyClient",
]

TLSVersion = Literal["1.2", "1.3"]
_VERSIONS: tuple[TLSVersion, ...] = ("1.2", "1.3")

# TLS 1.2 suites: forward secret AEAD only (Mozilla's "intermediate" list).
# TLS 1.3 suites are all AEAD and OpenSSL's defaults are already right.
DEFAULT_TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)


class VerifyClient(enum.StrEnum):
    """Whether the server asks for, and insists on, a client certificate."""

    NONE = "none"
    """Do not ask for a client certificate."""
    OPTIONAL = "optional"
    """Ask; a client may decline, but a certificate it does send must verify."""
    REQUIRED = "required"
    """Ask and refuse the handshake without a valid client certificate."""


def _password(value: str | bytes | None, name: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise ConfigError(f"{name} must be a string, not {type(value).__name__}")


def _positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds, not {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def _non_negative(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds, not {value!r}")
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be 0 or a positive number of seconds, not {value!r}")
    return float(value)


def _optional_positive(value: float | None, name: str) -> float | None:
    return None if value is None else _positive(value, name)


def _rate(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number per second, not {value!r}")
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be 0 (no limit) or a positive number, not {value!r}")
    return float(value)


def _count(value: int, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, not {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value}")
    return value


def _versions(minimum: str, maximum: str, owner: str) -> None:
    for name, value in (("min_version", minimum), ("max_version", maximum)):
        if value not in _VERSIONS:
            raise ConfigError(
                f"{owner}.{name} must be one of {', '.join(_VERSIONS)}, not {value!r}"
            )
    if _VERSIONS.index(minimum) > _VERSIONS.index(maximum):
        raise ConfigError(f"{owner}.min_version {minimum} is above max_version {maximum}")


def _alpn(protocols: tuple[str, ...], owner: str) -> tuple[str, ...]:
    protocols = tuple(protocols)
    for proto in protocols:
        if not isinstance(proto, str) or not 0 < len(proto.encode()) < 256:
            raise ConfigError(f"{owner}.alpn entries must be 1-255 byte strings, not {proto!r}")
    return protocols


# 1200 bytes fits any IPv6 path (1280) with room for the UDP and IP headers.
DEFAULT_DTLS_MTU = 1200
MIN_DTLS_MTU, MAX_DTLS_MTU = 512, 65507


def _mtu(value: int) -> int:
    _count(value, "mtu")
    if not MIN_DTLS_MTU <= value <= MAX_DTLS_MTU:
        raise ConfigError(f"mtu must be {MIN_DTLS_MTU}-{MAX_DTLS_MTU} bytes, not {value}")
    return value


DEFAULT_PROXY_TRUSTED = ("127.0.0.1/32", "::1/128")
"""Who may send a PROXY header unless told otherwise: this host only."""


def _proxy_networks(entries: object, enabled: object) -> tuple[Network, ...]:
    if not isinstance(enabled, bool):
        raise ConfigError(f"proxy_protocol must be true or false, not {enabled!r}")
    if isinstance(entries, str) or not isinstance(entries, tuple | list):
        raise ConfigError(f"proxy_trusted must be a list of addresses or networks, not {entries!r}")
    try:
        networks = parse_networks(entries, "proxy_trusted")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if enabled and not networks:
        raise ConfigError(
            "proxy_protocol is on but proxy_trusted is empty: every connection would be "
            "refused; list the load balancers' addresses"
        )
    return networks


def _set(obj: object, name: str, value: object) -> None:
    # Frozen dataclasses normalise their own fields in __post_init__.
    object.__setattr__(obj, name, value)


def _psk_keys(keys: object) -> Mapping[str, bytes]:
    if not isinstance(keys, Mapping):
        raise ConfigError(f"psk_keys must map identities to keys, not {type(keys).__name__}")
    checked = {
        check_identity(identity, "psk_keys"): check_key(key, f"psk_keys[{identity!r}]")
        for identity, key in keys.items()
    }
    # Read-only, and a copy: the caller's dict may change, these settings may not.
    return types.MappingProxyType(checked)


def _ciphers(value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be an OpenSSL cipher list, not {value!r}")
    return value


def _identity_rules(settings: ServerSettings) -> ClientIdentityRules:
    rules = ClientIdentityRules.parse(settings.allow_client_subjects, settings.allow_client_sans)
    if rules and settings.verify_client is not VerifyClient.REQUIRED:
        raise ConfigError(
            "allow_client_subjects/allow_client_sans need verify_client=required: "
            "a client without a certificate would skip them"
        )
    if settings.crl_file is not None and settings.verify_client is VerifyClient.NONE:
        raise ConfigError("crl_file needs verify_client optional or required (and ca_file)")
    return rules


@show_path_inputs("cert_file", "key_file")
@dataclass(frozen=True)
class CertificateSettings:
    """A certificate chain file and its private key, for one or more server names.

    ``server_names`` is only used for SNI: the names (``example.com`` or
    ``*.example.com``) for which this certificate is chosen.
    ``ocsp_staple_file`` is a DER OCSP response for this certificate, stapled
    to handshakes whose client asks for it; it is read (like the certificate)
    whenever the contexts are built, so a reload picks up a refreshed file.
    Paths may be given as ``str`` or any ``os.PathLike``; they are held as
    :class:`~pathlib.Path` (and ``key_password`` as bytes).
    """

    cert_file: Path
    key_file: Path
    key_password: bytes | None = field(default=None, repr=False)
    server_names: tuple[str, ...] = ()
    ocsp_staple_file: OptionalPathField = OptionalPathField()

    if TYPE_CHECKING:
        # What type checkers see: paths as str or os.PathLike, a str password
        # (both converted below). tests/core/test_path_fields.py keeps it in
        # step with the fields.
        def __init__(
            self,
            cert_file: PathInput,
            key_file: PathInput,
            key_password: str | bytes | None = None,
            server_names: tuple[str, ...] = (),
            ocsp_staple_file: PathInput | None = None,
        ) -> None: ...

    def __post_init__(self) -> None:
        _set(self, "cert_file", as_path(self.cert_file, "cert_file"))
        _set(self, "key_file", as_path(self.key_file, "key_file"))
        _set(self, "key_password", _password(self.key_password, "key_password"))
        names = tuple(n.lower().rstrip(".") for n in self.server_names)
        _set(self, "server_names", names)


@dataclass(frozen=True)
class OffloadSettings:
    """When crypto runs in a worker thread instead of on the event loop.

    Handshakes (the public-key work: ≈ 0.3 ms for ECDSA P-256, several ms for
    RSA-2048 signatures) go to a thread when ``handshakes`` is true; records
    go to a thread only when at least ``record_threshold`` bytes are
    encrypted or decrypted at once, because a thread hop costs more than
    encrypting a small record. ``max_threads`` bounds the threads doing
    crypto at once (default: the CPU count). The defaults are measured; see
    docs/performance.rst.
    """

    handshakes: bool = True
    record_threshold: int = 256 * 1024
    max_threads: int = field(default_factory=lambda: os.cpu_count() or 1)

    def __post_init__(self) -> None:
        _count(self.record_threshold, "offload.record_threshold", minimum=0)
        _count(self.max_threads, "offload.max_threads")


@show_path_inputs()
@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """Everything a TLS (and DTLS) server needs; only the certificate is required.

    ``certificate`` is the default certificate; ``sni_certificates`` are
    chosen instead when the client's server name matches one of their
    ``server_names``. A server with pre-shared keys (``psk_file`` or
    ``psk_keys``) may have no certificate: it then serves PSK clients only.
    Paths (``ca_file``, ``keylog_file``, ``psk_file``, ``crl_file``,
    ``cookie_secret_file``) may be given as ``str`` or any ``os.PathLike``;
    they are held as :class:`~pathlib.Path`.
    """

    certificate: CertificateSettings | None = None
    sni_certificates: tuple[CertificateSettings, ...] = ()
    ca_file: OptionalPathField = OptionalPathField()
    verify_client: VerifyClient = VerifyClient.NONE
    min_version: TLSVersion = "1.2"
    max_version: TLSVersion = "1.3"
    ciphers: str = DEFAULT_TLS12_CIPHERS
    alpn: tuple[str, ...] = ()
    session_tickets: bool = True
    """Resume sessions (tickets and the session cache). Always off with pre-shared
    keys: a resumed session would not say which PSK identity it was made with."""
    ticket_key_rotation: float = 86400.0
    """Seconds between new session-ticket keys (the previous key still opens
    tickets until the next rotation); 0 = never. See core/ticket_keys.py."""
    reload_interval: float = 10.0
    """Seconds between looks at the files a reload reads (certificates, keys,
    CA, CRL, PSK, OCSP), to reload when they change; 0 = only on SIGHUP."""
    keylog_file: OptionalPathField = OptionalPathField()
    # Pre-shared keys, TLS 1.2/1.3 and DTLS 1.2 (see core/psk.py, docs/howto/psk.rst).
    psk_file: OptionalPathField = OptionalPathField()
    """``IDENTITY:HEXKEY`` lines; read (and re-read on reload) when the contexts are built."""
    psk_keys: Mapping[str, bytes] = field(default_factory=dict, repr=False, hash=False)
    """Identity → key, for applications that keep keys elsewhere (merged with ``psk_file``)."""
    psk_identity_hint: str | None = None
    psk_ciphers: str = DEFAULT_PSK_CIPHERS
    """TLS 1.2/DTLS 1.2 PSK suites, offered (before ``ciphers``) only with pre-shared keys."""
    # Client identity rules (see core/client_identity.py, docs/howto/identity.rst).
    allow_client_subjects: tuple[str, ...] = ()
    """Client certificate subjects admitted (RFC 4514, as the access log prints them)."""
    allow_client_sans: tuple[str, ...] = ()
    """DNS names (``*.example.com``) and URIs (``spiffe://domain/path/*``) admitted."""
    crl_file: OptionalPathField = OptionalPathField()
    """CRLs (PEM or DER) from the CAs in ``ca_file``; client certificates are checked."""
    _identity_rules: ClientIdentityRules = field(
        default=ClientIdentityRules((), ()), init=False, repr=False, compare=False, hash=False
    )
    handshake_timeout: float = 10.0
    idle_timeout: float | None = 300.0
    """Close a connection or DTLS peer after this long without application data either way."""
    max_connection_lifetime: float | None = None
    """Close a connection or DTLS peer this long after it began, busy or not (None: never)."""
    max_connections: int = 1024
    drain_timeout: float = 10.0
    """On shutdown, how long handlers get to finish after close_notify."""
    drain_delay: float = 0.0
    """On a stop request, how long to go on accepting (while /readyz says not
    ready, so that load balancers stop sending) before the drain starts."""
    per_source_rate: float = 50.0
    """New handshakes per second one source may start (TLS connections, DTLS
    peers after their cookie); 0 = no limit. A source is an IPv4 address or
    an IPv6 /64."""
    per_source_burst: int = 100
    """Handshakes a quiet source may start at once before ``per_source_rate`` applies."""
    per_source_connections: int = 256
    """Concurrent TLS connections (and, separately, DTLS peers) per source; 0 = no limit."""
    per_source_exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    """Networks the per-source limits do not apply to (default: this host's loopback)."""
    offload: OffloadSettings = field(default_factory=OffloadSettings)
    # TLS behind a layer-4 load balancer (see docs/howto/proxy-protocol.rst).
    proxy_protocol: bool = False
    """Read a PROXY protocol header (v1 or v2) before TLS, and use its client address."""
    proxy_trusted: tuple[str, ...] = DEFAULT_PROXY_TRUSTED
    """Addresses or networks (CIDR) allowed to send that header; others are refused."""
    _proxy_networks: tuple[Network, ...] = field(
        default=(), init=False, repr=False, compare=False, hash=False
    )
    # DTLS only.
    mtu: int = DEFAULT_DTLS_MTU
    max_peers: int = 1024
    peer_queue_size: int = 64
    cookie_secret_file: OptionalPathField = OptionalPathField()
    cookie_rotation: float = 60.0

    def __post_init__(self) -> None:
        _set(self, "psk_keys", _psk_keys(self.psk_keys))
        if self.psk_identity_hint is not None:
            check_identity(self.psk_identity_hint, "psk_identity_hint")
        _ciphers(self.psk_ciphers, "psk_ciphers")
        if self.certificate is None and not self.psk_enabled:
            raise ConfigError("certificate is required (unless the server has psk_file/psk_keys)")
        if self.certificate is not None and not isinstance(self.certificate, CertificateSettings):
            raise ConfigError("certificate must be a CertificateSettings")
        if self.certificate is None and self.sni_certificates:
            raise ConfigError("sni_certificates need a default certificate too")
        for sni in self.sni_certificates:
            if not sni.server_names:
                raise ConfigError(f"SNI certificate {sni.cert_file} lists no server_names")
        _set(self, "sni_certificates", tuple(self.sni_certificates))
        try:
            _set(self, "verify_client", VerifyClient(self.verify_client))
        except ValueError:
            raise ConfigError(
                f"verify_client must be none, optional or required, not {self.verify_client!r}"
            ) from None
        if self.verify_client is not VerifyClient.NONE and self.ca_file is None:
            raise ConfigError(
                f"verify_client={self.verify_client.value} needs ca_file: "
                "the CA that signs client certificates"
            )
        _versions(self.min_version, self.max_version, "server")
        _set(self, "alpn", _alpn(self.alpn, "server"))
        _set(self, "handshake_timeout", _positive(self.handshake_timeout, "handshake_timeout"))
        _set(self, "idle_timeout", _optional_positive(self.idle_timeout, "idle_timeout"))
        lifetime = _optional_positive(self.max_connection_lifetime, "max_connection_lifetime")
        _set(self, "max_connection_lifetime", lifetime)
        _count(self.max_connections, "max_connections")
        _set(self, "drain_timeout", _positive(self.drain_timeout, "drain_timeout"))
        _set(self, "drain_delay", _non_negative(self.drain_delay, "drain_delay"))
        rotation = _non_negative(self.ticket_key_rotation, "ticket_key_rotation")
        _set(self, "ticket_key_rotation", rotation)
        _set(self, "reload_interval", _non_negative(self.reload_interval, "reload_interval"))
        _set(self, "per_source_rate", _rate(self.per_source_rate, "per_source_rate"))
        _count(self.per_source_burst, "per_source_burst")
        _count(self.per_source_connections, "per_source_connections", minimum=0)
        exempt: object = self.per_source_exempt  # a str would pass tuple() as characters
        if isinstance(exempt, str):
            raise ConfigError("per_source_exempt must be a list of networks, not one string")
        _set(self, "per_source_exempt", tuple(self.per_source_exempt))
        try:
            parse_networks(self.per_source_exempt, "per_source_exempt")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        _mtu(self.mtu)
        _count(self.max_peers, "max_peers")
        _count(self.peer_queue_size, "peer_queue_size")
        _set(self, "cookie_rotation", _positive(self.cookie_rotation, "cookie_rotation"))
        networks = _proxy_networks(self.proxy_trusted, self.proxy_protocol)
        _set(self, "proxy_trusted", tuple(str(net) for net in networks))
        _set(self, "_proxy_networks", networks)
        _set(self, "allow_client_subjects", tuple(self.allow_client_subjects))
        _set(self, "allow_client_sans", tuple(self.allow_client_sans))
        _set(self, "_identity_rules", _identity_rules(self))

    @property
    def psk_enabled(self) -> bool:
        """Whether this server has pre-shared keys (a file or a table)."""
        return self.psk_file is not None or bool(self.psk_keys)

    def proxy_trusts(self, host: str) -> bool:
        """Whether a connection from *host* may send a PROXY header (per ``proxy_trusted``)."""
        return address_in(host, self._proxy_networks)

    @classmethod
    def from_files(
        cls,
        cert_file: str | os.PathLike[str],
        key_file: str | os.PathLike[str],
        *,
        key_password: str | bytes | None = None,
        **options: object,
    ) -> ServerSettings:
        """Shorthand: ``ServerSettings.from_files("server.pem", "server.key", ...)``."""
        cert = CertificateSettings(cert_file, key_file, _password(key_password, "key"))
        return cls(certificate=cert, **options)  # type: ignore[arg-type]


@show_path_inputs()
@dataclass(frozen=True, kw_only=True)
class ClientSettings:
    """How a client verifies servers and, for mutual TLS, proves who it is.

    With ``ca_file`` unset the system's trust store is used. ``verify=False``
    turns off certificate *and* hostname checks: only for testing.
    ``request_ocsp`` asks the server for a stapled OCSP response and checks
    it (the verdict is ``PeerInfo.ocsp``);
    ``require_ocsp`` also fails the handshake unless the staple is present,
    valid and GOOD. Paths may be given as ``str`` or any ``os.PathLike``;
    they are held as :class:`~pathlib.Path`.
    ``psk_identity`` and ``psk_key`` (both or neither) offer a pre-shared key:
    the ``psk_ciphers`` are then offered first, and a TLS 1.3 ClientHello
    carries the key too (a server that does not know it answers with its
    certificate, which is verified as usual).
    """

    ca_file: OptionalPathField = OptionalPathField()
    certificate: CertificateSettings | None = None
    verify: bool = True
    check_hostname: bool = True
    min_version: TLSVersion = "1.2"
    max_version: TLSVersion = "1.3"
    ciphers: str = DEFAULT_TLS12_CIPHERS
    alpn: tuple[str, ...] = ()
    keylog_file: OptionalPathField = OptionalPathField()
    handshake_timeout: float = 10.0
    request_ocsp: bool = False
    require_ocsp: bool = False
    psk_identity: str | None = None
    psk_key: bytes | None = field(default=None, repr=False)
    psk_ciphers: str = DEFAULT_PSK_CIPHERS
    offload: OffloadSettings = field(default_factory=OffloadSettings)
    mtu: int = DEFAULT_DTLS_MTU
    """DTLS only: the largest datagram we send, in bytes of ciphertext."""
    # The pyOpenSSL contexts built from this object (see context.client_context),
    # and the drivers' client session caches (drivers/session_cache.py).
    # Per object, not per value: sessions resume only within one context.
    _contexts: dict[str, object] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        if self.certificate is not None and not isinstance(self.certificate, CertificateSettings):
            raise ConfigError("certificate must be a CertificateSettings or None")
        _versions(self.min_version, self.max_version, "client")
        _set(self, "alpn", _alpn(self.alpn, "client"))
        _set(self, "handshake_timeout", _positive(self.handshake_timeout, "handshake_timeout"))
        if self.require_ocsp:
            _set(self, "request_ocsp", True)
        if (self.psk_identity is None) != (self.psk_key is None):
            raise ConfigError("psk_identity and psk_key go together: give both or neither")
        if self.psk_identity is not None:
            check_identity(self.psk_identity, "psk_identity")
            _set(self, "psk_key", check_key(self.psk_key, "psk_key"))
        _ciphers(self.psk_ciphers, "psk_ciphers")
        _mtu(self.mtu)
