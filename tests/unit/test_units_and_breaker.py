from __future__ import annotations

import pytest

from gateway.redisconn import CircuitBreaker
from gateway.semver import parse_semver
from gateway.units import parse_duration, parse_size


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("30s", 30), ("5m", 300), ("1h", 3600), ("1d", 86400), (15, 15),
    ("1.5s", 1.5), (0.05, 0.05),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["5 minutes", "-1s", "", "ms", True, None, [1]])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(("text", "size"), [
    ("512KiB", 512 * 1024), ("8MiB", 8 * 1024**2), ("1GiB", 1024**3), (100, 100),
    ("16KiB", 16384), ("1MB", 1_000_000),
])
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["8 megs", "-1", "KiB", 1.5, False])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def test_semver_precedence() -> None:
    order = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
             "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "2.7.0", "2.10.0"]
    parsed = [parse_semver(v) for v in order]
    assert parsed == sorted(parsed)
    assert parse_semver("v2.7") == parse_semver("2.7.0")
    assert parse_semver("1.0.0+build.5") == parse_semver("1.0.0")
    with pytest.raises(ValueError):
        parse_semver("banana")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_probes_once() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=3, cooldown=1.0, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    assert breaker.allow() and not breaker.is_open
    breaker.failure()
    assert breaker.is_open and not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()          # one probe after the cool-down
    assert not breaker.allow()      # and only one
    breaker.failure()               # the probe failed: closed again for a cool-down
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()
    breaker.success()
    assert not breaker.is_open and breaker.allow() and breaker.allow()


def test_an_open_breaker_refuses_only_until_a_probe_is_due() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, cooldown=1.0, clock=clock)
    breaker.failure()
    assert breaker.is_open and breaker.refusing
    clock.now += 1.0
    assert not breaker.refusing      # a caller that checks first still sends the probe
    assert breaker.allow() and breaker.refusing  # the probe is out: others wait for it
    breaker.abandoned()              # cancelled before it answered
    assert not breaker.refusing and breaker.allow()
    breaker.success()
    assert not breaker.is_open and not breaker.refusing


def test_breaker_success_resets_the_count() -> None:
    breaker = CircuitBreaker(failures=2, cooldown=1.0, clock=Clock())
    breaker.failure()
    breaker.success()
    breaker.failure()
    assert not breaker.is_open
