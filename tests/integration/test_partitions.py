"""A Python virtualization host runs child partitions (issue "Partitions"; TLFS virtualization-host.md):
guests/ kernels and a real-mode program as children, their serial output through I/O-port intercepts,
a message from one child's HvCallPostMessage into the other's SIMP slot, one child deleted while the
other runs on, and a child kept away from memory it was not given (unmapped-GPA and GPA intercepts).

Each test runs on every backend this host has: the emulator (`unicorn`) here and in CI, KVM where
/dev/kvm exists (children always run with hv1's own local APIC: docs/partitions.md).
"""

from __future__ import annotations

import importlib.util
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import hv1
from hv1.host import Hypervisor, Message, attach_console, serve_consoles
from hv1.hv.hypercalls.vp_calls import SegmentRegister
from hv1.hv.ports import PortType
from hv1.hv.vp_registers import encode_segment
from hv1.tlfs.intercepts import InterceptAccess, InterceptType
from hv1.tlfs.messages import HvMessageType
from hv1.tlfs.registers import HvRegisterName as R
from hv1.tlfs.status import HvStatus
from hv1.tlfs.virtualization_host import MapGpaFlags as F
from tests.integration.conftest import KVM_SKIP

pytestmark = pytest.mark.timeout(240)

Guest = Callable[[str], Path]
RWX = F.READABLE | F.WRITABLE | F.KERNEL_EXECUTABLE | F.USER_EXECUTABLE
CHILD_PAGES = 4096  # 16 MiB of the root's RAM per child, at child GPA 0
POOL_PAGES = 64

BACKENDS = [
    pytest.param(
        "emu",
        marks=pytest.mark.skipif(importlib.util.find_spec("unicorn") is None, reason="unicorn not installed"),
    ),
    pytest.param("kvm", marks=pytest.mark.skipif(KVM_SKIP is not None, reason=KVM_SKIP or "")),
]


@pytest.fixture(params=BACKENDS)
def hv(request: pytest.FixtureRequest) -> Iterator[Hypervisor]:
    h = hv1.Hypervisor(memory=128 << 20, backend=request.param)
    try:
        yield h
    finally:
        h.close()


class Pages:
    """Root RAM handed out in blocks: pool pages and child RAM never overlap."""

    def __init__(self) -> None:
        self.next = 0x400  # the first 4 MiB stay the root's own

    def take(self, n: int) -> list[int]:
        pages = list(range(self.next, self.next + n))
        self.next += n
        return pages


def new_child(hv: Hypervisor, pages: Pages, *, vps: int = 1) -> tuple[int, list[int]]:
    """A child with a pool, CHILD_PAGES of RAM at GPA 0 and `vps` VPs (all still suspended)."""
    c = hv.create_partition()
    hv.deposit_memory(c, pages.take(POOL_PAGES))
    hv.initialize_partition(c)
    ram = pages.take(CHILD_PAGES)
    assert hv.map_gpa_pages(c, 0, RWX, ram) == CHILD_PAGES
    for vp in range(vps):
        hv.create_vp(c, vp)
    attach_console(hv, c)
    return c, ram


def real_mode_program(text: bytes) -> bytes:
    """16-bit real mode at 0:0: print `text` byte by byte to COM1, then write the debug-exit port."""
    # mov si, msg; mov dx, 0x3f8; l: lodsb; test al, al; jz e; out dx, al; jmp l
    # e: mov al, 5; out 0xf4, al; hlt
    code = bytes.fromhex("be2000 baf803 ac 84c0 7403 ee ebf8 b005 e6f4 f4")
    return code.ljust(0x20, b"\x90") + text + b"\0"


def start_real_mode(hv: Hypervisor, child: int, ram: list[int], program: bytes) -> None:
    hv.write(ram[0] << 12, program)
    code = encode_segment(SegmentRegister(base=0, limit=0xFFFF, selector=0, attributes=0x9B))
    data = encode_segment(SegmentRegister(base=0, limit=0xFFFF, selector=0, attributes=0x93))
    hv.set_vp_registers(child, 0, {R.Cs: code, R.Ds: data, R.Es: data, R.Ss: data, R.Rip: 0, R.Rsp: 0x7000})


