"""The emulator backend's code scan (hv1/backends/emu/codescan.py): which addresses of a page of guest
code get a hook, and what for. The hooks replace a Python call on every guest instruction, so a
pattern the scan misses is an instruction the emulator would run itself (RDMSR of an unknown MSR
reading 0, a lost CR8 write, a HLT taken for a failed instruction): each kind is checked, at a page
end too, where an instruction crosses into the next page."""

from __future__ import annotations

from hv1.backends.emu.codescan import PAGE, TAIL, Stop, scan_page

BASE = 0x100000


def page(*pieces: tuple[int, bytes], tail: bytes = b"") -> bytes:
    buf = bytearray(b"\x90" * PAGE)  # NOPs: nothing to find
    for offset, code in pieces:
        buf[offset : offset + len(code)] = code
    return bytes(buf[:PAGE]) + tail[:TAIL]


def test_nops_give_no_hooks() -> None:
    assert scan_page(page(), BASE) == {}


def test_rdmsr_wrmsr_hooked_on_the_instruction() -> None:
    found = scan_page(page((0x10, b"\x0f\x32"), (0x20, b"\x0f\x30")), BASE)
    assert found == {BASE + 0x10: Stop.RDMSR, BASE + 0x20: Stop.WRMSR}


def test_mov_cr8_forms_need_rex_r_and_a_register_operand() -> None:
    code = page(
        (0x00, b"\x44\x0f\x22\xc0"),  # mov cr8, rax
        (0x10, b"\x4c\x0f\x20\xc1"),  # mov rcx, cr8 (REX.WR)
        (0x20, b"\x45\x0f\x22\xc7"),  # mov cr8, r15 (REX.RB)
        (0x30, b"\x48\x0f\x22\xc0"),  # mov cr0, rax: REX.W only, not CR8
        (0x40, b"\x0f\x22\xd8"),  # mov cr3, rax
    )
    found = scan_page(code, BASE)
    assert found == {BASE: Stop.CR8, BASE + 0x10: Stop.CR8, BASE + 0x20: Stop.CR8}


def test_hlt_is_recorded_and_the_hypercall_out_hooks_the_next_instruction() -> None:
    # hv1's hypercall page stub: endbr64; out 0x90, al; ret (hv1/hv/hypercall_page.py)
    found = scan_page(page((0x00, b"\xf3\x0f\x1e\xfa\xe6\x90\xc3"), (0x40, b"\xf4")), BASE)
    assert found == {BASE + 0x06: Stop.AFTER_HYPERCALL_OUT, BASE + 0x40: Stop.HLT}


def test_an_address_can_be_two_things() -> None:
    # out 0x90, eax; hlt: the HLT is also the instruction after the OUT
    found = scan_page(page((0x08, b"\xe7\x90\xf4")), BASE)
    assert found == {BASE + 0x0A: Stop.AFTER_HYPERCALL_OUT | Stop.HLT}


def test_an_instruction_crossing_into_the_next_page_belongs_to_this_one() -> None:
    found = scan_page(page((PAGE - 1, b"\x0f"), tail=b"\x32"), BASE)
    assert found == {BASE + PAGE - 1: Stop.RDMSR}
    cr8 = scan_page(page((PAGE - 2, b"\x44\x0f"), tail=b"\x22\xc0"), BASE)
    assert cr8 == {BASE + PAGE - 2: Stop.CR8}


def test_a_pattern_starting_on_the_next_page_is_left_to_that_page() -> None:
    assert scan_page(page(tail=b"\x0f\x32\xf4"), BASE) == {}


def test_the_out_at_the_page_end_hooks_the_first_byte_of_the_next_page() -> None:
    found = scan_page(page((PAGE - 2, b"\xe6\x90")), BASE)
    assert found == {BASE + PAGE: Stop.AFTER_HYPERCALL_OUT}
