"""A partition reset never writes old RAM into the new boot (issue 9, bug 5).

PDF §5.2.1 "GPA Overlay Pages": disabling an overlay uncovers the RAM underneath. A partition reset
(HV_X64_MSR_RESET, tlfs-inventory §3.3) is not a guest disabling its overlays, though: it comes with a
platform reset whose RAM is the freshly loaded boot image (Machine._reboot), and the copies of the RAM
saved under the overlays belong to the previous boot. `Partition.reset()` therefore leaves RAM alone,
so RAM is exactly the fresh image whichever order the machine reloads RAM and resets Hv state in.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hv1.hv import enlightenments
from hv1.hv.caps import parse_profile
from hv1.hv.overlay import OverlayLayer, OverlayPage
from hv1.hv.partition import Partition
from hv1.tlfs import msrs as M
from tests.fakes import FakeClock, FakeHooks, FakeIrq, FakeMemory

PAGE = 0x1000
RAM_PAGES = 64
LAST = RAM_PAGES - 1  # the last page of RAM
ENABLE = 1


def image(pages: int, seed: int) -> bytes:
    """A recognisable RAM image: every page a different byte pattern."""
    return b"".join(bytes([(seed * 31 + i) & 0xFF]) * PAGE for i in range(pages))


def partition(vps: int = 2) -> tuple[Partition, FakeMemory]:
    mem = FakeMemory(RAM_PAGES * PAGE)
    p = Partition(
        parse_profile("default", apic_mode="user"),
        vps,
        mem,
        FakeClock(),
        FakeIrq(),
        FakeHooks(),
    )
    enlightenments.attach(p, None)
    return p, mem


def map_every_overlay(p: Partition) -> None:
    """Every overlay the guest can map, with some stacked on one GPA and some on the last page."""
    p.wrmsr(0, M.HV_X64_MSR_GUEST_OS_ID, 0x8100_0000_0000_0000)
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, 5 << 12 | ENABLE)
    p.wrmsr(0, M.HV_X64_MSR_SIMP, 5 << 12 | ENABLE)  # stacked on the hypercall page
    p.wrmsr(1, M.HV_X64_MSR_SIMP, 5 << 12 | ENABLE)  # and another VP's SIMP on top of both
    p.wrmsr(0, M.HV_X64_MSR_SIEFP, LAST << 12 | ENABLE)
    p.wrmsr(1, M.HV_X64_MSR_SIEFP, LAST << 12 | ENABLE)
    p.wrmsr(0, M.HV_X64_MSR_VP_ASSIST_PAGE, LAST << 12 | ENABLE)
    p.wrmsr(1, M.HV_X64_MSR_VP_ASSIST_PAGE, 9 << 12 | ENABLE)
    p.wrmsr(0, M.HV_X64_MSR_REFERENCE_TSC, LAST << 12 | ENABLE)
    assert all(o.mapped for o in p.overlays.pages), "the test must map every overlay"


def test_reset_after_ram_reload_keeps_the_fresh_image() -> None:
    """Machine order before the fix: reload RAM, then reset Hv state."""
    p, mem = partition()
    mem.write(0, image(RAM_PAGES, seed=1))  # the first boot
    map_every_overlay(p)
    fresh = image(RAM_PAGES, seed=2)
    mem.write(0, fresh)  # the platform reset reloads RAM
    p.reset()
    assert mem.read(0, RAM_PAGES * PAGE) == fresh


def test_reset_before_ram_reload_keeps_the_fresh_image() -> None:
    """Machine order after the fix: reset Hv state, then reload RAM; nothing stale shows up later."""
    p, mem = partition()
    mem.write(0, image(RAM_PAGES, seed=1))
    map_every_overlay(p)
    p.reset()
    fresh = image(RAM_PAGES, seed=3)
    mem.write(0, fresh)
    assert mem.read(0, RAM_PAGES * PAGE) == fresh
    # The new boot maps and unmaps overlays again: what comes back is this boot's RAM.
    map_every_overlay(p)
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, 0)
    for vp in (0, 1):
        p.wrmsr(vp, M.HV_X64_MSR_SIMP, 0)
        p.wrmsr(vp, M.HV_X64_MSR_SIEFP, 0)
        p.wrmsr(vp, M.HV_X64_MSR_VP_ASSIST_PAGE, 0)
    p.wrmsr(0, M.HV_X64_MSR_REFERENCE_TSC, 0)
    assert mem.read(0, RAM_PAGES * PAGE) == fresh


def test_reset_zeroes_and_unmaps_every_overlay() -> None:
    p, _ = partition()
    map_every_overlay(p)
    p.reset()
    assert not any(o.mapped for o in p.overlays.pages)
    assert all(o.read() == bytes(PAGE) for o in p.overlays.pages)
    assert not p.hypercall_page.enabled


OPS = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from([0, 2, 3, 3, 3])),  # overlay, gpfn (3 = last page)
    max_size=20,
)


@settings(max_examples=100, deadline=None)
@given(OPS, st.booleans())
def test_layer_reset_with_any_stacking_leaves_ram_alone(
    ops: list[tuple[int, int]], reload_first: bool
) -> None:
    """Any sequence of maps/moves (stacked on one GPA, at the last page), then a reset with the RAM
    reload before or after it: RAM is the fresh image, and a later map/unmap restores fresh RAM."""
    mem = FakeMemory(4 * PAGE)
    mem.write(0, image(4, seed=4))
    layer = OverlayLayer(mem)
    ovs = [OverlayPage(mem, layer) for _ in range(4)]
    for i, ov in enumerate(ovs):
        ov.fill(bytes([0xA0 + i]) * PAGE)
    for i, gpfn in ops:
        ovs[i].map(gpfn)
    fresh = image(4, seed=5)
    if reload_first:
        mem.write(0, fresh)
        layer.reset()
    else:
        layer.reset()
        mem.write(0, fresh)
    assert mem.read(0, 4 * PAGE) == fresh
    for i, gpfn in ops:
        ovs[i].map(gpfn)
    for ov in ovs:
        ov.unmap()
    assert mem.read(0, 4 * PAGE) == fresh