def test_two_children_real_mode_and_64bit_print_through_io_intercepts(hv: Hypervisor, guest: Guest) -> None:
    pages = Pages()
    real, real_ram = new_child(hv, pages)
    long, _ = new_child(hv, pages)
    start_real_mode(hv, real, real_ram, real_mode_program(b"real mode child\n"))
    hv.load_kernel(long, str(guest("hello")), "exit=3")
    hv.resume_vp(real, 0)
    hv.resume_vp(long, 0)
    runs = serve_consoles(hv, [real, long], timeout=180)
    assert runs[real].text == "real mode child\n"
    assert runs[real].exit_status == (5 << 1) | 1
    assert "hello from hv1 guest" in runs[long].text, runs[long].text
    assert runs[long].exit_status == (3 << 1) | 1
    # Each printed byte was one intercept: child `out` -> root -> child resumes.
    assert hv.child_counters(real)["intercepts"] == len(b"real mode child\n") + 1
    ids = []
    child = hv.get_next_child_partition(0)
    while child:
        ids.append(child)
        child = hv.get_next_child_partition(child)
    assert sorted(ids) == sorted([real, long])


def test_intercepted_in_and_wrmsr_carry_the_instructions_rip_and_length(hv: Hypervisor) -> None:
    """PDF §13.2: an intercept message's RIP is the intercepted instruction's, with its length in
    the header; the parent completes it with SetVpRegisters. An IN gets the parent's RAX; a WRMSR
    the parent leaves RIP on runs again (and is intercepted again), one it steps over does not.
    On KVM an IN and a WRMSR exit with RIP on the instruction and KVM completes them itself on the
    next entry: before undo_exit the IN's message said RIP 2 (one byte early) and the re-executed
    WRMSR was stepped over by KVM (no second intercept)."""
    pages = Pages()
    c, ram = new_child(hv, pages)
    # mov dx, 0x60; in al, dx (@3); mov ecx, 0x40000000; wrmsr (@10); out 0xf4, al; hlt
    code = bytes.fromhex("ba6000 ec 66b900000040 0f30 e6f4 f4")
    start_real_mode(hv, c, ram, code)
    hv.install_intercept(c, InterceptAccess.READ, InterceptType.X64IoPort, 0x60)
    hv.install_intercept(c, InterceptAccess.WRITE, InterceptType.X64Msr, 0x40000000)
    seen: list[tuple[str, int, int]] = []

    def handle(m: Message) -> bool:
        h = m.header
        seen.append((m.name, h.rip, h.instruction_length))
        if m.message_type == HvMessageType.HvMessageTypeX64IoPortIntercept:
            assert m.io_port()[:3] == (0x60, 1, False)
            hv.complete_intercept(m, rax=0x21)
        elif m.message_type == HvMessageType.HvMessageTypeMsrIntercept:
            # The first time: leave RIP on the WRMSR (it runs again); the second: step over it.
            hv.complete_intercept(m, advance=sum(1 for s in seen if s[0] == m.name) > 1)
        else:
            return False
        return True

    hv.resume_vp(c, 0)
    runs = serve_consoles(hv, [c], timeout=60, on_message=handle)
    io, msr = "HvMessageTypeX64IoPortIntercept", "HvMessageTypeMsrIntercept"
    assert seen == [(io, 3, 1), (msr, 10, 2), (msr, 10, 2)], seen
    assert runs[c].exit_status == (0x21 << 1) | 1  # AL from the parent's RAX reached the debug exit
    (rip,) = hv.get_vp_registers(c, 0, [R.Rip])
    assert rip == 12  # suspended at its debug-exit `out`, RIP on it


def test_rep_outsb_is_one_intercept_per_byte_at_the_instructions_rip(hv: Hypervisor) -> None:
    """A string OUT: one I/O intercept per unit (StringOp and RepPrefix in the access info), each
    with the RIP and length of the whole REP OUTSB; the parent steps over it and the REP goes on.
    On KVM each unit exits with RIP on the instruction (it runs again for the next unit): before,
    the message said RIP 8, length 1 (the byte before it, by the search for a retired OUT)."""
    pages = Pages()
    c, ram = new_child(hv, pages)
    # mov si, 0x20; mov cx, 5; mov dx, 0x3f8; rep outsb (@9); mov al, 2; out 0xf4, al; hlt
    code = bytes.fromhex("be2000 b90500 baf803 f36e b002 e6f4 f4").ljust(0x20, b"\x90") + b"hello"
    start_real_mode(hv, c, ram, code)
    hv.resume_vp(c, 0)
    seen = []
    for _ in range(6):
        m = hv.next_message(timeout=30)
        port, _size, _w, rax = m.io_port()
        seen.append((m.header.rip, m.header.instruction_length, port, rax & 0xFF))
        if port == 0x3F8:
            info = m.payload[40 + 2]
            assert info & 0x18 == 0x18, f"{info:#x}"  # StringOp, RepPrefix
        hv.complete_intercept(m)
    assert seen == [(9, 2, 0x3F8, b) for b in b"hello"] + [(13, 2, 0xF4, 2)], seen


