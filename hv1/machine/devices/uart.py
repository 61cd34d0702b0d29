"""A 16550A UART (COM1 at 0x3F8), output only, as far as a test kernel's console needs.

The transmitter is always ready (LSR THRE|TEMT) and bytes leave at once, so a guest never waits;
the divisor latch (LCR.DLAB) is stored so a driver that programs the baud rate reads it back.
"""

from __future__ import annotations

import os
import threading
from typing import BinaryIO

COM1 = 0x3F8

LSR_DR = 0x01
LSR_THRE = 0x20
LSR_TEMT = 0x40
LCR_DLAB = 0x80
IIR_NO_INT = 0x01
IIR_FIFO = 0xC0


class Uart16550:
    name = "uart"

    def __init__(self, out: BinaryIO | int, base: int = COM1) -> None:
        self.base = base
        self._out = out
        self._buf = bytearray()
        self._lock = threading.Lock()
        self.ier = 0
        self.lcr = 0x03
        self.mcr = 0
        self.scr = 0
        self.fcr = 0
        self.dll = 0x01
        self.dlm = 0
        self.bytes_out = 0

    def io_read(self, port: int, size: int) -> int:
        reg = port - self.base
        if reg == 0:
            return self.dll if self.lcr & LCR_DLAB else 0  # no input
        if reg == 1:
            return self.dlm if self.lcr & LCR_DLAB else self.ier
        if reg == 2:
            return IIR_NO_INT | (IIR_FIFO if self.fcr & 1 else 0)
        if reg == 3:
            return self.lcr
        if reg == 4:
            return self.mcr
        if reg == 5:
            return LSR_THRE | LSR_TEMT
        if reg == 6:
            return 0xB0  # DCD, DSR, CTS: a cable is connected
        return self.scr

    def io_write(self, port: int, size: int, value: int) -> None:
        reg = port - self.base
        value &= 0xFF
        if reg == 0:
            if self.lcr & LCR_DLAB:
                self.dll = value
            else:
                self._emit(value)
        elif reg == 1:
            if self.lcr & LCR_DLAB:
                self.dlm = value
            else:
                self.ier = value & 0x0F
        elif reg == 2:
            self.fcr = value
        elif reg == 3:
            self.lcr = value
        elif reg == 4:
            self.mcr = value & 0x1F
        elif reg == 7:
            self.scr = value

    def _emit(self, byte: int) -> None:
        with self._lock:
            self._buf.append(byte)
            self.bytes_out += 1
            if byte == 0x0A or len(self._buf) >= 256 or self.bytes_out == 1:
                self._flush_locked()

    def _flush_locked(self) -> None:
        data = bytes(self._buf)
        self._buf.clear()
        try:
            if isinstance(self._out, int):
                while data:
                    data = data[os.write(self._out, data) :]
            else:
                self._out.write(data)
                self._out.flush()
        except (OSError, ValueError):
            pass  # a closed pipe or file must not take the VM down

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()
