"""The port-I/O bus: devices claim port ranges; everything else reads all-ones and ignores writes.

Every access is guest input. A device answers it; it never fails the VMM: an exception escaping a
device is that device's error answer to the guest — a read returns all-ones (what an absent device
reads), a write is dropped — and is traced ("io" "device-error", also kept in the trace ring buffer
for a later fatal dump) and counted in `errors`. The VP keeps running.
"""

from __future__ import annotations

import logging
from typing import Protocol

from hv1.trace import Tracer


class PortDevice(Protocol):
    name: str

    def io_read(self, port: int, size: int) -> int: ...

    def io_write(self, port: int, size: int, value: int) -> None: ...


log = logging.getLogger("hv1.devices")


class IoBus:
    def __init__(self, tracer: Tracer) -> None:
        self._ports: dict[int, PortDevice] = {}
        self.tracer = tracer
        self.errors = 0  # device exceptions turned into error answers

    def _device_error(self, vp: int, dev: PortDevice, op: str, port: int, size: int, e: Exception) -> None:
        self.errors += 1
        self.tracer.emit("io", vp, "device-error", dev=dev.name, op=op, port=port, size=size,
                         error=f"{type(e).__name__}: {e}")  # fmt: skip
        log.debug("%s %s port %#x size %d failed", dev.name, op, port, size, exc_info=e)

    def register(self, dev: PortDevice, first: int, count: int = 1) -> None:
        for p in range(first, first + count):
            if p in self._ports:
                raise ValueError(f"port {p:#x} already claimed by {self._ports[p].name}")
            self._ports[p] = dev

    def device_at(self, port: int) -> PortDevice | None:
        return self._ports.get(port)

    def read(self, vp: int, port: int, size: int) -> int:
        dev = self._ports.get(port)
        if dev is None:
            value = (1 << (8 * size)) - 1
            if self.tracer.wants("io"):
                self.tracer.emit("io", vp, "in-unassigned", port=port, size=size, value=value)
            return value
        try:
            value = dev.io_read(port, size) & ((1 << (8 * size)) - 1)
        except Exception as e:  # the device's answer to the guest, not a VMM failure (module doc)
            self._device_error(vp, dev, "in", port, size, e)
            return (1 << (8 * size)) - 1
        if self.tracer.wants("io"):
            self.tracer.emit("io", vp, "in", dev=dev.name, port=port, size=size, value=value)
        return value

    def write(self, vp: int, port: int, size: int, value: int) -> None:
        dev = self._ports.get(port)
        if dev is None:
            if self.tracer.wants("io"):
                self.tracer.emit("io", vp, "out-unassigned", port=port, size=size, value=value)
            return
        if self.tracer.wants("io"):
            self.tracer.emit("io", vp, "out", dev=dev.name, port=port, size=size, value=value)
        try:
            dev.io_write(port, size, value)
        except Exception as e:  # the device's answer to the guest, not a VMM failure (module doc)
            self._device_error(vp, dev, "out", port, size, e)