def test_rep_insb_takes_each_unit_from_the_parents_rax(hv: Hypervisor) -> None:
    """A string IN: one intercept per unit, the parent's RAX is the unit's value (as for IN), the
    REP goes on. Before, on KVM the unit was taken back like an IN, so the parent's value never
    reached memory."""
    pages = Pages()
    c, ram = new_child(hv, pages)
    # mov di, 0x40; mov cx, 3; mov dx, 0x60; rep insb (@9); mov si, 0x40; mov cx, 3; mov dx, 0x3f8;
    # rep outsb; mov al, 2; out 0xf4, al; hlt
    code = bytes.fromhex("bf4000 b90300 ba6000 f36c be4000 b90300 baf803 f36e b002 e6f4 f4")
    start_real_mode(hv, c, ram, code)
    hv.install_intercept(c, InterceptAccess.READ, InterceptType.X64IoPort, 0x60)
    ins: list[tuple[int, int]] = []

    def handle(m: Message) -> bool:
        if m.message_type != HvMessageType.HvMessageTypeX64IoPortIntercept or m.io_port()[0] != 0x60:
            return False
        ins.append((m.header.rip, m.header.instruction_length))
        hv.complete_intercept(m, rax=ord("a") + len(ins) - 1)
        return True

    hv.resume_vp(c, 0)
    runs = serve_consoles(hv, [c], timeout=60, on_message=handle)
    assert ins == [(9, 2)] * 3
    assert runs[c].text == "abc" and runs[c].exit_status == 5, runs[c]


def test_an_intercept_nobody_handles_ends_the_wait_at_once(hv: Hypervisor) -> None:
    """serve_consoles with a child stuck in InterceptSuspend: it says so instead of waiting for a
    debug exit that cannot come (a broken intercept path used to show as a 180 s timeout)."""
    pages = Pages()
    c, ram = new_child(hv, pages)
    start_real_mode(hv, c, ram, bytes.fromhex("e680 f4"))  # out 0x80, al; hlt
    hv.install_intercept(c, InterceptAccess.WRITE, InterceptType.X64IoPort, 0x80)
    hv.resume_vp(c, 0)
    started = time.monotonic()
    runs = serve_consoles(hv, [c], timeout=60)
    assert time.monotonic() - started < 30
    assert runs[c].failure == "unhandled HvMessageTypeX64IoPortIntercept at RIP 0x0", runs[c]


def peers(hv: Hypervisor, guest: Guest, receiver_args: str, sender_args: str) -> tuple[int, int]:
    pages = Pages()
    rx, _ = new_child(hv, pages)
    tx, _ = new_child(hv, pages)
    hv.load_kernel(rx, str(guest("partition_peer")), "role=receiver sint=2 " + receiver_args)
    hv.load_kernel(tx, str(guest("partition_peer")), "role=sender conn=0x77 " + sender_args)
    hv.create_port(rx, 0x55, PortType.MESSAGE, tx, target_vp=0, target_sint=2)
    hv.connect_port(tx, 0x77, rx, 0x55)
    return rx, tx


def test_post_message_from_one_child_arrives_in_the_others_simp_slot(hv: Hypervisor, guest: Guest) -> None:
    rx, tx = peers(hv, guest, "count=20", "count=20")
    hv.resume_vp(rx, 0)
    hv.resume_vp(tx, 0)
    runs = serve_consoles(hv, [rx, tx], timeout=180)
    for pid in (rx, tx):
        assert runs[pid].exit_status == 1, runs[pid].text
        assert "FAIL" not in runs[pid].text, runs[pid].text
    assert runs[rx].text.count("PASS ipc.message.type-and-payload") == 20, runs[rx].text
    assert "PASS ipc.post-message.all-delivered" in runs[tx].text


