"""HvCallTranslateVirtualAddress's walk: a child VP's guest virtual address to a GPA, through the
VP's page tables and then the partition's GPA map (PDF §9.3.4, §9.4.6; datatypes/
hv_translate_gva_control_flags.md, hv_translate_gva_result.md; tlfs-inventory.md §6.3.6).

The walk follows the paging mode of the VP (4-level long mode, PAE, 32-bit), accumulates the rights
of every level as the processor does (Intel SDM Vol. 3 §4.6), reads each table through the GPA map
(an unmapped or unreadable table page is reported as such, with that page in GpaPage), and checks
the final page against the map. It is not coherent with any TLB: it reads the tables as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from hv1.hv.gpa_map import Access, GpaMap
from hv1.hv.interfaces import GuestMemory
from hv1.tlfs.virtual_mmu import INPUT_VTL_SHIFT, TRANSLATE_FLAGS_DEFINED, TranslateFlags, TranslateResult
from hv1.tlfs.virtualization_host import PAGE_SHIFT

# HV_TRANSLATE_GVA_CONTROL_FLAGS and HV_TRANSLATE_GVA_RESULT_CODE: hv1/tlfs/virtual_mmu.py.
VALIDATE_ANY = TranslateFlags.VALIDATE_READ | TranslateFlags.VALIDATE_WRITE | TranslateFlags.VALIDATE_EXECUTE


CACHE_TYPE_WRITE_BACK = 6  # hv1 maps guest RAM write-back; it has no MTRR/PAT cache model

CR0_WP = 1 << 16
CR0_PG = 1 << 31
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_SMEP = 1 << 20
CR4_SMAP = 1 << 21
EFER_NXE = 1 << 11
EFER_LMA = 1 << 10
RFLAGS_AC = 1 << 18
_P, _RW, _US, _A, _D, _PS = 1, 2, 4, 1 << 5, 1 << 6, 1 << 7
_NX = 1 << 63


@dataclass(frozen=True)
class PagingState:
    """What the walk needs of the VP: control registers, EFER, CPL and RFLAGS.AC."""

    cr0: int
    cr3: int
    cr4: int
    efer: int
    cpl: int = 0
    rflags: int = 0x2
    max_phys_bits: int = 52


@dataclass(frozen=True)
class Translation:
    result: TranslateResult
    gpa_page: int = 0
    cache_type: int = CACHE_TYPE_WRITE_BACK

    def pack_result(self) -> int:
        """HV_TRANSLATE_GVA_RESULT as a u64: ResultCode, CacheType:8 (OverlayPage: 0)."""
        return int(self.result) | (self.cache_type << 32)


def flags_error(flags: int) -> str | None:
    """Why HvCallTranslateVirtualAddress refuses these control flags (INVALID_PARAMETER), or None."""
    if flags & ~TRANSLATE_FLAGS_DEFINED & ~(0xFF << INPUT_VTL_SHIFT):
        return f"reserved control flags {flags:#x}"
    if flags >> INPUT_VTL_SHIFT:
        return "an input VTL other than 0 (hv1 has VTL 0 only)"
    if not flags & VALIDATE_ANY:
        return "none of VALIDATE_READ / VALIDATE_WRITE / VALIDATE_EXECUTE"
    if flags & TranslateFlags.SUPERVISOR_ACCESS and flags & TranslateFlags.USER_ACCESS:
        return "both SUPERVISOR_ACCESS and USER_ACCESS"
    return None


class _Fault(Exception):
    def __init__(self, result: TranslateResult, gpa_page: int = 0) -> None:
        self.result = result
        self.gpa_page = gpa_page


def translate_gva(
    gpa_map: GpaMap, mem: GuestMemory, vp: PagingState, gva_page: int, flags: int
) -> Translation:
    """Translate `gva_page` (a page number) for the access `flags` describe. `mem` reads and writes the
    partition's GPA space (hv1/hv/gpa_memory.PartitionMemory); call `flags_error` first."""
    try:
        return Translation(TranslateResult.Success, _walk(gpa_map, mem, vp, gva_page << PAGE_SHIFT, flags))
    except _Fault as f:
        return Translation(f.result, f.gpa_page)


def _table_entry(gpa_map: GpaMap, mem: GuestMemory, gpa: int, size: int) -> int:
    page = gpa >> PAGE_SHIFT
    m = gpa_map.get(page)
    if m is None:
        raise _Fault(TranslateResult.GpaUnmapped, page)
    if not m.access & Access.READ:
        raise _Fault(TranslateResult.GpaNoReadAccess, page)
    return int.from_bytes(mem.read(gpa, size), "little")


def _set_bits(gpa_map: GpaMap, mem: GuestMemory, gpa: int, size: int, entry: int, bits: int) -> None:
    if entry & bits == bits:
        return
    m = gpa_map.get(gpa >> PAGE_SHIFT)
    if m is None or not m.access & Access.WRITE:
        raise _Fault(TranslateResult.GpaNoWriteAccess, gpa >> PAGE_SHIFT)
    mem.write(gpa, (entry | bits).to_bytes(size, "little"))


