"""A 16550A UART (COM1 at 0x3F8), as far as a test kernel's and Linux's console need.

The transmitter is always ready (LSR THRE|TEMT) and bytes leave at once, so a guest never waits;
the divisor latch (LCR.DLAB) is stored so a driver that programs the baud rate reads it back.

Interrupts (National PC16550D datasheet, "Interrupt Identification Register"), when an `irq` line is
given (the machine wires it to I/O APIC pin 4): received data available (IER bit 0, IIR 0x04) while
the receive buffer holds bytes (`receive()` puts them there), and transmitter holding register empty
(IER bit 1, IIR 0x02), raised when the THR empties (at once, after every THR write) or when IER bit 1
is set while it is empty, and cleared by reading IIR while it is the reported source or by writing THR.
The line is high while any interrupt is pending, so each new THRE gives the I/O APIC a new edge.
Linux's 8250 driver transmits from its THRE interrupt: without it, user-space console output stalls.
As in QEMU, MCR.OUT2 does not gate the line.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable
from typing import BinaryIO

COM1 = 0x3F8

LSR_DR = 0x01
LSR_THRE = 0x20
LSR_TEMT = 0x40
LCR_DLAB = 0x80
IIR_NO_INT = 0x01
IIR_THRE = 0x02
IIR_RX_DATA = 0x04
IIR_FIFO = 0xC0
IER_RX_DATA = 0x01
IER_THRE = 0x02
RX_FIFO_MAX = 4096


class Uart16550:
    name = "uart"

    def __init__(
        self, out: BinaryIO | int, base: int = COM1, irq: Callable[[bool], None] | None = None
    ) -> None:
        self.base = base
        self._out = out
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._irq = irq
        self._reg_lock = threading.Lock()
        self._rx: collections.deque[int] = collections.deque()
        self._thre_pending = False
        self._line = False
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
        with self._reg_lock:
            value = self._read_locked(reg)
            self._update_line_locked()
        return value

    def _read_locked(self, reg: int) -> int:
        if reg == 0:
            if self.lcr & LCR_DLAB:
                return self.dll
            return self._rx.popleft() if self._rx else 0
        if reg == 1:
            return self.dlm if self.lcr & LCR_DLAB else self.ier
        if reg == 2:
            iir = self._iir_locked()
            if iir == IIR_THRE:
                self._thre_pending = False  # reading IIR clears a THRE interrupt it reports
            return iir | (IIR_FIFO if self.fcr & 1 else 0)
        if reg == 3:
            return self.lcr
        if reg == 4:
            return self.mcr
        if reg == 5:
            return LSR_THRE | LSR_TEMT | (LSR_DR if self._rx else 0)
        if reg == 6:
            return 0xB0  # DCD, DSR, CTS: a cable is connected
        return self.scr

    def _iir_locked(self) -> int:
        if self.ier & IER_RX_DATA and self._rx:
            return IIR_RX_DATA
        if self.ier & IER_THRE and self._thre_pending:
            return IIR_THRE
        return IIR_NO_INT

    def _level_locked(self) -> bool:
        return self._iir_locked() != IIR_NO_INT

    def _update_line_locked(self) -> None:
        # Under the register lock, so line changes reach the I/O APIC in the order they happen (the
        # I/O APIC never calls back into the UART).
        level = self._level_locked()
        if self._irq is not None and level != self._line:
            self._line = level
            self._irq(level)

    def io_write(self, port: int, size: int, value: int) -> None:
        reg = port - self.base
        value &= 0xFF
        with self._reg_lock:
            if reg == 0 and not self.lcr & LCR_DLAB:
                self._thre_pending = False  # the THR write clears THRE: the line may drop...
                self._update_line_locked()
                self._emit(value)
                self._thre_pending = True  # ...and the byte leaves at once: THR is empty again
            else:
                self._write_locked(reg, value)
            self._update_line_locked()

    def _write_locked(self, reg: int, value: int) -> None:
        if reg == 0:
            if self.lcr & LCR_DLAB:
                self.dll = value
        elif reg == 1:
            if self.lcr & LCR_DLAB:
                self.dlm = value
            else:
                if value & IER_THRE and not self.ier & IER_THRE:
                    self._thre_pending = True  # enabling THRE with the THR empty interrupts at once
                self.ier = value & 0x0F
        elif reg == 2:
            self.fcr = value
            if value & 0x02:
                self._rx.clear()  # FCR bit 1: clear the receive FIFO
        elif reg == 3:
            self.lcr = value
        elif reg == 4:
            self.mcr = value & 0x1F
        elif reg == 7:
            self.scr = value

    def reset(self) -> None:
        """Power-on register state (a partition reset). The interrupt line is low again, as the I/O
        APIC, reset with it, already takes it to be."""
        with self._reg_lock:
            self.ier = self.mcr = self.scr = self.fcr = 0
            self.lcr = 0x03
            self.dll, self.dlm = 0x01, 0
            self._rx.clear()
            self._thre_pending = False
            self._line = False

    def receive(self, data: bytes) -> None:
        """Bytes arriving on the line (console input): queued for RBR, with the RX interrupt."""
        with self._reg_lock:
            room = RX_FIFO_MAX - len(self._rx)
            self._rx.extend(data[: max(0, room)])  # beyond the buffer, input is dropped (overrun)
            self._update_line_locked()

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