def test_deleting_one_child_leaves_the_other_running(hv: Hypervisor, guest: Guest) -> None:
    rx, tx = peers(hv, guest, "count=2", "count=1")
    hv.resume_vp(rx, 0)
    hv.resume_vp(tx, 0)
    sent = serve_consoles(hv, [tx], timeout=180)
    assert sent[tx].exit_status == 1, sent[tx].text
    hv.finalize_partition(tx)
    hv.delete_partition(tx)
    with pytest.raises(hv1.HvError) as e:
        hv.get_partition_property(tx, 0x00010000)
    assert e.value.status == HvStatus.INVALID_PARTITION_ID
    # The receiver still runs: the root posts the second message through the same port.
    hv.post_message(rx, 0x55, 0x4E, b"ping 1\0")
    got = serve_consoles(hv, [rx], timeout=180)
    assert got[rx].exit_status == 1, got[rx].text
    assert got[rx].text.count("PASS ipc.message.type-and-payload") == 2, got[rx].text
    assert hv.get_next_child_partition(0) == rx


def probe(hv: Hypervisor, guest: Guest, args: str) -> tuple[int, list[int]]:
    pages = Pages()
    c, ram = new_child(hv, pages)
    hv.load_kernel(c, str(guest("partition_peer")), "role=probe " + args)
    return c, ram


def test_child_reads_only_what_it_was_given_unmapped_gpa_intercept(hv: Hypervisor, guest: Guest) -> None:
    """TLFS virtualization-host.md: a child's access to a GPA its parent did not map is the parent's
    unmapped-GPA intercept. The root's own page behind the probed address is not reached until the
    root maps it; then the instruction re-executes and reads it."""
    c, _ = probe(hv, guest, "addr=0x2000010")
    secret = 0x7000  # a root page no child was given
    hv.write((secret << 12) + 0x10, struct.pack("<I", 0xCAFEBABE))
    seen: list[tuple[int, int]] = []

    def handle(m: Message) -> bool:
        if m.message_type != HvMessageType.HvMessageTypeUnmappedGpa:
            return False
        gpa, access = m.memory()
        seen.append((gpa, access))
        hv.map_gpa_pages(c, gpa >> 12, F.READABLE, [secret])
        hv.complete_intercept(m, advance=False)  # re-execute the read, now that the page is there
        return True

    hv.resume_vp(c, 0)
    runs = serve_consoles(hv, [c], timeout=180, on_message=handle)
    assert seen == [(0x2000010, 0)]  # HV_INTERCEPT_ACCESS_READ
    assert "probe: read 0xcafebabe at 0x2000010" in runs[c].text, runs[c].text
    assert runs[c].exit_status == 1


def test_a_write_to_an_unmapped_gpa_runs_again_once_the_parent_maps_the_page(
    hv: Hypervisor, guest: Guest
) -> None:
    """The unmapped-GPA intercept of a write: RIP on the storing instruction, the write not done;
    the parent maps a page there and leaves RIP, the write runs again and lands in that page. On
    KVM the write is retired before the exit (RIP past it): before its start was found from the
    bytes before RIP, the message said RIP past the store and the write was lost."""
    c, _ = probe(hv, guest, "addr=0x2000030 write=0x5A5A1234")
    page = 0x7200
    hv.write((page << 12) + 0x30, struct.pack("<I", 0))
    rips: list[int] = []

    def handle(m: Message) -> bool:
        if m.message_type != HvMessageType.HvMessageTypeUnmappedGpa:
            return False
        assert m.memory() == (0x2000030, 1)  # HV_INTERCEPT_ACCESS_WRITE
        rips.append(m.header.rip)
        hv.map_gpa_pages(c, 0x2000, F.READABLE | F.WRITABLE, [page])
        hv.complete_intercept(m, advance=False)
        return True

    hv.resume_vp(c, 0)
    runs = serve_consoles(hv, [c], timeout=120, on_message=handle)
    assert len(rips) == 1 and runs[c].exit_status == 1, runs[c]
    assert struct.unpack("<I", hv.read((page << 12) + 0x30, 4))[0] == 0x5A5A1234
    assert "probe: read 0x5a5a1234 at 0x2000030" in runs[c].text, runs[c].text


