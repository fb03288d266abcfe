"""What a finished handshake tells us about the peer, as one immutable value."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from .ocsp import OCSPStatus

__all__ = ["Address", "PeerInfo", "format_address"]

Address = tuple[str, int]


def format_address(address: object) -> str:
    """``host:port``, with IPv6 hosts in brackets, for logs."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


@dataclass(frozen=True)
class PeerInfo:
    """The peer of one TLS connection or DTLS association, after its handshake.

    ``certificate`` is the peer's leaf certificate: the client's on a server
    with mutual TLS, the server's on a client. ``chain`` is the chain as the
    peer sent it (the client sees the server's; OpenSSL does not keep the
    client's chain on the server side beyond the leaf).
    ``ocsp`` is a client's verdict on the server's stapled OCSP response,
    when it asked for one (``ClientSettings.request_ocsp``); None otherwise.
    ``psk_identity`` is the identity of the pre-shared key that authenticated
    the handshake (a server sees the client's; a client its own), or None.
    A TLS 1.3 handshake with a pre-shared key is not a resumption
    (``resumed`` is false), although OpenSSL counts it as one.
    """

    address: Address | None
    transport: str
    protocol: str
    cipher: str
    resumed: bool
    alpn: str | None = None
    server_name: str | None = None
    certificate: x509.Certificate | None = None
    chain: tuple[x509.Certificate, ...] = ()
    ocsp: OCSPStatus | None = None
    psk_identity: str | None = None

    @property
    def subject(self) -> str | None:
        """The peer certificate's subject (RFC 4514), or None without one."""
        return None if self.certificate is None else self.certificate.subject.rfc4514_string()

    def describe(self) -> str:
        """The one-line summary logged after each handshake."""
        fields = [
            f"peer={format_address(self.address)}",
            f"protocol={self.protocol}",
            f"cipher={self.cipher}",
            f"resumed={'yes' if self.resumed else 'no'}",
            f"peer_cert={self.subject or '-'}",
        ]
        if self.alpn:
            fields.append(f"alpn={self.alpn}")
        if self.server_name:
            fields.append(f"sni={self.server_name}")
        if self.psk_identity:
            fields.append(f"psk_identity={self.psk_identity}")
        return " ".join(fields)
