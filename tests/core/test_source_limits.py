"""Per-source limits as a sans-IO table: the token bucket, the cap, exemptions, settings."""

from __future__ import annotations

import pytest

from tests.conftest import PKIFiles
from trio_tls_dtls import (
    ConfigError,
)
from trio_tls_dtls.core.source_limits import LogThrottle, SourceLimits, source_key

FLOODER, VICTIM = "127.0.0.2", "127.0.0.3"

# -- the sans-IO bucket --------------------------------------------------------------


def test_burst_then_refill_at_rate() -> None:
    limits = SourceLimits(rate=2.0, burst=3, max_connections=0)
    assert [limits.admit("192.0.2.1", 0.0) for _ in range(3)] == [None, None, None]
    assert limits.admit("192.0.2.1", 0.0) == "rate"
    assert limits.admit("192.0.2.1", 0.4) == "rate"  # 0.8 of a token so far
    assert limits.admit("192.0.2.1", 0.5) is None  # one token after 0.5 s at 2/s
    assert limits.admit("192.0.2.1", 0.5) == "rate"
    # Saving up stops at the burst.
    assert [limits.admit("192.0.2.1", 100.0) for _ in range(4)] == [None, None, None, "rate"]


def test_sources_have_separate_buckets() -> None:
    limits = SourceLimits(rate=1.0, burst=1, max_connections=0)
    assert limits.admit("192.0.2.1", 0.0) is None
    assert limits.admit("192.0.2.1", 0.0) == "rate"
    assert limits.admit("192.0.2.2", 0.0) is None


def test_connection_cap_and_release() -> None:
    limits = SourceLimits(rate=0, burst=1, max_connections=2)
    assert limits.admit("192.0.2.1", 0.0) is None
    assert limits.admit("192.0.2.1", 0.0) is None
    assert limits.admit("192.0.2.1", 0.0) == "connections"
    assert limits.admit("192.0.2.9", 0.0) is None
    assert limits.active("192.0.2.1") == 2
    limits.release("192.0.2.1")
    assert limits.admit("192.0.2.1", 0.0) is None
    for _ in range(3):
        limits.release("192.0.2.1")
    assert limits.active("192.0.2.1") == 0  # never negative, and forgotten


def test_refused_by_the_cap_spends_no_token() -> None:
    limits = SourceLimits(rate=1.0, burst=2, max_connections=1)
    assert limits.admit("192.0.2.1", 0.0) is None
    assert limits.admit("192.0.2.1", 0.0) == "connections"
    limits.release("192.0.2.1")
    assert limits.admit("192.0.2.1", 0.0) is None  # the second token was still there


def test_ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() -> None:
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:ffff::9")
    assert source_key("2001:db8:1:2::1") != source_key("2001:db8:1:3::1")
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    limits = SourceLimits(rate=1.0, burst=1, max_connections=0)
    assert limits.admit("2001:db8:1:2::1", 0.0) is None
    assert limits.admit("2001:db8:1:2::2", 0.0) == "rate"


def test_exempt_networks_are_not_limited() -> None:
    limits = SourceLimits(rate=1.0, burst=1, max_connections=1, exempt=["10.0.0.0/8", "::1"])
    for _ in range(5):
        assert limits.admit("10.1.2.3", 0.0) is None
        assert limits.admit("::1", 0.0) is None
        assert limits.admit("::ffff:10.9.9.9", 0.0) is None
    assert limits.active("10.1.2.3") == 0
    assert limits.admit("192.0.2.1", 0.0) is None
    assert limits.admit("192.0.2.1", 0.0) == "connections"


def test_bucket_table_is_bounded() -> None:
    limits = SourceLimits(rate=1.0, burst=1, max_connections=0, max_tracked=100)
    for i in range(1000):
        limits.admit(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert limits.tracked() == 100


def test_off_means_none() -> None:
    assert SourceLimits.unless_off(rate=0, burst=1, max_connections=0) is None
    assert SourceLimits.unless_off(rate=1, burst=1, max_connections=0) is not None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": -1, "burst": 1, "max_connections": 0}, "rate"),
        ({"rate": 1, "burst": 0, "max_connections": 0}, "burst"),
        ({"rate": 1, "burst": 1, "max_connections": -1}, "max_connections"),
        ({"rate": 1, "burst": 1, "max_connections": 0, "exempt": ["10.0.0.0/33"]}, "10.0.0.0/33"),
    ],
)
def test_bad_limits_say_which(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SourceLimits(**kwargs)  # type: ignore[arg-type]


def test_log_throttle_counts_what_it_held_back() -> None:
    throttle = LogThrottle(1.0)
    assert throttle.ready(0.0) == 0
    assert throttle.ready(0.1) is None
    assert throttle.ready(0.5) is None
    assert throttle.ready(1.0) == 2
    assert throttle.ready(1.2) is None


def test_settings_defaults_exempt_loopback(pki: PKIFiles) -> None:
    settings = pki.server_settings()
    assert settings.per_source_rate == 50.0
    assert settings.per_source_burst == 100
    assert settings.per_source_connections == 256
    assert settings.per_source_exempt == ("127.0.0.0/8", "::1/128")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"per_source_rate": -1}, "per_source_rate"),
        ({"per_source_rate": float("inf")}, "per_source_rate"),
        ({"per_source_burst": 0}, "per_source_burst"),
        ({"per_source_connections": -1}, "per_source_connections"),
        ({"per_source_exempt": ("10.0.0.0/8", "nonsense")}, "nonsense"),
        ({"per_source_exempt": "10.0.0.0/8"}, "per_source_exempt"),
        # Host bits set: refused, not silently widened to 10.0.0.0/24.
        ({"per_source_exempt": ("10.0.0.5/24",)}, "10.0.0.5/24"),
    ],
)
def test_bad_settings_name_the_field(
    pki: PKIFiles, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        pki.server_settings(**options)
