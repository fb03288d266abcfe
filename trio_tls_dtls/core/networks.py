"""IP networks written as text, and whether an address falls in them (sans-IO).

Used by every list of networks the service takes: ``proxy_trusted`` (who may
send a PROXY header) and ``per_source_exempt`` (who the per-source limits
skip). Entries are strict: ``10.0.0.5/24`` (host bits set) is refused rather
than silently widened to ``10.0.0.0/24``, since these lists decide who is
trusted. An IPv4 client on a dual-stack socket (``::ffff:10.0.0.1``) matches
IPv4 entries.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

__all__ = ["Network", "address_in", "parse_address", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=4096)
def parse_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """*host* (text, maybe with a ``%scope``) as an address, or None if it is not one.

    Cached: every new connection asks for its peer's address two to four
    times (limits, exemptions, release), and parsing one costs microseconds.
    """
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def parse_networks(entries: Iterable[object], what: str = "") -> tuple[Network, ...]:
    """*entries* (addresses or CIDR networks) as networks.

    Raises :class:`ValueError` naming the bad entry (prefixed with *what*,
    e.g. the setting's name).
    """
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry))  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            prefix = f"{what} " if what else ""
            raise ValueError(
                f"{prefix}entry {entry!r} is not an IP address or network: {exc}"
            ) from None
    return tuple(networks)


def address_in(host: str, networks: Iterable[Network]) -> bool:
    """Whether *host* (an address as text, maybe with a ``%scope``) is in one of *networks*."""
    address = parse_address(host)
    if address is None:
        return False
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return any(address in net or (mapped is not None and mapped in net) for net in networks)