# Real-mode stores into GPA page 8 (0x8000), which the parent unmapped: (the program; the RIP,
# RCX, RSI, RDI, RSP the message's register file must hold, the store not done; RCX, RSI, RDI, RSP
# at the debug exit; the bytes at 0x7ff8.. then). AX = 0x1234, the words at 0x20 = 0x5678, 0x9abc; each
# program ends with END, whose `out` is at len(program) + 2 (AH is still set: the exit status is
# AL's, as isa-debug-exit takes it).
END = "b002 e6f4 f4"
STORES = {
    # mov ax, 0x1234; mov di, 0x8000; cld; stosw (@7)
    "stosw": ("b83412 bf0080 fc ab", (7, 0, 0, 0x8000, 0x7000), (0, 0, 0x8002, 0x7000), "0000" * 4 + "3412"),
    # mov ax, 0x1234; mov di, 0x7ff8; mov cx, 8; cld; rep stosw (@10): four words land in page 7,
    # the fifth is the intercept, and the REP goes on from there once the page is mapped
    "rep stosw": ("b83412 bff87f b90800 fc f3ab", (10, 4, 0, 0x8000, 0x7000), (0, 0, 0x8008, 0x7000),
                  "3412" * 8),
    # the same with CX 1 from DI 0x8000: the REP's last element (KVM leaves RCX 0 and RIP on it)
    "rep stosw, last element": ("b83412 bf0080 b90100 fc f3ab", (10, 1, 0, 0x8000, 0x7000),
                                (0, 0, 0x8002, 0x7000), "0000" * 4 + "3412"),
    # mov si, 0x20; mov di, 0x8000; cld; movsw (@7)
    "movsw": ("be2000 bf0080 fc a5", (7, 0, 0x20, 0x8000, 0x7000), (0, 0x22, 0x8002, 0x7000),
              "0000" * 4 + "7856"),
    # mov si, 0x20; mov di, 0x7ffe; mov cx, 2; cld; rep movsw (@10): the first word lands in page 7,
    # the second (0x9abc from 0x22) is the intercept
    "rep movsw": ("be2000 bffe7f b90200 fc f3a5", (10, 1, 0x22, 0x8000, 0x7000), (0, 0x24, 0x8002, 0x7000),
                  "0000" * 3 + "7856" + "bc9a"),
    # mov ax, 0x1234; mov sp, 0x8004; push ax (@6)
    "push": ("b83412 bc0480 50", (6, 0, 0, 0, 0x8004), (0, 0, 0, 0x8002), "0000" * 5 + "3412"),
    # mov sp, 0x8004; push 0xabcd (@3)
    "push imm16": ("bc0480 68cdab", (3, 0, 0, 0, 0x8004), (0, 0, 0, 0x8002), "0000" * 5 + "cdab"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(STORES))
def test_a_string_or_stack_store_to_an_unmapped_gpa_lands_once_the_parent_maps_it(
    hv: Hypervisor, name: str
) -> None:
    """STOS, REP STOS, MOVS and PUSH into an unmapped page: the unmapped-GPA message has RIP on the
    instruction and the registers as before it (for a REP, before the element that faulted); the
    parent maps the page and leaves RIP, and the store lands exactly once. On KVM the store is
    retired before the exit, RDI/RSI/RSP moved (RIP past it; a REP element: RIP on it, RCX one
    less, measured): before its rewind (instruction_start.py) the message said RIP past the
    instruction and the data was lost."""
    program, at_intercept, at_exit, memory = STORES[name]
    pages = Pages()
    c, ram = new_child(hv, pages)
    assert hv.unmap_gpa_pages(c, 0x8, 1) == 1
    code = bytes.fromhex(program + END).ljust(0x20, b"\x90") + bytes.fromhex("7856 bc9a")
    start_real_mode(hv, c, ram, code)
    names = [R.Rip, R.Rcx, R.Rsi, R.Rdi, R.Rsp]
    seen: list[tuple[int, tuple[int, ...], tuple[int, int]]] = []

    def handle(m: Message) -> bool:
        if m.message_type != HvMessageType.HvMessageTypeUnmappedGpa:
            return False
        regs = tuple(r & 0xFFFF for r in hv.get_vp_registers(c, 0, names))
        seen.append((m.header.rip, regs, m.memory()))
        hv.map_gpa_pages(c, 0x8, F.READABLE | F.WRITABLE, [ram[8]])
        hv.complete_intercept(m, advance=False)
        return True

    hv.resume_vp(c, 0)
    runs = serve_consoles(hv, [c], timeout=120, on_message=handle)
    addr = 0x8000 if at_intercept[4] == 0x7000 else at_intercept[4] - 2
    assert seen == [(at_intercept[0], at_intercept, (addr, 1))], seen  # HV_INTERCEPT_ACCESS_WRITE
    assert runs[c].exit_status == 5, runs[c]
    exit_rip = len(bytes.fromhex(program)) + 2  # suspended at its debug-exit `out`, RIP on it
    assert tuple(r & 0xFFFF for r in hv.get_vp_registers(c, 0, names)) == (exit_rip, *at_exit)
    assert hv.read((ram[7] << 12) + 0xFF8, 0x14).hex() == memory.ljust(0x28, "0")  # nothing else written


# The same in 32-bit flat protected mode (CS.D = 1, no paging), EAX = 0x11223344: (the program,
# page 8 read-only instead of unmapped, ECX/EDI/ESP at the intercept, at the debug exit, the bytes
# at 0x7ff8..). END32's `out` is at len(program) + 5.
END32 = "b802000000 e6f4 f4"
STORES32 = {
    # mov eax, 0x11223344; mov edi, 0x8004; mov ecx, 3; std; rep stosd (@16); cld: the elements go
    # down, 0x8004 first (the intercept), then 0x8000 and 0x7ffc
    "rep stosd, DF=1": ("b844332211 bf04800000 b903000000 fd f3ab fc", False, (16, 3, 0x8004, 0x7000),
                        (0, 0x7FF8, 0x7000), "00000000" + "44332211" * 3),
    # mov edi, 0x7ff8; mov ecx, 4; cld; rep stosd (@16) into a page mapped read-only: the GPA
    # intercept of its third element; the parent maps the page writable
    "rep stosd, read-only page": ("b844332211 bff87f0000 b904000000 fc f3ab", True, (16, 2, 0x8000, 0x7000),
                                  (0, 0x8008, 0x7000), "44332211" * 4),
    # mov esp, 0x8008; push eax (@10)
    "push eax": ("b844332211 bc08800000 50", False, (10, 0, 0, 0x8008), (0, 0, 0x8004),
                 "00000000" * 3 + "44332211"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(STORES32))
def test_32_bit_string_and_stack_stores_to_a_gpa_the_child_may_not_write(hv: Hypervisor, name: str) -> None:
    """As above in 32-bit code, with RFLAGS.DF = 1 (RDI goes down: the rewind moves it up) and a
    read-only page (HvMessageTypeGpaIntercept: the same retired store, TLFS virtualization-host.md
    "GPA intercepts"). Measured on KVM before the rewind: RIP on the REP, ECX and EDI one element
    on; a PUSH's RIP past it, ESP 4 down."""
    program, read_only, at_intercept, at_exit, memory = STORES32[name]
    pages = Pages()
    c, ram = new_child(hv, pages)
    assert hv.unmap_gpa_pages(c, 0x8, 1) == 1
    if read_only:
        hv.map_gpa_pages(c, 0x8, F.READABLE, [ram[8]])
    hv.write(ram[0] << 12, bytes.fromhex(program + END32))
    code = encode_segment(SegmentRegister(base=0, limit=0xFFFF_FFFF, selector=8, attributes=0xC09B))
    data = encode_segment(SegmentRegister(base=0, limit=0xFFFF_FFFF, selector=16, attributes=0xC093))
    hv.set_vp_registers(
        c, 0, {R.Cs: code, R.Ds: data, R.Es: data, R.Ss: data, R.Cr0: 0x11, R.Rip: 0, R.Rsp: 0x7000}
    )
    names = [R.Rip, R.Rcx, R.Rdi, R.Rsp]
    seen: list[tuple[int, int, tuple[int, ...], tuple[int, int]]] = []
    kind = HvMessageType.HvMessageTypeGpaIntercept if read_only else HvMessageType.HvMessageTypeUnmappedGpa

    def handle(m: Message) -> bool:
        if m.message_type != kind:
            return False
        seen.append((m.header.rip, m.message_type, tuple(hv.get_vp_registers(c, 0, names)), m.memory()))
        if read_only:
            hv.unmap_gpa_pages(c, 0x8, 1)
        hv.map_gpa_pages(c, 0x8, F.READABLE | F.WRITABLE, [ram[8]])
        hv.complete_intercept(m, advance=False)
        return True

    hv.resume_vp(c, 0)
    runs = serve_consoles(hv, [c], timeout=120, on_message=handle)
    addr = at_intercept[2] if at_intercept[2] else at_intercept[3] - 4
    assert seen == [(at_intercept[0], kind, at_intercept, (addr, 1))], seen
    assert runs[c].exit_status == 5, runs[c]
    exit_rip = len(bytes.fromhex(program)) + 5
    assert tuple(hv.get_vp_registers(c, 0, names)) == (exit_rip, *at_exit)
    assert hv.read((ram[7] << 12) + 0xFF8, 0x14).hex() == memory.ljust(0x28, "0")


# And in 64-bit mode with paging (the first 2 MiB identity-mapped, one large page), RAX =
# 0x1122334455667788: (the program, RCX/RDI/RSP at the intercept, at the debug exit, the bytes at
# 0x7ff8..). END's `out` is at len(program) + 2.
STORES64 = {
    # mov rax, imm64; mov edi, 0x7ff8; mov ecx, 4; cld; rep stosq (@21)
    "rep stosq": ("48b88877665544332211 bff87f0000 b904000000 fc f348ab", (21, 3, 0x8000, 0x7000),
                  (0, 0x8018, 0x7000), "8877665544332211" * 4),
    # the same from 0x8000 with RCX 1: the last element
    "rep stosq, last element": ("48b88877665544332211 bf00800000 b901000000 fc f348ab",
                                (21, 1, 0x8000, 0x7000), (0, 0x8008, 0x7000), "00" * 8 + "8877665544332211"),
    # mov rax, imm64; mov esp, 0x8010; push rax (@15)
    "push rax": ("48b88877665544332211 bc10800000 50", (15, 0, 0, 0x8010), (0, 0, 0x8008),
                 "00" * 16 + "8877665544332211"),
    # mov esp, 0x8010; push 0xdeadbeef (@5): sign-extended to 8 bytes
    "push imm32": ("bc10800000 68efbeadde", (5, 0, 0, 0x8010), (0, 0, 0x8008),
                   "00" * 16 + "efbeaddeffffffff"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(STORES64))
def test_64_bit_string_and_stack_stores_to_an_unmapped_gpa(hv: Hypervisor, name: str) -> None:
    """As above in 64-bit code through page tables (the finder translates the element's address):
    measured on KVM before the rewind, the same RIP behaviour (a REP element: RIP on it, RCX one
    less, also for the last element; a PUSH: RIP past it, RSP 8 down)."""
    program, at_intercept, at_exit, memory = STORES64[name]
    pages = Pages()
    c, ram = new_child(hv, pages)
    assert hv.unmap_gpa_pages(c, 0x8, 1) == 1
    base = ram[0] << 12
    hv.write(base, bytes.fromhex(program + END))
    # PML4 at 0x1000 -> PDPT at 0x2000 -> PD at 0x3000, whose entry 0 maps 0..2 MiB (PS).
    hv.write(base + 0x1000, struct.pack("<Q", 0x2003))
    hv.write(base + 0x2000, struct.pack("<Q", 0x3003))
    hv.write(base + 0x3000, struct.pack("<Q", 0x83))
    code = encode_segment(SegmentRegister(base=0, limit=0xFFFF_FFFF, selector=8, attributes=0xA09B))
    data = encode_segment(SegmentRegister(base=0, limit=0xFFFF_FFFF, selector=16, attributes=0xC093))
    hv.set_vp_registers(c, 0, {
        R.Cs: code, R.Ds: data, R.Es: data, R.Ss: data, R.Cr4: 0x20, R.Cr3: 0x1000, R.Efer: 0x500,
        R.Cr0: 0x8000_0011, R.Rip: 0, R.Rsp: 0x7000,
    })  # fmt: skip
    names = [R.Rip, R.Rcx, R.Rdi, R.Rsp]
    seen: list[tuple[int, tuple[int, ...], tuple[int, int]]] = []

    def handle(m: Message) -> bool:
        if m.message_type != HvMessageType.HvMessageTypeUnmappedGpa:
            return False
        seen.append((m.header.rip, tuple(hv.get_vp_registers(c, 0, names)), m.memory()))
        hv.map_gpa_pages(c, 0x8, F.READABLE | F.WRITABLE, [ram[8]])
        hv.complete_intercept(m, advance=False)
        return True

    hv.resume_vp(c, 0)
    runs = serve_consoles(hv, [c], timeout=120, on_message=handle)
    addr = at_intercept[2] if at_intercept[2] else at_intercept[3] - 8
    assert seen == [(at_intercept[0], at_intercept, (addr, 1))], seen
    assert runs[c].exit_status == 5, runs[c]
    exit_rip = len(bytes.fromhex(program)) + 2
    assert tuple(hv.get_vp_registers(c, 0, names)) == (exit_rip, *at_exit)
    assert hv.read((ram[7] << 12) + 0xFF8, 0x28).hex() == memory.ljust(0x50, "0")


def test_child_cannot_write_a_page_mapped_read_only(hv: Hypervisor, guest: Guest) -> None:
    c, _ = probe(hv, guest, "addr=0x2000020 write=0x1234")
    page = 0x7100
    hv.write((page << 12) + 0x20, struct.pack("<I", 0x55AA55AA))
    hv.map_gpa_pages(c, 0x2000, F.READABLE, [page])
    got: list[Message] = []

    def handle(m: Message) -> bool:
        if m.message_type != HvMessageType.HvMessageTypeGpaIntercept:
            return False
        got.append(m)
        hv.finalize_partition(c)  # a host refusing the write stops the child
        return True

    hv.resume_vp(c, 0)
    with pytest.raises(TimeoutError):
        serve_consoles(hv, [c], timeout=20, on_message=handle)
    assert len(got) == 1
    gpa, access = got[0].memory()
    assert (gpa, access) == (0x2000020, 1)  # HV_INTERCEPT_ACCESS_WRITE
    assert struct.unpack("<I", hv.read((page << 12) + 0x20, 4))[0] == 0x55AA55AA  # never written


def test_msr_intercept_and_explicit_suspend(hv: Hypervisor, guest: Guest) -> None:
    """An MSR write the root intercepts (HvMessageTypeMsrIntercept, PDF §13.2) carries the value;
    ExplicitSuspend stops a running VP so its registers can be read and written."""
    c, _ = probe(hv, guest, "addr=0x1000")
    guest_os_id = 0x40000000
    hv.install_intercept(c, InterceptAccess.WRITE, InterceptType.X64Msr, guest_os_id)
    msrs: list[tuple[int, bool, int]] = []

    def handle(m: Message) -> bool:
        if m.message_type != HvMessageType.HvMessageTypeMsrIntercept:
            return False
        msrs.append(m.msr())
        hv.complete_intercept(m)  # swallowed: the child's Hv never sees the write
        return True

    hv.resume_vp(c, 0)
    runs = serve_consoles(hv, [c], timeout=180, on_message=handle)
    assert msrs == [(guest_os_id, True, 0xFF00000000000001)]
    assert runs[c].exit_status == 1
    # The VP is suspended at its debug-exit `out`: its registers are the file's.
    rip, rax = hv.get_vp_registers(c, 0, [R.Rip, R.Rax])
    assert rax & 0xFFFF_FFFF == 0
    assert rip > 0x100000


def test_finalize_stops_a_spinning_child(hv: Hypervisor, guest: Guest) -> None:
    pages = Pages()
    c, _ = new_child(hv, pages)
    hv.load_kernel(c, str(guest("hello")), "hang")
    hv.resume_vp(c, 0)
    runs = {}
    with pytest.raises(TimeoutError):
        runs = serve_consoles(hv, [c], timeout=10)
    assert not runs
    hv.suspend_vp(c, 0)
    (rip,) = hv.get_vp_registers(c, 0, [R.Rip])
    assert rip > 0x100000  # stopped inside the kernel's `pause` loop
    hv.resume_vp(c, 0)
    hv.finalize_partition(c)
    hv.delete_partition(c)
    assert hv.get_next_child_partition(0) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_example_virtualization_host_runs(guest: Guest, backend: str) -> None:
    """examples/virtualization_host.py, as the README shows it (KVM is its default backend)."""
    guest("partition_peer")
    root = Path(__file__).resolve().parents[2]
    cmd = [
        sys.executable,
        str(root / "examples" / "virtualization_host.py"),
        "--backend",
        backend,
        "--messages",
        "4",
    ]
    env = {**os.environ, "PYTHONPATH": str(root)}  # this tree's hv1, as after `pip install .`
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=200, cwd=root, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "receiver: 4 messages received" in p.stdout and "SUMMARY: 6 passed, 0 failed" in p.stdout
