"""The KVM run loop (hv1/backends/kvm/vcpu.py) over an anonymous kvm_run area with KVM_RUN faked: no
/dev/kvm needed. Checks the exit decode the fast path changed (a one-byte `out`, issue 13) and the per-
exit profile's records (hv1/profiler.py): each exit under its kind, an RDMSR under its MSR, and the
backend's phases on them."""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable, Iterator

import pytest

from hv1.backends.kvm import ioctls as k
from hv1.backends.kvm import vcpu as vcpu_mod
from hv1.backends.kvm.vcpu import KvmVcpu
from hv1.profiler import profiling

IO_DATA = 4096  # where the fake KVM puts an I/O exit's data (data_offset, within the mapping)


class Recorder:
    """An ExitHandler that records what the loop hands it."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.vcpu: KvmVcpu | None = None

    def before_entry(self) -> None:
        pass

    def count_exit(self, reason: int) -> None:
        self.calls.append(("exit", reason))

    def io_out(self, port: int, size: int, value: int) -> None:
        self.calls.append(("out", port, size, value))

    def io_in(self, port: int, size: int) -> int:
        self.calls.append(("in", port, size))
        return 0xFFFF_FFFF

    def rdmsr(self, index: int) -> int | None:
        self.calls.append(("rdmsr", index))
        return 7

    def halted(self) -> None:
        self.calls.append(("hlt",))
        assert self.vcpu is not None
        self.vcpu.stop_requested = True

    def fatal(self, kind: str, detail: str) -> None:
        raise AssertionError(f"{kind}: {detail}")


def _io(mm: mmap.mmap, direction: int, size: int, port: int, count: int, data: bytes) -> None:
    struct.pack_into("<BBHIQ", mm, 32, direction, size, port, count, IO_DATA)
    mm[IO_DATA : IO_DATA + len(data)] = data


@pytest.fixture
def loop(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[KvmVcpu, Recorder]]:
    mm = mmap.mmap(-1, 8192)
    v = KvmVcpu.over(0, -1, mm)
    h = Recorder()
    h.vcpu = v
    exits: Iterator[Callable[[], None]] = iter(
        [
            lambda: _io(mm, k.KVM_EXIT_IO_OUT, 1, 0xE0, 1, b"\x42"),
            lambda: _io(mm, k.KVM_EXIT_IO_OUT, 2, 0x3F8, 2, b"\x01\x02\x03\x04"),
            lambda: _io(mm, 0, 4, 0x3008, 1, b""),  # an IN
            lambda: struct.pack_into("<B7xIIQ", mm, 32, 0, 0, 0x40000002, 0),
            lambda: None,  # HLT
        ]
    )
    reasons = iter([k.KVM_EXIT_IO, k.KVM_EXIT_IO, k.KVM_EXIT_IO, k.KVM_EXIT_X86_RDMSR, k.KVM_EXIT_HLT])

    def fake_kvm_run(fd: int, req: object, arg: int) -> int:
        next(exits)()
        struct.pack_into("<I", mm, 8, next(reasons))
        return 0

    monkeypatch.setattr(vcpu_mod, "_ioctl", fake_kvm_run)
    yield v, h


def test_io_and_msr_exits_are_decoded(loop: tuple[KvmVcpu, Recorder]) -> None:
    v, h = loop
    v._run(h)  # type: ignore[arg-type]
    assert [c for c in h.calls if c[0] != "exit"] == [
        ("out", 0xE0, 1, 0x42),  # the one-byte fast path
        ("out", 0x3F8, 2, 0x0201),  # a string `out`: each unit
        ("out", 0x3F8, 2, 0x0403),
        ("in", 0x3008, 4),
        ("rdmsr", 0x40000002),
        ("hlt",),
    ]
    assert v.run_mm[IO_DATA : IO_DATA + 4] == b"\xff\xff\xff\xff"  # the IN's answer
    assert struct.unpack_from("<Q", v.run_mm, 48)[0] == 7  # the RDMSR's answer


def test_the_profiled_loop_records_each_exit_with_the_backend_phases(loop: tuple[KvmVcpu, Recorder]) -> None:
    v, h = loop
    with profiling() as prof:
        v._run(h)  # type: ignore[arg-type]
    kinds = prof.summary()["kinds"]
    # An exit's record ends when the next exit is seen: the HLT that stops the loop is not closed.
    assert kinds["io"]["count"] == 3 and kinds["rdmsr 0x40000002"]["count"] == 1
    assert {"run", "decode", "handler", "deferred"} <= set(kinds["io"]["phases"])
