"""Extended hypercalls (hypercall-interface.md "Extended Hypercall Interface";
hypercalls/HvExtCallQueryCapabilities.md, HvExtCallGetBootZeroedMemory.md). All are gated by the
EnableExtendedHypercalls privilege; without it they are not advertised and answer
HV_STATUS_INVALID_HYPERCALL_CODE (Windows probes 0x8001 regardless: inventory §4.11).
"""

from __future__ import annotations

from hv1.hv.caps import privilege_gate
from hv1.hv.hypercalls.table import HypercallContext, HypercallDef, Kind
from hv1.hv.interfaces import PAGE_SHIFT, PAGE_SIZE, GuestMemory
from hv1.tlfs.hypercall_interface import (
    BOOT_ZEROED_COUNT,
    BOOT_ZEROED_MAX_RANGES,
    BOOT_ZEROED_OUTPUT_SIZE,
    BOOT_ZEROED_RANGE,
    EXT_QUERY_CAPABILITIES_OUTPUT,
    GPA_PAGE_RANGE,
    GPA_PAGE_RANGE_ADDITIONAL_MASK,
    GPA_PAGE_RANGE_LARGE_PAGE,
    MEMORY_HEAT_HINT_HEADER,
    MEMORY_HEAT_HINT_TYPE_MASK,
    ExtCapabilities,
)
from hv1.tlfs.hypercalls import HypercallCode
from hv1.tlfs.partition import PartitionPrivilege
from hv1.tlfs.status import HvStatus

# The extended calls hv1 implements (the QueryCapabilities answer).
CAPABILITIES = ExtCapabilities.GetBootZeroedMemory | ExtCapabilities.MemoryHeatHint

_GATE = privilege_gate(PartitionPrivilege.EnableExtendedHypercalls)
_NOT_ADVERTISED = HvStatus.INVALID_HYPERCALL_CODE


_CAPABILITIES = int(CAPABILITIES)
_SUCCESS = int(HvStatus.SUCCESS)  # an enum attribute lookup costs more than this handler (issue 13)


def query_capabilities(ctx: HypercallContext) -> int:
    EXT_QUERY_CAPABILITIES_OUTPUT.pack_into(ctx.output, 0, _CAPABILITIES)
    return _SUCCESS


# --- HvExtCallGetBootZeroedMemory ------------------------------------------------------------------
CHUNK_PAGES = 512  # scan 2 MiB at a time, page by page only where a chunk is not all zero


def _is_zero(memory: GuestMemory, gpa: int, length: int) -> bool:
    return bytes(memory.view(gpa, length)) == bytes(length)


def zero_runs(
    memory: GuestMemory, first_pfn: int, count: int, exclude: frozenset[int] = frozenset()
) -> list[tuple[int, int]]:
    """Runs (first pfn, pages) inside [first_pfn, first_pfn+count) that are guest RAM and read as zero
    now, skipping the pfns in `exclude`."""
    runs: list[tuple[int, int]] = []
    start: int | None = None
    pfn, end = first_pfn, first_pfn + count

    def close(at: int) -> None:
        nonlocal start
        if start is not None:
            runs.append((start, at - start))
            start = None

    while pfn < end:
        n = min(CHUNK_PAGES, end - pfn)
        gpa = pfn << PAGE_SHIFT
        whole = (
            not any(pfn <= x < pfn + n for x in exclude)
            and memory.contains(gpa, n * PAGE_SIZE)
            and _is_zero(memory, gpa, n * PAGE_SIZE)
        )
        if whole:
            if start is None:
                start = pfn
        else:
            for q in range(pfn, pfn + n):
                g = q << PAGE_SHIFT
                if q not in exclude and memory.contains(g, PAGE_SIZE) and _is_zero(memory, g, PAGE_SIZE):
                    if start is None:
                        start = q
                else:
                    close(q)
        pfn += n
    close(end)
    return runs


