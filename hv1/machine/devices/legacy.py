"""The PC's legacy chips as a test kernel meets them: the PICs (masked, accepting ICWs), the PIT
(writes accepted, a counter that reads back), port 0x61, the POST port and a CMOS RTC/NVRAM.

None of them raises interrupts: test kernels use the local APIC, and Linux, told by hv1's
hardware-reduced FADT, uses neither the PIC nor the PIT. The RTC answers what Linux reads (status A
with UIP clear, B = 24-hour BCD, C no flags, D valid, the time and the century). CMOS RAM survives a
partition reset (as NVRAM does), which lets a conformance guest tell its second boot after HV_X64_MSR_RESET.
"""

from __future__ import annotations

import time


class Pic8259Pair:
    name = "pic"

    def __init__(self) -> None:
        self.imr = {0x21: 0xFF, 0xA1: 0xFF}

    def io_read(self, port: int, size: int) -> int:
        if port in self.imr:
            return self.imr[port]
        return 0  # IRR/ISR: nothing pending

    def io_write(self, port: int, size: int, value: int) -> None:
        if port in self.imr:
            self.imr[port] = value & 0xFF


class Pit8254:
    name = "pit"

    def __init__(self) -> None:
        self._t0 = time.monotonic_ns()
        self.port61 = 0

    def io_read(self, port: int, size: int) -> int:
        if port == 0x61:
            # Bit 5 (timer 2 output) and bit 4 (refresh toggle) change over time, as loops expect.
            ticks = (time.monotonic_ns() - self._t0) // 15_000
            return (self.port61 & 0x0F) | ((ticks & 1) << 4) | ((ticks & 2) << 4)
        if port in (0x40, 0x41, 0x42):
            # A 1.193182 MHz down-counter.
            return (0xFFFF - ((time.monotonic_ns() - self._t0) * 1193 // 1_000_000)) & 0xFF
        return 0

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == 0x61:
            self.port61 = value & 0xFF


class PostPort:
    name = "post"

    def __init__(self) -> None:
        self.last = 0

    def io_read(self, port: int, size: int) -> int:
        return self.last

    def io_write(self, port: int, size: int, value: int) -> None:
        self.last = value & 0xFF


CMOS_CENTURY = 0x32  # IBM PC/AT century byte; hv1's FADT CENTURY field points here


def _bcd(v: int) -> int:
    return ((v // 10) << 4) | (v % 10)


class Cmos:
    name = "cmos"

    def __init__(self, ram_size: int) -> None:
        self.index = 0
        self.nvram = bytearray(128)
        self.nvram[0x0A] = 0x26  # 32.768 kHz time base, 1024 Hz rate
        self.nvram[0x0B] = 0x02  # 24-hour, BCD
        self.nvram[0x0D] = 0x80  # valid RAM and time
        ext_kb = min(max(0, ram_size - 0x100000) // 1024, 0xFFFF)
        self.nvram[0x17] = self.nvram[0x30] = ext_kb & 0xFF
        self.nvram[0x18] = self.nvram[0x31] = ext_kb >> 8
        above16 = min(max(0, ram_size - 0x1000000) // 0x10000, 0xFFFF)
        self.nvram[0x34] = above16 & 0xFF
        self.nvram[0x35] = above16 >> 8

    def io_read(self, port: int, size: int) -> int:
        if port == 0x70:
            return self.index
        reg = self.index & 0x7F
        if reg <= 9 or reg == CMOS_CENTURY:
            # The MC146818 time registers in BCD, 24-hour mode (status B = 0x02). Day of week counts
            # 1 = Sunday; Python's tm_wday counts 0 = Monday. The century (0x32, named by the FADT's
            # CENTURY field) is what Linux's mc146818_get_time adds to the two-digit year.
            t = time.gmtime()
            return _bcd(
                {0: t.tm_sec, 2: t.tm_min, 4: t.tm_hour, 6: (t.tm_wday + 1) % 7 + 1, 7: t.tm_mday,
                 8: t.tm_mon, 9: t.tm_year % 100, CMOS_CENTURY: t.tm_year // 100}.get(reg, 0)
            )  # fmt: skip
        return self.nvram[reg]

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == 0x70:
            self.index = value & 0xFF
        else:
            reg = self.index & 0x7F
            if reg >= 0x0E:  # status registers A-D and the clock are not writable here
                self.nvram[reg] = value & 0xFF
