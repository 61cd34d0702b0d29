"""hv1's time test port (0x3004, 32-bit), for conformance guests (guests/tests/timers_hv.h): the guest
can ask the host to do what only a host can — pause the partition's reference time, or move the
partition to a TSC of another frequency (reenlightenment, TLFS nested-virtualization.md).

IN returns "TIME" (0x54494D45) so a guest can tell the port is there; OUT 0 pauses reference time
for ~50 ms; OUT n simulates a migration to an n kHz TSC."""

from __future__ import annotations

import time

from hv1.hv.time_msrs import PartitionTime

TIME_TESTDEV_PORT = 0x3004
SIGNATURE = 0x54494D45


class TimeTestPort:
    name = "hv1-time-test"

    def __init__(self, partition_time: PartitionTime) -> None:
        self.time = partition_time

    def io_read(self, port: int, size: int) -> int:
        return SIGNATURE if port == TIME_TESTDEV_PORT and size == 4 else (1 << (8 * size)) - 1

    def io_write(self, port: int, size: int, value: int) -> None:
        if port != TIME_TESTDEV_PORT or size != 4:
            return
        if value == 0:
            self.time.pause()
            time.sleep(0.05)
            self.time.resume()
        else:
            self.time.simulate_migration(value * 1000)

    def describe(self) -> str:
        return f"{self.name} at {TIME_TESTDEV_PORT:#x}: pause reference time / simulate a TSC migration"
