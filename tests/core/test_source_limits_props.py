"""Properties of SourceLimits (sans-IO), over generated sequences of admits, releases and times."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_tls_dtls.core.source_limits import SourceLimits, source_key

HOST = "192.0.2.1"


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.01, max_value=100.0),
    burst=st.integers(min_value=1, max_value=20),
    gaps=st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=200),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float]
) -> None:
    limits = SourceLimits(rate=rate, burst=burst, max_connections=0)
    now, admitted = 0.0, 0
    for gap in gaps:
        now += gap
        if limits.admit(HOST, now) is None:
            admitted += 1
            limits.release(HOST)
        assert admitted <= burst + rate * now + 1e-9


@settings(max_examples=200, deadline=None)
@given(
    burst=st.integers(min_value=1, max_value=5),
    hammering=st.lists(st.floats(min_value=0.0, max_value=0.99), max_size=50),
)
def test_refusals_do_not_push_the_next_token_back(burst: int, hammering: list[float]) -> None:
    """However often an empty source knocks, its next token comes after 1/rate."""
    limits = SourceLimits(rate=1.0, burst=burst, max_connections=0)
    for _ in range(burst):
        assert limits.admit(HOST, 0.0) is None
    for t in sorted(hammering):
        assert limits.admit(HOST, t) == "rate"
    # (Refilling in steps may round a hair below one token at exactly 1.0.)
    assert limits.admit(HOST, 1.0 + 1e-9) is None


@settings(max_examples=100, deadline=None)
@given(
    ops=st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=30)), max_size=300),
)
def test_counts_follow_admits_and_releases_and_the_table_stays_bounded(
    ops: list[tuple[bool, int]],
) -> None:
    limits = SourceLimits(rate=0.5, burst=2, max_connections=3, max_tracked=4)
    open_: dict[str, int] = {}
    for step, (admit, n) in enumerate(ops):
        host = f"203.0.113.{n}"
        if admit:
            if limits.admit(host, step * 0.1) is None:
                open_[host] = open_.get(host, 0) + 1
        elif open_.get(host):
            limits.release(host)
            open_[host] -= 1
        assert limits.active(host) == open_.get(host, 0) <= 3
        assert limits.tracked() <= 4


@given(st.ip_addresses(v=6))
def test_every_ipv6_address_counts_as_its_64(address: object) -> None:
    key = source_key(str(address))
    if getattr(address, "ipv4_mapped", None) is not None:
        assert key == str(address.ipv4_mapped)  # type: ignore[attr-defined]
    else:
        assert key.endswith("/64")
        assert source_key(key.split("/")[0]) == key  # the /64's own first address


def test_a_replacement_skips_the_cap_but_spends_a_token() -> None:
    limits = SourceLimits(rate=1.0, burst=2, max_connections=1)
    assert limits.admit(HOST, 0.0) is None
    assert limits.admit(HOST, 0.0) == "connections"
    assert limits.admit(HOST, 0.0, replacing=True) is None
    assert limits.admit(HOST, 0.0, replacing=True) == "rate"  # both tokens spent
    limits.release(HOST)  # the replaced connection ends
    assert limits.active(HOST) == 1