def get_boot_zeroed_memory(ctx: HypercallContext) -> int:
    """TLFS: "ranges that are known to be zeroed at the time the hypercall is made. Cacheable reads
    from reported ranges must return all zeroes." The machine gives the partition the RAM that was
    zero at boot (`Partition.boot_zeroed`, GPA + byte length); hv1 reports the whole pages of it that
    still read as zero now (pages written since are left out), biggest first, at most 255. The output
    page itself is left out: this call is about to write it."""
    p = ctx.partition
    exclude = frozenset() if ctx.output_gpa is None else frozenset({ctx.output_gpa >> PAGE_SHIFT})
    runs: list[tuple[int, int]] = []
    for gpa, length in p.boot_zeroed:
        first = (gpa + PAGE_SIZE - 1) >> PAGE_SHIFT  # whole pages only
        last = (gpa + length) >> PAGE_SHIFT
        if last > first:
            runs.extend(zero_runs(p.memory, first, last - first, exclude))
    runs.sort(key=lambda r: (-r[1], r[0]))
    runs = runs[:BOOT_ZEROED_MAX_RANGES]
    BOOT_ZEROED_COUNT.pack_into(ctx.output, 0, len(runs))
    for i, (first, count) in enumerate(runs):
        BOOT_ZEROED_RANGE.pack_into(
            ctx.output, BOOT_ZEROED_COUNT.size + i * BOOT_ZEROED_RANGE.size, first, count
        )
    return HvStatus.SUCCESS


# --- HvExtCallMemoryHeatHint -------------------------------------------------------------------------


def memory_heat_hint_header(ctx: HypercallContext) -> int:
    (hint,) = MEMORY_HEAT_HINT_HEADER.unpack_from(ctx.input)
    if hint & ~MEMORY_HEAT_HINT_TYPE_MASK:
        return HvStatus.INVALID_PARAMETER  # Reserved:62 must be zero
    return HvStatus.SUCCESS


def memory_heat_hint_element(
    ctx: HypercallContext, index: int, elem_in: memoryview, elem_out: memoryview
) -> int:
    """Advisory: hv1 keeps the memory as it is and counts the hinted pages."""
    (rng,) = GPA_PAGE_RANGE.unpack_from(elem_in)
    pages = (rng & GPA_PAGE_RANGE_ADDITIONAL_MASK) + 1
    if rng & GPA_PAGE_RANGE_LARGE_PAGE:
        pages *= 512
    c = ctx.partition.counters
    c["heat_hint_ranges"] += 1
    c["heat_hint_pages"] += pages
    return HvStatus.SUCCESS


DEFS = (
    HypercallDef(
        code=HypercallCode.HvExtCallQueryCapabilities,
        name="HvExtCallQueryCapabilities",
        kind=Kind.SIMPLE,
        handler=query_capabilities,
        output_size=EXT_QUERY_CAPABILITIES_OUTPUT.size,
        gate=_GATE,
        denied_status=_NOT_ADVERTISED,
        doc="which extended hypercalls exist",
    ),
    HypercallDef(
        code=HypercallCode.HvExtCallGetBootZeroedMemory,
        name="HvExtCallGetBootZeroedMemory",
        kind=Kind.SIMPLE,
        handler=get_boot_zeroed_memory,
        output_size=BOOT_ZEROED_OUTPUT_SIZE,
        gate=_GATE,
        denied_status=_NOT_ADVERTISED,
        doc="RAM ranges that read as zero",
    ),
    HypercallDef(
        code=HypercallCode.HvExtCallMemoryHeatHint,
        name="HvExtCallMemoryHeatHint",
        kind=Kind.REP,
        handler=memory_heat_hint_header,
        element=memory_heat_hint_element,
        input_size=MEMORY_HEAT_HINT_HEADER.size,
        rep_input_size=GPA_PAGE_RANGE.size,
        gate=_GATE,
        denied_status=_NOT_ADVERTISED,
        doc="cold/free page hints (accepted, counted)",
    ),
)
