"""The `network` fixture: hosts in network namespaces (meshcore.netns), for tests
that need real links between hosts. It needs root and `ip netns`; where this
machine cannot give them the test is skipped with the reason, but under CI
(the `CI` variable set) it fails, because CI must not be such a place."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest

from meshcore.netns import Network, sweep, unavailable

# The example: a round trip takes twice each.
LATENCY = {"same-zone": "1ms", "cross-zone": "5ms", "cross-cluster": "30ms"}


def require_netns() -> None:
    """Skips the test (fails it under CI) if no Network can be built here."""
    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the network namespace tests (as root)")
    pytest.skip(f"{reason}; the network namespace tests need root and `ip netns`")


@pytest.fixture
def network() -> Iterator[Network]:
    """A Network with LATENCY between its zones, deleted after the test. A
    killed earlier run's leftovers are swept first."""
    require_netns()
    sweep()
    with Network(latency=LATENCY) as net:
        yield net


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples in Prometheus `text` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}{{(.*)}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total
