"""What the gdb stub needs from the thing it debugs: the `DebugTarget` protocol.

All-stop semantics (GDB manual, "All-Stop Mode"): when one VP stops for any reason the target stops
every VP before it reports the stop, and `resume` lets them all go again (except those told to stay
stopped). Stops are reported through `wait`, which the server polls while it watches the socket
for Ctrl-C.

VPs are named by VP index (HV_VP_INDEX, as hv1/hv names them); gdb's thread ID is VP index + 1
because gdb reserves 0 ("any thread") and -1 ("all threads").
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass
from typing import Protocol


class BreakpointType(enum.IntEnum):
    """The Z/z packet types (GDB manual, "Packets": Z0..Z4)."""

    SOFTWARE = 0
    HARDWARE = 1
    WRITE_WATCH = 2
    READ_WATCH = 3
    ACCESS_WATCH = 4


class StopKind(enum.Enum):
    SWBREAK = "swbreak"  # a planted int3 was reached (the int3 did not execute; PC is at it)
    HWBREAK = "hwbreak"  # an execute breakpoint in a debug register
    WATCH = "watch"  # a write watchpoint fired (after the store)
    RWATCH = "rwatch"
    AWATCH = "awatch"
    STEP = "step"  # a single step completed
    INTERRUPT = "interrupt"  # stop requested (Ctrl-C, attach)
    EXITED = "exited"  # the partition ended: no VP will run again


SIGINT = int(signal.SIGINT)  # 2
SIGTRAP = int(signal.SIGTRAP)  # 5


@dataclass(frozen=True)
class StopEvent:
    kind: StopKind
    vp: int  # the VP index that stopped (any VP for INTERRUPT/EXITED)
    addr: int | None = None  # watchpoint address for WATCH/RWATCH/AWATCH
    exit_status: int = 0  # EXITED: the `hv1 run` status

    @property
    def signal(self) -> int:
        return SIGINT if self.kind is StopKind.INTERRUPT else SIGTRAP


class DebugTarget(Protocol):
    def vp_indexes(self) -> list[int]: ...
    def describe_vp(self, vp: int) -> str: ...  # qThreadExtraInfo text, e.g. "VP 1 (APIC 1) running"

    # ---- execution control ----
    def stop_all(self) -> StopEvent:
        """Stop every VP now (attach, `?` while running); returns when all are stopped."""
        ...

    def interrupt(self) -> None:
        """Ctrl-C: stop every VP soon; `wait` then reports an INTERRUPT stop."""
        ...

    def resume(self, step: int | None, run: frozenset[int]) -> None:
        """Let VPs in `run` continue and single-step `step` (if not None); the others stay stopped.
        Returns at once; the next stop is reported by `wait`."""
        ...

    def wait(self, timeout: float) -> StopEvent | None: ...

    def kill(self) -> None: ...  # end the run (gdb `kill`)

    def detach(self) -> None: ...  # gdb left: remove every breakpoint and let all VPs run

    # ---- state of a stopped VP ----
    def read_registers(self, vp: int) -> dict[str, int]:
        """Registers by target-description name (registers.X86_64); missing ones are unavailable."""
        ...

    def write_registers(self, vp: int, values: dict[str, int]) -> bool: ...

    def read_virtual(self, vp: int, addr: int, length: int) -> bytes:
        """Up to `length` bytes at guest virtual `addr` through `vp`'s page tables; shorter (maybe
        empty) where the mapping or RAM ends."""
        ...

    def write_virtual(self, vp: int, addr: int, data: bytes) -> bool: ...
    def read_physical(self, addr: int, length: int) -> bytes: ...

    # ---- breakpoints and watchpoints ----
    def insert_breakpoint(self, vp: int, typ: BreakpointType, addr: int, length: int) -> bool:
        """False when the target cannot (no free debug register, bad length/alignment, unmapped)."""
        ...

    def remove_breakpoint(self, vp: int, typ: BreakpointType, addr: int, length: int) -> bool: ...

    def monitor(self, command: str) -> str | None:
        """Output of `monitor COMMAND` for commands the server does not handle itself (None:
        unknown command)."""
        ...
