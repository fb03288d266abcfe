"""What one benchmark run does: a plain, picklable value shared with worker processes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...core.errors import ConfigError
from ...core.settings import CertificateSettings, ClientSettings

__all__ = ["MODES", "PROTOS", "BenchConfig", "Mode", "Proto", "default_sizes"]

Proto = Literal["tls", "dtls", "tcp", "udp"]
Mode = Literal["handshake", "echo", "bulk"]
PROTOS: tuple[Proto, ...] = ("tls", "dtls", "tcp", "udp")
MODES: tuple[Mode, ...] = ("handshake", "echo", "bulk")

# The largest UDP payload over IPv4; DTLS is limited further by the MTU.
MAX_DATAGRAM = 65507

STREAM_SIZES = (64, 1024, 16384)
# One DTLS message is one record in one datagram of at most the MTU (1200 by
# default): 16384 cannot fit, and 1200 cannot either (the record header and
# the cipher's nonce and tag come out of it: at most 1163 bytes with AES-GCM).
DTLS_SIZES = (64, 1024)


def default_sizes(proto: Proto) -> tuple[int, ...]:
    """The message sizes measured when none are given: ones that fit *proto*."""
    return DTLS_SIZES if proto == "dtls" else STREAM_SIZES


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """One load: *clients* connections (or peers) doing *mode* over *proto*.

    With ``count``, every client does ``count`` operations per size; with
    ``duration``, every client works for that many seconds per size.
    Handshake mode ignores ``sizes``; empty ``sizes`` means
    :func:`default_sizes` for *proto*. Bulk mode keeps ``window`` messages in
    flight per connection; echo mode keeps one.
    """

    proto: Proto
    mode: Mode
    host: str
    port: int
    clients: int = 64
    sizes: tuple[int, ...] = ()
    count: int = 100
    duration: float | None = None
    procs: int = 1
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False
    servername: str | None = None
    resume: bool = False
    window: int = 4
    op_timeout: float = 5.0
    handshake_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.proto not in PROTOS:
            raise ConfigError(f"--proto must be one of {', '.join(PROTOS)}, not {self.proto!r}")
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.mode == "handshake" and self.proto == "udp":
            raise ConfigError("--mode handshake needs tls, dtls or tcp (UDP has no handshake)")
        if self.mode == "bulk" and self.proto in ("udp", "dtls"):
            raise ConfigError(
                "--mode bulk needs a stream (tls or tcp): lost datagrams would stall the "
                "window; use --mode echo for udp and dtls"
            )
        if self.resume and not (self.mode == "handshake" and self.proto in ("tls", "dtls")):
            raise ConfigError("--resume applies to --mode handshake over tls or dtls")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("--cert and --key go together: give both or neither")
        for name in ("clients", "count", "procs", "window"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, not {getattr(self, name)}")
        if self.procs > self.clients:
            raise ConfigError(f"--procs {self.procs} is more than --clients {self.clients}")
        if self.duration is not None and not self.duration > 0:
            raise ConfigError(f"--duration must be positive, not {self.duration}")
        if not self.sizes:
            object.__setattr__(self, "sizes", default_sizes(self.proto))
        for size in self.sizes:
            if size < 1:
                raise ConfigError(f"message sizes must be at least 1 byte, not {size}")
            if self.proto in ("udp", "dtls") and size > MAX_DATAGRAM:
                raise ConfigError(f"{size} bytes does not fit in one datagram")

    @property
    def phase_sizes(self) -> tuple[int, ...]:
        """The sizes measured, one phase each (handshakes have no size: 0)."""
        return (0,) if self.mode == "handshake" else self.sizes

    @property
    def secure(self) -> bool:
        return self.proto in ("tls", "dtls")

    def client_settings(self) -> ClientSettings:
        certificate = None
        if self.cert_file is not None and self.key_file is not None:
            certificate = CertificateSettings(self.cert_file, self.key_file)
        return ClientSettings(
            ca_file=self.ca_file,
            certificate=certificate,
            verify=not self.insecure,
            handshake_timeout=self.handshake_timeout,
        )

    def describe(self) -> str:
        amount = f"{self.duration:g}s" if self.duration is not None else f"{self.count} ops"
        sizes = "" if self.mode == "handshake" else f", sizes {','.join(map(str, self.sizes))}"
        extra = " (resumed)" if self.resume else ""
        mtls = " mTLS" if self.cert_file is not None and self.secure else ""
        return (
            f"{self.proto}{mtls} {self.mode}{extra} -> {self.host}:{self.port}: "
            f"{self.clients} clients x {amount} per size{sizes}, {self.procs} process(es)"
        )
