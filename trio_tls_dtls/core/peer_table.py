"""The DTLS peer table: bounded, ordered by recent activity (sans-IO)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["PeerTable"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class PeerTable(Generic[K, V]):
    """At most *max_size* peers by address; the least recently active gives way first.

    :meth:`touch` on every datagram keeps the order current in O(1), so
    eviction always picks the peer that has been idle longest.
    """

    __slots__ = ("_peers", "max_size")

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError(f"a peer table needs room for at least one peer, not {max_size}")
        self.max_size = max_size
        self._peers: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, key: object) -> bool:
        return key in self._peers

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._peers))

    def values(self) -> list[V]:
        return list(self._peers.values())

    def get(self, key: K) -> V | None:
        return self._peers.get(key)

    def touch(self, key: K) -> None:
        """Mark *key* as just active (no-op if absent)."""
        if key in self._peers:
            self._peers.move_to_end(key)

    def add(self, key: K, value: V) -> list[V]:
        """Insert or replace *key*; returns the values pushed out (replaced or evicted)."""
        removed = []
        old = self._peers.pop(key, None)
        if old is not None:
            removed.append(old)
        while len(self._peers) >= self.max_size:
            _, evicted = self._peers.popitem(last=False)
            removed.append(evicted)
        self._peers[key] = value
        return removed

    def remove(self, key: K, value: V) -> bool:
        """Remove *key* only if it still maps to *value* (not to its replacement)."""
        if self._peers.get(key) is value:
            del self._peers[key]
            return True
        return False
