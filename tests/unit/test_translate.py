"""HvCallTranslateVirtualAddress (PDF §9.3.4; hv_translate_gva_*; tlfs-inventory.md §6.3.6): the walk
through a child VP's page tables and the child's GPA map (hv1/hv/translate.py)."""

from __future__ import annotations

import pytest

from hv1.hv.gpa_map import GpaMap, GpaMapping
from hv1.hv.gpa_memory import PartitionMemory
from hv1.hv.hypercalls.vp_calls import SegmentRegister
from hv1.hv.hypervisor import ROOT_PARTITION_ID, HvError, Hypervisor
from hv1.hv.translate import PagingState, TranslateFlags, TranslateResult, flags_error, translate_gva
from hv1.hv.vp_registers import encode_segment
from hv1.tlfs.registers import HvRegisterName
from hv1.tlfs.status import HvStatus
from tests.fakes import FakeMemory

F = TranslateFlags
R, W, X = F.VALIDATE_READ, F.VALIDATE_WRITE, F.VALIDATE_EXECUTE
P, RW, US, PS, NX = 1, 2, 4, 0x80, 1 << 63
LONG = PagingState(cr0=0x80010033, cr3=0x1000, cr4=0x20, efer=0xD00)  # PG|WP|PE, PAE, LME|LMA|NXE


class Child:
    """A child whose GPA pages 0..31 are root pages 100..131 (page 20 read-only, 21 unmapped)."""

    def __init__(self) -> None:
        self.ram = FakeMemory(256 << 12)
        self.map = GpaMap()
        for page in range(32):
            if page != 21:
                self.map.map(page, GpaMapping(100 + page, 0x1 if page == 20 else 0x3, (1, 100 + page)))
        self.mem = PartitionMemory(self.map, self.ram)

    def entry(self, table_page: int, index: int, value: int) -> None:
        self.mem.write_u64((table_page << 12) + index * 8, value)

    def long_mode_tables(self, leaf: int) -> None:
        """GVA 0x4000_5000 -> PML4 page 1 -> PDPT 2 -> PD 3 -> PT 4 -> `leaf`."""
        self.entry(1, 0, (2 << 12) | P | RW | US)
        self.entry(2, 1, (3 << 12) | P | RW | US)
        self.entry(3, 0, (4 << 12) | P | RW | US)
        self.entry(4, 5, leaf)

    def walk(self, vp: PagingState, gva: int, flags: int) -> tuple[TranslateResult, int]:
        t = translate_gva(self.map, self.mem, vp, gva >> 12, flags)
        return t.result, t.gpa_page


GVA = 0x4000_5000  # PML4[0] -> PDPT[1] -> PD[0] -> PT[5]


def test_long_mode_walk_success_and_page_not_present() -> None:
    c = Child()
    c.long_mode_tables((9 << 12) | P | RW | US)
    assert c.walk(LONG, GVA, R | W) == (TranslateResult.Success, 9)
    assert c.walk(LONG, GVA + 0x1000, R)[0] == TranslateResult.PageNotPresent  # PT[6] empty
    assert c.walk(LONG, 0x8000_0000_0000, R)[0] == TranslateResult.PageNotPresent  # non-canonical


def test_rights_accumulate_over_levels_sdm_4_6() -> None:
    c = Child()
    c.long_mode_tables((9 << 12) | P | US)  # read-only leaf
    assert c.walk(LONG, GVA, W)[0] == TranslateResult.PrivilegeViolation  # CR0.WP
    no_wp = PagingState(cr0=0x80000033, cr3=0x1000, cr4=0x20, efer=0xD00)
    assert c.walk(no_wp, GVA, W)[0] == TranslateResult.Success  # supervisor write, WP clear
    assert c.walk(no_wp, GVA, W | F.USER_ACCESS)[0] == TranslateResult.PrivilegeViolation
    assert c.walk(LONG, GVA, W | F.PRIVILEGE_EXEMPT)[0] == TranslateResult.Success
    c.entry(3, 0, (4 << 12) | P | RW)  # a supervisor-only PD entry hides the page from CPL 3
    assert c.walk(LONG, GVA, R | F.USER_ACCESS)[0] == TranslateResult.PrivilegeViolation
    user = PagingState(LONG.cr0, LONG.cr3, LONG.cr4, LONG.efer, cpl=3)
    assert c.walk(user, GVA, R)[0] == TranslateResult.PrivilegeViolation


