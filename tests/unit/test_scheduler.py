from __future__ import annotations

import threading
import time

from hv1.machine.scheduler import Scheduler


def test_fires_in_deadline_order_and_rearm_replaces() -> None:
    s = Scheduler()
    got: list[str] = []
    done = threading.Event()
    now = time.monotonic_ns()
    s.schedule("b", now + 30_000_000, lambda: (got.append("b"), done.set()))
    s.schedule("a", now + 10_000_000, lambda: got.append("a"))
    s.schedule("c", now + 5_000_000, lambda: got.append("c-old"))
    s.schedule("c", now + 20_000_000, lambda: got.append("c"))  # re-arm: the old deadline is dropped
    s.schedule("x", now + 1_000_000, lambda: got.append("x"))
    s.cancel("x")
    assert done.wait(2)
    s.stop()
    assert got == ["a", "c", "b"]
