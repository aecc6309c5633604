"""Failed certificate renewals back off, also once the certificate has expired (issue 14, defect 4).

The agent used to clamp its retry delay by the certificate's remaining lifetime, so after expiry it
retried every 0.1 s and logged each try (about 290 lines in 30 s).
"""

from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from mesh_helpers import inbound_config, make_ca
from meshcore import identity
from meshcore.config import load
from meshcore.identity import IdentityAgent, RenewalBackoff, next_backoff, retry_delay

POLICY = RenewalBackoff(floor=1.0, cap=30.0)


def highest(low: float, high: float) -> float:
    """A 'random' draw that always takes the top of the range: the backoff ceiling itself."""
    return high


def test_the_backoff_ceiling_doubles_from_the_floor_up_to_the_cap():
    assert [next_backoff(n, POLICY, uniform=highest) for n in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    # However long the outage, the ceiling stays at the cap (and 2**n does not overflow).
    assert next_backoff(100_000, POLICY, uniform=highest) == 30


def test_the_backoff_is_jittered_between_the_floor_and_the_ceiling():
    rng = random.Random(14)
    for attempt in range(12):
        ceiling = min(30.0, 2.0**attempt)
        draws = [next_backoff(attempt, POLICY, uniform=rng.uniform) for _ in range(200)]
        assert all(1.0 <= d <= ceiling for d in draws), (attempt, min(draws), max(draws))
    # Proxies that failed together spread their retries over the whole range, not in step.
    at_cap = [next_backoff(20, POLICY, uniform=rng.uniform) for _ in range(200)]
    assert min(at_cap) < 5 and max(at_cap) > 25


@pytest.mark.parametrize(
    ("backoff", "remaining", "expected"),
    [
        (2.0, 500.0, 2.0),  # plenty of lifetime: the backoff decides
        (16.0, 5.0, 5.0),  # one last try just before expiry
        (16.0, 0.3, 1.0),  # ... but never sooner than the floor
        (16.0, 0.0, 16.0),  # expired: the lost lifetime no longer shortens the wait
        (30.0, -3600.0, 30.0),  # long expired: still the backoff (the old code chose 0.1 s here)
    ],
)
def test_the_retry_delay_is_clamped_by_the_lifetime_only_while_the_certificate_is_valid(
    backoff: float, remaining: float, expected: float
):
    assert retry_delay(backoff, remaining, floor=1.0) == expected


class CountingIdentityService(identity.IdentityService):
    """The real identity service, counting the certify requests it answers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.certify_requests = 0
        self._count_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def _certify(self, authorization: Any, body: bytes) -> dict[str, Any]:
        with self._count_lock:
            self.certify_requests += 1
        return super()._certify(authorization, body)


class VirtualTime:
    """Time that passes only when the agent waits, so ten minutes of retries take a moment."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)
        self.until = self.now + timedelta(days=1)
        self.waits: list[float] = []
        self.woken_at: list[datetime] = []
        self.reached = threading.Event()

    def clock(self) -> datetime:
        return self.now

    def wait(self, seconds: float) -> bool:
        """Lets `seconds` pass; True (stop) once the horizon is reached."""
        self.waits.append(seconds)
        self.now += timedelta(seconds=seconds)
        self.woken_at.append(self.now)
        if self.now >= self.until:
            self.reached.set()
            return True
        return False


def test_an_expired_certificate_is_retried_with_capped_backoff_and_reported_once_a_minute(tmp_path, capsys):
    ca = make_ca(tmp_path / "ca")
    token = tmp_path / "api.token"
    token.write_text("tok-api")
    with CountingIdentityService(
        ca, tokens={"tok-api": "ns/default/sa/api"}, ttl=timedelta(minutes=2)
    ) as service:
        ident = {
            "trust_anchors": str(ca / "trust-anchor.pem"),
            "issuer": service.url,
            "token_file": str(token),
            "name": "ns/default/sa/api",
        }
        config = load(inbound_config(ident, "127.0.0.1:9"))
        time = VirtualTime()
        agent = IdentityAgent(config, backoff=POLICY, clock=time.clock, wait=time.wait, uniform=highest)
        chain, _key = agent.initial()
        not_after = identity.cert_info(chain)["not_after"]
        # From now on the service refuses every renewal (401 unknown token), as after a revocation.
        token.write_text("tok-revoked")
        window = timedelta(minutes=10)
        time.until = not_after + window
        installed: list[str] = []
        agent.start(lambda chain, key: installed.append(chain))
        try:
            assert time.reached.wait(60), "the agent never got ten minutes past the expiry"
        finally:
            agent.stop()
        err = capsys.readouterr().err

    assert installed == []
    assert "unknown token" in (agent.last_error or "")
    # Every wait but the first (until the renewal at 70 % of the lifetime) follows a refused try;
    # the last one ended the run. The service saw exactly those tries, plus the first certificate.
    attempts_at = time.woken_at[:-1]
    assert service.certify_requests == 1 + len(attempts_at)
    expired_attempts = [t for t in attempts_at if t >= not_after]
    assert expired_attempts, "no renewal was tried after the expiry"
    retry_waits = time.waits[1:]
    # Once expired, the waits grow to the cap rather than shrinking to nothing: 600 s of outage
    # at a 30 s cap is about 20 tries (the old code made 6000).
    after_expiry = retry_waits[-len(expired_attempts) :]
    assert all(POLICY.floor <= w <= POLICY.cap for w in retry_waits), retry_waits
    assert after_expiry[-1] == POLICY.cap, after_expiry
    assert len(expired_attempts) <= window.total_seconds() / POLICY.cap + 1, len(expired_attempts)

    # Before expiry each failure is logged; after it, one loud line a minute covers all the tries.
    per_attempt = [line for line in err.splitlines() if "renewal failed" in line]
    assert len(per_attempt) == len(attempts_at) - len(expired_attempts)
    expired_lines = [line for line in err.splitlines() if "certificate EXPIRED at" in line]
    minutes = window.total_seconds() / POLICY.expired_log_interval
    assert minutes - 1 <= len(expired_lines) <= minutes + 1, expired_lines
    assert len(expired_lines) < len(expired_attempts)
    assert "mTLS to peers will fail" in expired_lines[0]
    assert f"{not_after:%Y-%m-%d %H:%M:%S}" in expired_lines[0]