def test_nx_smep_and_smap() -> None:
    c = Child()
    c.long_mode_tables((9 << 12) | P | RW | US | NX)
    assert c.walk(LONG, GVA, X)[0] == TranslateResult.PrivilegeViolation
    c.entry(4, 5, (9 << 12) | P | RW | US)
    smep_smap = PagingState(LONG.cr0, LONG.cr3, LONG.cr4 | (1 << 20) | (1 << 21), LONG.efer)
    assert c.walk(smep_smap, GVA, X)[0] == TranslateResult.PrivilegeViolation  # SMEP: user page
    assert c.walk(smep_smap, GVA, R)[0] == TranslateResult.PrivilegeViolation  # SMAP, AC clear
    assert c.walk(smep_smap, GVA, R | F.OVERRIDE_SMAP)[0] == TranslateResult.Success
    ac = PagingState(smep_smap.cr0, smep_smap.cr3, smep_smap.cr4, smep_smap.efer, rflags=0x40002)
    assert c.walk(ac, GVA, R)[0] == TranslateResult.Success
    assert c.walk(ac, GVA, R | F.ENFORCE_SMAP)[0] == TranslateResult.PrivilegeViolation


def test_reserved_bits_gpa_checks_and_set_page_table_bits() -> None:
    c = Child()
    c.long_mode_tables((9 << 12) | P | RW | US)
    no_nxe = PagingState(LONG.cr0, LONG.cr3, LONG.cr4, 0x500)
    c.entry(4, 5, (9 << 12) | P | RW | NX)
    assert c.walk(no_nxe, GVA, R)[0] == TranslateResult.InvalidPageTableFlags  # NX without EFER.NXE
    c.entry(4, 5, (21 << 12) | P | RW)
    assert c.walk(LONG, GVA, R) == (TranslateResult.GpaUnmapped, 21)
    c.entry(4, 5, (20 << 12) | P | RW)
    assert c.walk(LONG, GVA, W) == (TranslateResult.GpaNoWriteAccess, 20)
    c.entry(3, 0, (21 << 12) | P | RW)  # the page table itself is unmapped
    assert c.walk(LONG, GVA, R) == (TranslateResult.GpaUnmapped, 21)
    c.entry(3, 0, (4 << 12) | P | RW)
    c.entry(4, 5, (9 << 12) | P | RW)
    assert c.walk(LONG, GVA, W | F.SET_PAGE_TABLE_BITS)[0] == TranslateResult.Success
    leaf = c.mem.read_u64((4 << 12) + 5 * 8)
    assert leaf & 0x20 and leaf & 0x40  # accessed and dirty
    assert c.mem.read_u64(1 << 12) & 0x20 and not c.mem.read_u64(1 << 12) & 0x40


