"""hv1's time test port (0x3004, 32-bit), for conformance guests (guests/tests/timers_hv.h): the guest
can ask the host to do what only a host can — pause the partition's reference time, or move the
partition to a TSC of another frequency (reenlightenment, TLFS nested-virtualization.md).

IN returns "TIME" (0x54494D45) so a guest can tell the port is there; OUT 0 pauses reference time
for ~50 ms; OUT n simulates a migration to an n kHz TSC.

The value is guest input like any other: a frequency the reference TSC page cannot describe (not
above the 10 MHz reference clock, TLFS timers.md "Partition Reference TSC Mechanism": TscScale is a
64.64 fraction below 1) is ignored and traced ("time-test-bad"), never raised."""

from __future__ import annotations

import time
from typing import Any, Protocol

from hv1.hv.reftime import REF_HZ
from hv1.hv.time_msrs import PartitionTime

TIME_TESTDEV_PORT = 0x3004
SIGNATURE = 0x54494D45
MIN_TSC_KHZ = REF_HZ // 1000 + 1  # the slowest TSC with a scale < 2^64 (reftime.tsc_scale)


class TimeTestTracer(Protocol):
    def emit(self, cat: str, vp: int, event: str, **fields: Any) -> None: ...


class TimeTestPort:
    name = "hv1-time-test"

    def __init__(self, partition_time: PartitionTime, tracer: TimeTestTracer | None = None) -> None:
        self.time = partition_time
        self.tracer = tracer
        self.ignored = 0  # writes refused as out of range

    def io_read(self, port: int, size: int) -> int:
        return SIGNATURE if port == TIME_TESTDEV_PORT and size == 4 else (1 << (8 * size)) - 1

    def io_write(self, port: int, size: int, value: int) -> None:
        if port != TIME_TESTDEV_PORT or size != 4:
            return
        value &= 0xFFFF_FFFF
        if value == 0:
            self.time.pause()
            time.sleep(0.05)
            self.time.resume()
        elif value < MIN_TSC_KHZ:
            self.ignored += 1
            if self.tracer is not None:
                self.tracer.emit("io", -1, "time-test-bad", value=value, min_khz=MIN_TSC_KHZ)
        else:
            self.time.simulate_migration(value * 1000)

    def describe(self) -> str:
        return f"{self.name} at {TIME_TESTDEV_PORT:#x}: pause reference time / simulate a TSC migration"
