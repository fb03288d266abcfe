"""Per-source limits: a handshake token bucket and a connection count per address (sans-IO).

One client address must not be able to starve the others. Each source gets

* a **token bucket** for new handshakes: ``rate`` tokens per second, at most
  ``burst`` saved up; every admitted connection (TLS) or peer (DTLS, after
  its cookie) spends one token;
* a **cap on concurrent connections** (TLS) or peers (DTLS).

A *source* is an IPv4 address, or an IPv6 /64: one subscriber usually holds a
whole /64, so per-address limits would be trivially dodged there. IPv4-mapped
IPv6 addresses count as their IPv4 address. Sources in ``exempt`` networks
(by default none here; the server settings exempt loopback) are not limited.

Memory is bounded: at most ``max_tracked`` buckets are kept, least recently
used first out (a forgotten bucket is a full one, the same as a new source),
and a count exists only while its source has a connection open. Time is
passed in (``now``, seconds on any monotonic clock): nothing here reads a
clock, sleeps or touches a socket.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from typing import Final, Literal

from .networks import address_in, parse_address, parse_networks

__all__ = ["LogThrottle", "Refusal", "SourceLimits", "source_key"]

Refusal = Literal["rate", "connections"]
"""Why a source was refused: its handshake bucket is empty, or it is at its cap."""

DEFAULT_MAX_TRACKED: Final = 65536


@functools.lru_cache(maxsize=4096)  # asked twice per connection: admitted and released
def source_key(host: str) -> str:
    """The source *host* counts as: itself for IPv4, its /64 for IPv6, the text otherwise."""
    ip = parse_address(host)
    if ip is None:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class SourceLimits:
    """Admission of new connections by source; see the module docstring.

    ``rate`` 0 turns the handshake bucket off; ``max_connections`` 0 turns
    the cap off.
    """

    __slots__ = (
        "_active",
        "_buckets",
        "_exempt",
        "burst",
        "max_connections",
        "max_tracked",
        "rate",
    )

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        max_connections: int,
        exempt: Iterable[str] = (),
        max_tracked: int = DEFAULT_MAX_TRACKED,
    ) -> None:
        if rate < 0:
            raise ValueError(f"rate must be 0 (off) or positive, not {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst!r}")
        if max_connections < 0:
            raise ValueError(
                f"max_connections must be 0 (off) or positive, not {max_connections!r}"
            )
        if max_tracked < 1:
            raise ValueError(f"max_tracked must be at least 1, not {max_tracked!r}")
        self.rate = float(rate)
        self.burst = burst
        self.max_connections = max_connections
        self.max_tracked = max_tracked
        self._exempt = parse_networks(exempt, "exempt")
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._active: dict[str, int] = {}

    @classmethod
    def unless_off(
        cls, *, rate: float, burst: int, max_connections: int, exempt: Iterable[str] = ()
    ) -> SourceLimits | None:
        """Limits with these values, or None when both the rate and the cap are 0 (off)."""
        if not rate and not max_connections:
            return None
        return cls(rate=rate, burst=burst, max_connections=max_connections, exempt=exempt)

    def is_exempt(self, host: str) -> bool:
        return address_in(host, self._exempt)

    def admit(self, host: str, now: float, *, replacing: bool = False) -> Refusal | None:
        """Admit one new connection from *host* at time *now*: None, or why not.

        An admitted connection must be :meth:`release`\\ d when it ends.
        *replacing* says it takes the place of one of the source's open
        connections (a DTLS peer restarting its handshake from the same
        address and port), so the cap does not apply: the count only
        overlaps until the old one is released. It still spends a token.
        """
        if self.is_exempt(host):
            return None
        key = source_key(host)
        active = self._active.get(key, 0)
        if self.max_connections and active >= self.max_connections and not replacing:
            return "connections"
        if self.rate:
            tokens = self._tokens(key, now)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return "rate"
            self._buckets[key] = (tokens - 1.0, now)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self.max_tracked:
                self._buckets.popitem(last=False)
        self._active[key] = active + 1
        return None

    def release(self, host: str) -> None:
        """A connection :meth:`admit` let in has ended."""
        if self.is_exempt(host):
            return
        key = source_key(host)
        left = self._active.get(key, 0) - 1
        if left > 0:
            self._active[key] = left
        else:
            self._active.pop(key, None)

    def active(self, host: str) -> int:
        """Connections open from *host*'s source (0 for an exempt one)."""
        return self._active.get(source_key(host), 0)

    def tracked(self) -> int:
        """Buckets held (bounded by ``max_tracked``)."""
        return len(self._buckets)

    def _tokens(self, key: str, now: float) -> float:
        saved = self._buckets.get(key)
        if saved is None:
            return float(self.burst)
        tokens, stamp = saved
        return min(float(self.burst), tokens + max(0.0, now - stamp) * self.rate)


class LogThrottle:
    """At most one log line per *interval* seconds; counts what it held back.

    Under a flood, a line per refused connection would be its own denial of
    service (disk, log pipeline); one line a second with a count is enough.
    """

    __slots__ = ("_held", "_next", "interval")

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._next = float("-inf")
        self._held = 0

    def ready(self, now: float) -> int | None:
        """The number of lines held back since the last one if one may be logged now, else None."""
        if now < self._next:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._next = now + self.interval
        return held
