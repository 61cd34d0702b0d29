"""The 8042 keyboard controller's reset line, which is all of it hv1 has: a write of 0xFE (pulse
output line 0, wired to the CPU's RESET#) to the command port 0x64 resets the partition. Linux's
`reboot=k` (and its fallback when ACPI reset fails) and the FADT RESET_REG (hv1/machine/acpi.py) use it.

Status reads (0x64) return 0: output buffer empty and input buffer empty, so a driver waiting to send
a command never spins; data port reads (0x60) return 0. Other commands are accepted and ignored.
The FADT says there is no 8042 (IAPC_BOOT_ARCH bit 1 clear), so Linux does not probe a keyboard.
"""

from __future__ import annotations

from collections.abc import Callable

I8042_DATA = 0x60
I8042_COMMAND = 0x64
CMD_PULSE_RESET = 0xFE


class I8042:
    name = "i8042"

    def __init__(self, reset: Callable[[], None]) -> None:
        self._reset = reset
        self.resets = 0

    def io_read(self, port: int, size: int) -> int:
        return 0

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == I8042_COMMAND and value & 0xFF == CMD_PULSE_RESET:
            self.resets += 1
            self._reset()
