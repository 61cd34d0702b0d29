"""isa-debug-exit (QEMU `-device isa-debug-exit,iobase=0xf4,iosize=0x04`): a write of v ends the run
with exit status (v << 1) | 1."""

from __future__ import annotations

from collections.abc import Callable

DEBUG_EXIT_PORT = 0xF4


class DebugExit:
    name = "debug-exit"

    def __init__(self, on_exit: Callable[[int], None]) -> None:
        self._on_exit = on_exit

    def io_read(self, port: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def io_write(self, port: int, size: int, value: int) -> None:
        self._on_exit(((value << 1) | 1) & 0xFF)
