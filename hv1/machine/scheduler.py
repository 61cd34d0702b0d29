"""One host thread that calls functions at deadlines (monotonic ns): the wake-up source for APIC
LVT timers in user mode and for synthetic timers. It sleeps until the earliest deadline and is idle
(blocked on a condition, no polling) when nothing is armed."""

from __future__ import annotations

import contextlib
import ctypes
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Hashable

_PR_SET_TIMERSLACK = 29


def _tighten_timer_slack() -> None:
    """Linux adds a timer slack (50 µs by default) to every timed sleep of a thread; the deadlines
    here are guest timer expiries, so this thread asks for 1 ns. Best effort: no-op elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)


# A deadline further out than this is slept towards in steps: Condition.wait() overflows on a
# guest-chosen deadline centuries away (a synthetic timer COUNT of 2^64-1 is legal).
MAX_WAIT_S = 3600.0


class Scheduler:
    def __init__(self, on_error: Callable[[BaseException], None] | None = None) -> None:
        self._on_error = on_error
        self._cond = threading.Condition()
        self._heap: list[tuple[int, int, Hashable]] = []
        self._armed: dict[Hashable, tuple[int, int, Callable[[], None]]] = {}
        self._seq = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="hv1-scheduler", daemon=True)
        self._thread.start()
        self.fired = 0

    def schedule(self, key: Hashable, deadline_ns: int, fn: Callable[[], None]) -> None:
        """Arm (or re-arm) `key` to call `fn` at `deadline_ns` (time.monotonic_ns() clock)."""
        with self._cond:
            seq = next(self._seq)
            self._armed[key] = (deadline_ns, seq, fn)
            heapq.heappush(self._heap, (deadline_ns, seq, key))
            if self._heap[0][1] == seq:
                self._cond.notify()

    def cancel(self, key: Hashable) -> None:
        with self._cond:
            self._armed.pop(key, None)

    def deadline(self, key: Hashable) -> int | None:
        entry = self._armed.get(key)
        return entry[0] if entry else None

    def _loop(self) -> None:
        _tighten_timer_slack()
        while True:
            with self._cond:
                while not self._stopped:
                    # Drop entries that were cancelled or re-armed since they were pushed.
                    while self._heap:
                        d, seq, key = self._heap[0]
                        armed = self._armed.get(key)
                        if armed is not None and armed[1] == seq:
                            break
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    now = time.monotonic_ns()
                    d = self._heap[0][0]
                    if d <= now:
                        break
                    self._cond.wait(min((d - now) / 1e9, MAX_WAIT_S))
                if self._stopped:
                    return
                _, _, key = heapq.heappop(self._heap)
                _, _, fn = self._armed.pop(key)
            self.fired += 1
            try:
                fn()
            except Exception as e:  # a bug in a callback must not silently stop every timer
                if self._on_error is None:
                    raise
                self._on_error(e)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=2)
