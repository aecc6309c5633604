"""Does `meshcore bench` charge its own timer lateness to the server?

A paced lane wakes on tokio's 1 ms timer, so it often sends late; that
lateness is the generator's own. Over an idle server a paced run should time
close to a closed loop. This was a test; it asserted a latency bound that a
shared 2-core machine could not hold (an idle Python backend wakes slower
than a busy one), so it is a measurement here, read as a difference in one run.

    python bench/loadgen_timer.py [--rounds 3]
"""

from __future__ import annotations

import argparse

from meshcore import bench
from meshcore.backend import Backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    b = Backend("timer", "zone-a")
    try:
        print("round  closed p50 ms  paced p50 ms  difference ms")
        for n in range(args.rounds):
            closed = bench.run(f"http://{b.addr}/", duration=1, connections=1)
            paced = bench.run(f"http://{b.addr}/", rate=200, duration=2, connections=1)
            print(f"{n + 1:5}  {closed.p50:13.3f}  {paced.p50:12.3f}  {paced.p50 - closed.p50:13.3f}")
        print("Timer lateness charged to the server would add up to 1 ms (0.5 ms on average).")
    finally:
        b.stop()


if __name__ == "__main__":
    main()