def test_large_pages_pae_32bit_and_paging_off() -> None:
    c = Child()
    c.entry(1, 0, (2 << 12) | P | RW)
    c.entry(2, 0, 0x4000_0000 | P | RW | PS)  # 1 GiB page
    assert c.walk(LONG, 0x1234_5000, R)[0] == TranslateResult.GpaUnmapped  # GPA 0x40012345 unmapped
    c.entry(2, 0, (3 << 12) | P | RW)
    c.entry(3, 0, 0 | P | RW | PS)  # 2 MiB page at GPA 0
    assert c.walk(LONG, 0x7000, R) == (TranslateResult.Success, 7)
    pae = PagingState(cr0=0x80000011, cr3=0x5000, cr4=0x20, efer=0)
    c.mem.write_u64(0x5000, (6 << 12) | P)
    c.entry(6, 0, (7 << 12) | P | RW)
    c.entry(7, 3, (12 << 12) | P | RW)
    assert c.walk(pae, 0x3000, R) == (TranslateResult.Success, 12)
    c.mem.write_u64(0x5000, (6 << 12) | P | RW)  # RW is reserved in a PAE PDPTE
    assert c.walk(pae, 0x3000, R)[0] == TranslateResult.InvalidPageTableFlags
    legacy = PagingState(cr0=0x80000011, cr3=0x8000, cr4=0x10, efer=0)
    c.mem.write(0x8000, ((10 << 12) | P | RW).to_bytes(4, "little"))
    c.mem.write((10 << 12) + 2 * 4, ((11 << 12) | P | RW).to_bytes(4, "little"))
    assert c.walk(legacy, 0x2000, R) == (TranslateResult.Success, 11)
    assert c.walk(PagingState(cr0=0x11, cr3=0, cr4=0, efer=0), 0x1_2345_6000, R) == (
        TranslateResult.Success,
        0x23456,
    )


@pytest.mark.parametrize(
    ("flags", "bad"),
    [(0, True), (F.PRIVILEGE_EXEMPT, True), (R | (1 << 20), True), (R | (1 << 56), True),
     (R | F.USER_ACCESS | F.SUPERVISOR_ACCESS, True), (R | W | X | F.SET_PAGE_TABLE_BITS, False)],
)  # fmt: skip
def test_control_flags_validation(flags: int, bad: bool) -> None:
    assert (flags_error(flags) is not None) is bad


def test_translate_virtual_address_through_the_engine() -> None:
    ram = FakeMemory(512 << 12)
    hv = Hypervisor(root_pages=512, ram=ram)
    c = hv.create_partition(ROOT_PARTITION_ID)
    hv.deposit_memory(ROOT_PARTITION_ID, c, list(range(400, 440)))
    hv.initialize_partition(ROOT_PARTITION_ID, c)
    hv.map_gpa_pages(ROOT_PARTITION_ID, c, 0, 0x3, list(range(100, 132)))
    hv.create_vp(ROOT_PARTITION_ID, c, 0)
    mem = hv.partition_memory(c)
    mem.write((1 << 12), ((2 << 12) | P | RW).to_bytes(8, "little"))
    mem.write((2 << 12), ((3 << 12) | P | RW).to_bytes(8, "little"))
    mem.write((3 << 12), (0 | P | RW | PS).to_bytes(8, "little"))
    assert ram.read_u64(101 << 12) == (2 << 12) | P | RW  # written through the map into the root's page
    cs64 = encode_segment(SegmentRegister(base=0, limit=0xFFFFFFFF, selector=8, attributes=0xA09B))
    hv.set_vp_registers(ROOT_PARTITION_ID, c, 0, [
        (HvRegisterName.Cr3, 0x1000), (HvRegisterName.Cr4, 0x20), (HvRegisterName.Efer, 0x500),
        (HvRegisterName.Cr0, 0x80000011), (HvRegisterName.Cs, cs64)])  # fmt: skip
    result, gpa_page = hv.translate_virtual_address(ROOT_PARTITION_ID, c, 0, int(R), 0x1F)
    assert (result & 0xFFFFFFFF, result >> 32, gpa_page) == (TranslateResult.Success, 6, 0x1F)
    with pytest.raises(HvError) as e:
        hv.translate_virtual_address(ROOT_PARTITION_ID, c, 0, 0, 0x1F)
    assert e.value.status == HvStatus.INVALID_PARAMETER
    hv.set_explicit_suspend(ROOT_PARTITION_ID, c, 0, suspended=False)
    with pytest.raises(HvError) as e:
        hv.translate_virtual_address(ROOT_PARTITION_ID, c, 0, int(R), 0x1F)
    assert e.value.status == HvStatus.INVALID_VP_STATE
