"""PROXY protocol v2 TLVs that describe a TLS or DTLS client, both ways (sans-IO).

A v2 header may carry Type-Length-Value fields after its addresses (one type
byte, a 16-bit big-endian length, the value). HAProxy's spec (section 2.2)
registers the codes below; we send the ones a terminating proxy knows:

================================  ======  ===================================
``PP2_TYPE_ALPN``                 0x01    the negotiated ALPN protocol
``PP2_TYPE_AUTHORITY``            0x02    the server name the client asked
                                          for (SNI), UTF-8
``PP2_TYPE_SSL``                  0x20    the TLS facts, nested (below)
``PP2_SUBTYPE_SSL_VERSION``       0x21    ``TLSv1.3``, ``DTLSv1.2``: US-ASCII
``PP2_SUBTYPE_SSL_CN``            0x22    the client certificate's subject
                                          Common Name, UTF-8
``PP2_SUBTYPE_SSL_CIPHER``        0x23    OpenSSL's cipher name, US-ASCII
``PP2_TYPE_TRIO_PSK_IDENTITY``    0xE4    ours: the identity of the pre-shared
                                          key the client used, UTF-8
================================  ======  ===================================

The spec has no TLV for a PSK identity, the one name a device with a
pre-shared key (no certificate) gives; it sets aside 0xE0-0xEF for
application-specific types, and we use 0xE4 there (0xE0, 0xEA and 0xEE are
taken by Google Cloud, AWS and Azure load balancers). A receiver that does
not know it skips it, as the spec asks.

The ``PP2_TYPE_SSL`` value is ``struct pp2_tlv_ssl``: one ``client`` byte of
flags, a 32-bit big-endian ``verify`` word, then sub-TLVs framed like the
outer ones. The flags: ``PP2_CLIENT_SSL`` (0x01, the client spoke TLS: the
version sub-TLV follows), ``PP2_CLIENT_CERT_CONN`` (0x02, it sent a
certificate on this connection), ``PP2_CLIENT_CERT_SESS`` (0x04, it sent one
at least once in this TLS session: on a resumed connection the certificate
came with the original handshake, so only this flag is set). ``verify`` is
0 when the client presented a certificate and it verified, non-zero
otherwise (no certificate included), as the spec words it.

:func:`client_tlvs` makes them from a :class:`~.peer_info.PeerInfo`;
:class:`SSLTLV` reads a ``PP2_TYPE_SSL`` value back, for tests and for a
Python backend that uses :mod:`.proxy_protocol` to parse what we send.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from .peer_info import PeerInfo
from .proxy_protocol import ProxyHeaderError, ProxyTLV, split_tlvs

__all__ = [
    "PP2_CLIENT_CERT_CONN",
    "PP2_CLIENT_CERT_SESS",
    "PP2_CLIENT_SSL",
    "PP2_SUBTYPE_SSL_CIPHER",
    "PP2_SUBTYPE_SSL_CN",
    "PP2_SUBTYPE_SSL_VERSION",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_SSL",
    "PP2_TYPE_TRIO_PSK_IDENTITY",
    "SSLTLV",
    "client_tlvs",
    "common_name",
    "encode_tlvs",
]

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_TYPE_TRIO_PSK_IDENTITY = 0xE4  # in the spec's application-specific range 0xE0-0xEF

PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04

_SSL_FIXED = struct.Struct("!BI")  # client flags, verify
_MAX_VALUE = 0xFFFF


def encode_tlvs(tlvs: Iterable[ProxyTLV]) -> bytes:
    """The TLVs framed one after another; ValueError for a type or value that does not fit."""
    out = bytearray()
    for kind, value in tlvs:
        if not 0 <= kind <= 0xFF:
            raise ValueError(f"a TLV type is one byte, not {kind}")
        if len(value) > _MAX_VALUE:
            raise ValueError(f"TLV 0x{kind:02x} of {len(value)} bytes is over {_MAX_VALUE}")
        out += struct.pack("!BH", kind, len(value)) + value
    return bytes(out)


@dataclass(frozen=True)
class SSLTLV:
    """The value of a ``PP2_TYPE_SSL`` TLV: flags, the verify word and the sub-TLVs we know.

    ``extra`` keeps any other sub-TLVs (``SIG_ALG``, ``KEY_ALG``, ...) raw.
    """

    client: int
    verify: int
    version: str | None = None
    cipher: str | None = None
    common_name: str | None = None
    extra: tuple[ProxyTLV, ...] = ()

    @property
    def ssl(self) -> bool:
        return bool(self.client & PP2_CLIENT_SSL)

    @property
    def cert_in_connection(self) -> bool:
        return bool(self.client & PP2_CLIENT_CERT_CONN)

    @property
    def cert_in_session(self) -> bool:
        return bool(self.client & PP2_CLIENT_CERT_SESS)

    @property
    def verified(self) -> bool:
        """A certificate was presented and verified (``verify`` is 0)."""
        return self.verify == 0

    def encode(self) -> bytes:
        """The TLV's value (without its own type and length)."""
        subs: list[ProxyTLV] = []
        if self.version is not None:
            subs.append((PP2_SUBTYPE_SSL_VERSION, self.version.encode("ascii")))
        if self.common_name is not None:
            subs.append((PP2_SUBTYPE_SSL_CN, self.common_name.encode("utf-8")))
        if self.cipher is not None:
            subs.append((PP2_SUBTYPE_SSL_CIPHER, self.cipher.encode("ascii")))
        return _SSL_FIXED.pack(self.client, self.verify) + encode_tlvs([*subs, *self.extra])

    @classmethod
    def decode(cls, value: bytes) -> SSLTLV:
        """Read a ``PP2_TYPE_SSL`` value; ProxyHeaderError if it is malformed."""
        if len(value) < _SSL_FIXED.size:
            raise ProxyHeaderError(
                f"PROXY v2 SSL TLV is {len(value)} bytes, shorter than its fixed {_SSL_FIXED.size}"
            )
        client, verify = _SSL_FIXED.unpack_from(value)
        fields: dict[str, str] = {}
        extra = []
        names = {
            PP2_SUBTYPE_SSL_VERSION: ("version", "ascii"),
            PP2_SUBTYPE_SSL_CN: ("common_name", "utf-8"),
            PP2_SUBTYPE_SSL_CIPHER: ("cipher", "ascii"),
        }
        for kind, sub in split_tlvs(value[_SSL_FIXED.size :], "PROXY v2 SSL sub-TLV"):
            if kind not in names:
                extra.append((kind, sub))
                continue
            name, encoding = names[kind]
            try:
                fields[name] = sub.decode(encoding)
            except UnicodeDecodeError:
                raise ProxyHeaderError(
                    f"PROXY v2 SSL sub-TLV 0x{kind:02x} is not {encoding.upper()} text"
                ) from None
        return cls(client, verify, extra=tuple(extra), **fields)


