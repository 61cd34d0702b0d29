"""A child's GPA space as GuestMemory (hv1/hv/gpa_memory.py): the hypervisor's accesses on the
child's behalf follow the child's GPA map (PDF §5.1), zero copy into the root's RAM."""

from __future__ import annotations

import pytest

from hv1.hv.gpa_map import BACKING_ONES, BACKING_ZERO, GpaMap, GpaMapping
from hv1.hv.gpa_memory import PartitionMemory
from hv1.hv.interfaces import GpaError
from tests.fakes import FakeMemory

RW, R = 0x3, 0x1


def child_memory() -> tuple[PartitionMemory, FakeMemory]:
    ram = FakeMemory(64 << 12)
    m = GpaMap()
    m.map(0, GpaMapping(10, RW, (1, 10)))
    m.map(1, GpaMapping(3, RW, (1, 3)))  # not contiguous with page 0 in the root's RAM
    m.map(2, GpaMapping(11, R, (1, 11)))
    m.map(3, GpaMapping(BACKING_ZERO, R))
    m.map(4, GpaMapping(BACKING_ONES, R))
    return PartitionMemory(m, ram), ram


def test_reads_and_writes_land_in_the_backing_pages_across_page_boundaries() -> None:
    mem, ram = child_memory()
    mem.write(4090, b"ABCDEFGHIJ")
    assert ram.read(10 * 4096 + 4090, 6) == b"ABCDEF" and ram.read(3 * 4096, 4) == b"GHIJ"
    assert mem.read(4090, 10) == b"ABCDEFGHIJ"
    assert mem.read(3 << 12, 4) == bytes(4) and mem.read(4 << 12, 2) == b"\xff\xff"
    assert mem.size == 5 << 12


def test_unmapped_read_only_and_special_pages_refuse_without_writing_anything() -> None:
    mem, ram = child_memory()
    with pytest.raises(GpaError):
        mem.write((1 << 12) + 4094, b"xyz1")  # crosses into read-only page 2
    assert ram.read(3 * 4096 + 4094, 2) == bytes(2)  # checked whole before any byte (PDF §5)
    for gpa in (5 << 12, 3 << 12):
        with pytest.raises(GpaError):
            mem.write(gpa, b"x")
    with pytest.raises(GpaError):
        mem.read(5 << 12, 1)
    assert not mem.contains(4 << 12, 4097) and mem.contains(0, 3 << 12)


def test_view_is_zero_copy_inside_one_page_only() -> None:
    mem, ram = child_memory()
    v = mem.view(8, 16)
    v[0:2] = b"hi"
    assert ram.read(10 * 4096 + 8, 2) == b"hi"
    with pytest.raises(GpaError):
        mem.view(4090, 10)  # two backing pages that are not adjacent
    with pytest.raises(GpaError):
        mem.view(2 << 12, 8)  # read-only: no writable view
