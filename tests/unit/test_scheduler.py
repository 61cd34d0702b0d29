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


def test_far_deadline_does_not_kill_the_thread() -> None:
    """A guest may arm a timer centuries ahead (STIMER COUNT = 2^64-1): the thread must keep serving."""
    s = Scheduler()
    done = threading.Event()
    s.schedule("far", time.monotonic_ns() + (1 << 62), lambda: None)
    s.schedule("near", time.monotonic_ns() + 1_000_000, done.set)
    assert done.wait(2)
    s.stop()


def test_callback_errors_are_reported_and_the_thread_goes_on() -> None:
    errors: list[BaseException] = []
    s = Scheduler(on_error=errors.append)
    done = threading.Event()
    now = time.monotonic_ns()
    s.schedule("bad", now + 1_000_000, lambda: 1 // 0)  # type: ignore[func-returns-value]
    s.schedule("good", now + 5_000_000, done.set)
    assert done.wait(2)
    s.stop()
    assert len(errors) == 1 and isinstance(errors[0], ZeroDivisionError)