def _walk(gpa_map: GpaMap, mem: GuestMemory, vp: PagingState, gva: int, flags: int) -> int:
    if not vp.cr0 & CR0_PG:
        return (gva & 0xFFFF_FFFF) >> PAGE_SHIFT  # paging off: identity, always success
    nxe = bool(vp.efer & EFER_NXE)
    addr_mask = ((1 << vp.max_phys_bits) - 1) & ~0xFFF
    writable = user = True
    no_exec = False
    # (table GPA, index shift, entry size, entries that may map a page (PS), reserved-bit mask)
    if vp.efer & EFER_LMA:
        top = gva >> 47
        if top not in (0, (1 << 17) - 1):
            raise _Fault(TranslateResult.PageNotPresent)  # non-canonical: outside the paging range
        levels = [(39, 8, False), (30, 8, True), (21, 8, True), (12, 8, False)]
        table = vp.cr3 & addr_mask
        reserved = ~addr_mask & 0x000F_FFFF_FFFF_F000 | (0 if nxe else _NX)
    elif vp.cr4 & CR4_PAE:
        gva &= 0xFFFF_FFFF
        pdpte_gpa = (vp.cr3 & 0xFFFF_FFE0) + ((gva >> 30) & 3) * 8
        pdpte = _table_entry(gpa_map, mem, pdpte_gpa, 8)
        if not pdpte & _P:
            raise _Fault(TranslateResult.PageNotPresent)
        if pdpte & (0x1E6 | (~addr_mask & 0x000F_FFFF_FFFF_F000)):  # PDPTE reserved bits (SDM 4.4.1)
            raise _Fault(TranslateResult.InvalidPageTableFlags)
        levels = [(21, 8, True), (12, 8, False)]
        table = pdpte & addr_mask
        reserved = ~addr_mask & 0x000F_FFFF_FFFF_F000 | (0 if nxe else _NX)
    else:
        gva &= 0xFFFF_FFFF
        levels = [(22, 4, bool(vp.cr4 & CR4_PSE)), (12, 4, False)]
        table = vp.cr3 & 0xFFFF_F000
        reserved = 0
    walked: list[tuple[int, int, int]] = []
    frame = 0
    for shift, size, may_be_large in levels:
        index_bits = 10 if size == 4 else 9
        gpa = table + ((gva >> shift) & ((1 << index_bits) - 1)) * size
        e = _table_entry(gpa_map, mem, gpa, size)
        if not e & _P:
            raise _Fault(TranslateResult.PageNotPresent)
        large = may_be_large and bool(e & _PS)
        if e & reserved or (shift == 39 and e & _PS):
            raise _Fault(TranslateResult.InvalidPageTableFlags)
        writable &= bool(e & _RW)
        user &= bool(e & _US)
        no_exec |= nxe and bool(e & _NX)
        walked.append((gpa, size, e))
        if large or shift == 12:
            span = 1 << shift
            # 32-bit paging: a 4 MiB page's PSE-36 high bits are not modelled.
            small32 = e & 0xFFC0_0000 if large else e & 0xFFFF_F000
            base = small32 if size == 4 else e & addr_mask & ~(span - 1)
            frame = (base | (gva & (span - 1))) >> PAGE_SHIFT
            break
        table = e & (0xFFFF_F000 if size == 4 else addr_mask)
    _check_rights(vp, flags, writable, user, no_exec)
    if flags & TranslateFlags.SET_PAGE_TABLE_BITS:
        for i, (gpa, size, e) in enumerate(walked):
            last = i == len(walked) - 1
            dirty = _D if last and flags & TranslateFlags.VALIDATE_WRITE else 0
            _set_bits(gpa_map, mem, gpa, size, e, _A | dirty)
    m = gpa_map.get(frame)
    if m is None:
        raise _Fault(TranslateResult.GpaUnmapped, frame)
    if (
        flags & (TranslateFlags.VALIDATE_READ | TranslateFlags.VALIDATE_EXECUTE)
        and not m.access & Access.READ
    ):
        raise _Fault(TranslateResult.GpaNoReadAccess, frame)
    if flags & TranslateFlags.VALIDATE_WRITE and not m.access & Access.WRITE:
        raise _Fault(TranslateResult.GpaNoWriteAccess, frame)
    return frame


def _check_rights(vp: PagingState, flags: int, writable: bool, user_page: bool, no_exec: bool) -> None:
    """Intel SDM Vol. 3 §4.6 "Access Rights", with the control flags choosing the access mode."""
    if flags & TranslateFlags.PRIVILEGE_EXEMPT:
        return
    if flags & TranslateFlags.USER_ACCESS:
        user_access = True
    elif flags & TranslateFlags.SUPERVISOR_ACCESS:
        user_access = False
    else:
        user_access = vp.cpl == 3
    violation = TranslateResult.PrivilegeViolation
    if user_access and not user_page:
        raise _Fault(violation)
    if flags & TranslateFlags.VALIDATE_WRITE and not writable and (user_access or vp.cr0 & CR0_WP):
        raise _Fault(violation)
    smep = not user_access and user_page and vp.cr4 & CR4_SMEP
    if flags & TranslateFlags.VALIDATE_EXECUTE and (no_exec or smep):
        raise _Fault(violation)
    data = flags & (TranslateFlags.VALIDATE_READ | TranslateFlags.VALIDATE_WRITE)
    if data and not user_access and user_page and vp.cr4 & CR4_SMAP:
        ac = bool(vp.rflags & RFLAGS_AC)
        if flags & TranslateFlags.ENFORCE_SMAP or not (flags & TranslateFlags.OVERRIDE_SMAP or ac):
            raise _Fault(violation)