def common_name(certificate: x509.Certificate) -> str | None:
    """The first Common Name in *certificate*'s subject, or None without one."""
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def client_tlvs(peer: PeerInfo, *, verified: bool) -> tuple[ProxyTLV, ...]:
    """The TLVs that tell a backend about *peer*: ALPN, SNI, the SSL TLV, a PSK identity.

    *verified* says that a client certificate, if *peer* has one, passed
    verification: the caller knows its server's rules (ours refuse a
    handshake whose certificate fails, so there it is ``peer.certificate is
    not None``). A resumed connection carried no certificate itself, but
    its session did.
    """
    tlvs: list[ProxyTLV] = []
    if peer.alpn:
        tlvs.append((PP2_TYPE_ALPN, peer.alpn.encode("ascii", "replace")))
    if peer.server_name:
        tlvs.append((PP2_TYPE_AUTHORITY, peer.server_name.encode("utf-8")))
    client = PP2_CLIENT_SSL
    cn = None
    if peer.certificate is not None:
        client |= PP2_CLIENT_CERT_SESS
        if not peer.resumed:
            client |= PP2_CLIENT_CERT_CONN
        cn = common_name(peer.certificate)
    ssl = SSLTLV(
        client,
        0 if peer.certificate is not None and verified else 1,
        version=peer.protocol or None,
        cipher=peer.cipher or None,
        common_name=cn,
    )
    tlvs.append((PP2_TYPE_SSL, ssl.encode()))
    if peer.psk_identity:
        tlvs.append((PP2_TYPE_TRIO_PSK_IDENTITY, peer.psk_identity.encode("utf-8")))
    return tuple(tlvs)
