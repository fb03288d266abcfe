"""The sans-IO engines: a pyOpenSSL Connection between two memory BIOs.

:class:`TLSEngine` (:mod:`.tls_engine`) and :class:`DTLSEngine`
(:mod:`.dtls_engine`) live in their own modules; this one keeps the names
importable from where they always were. The hot-path OpenSSL calls both
make are in :mod:`.ssl_calls`.
"""

from __future__ import annotations

from .dtls_engine import DTLSEngine, pack_datagrams, split_records
from .tls_engine import TLSEngine, openssl_reason

__all__ = ["DTLSEngine", "TLSEngine", "openssl_reason", "pack_datagrams", "split_records"]
