"""hv1's bench device (ports 0x3008-0x300F, 32-bit accesses), for the guests/bench kernels: the host
side of benchmarks that need a host event at a known reference time, or the VMM's own CPU time.

OUT 0x3008 = (cmd << 24) | (vp_index << 16) | (arg << 8) | delay, delay in units of 100 µs:
  cmd 0  IDENT   latch the signature 0x48563142 ("HV1B") into the result register
  cmd 1  POST    after `delay`, on the device's host thread: stamp the reference time, then post a
                 message of type BENCH_MESSAGE_TYPE to SINT `arg` of VP `vp_index` (the root API,
                 PartitionPorts.post_message) with payload <u64 stamp, u64 sequence number>
  cmd 2  IRQ     after `delay`, on the same thread: stamp the reference time, then request fixed
                 vector `arg` on VP `vp_index` (InterruptSink.request_interrupt: an MSI under
                 --apic kernel) — the floor of POST: the same host path without the SynIC
  cmd 3  CPU     latch the process CPU time of the VMM (all threads, 100 ns units) now
  delay 0 does POST/IRQ synchronously, inside the guest's OUT exit.
IN 0x3008 / IN 0x300C: low / high 32 bits of the result register: the last stamp of POST/IRQ (the
reference time the host posted at; bit 63 set plus the HV_STATUS if the post failed), or what
IDENT/CPU latched. An absent device reads all-ones (the I/O bus default), so IDENT tells presence.

Reference time is `ReferenceTime.now()` (TLFS timers.md, 100 ns), the same clock the guest reads
through the reference TSC page, so arrival - stamp is the host -> guest-handler latency.
"""

from __future__ import annotations

import queue
import struct
import threading
import time
from collections.abc import Callable
from typing import Protocol

BENCH_DEV_PORT = 0x3008
BENCH_DEV_PORT_COUNT = 8
SIGNATURE = 0x48563142  # "HV1B"
BENCH_MESSAGE_TYPE = 0x42454E43  # guest-range message type (bit 31 clear): "BENC"
DELAY_UNIT_NS = 100_000

CMD_IDENT = 0
CMD_POST = 1
CMD_IRQ = 2
CMD_CPU = 3

FAILED = 1 << 63


class BenchPorts(Protocol):
    """The part of hv1.hv.ports.PartitionPorts the device uses."""

    def post_message(self, vp: int, sint: int, msg_type: int, payload: bytes) -> int: ...


class BenchDev:
    """A PortDevice (hv1/machine/devices/base.py)."""

    name = "hv1-bench"

    def __init__(
        self,
        ports: BenchPorts,
        now: Callable[[], int],
        request_interrupt: Callable[[int, int], None],
        cpu_ns: Callable[[], int] = time.process_time_ns,
    ) -> None:
        self.ports = ports
        self.now = now  # partition reference time (100 ns)
        self.request_interrupt = request_interrupt
        self.cpu_ns = cpu_ns
        self.result = 0
        self.sequence = 0
        self._queue: queue.SimpleQueue[tuple[int, int, int, int]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def describe(self) -> str:
        return f"{self.name} at {BENCH_DEV_PORT:#x}: timed host message/interrupt, VMM CPU time (benchmarks)"

    # --- PortDevice ------------------------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        if size != 4:
            return (1 << (8 * size)) - 1
        if port == BENCH_DEV_PORT:
            return self.result & 0xFFFF_FFFF
        if port == BENCH_DEV_PORT + 4:
            return self.result >> 32 & 0xFFFF_FFFF
        return 0xFFFF_FFFF

    def io_write(self, port: int, size: int, value: int) -> None:
        if port != BENCH_DEV_PORT or size != 4:
            return
        cmd, vp, arg, delay = value >> 24 & 0xFF, value >> 16 & 0xFF, value >> 8 & 0xFF, value & 0xFF
        if cmd == CMD_IDENT:
            self.result = SIGNATURE
        elif cmd == CMD_CPU:
            self.result = self.cpu_ns() // 100
        elif cmd in (CMD_POST, CMD_IRQ):
            if delay == 0:
                self._fire(cmd, vp, arg)
            else:
                self._start_thread()
                self._queue.put((time.monotonic_ns() + delay * DELAY_UNIT_NS, cmd, vp, arg))

    def reset(self) -> None:
        """Platform reset: forget queued events and the result register."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self.result = 0

    # --- the host side ---------------------------------------------------------------------------------
    def _fire(self, cmd: int, vp: int, arg: int) -> None:
        try:
            self._fire_unchecked(cmd, vp, arg)
        except (KeyError, IndexError, ValueError, OSError):  # no such VP / vector: the guest's mistake
            self.result = FAILED

    def _fire_unchecked(self, cmd: int, vp: int, arg: int) -> None:
        stamp = self.now()
        if cmd == CMD_IRQ:
            self.result = stamp
            self.request_interrupt(vp, arg)
            return
        self.sequence += 1
        self.result = stamp
        payload = struct.pack("<QQ", stamp, self.sequence)
        status = self.ports.post_message(vp, arg, BENCH_MESSAGE_TYPE, payload)
        if status != 0:
            self.result = FAILED | int(status)

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="hv1-bench-dev", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            due, cmd, vp, arg = self._queue.get()
            left = due - time.monotonic_ns()
            if left > 0:
                time.sleep(left / 1e9)
            self._fire(cmd, vp, arg)
