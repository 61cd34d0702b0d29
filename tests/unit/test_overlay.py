"""Overlay pages (hv/overlay.py): PDF §5.2.1 "overlay pages", inventory §6.1 and §7.4."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hv1.hv.overlay import OverlayLayer, OverlayPage
from tests.fakes import FakeMemory

PAGE = 0x1000


def ram_with_pattern(pages: int = 8) -> FakeMemory:
    mem = FakeMemory(pages * PAGE)
    for i in range(pages):
        mem.write(i * PAGE, bytes([0x10 + i]) * PAGE)
    return mem


def test_overlay_starts_zero_and_unmapped() -> None:
    ov = OverlayPage(FakeMemory(4 * PAGE))
    assert not ov.mapped and not ov.accessible and ov.gpfn is None
    assert ov.read() == bytes(PAGE)


def test_overlay_covers_ram_and_unmap_uncovers_it() -> None:
    mem = ram_with_pattern()
    ov = OverlayPage(mem)
    ov.write(0, b"hv")
    ov.map(3)
    assert ov.mapped and ov.accessible
    assert mem.read(3 * PAGE, 4) == b"hv\0\0"  # the overlay hides the RAM underneath
    ov.unmap()
    assert mem.read(3 * PAGE, PAGE) == bytes([0x13]) * PAGE  # RAM restored
    assert ov.read(0, 2) == b"hv"  # content kept while unmapped


def test_overlay_contents_follow_a_move() -> None:
    mem = ram_with_pattern()
    ov = OverlayPage(mem)
    ov.map(2)
    mem.write(2 * PAGE + 100, b"guest")  # the guest writes the overlay (e.g. a SIMP slot)
    ov.map(5)
    assert mem.read(2 * PAGE, PAGE) == bytes([0x12]) * PAGE
    assert mem.read(5 * PAGE + 100, 5) == b"guest"
    assert ov.read(100, 5) == b"guest"


def test_overlay_data_view_works_mapped_or_not() -> None:
    mem = ram_with_pattern()
    ov = OverlayPage(mem)
    ov.data()[0] = 7
    ov.map(1)
    assert mem.read(PAGE, 1) == b"\x07"
    ov.data()[1] = 8  # writes go to guest RAM while mapped
    assert mem.read(PAGE + 1, 1) == b"\x08"
    ov.unmap()
    assert ov.read(0, 2) == b"\x07\x08"


def test_overlay_beyond_ram_is_mapped_but_not_accessible() -> None:
    """ "If the specified base address is beyond the end of the partition's GPA space, the page will
    not be accessible" - and no fault."""
    mem = ram_with_pattern(4)
    before = mem.read(0, 4 * PAGE)
    ov = OverlayPage(mem)
    ov.write(0, b"x")
    ov.map(0x100000)
    assert ov.mapped and not ov.accessible
    assert mem.read(0, 4 * PAGE) == before
    assert ov.read(0, 1) == b"x"
    ov.map(1)  # moving back into RAM shows it
    assert mem.read(PAGE, 1) == b"x"


def test_overlay_fill_zero_and_bounds() -> None:
    ov = OverlayPage(FakeMemory(2 * PAGE))
    ov.fill(b"\xcc" * 10)
    assert ov.read(0, 11) == b"\xcc" * 10 + b"\0"
    ov.zero()
    assert ov.read() == bytes(PAGE)
    with pytest.raises(ValueError):
        ov.read(PAGE - 1, 2)
    with pytest.raises(ValueError):
        ov.write(PAGE, b"x")
    with pytest.raises(ValueError):
        ov.fill(bytes(PAGE + 1))


def test_stacked_overlays_one_visible_and_ram_restored_at_the_end() -> None:
    mem = ram_with_pattern()
    layer = OverlayLayer(mem)
    a, b = OverlayPage(mem, layer), OverlayPage(mem, layer)
    a.fill(b"A")
    b.fill(b"B")
    a.map(4)
    b.map(4)
    assert mem.read(4 * PAGE, 1) == b"B" and layer.visible(4) is b
    b.unmap()
    assert mem.read(4 * PAGE, 1) == b"A" and layer.visible(4) is a
    a.unmap()
    assert mem.read(4 * PAGE, PAGE) == bytes([0x14]) * PAGE and layer.visible(4) is None


def test_stacked_overlays_lower_one_leaves_first() -> None:
    mem = ram_with_pattern()
    layer = OverlayLayer(mem)
    a, b = OverlayPage(mem, layer), OverlayPage(mem, layer)
    a.fill(b"A")
    b.fill(b"B")
    a.map(4)
    b.map(4)
    a.unmap()  # hidden one goes: nothing visible changes
    assert mem.read(4 * PAGE, 1) == b"B"
    b.unmap()
    assert mem.read(4 * PAGE, PAGE) == bytes([0x14]) * PAGE


def test_layer_reset_unmaps_and_zeroes_everything_and_leaves_ram_alone() -> None:
    """A partition reset drops the overlays without writing RAM (the platform reset reloads RAM, and
    the saved copies belong to the previous boot: tests/unit/test_reset_ram.py)."""
    mem = ram_with_pattern()
    layer = OverlayLayer(mem)
    a, b = OverlayPage(mem, layer), OverlayPage(mem, layer)
    a.fill(b"A")
    b.fill(b"B")
    a.map(1)
    b.map(2)
    before = mem.read(0, 8 * PAGE)
    layer.reset()
    assert not a.mapped and not b.mapped
    assert a.read() == bytes(PAGE) and b.read() == bytes(PAGE)
    assert mem.read(0, 8 * PAGE) == before


# --- model-based check -------------------------------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("map"), st.integers(0, 2), st.integers(0, 4)),  # overlay, gpfn (4 = beyond RAM)
        st.tuples(st.just("unmap"), st.integers(0, 2), st.just(0)),
        st.tuples(st.just("guest"), st.integers(0, 3), st.integers(1, 255)),  # guest writes byte at gpfn
        st.tuples(st.just("hv"), st.integers(0, 2), st.integers(1, 255)),  # hv writes overlay content
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_overlay_model(ops: list[tuple[str, int, int]]) -> None:
    """Random map/unmap/move/writes against a model: each page shows its most recently mapped
    overlay or the guest's RAM, and contents follow the overlays."""
    mem = FakeMemory(4 * PAGE)  # gpfn 4 is beyond RAM
    layer = OverlayLayer(mem)
    ovs = [OverlayPage(mem, layer) for _ in range(3)]
    ram = [0] * 4  # model: byte 0 of the guest RAM under each page
    content = [0] * 3  # model: byte 0 of each overlay
    where: list[int | None] = [None] * 3
    order: list[int] = []  # mapping order, most recent last
    for op, i, v in ops:
        if op == "map":
            if where[i] != v:
                if i in order:
                    order.remove(i)
                order.append(i)
            ovs[i].map(v)
            where[i] = v
        elif op == "unmap":
            ovs[i].unmap()
            where[i] = None
            if i in order:
                order.remove(i)
        elif op == "guest":
            mem.write(i * PAGE, bytes([v]))
            top = [o for o in order if where[o] == i]
            if top:
                content[top[-1]] = v
            else:
                ram[i] = v
        else:
            ovs[i].write(0, bytes([v]))
            content[i] = v
        for g in range(4):
            top = [o for o in order if where[o] == g]
            expect = content[top[-1]] if top else ram[g]
            assert mem.read(g * PAGE, 1)[0] == expect
        for k in range(3):
            assert ovs[k].read(0, 1)[0] == content[k]
