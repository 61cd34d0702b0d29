"""The port-I/O bus: devices claim port ranges; everything else reads all-ones and ignores writes."""

from __future__ import annotations

from typing import Protocol

from hv1.trace import Tracer


class PortDevice(Protocol):
    name: str

    def io_read(self, port: int, size: int) -> int: ...

    def io_write(self, port: int, size: int, value: int) -> None: ...


class IoBus:
    def __init__(self, tracer: Tracer) -> None:
        self._ports: dict[int, PortDevice] = {}
        self.tracer = tracer

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
        value = dev.io_read(port, size)
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
        dev.io_write(port, size, value)
