"""A virtualization host starts a child VP in paged long mode (HvCallSetVpRegisters CR0.PG, CR3,
EFER.LMA and a 64-bit CS; PDF §7.3) whose page tables map only the child's own pages. The emulator
backend loads the context's segments from a scratch GDT outside guest memory; with paging on it
used to read that GDT through the child's page tables, which do not map it, and the fault inside
Unicorn's register write took the hv1 process down (SIGSEGV). It must run the child instead: its
first `out` reaches the root as an intercept. In a subprocess, so a crash fails only this test."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("unicorn") is None, reason="unicorn not installed (pip install '.[emu]')"
)
REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import struct
    import hv1
    from hv1.hv.hypercalls.vp_calls import SegmentRegister
    from hv1.hv.vp_registers import encode_segment
    from hv1.tlfs.intercepts import InterceptAccess, InterceptType
    from hv1.tlfs.registers import HvRegisterName as R
    from hv1.tlfs.virtualization_host import MapGpaFlags as F

    with hv1.Hypervisor(memory=16 << 20, backend="emu") as hv:
        c = hv.create_partition()
        hv.deposit_memory(c, list(range(0x400, 0x420)))
        hv.initialize_partition(c)
        base = 0x500  # root pages -> child GPA 0 PML4, 1 PDPT, 2 PD, 3 PT, 4 code: identity, 20 KiB
        def put(page, off, v):
            hv.write(((base + page) << 12) + off, struct.pack("<Q", v))
        put(0, 0, 0x1000 | 3); put(1, 0, 0x2000 | 3); put(2, 0, 0x3000 | 3)
        for i in range(5):
            put(3, 8 * i, (i << 12) | 3)
        hv.write((base + 4) << 12, bytes([0xB0, 0x2A, 0xE6, 0x61, 0xF4]))  # mov al, 42; out 0x61, al; hlt
        hv.map_gpa_pages(c, 0, F.READABLE | F.WRITABLE | F.KERNEL_EXECUTABLE, list(range(base, base + 5)))
        hv.create_vp(c, 0)
        code = encode_segment(SegmentRegister(base=0, limit=0xFFFFFFFF, selector=8, attributes=0xA09B))
        data = encode_segment(SegmentRegister(base=0, limit=0xFFFFFFFF, selector=0x10, attributes=0xC093))
        hv.set_vp_registers(c, 0, {R.Cr0: 0x80000011, R.Cr3: 0, R.Cr4: 0x20, R.Efer: 0x500, R.Cs: code,
                                   R.Ds: data, R.Ss: data, R.Es: data, R.Rip: 0x4000, R.Rsp: 0x4F00})
        hv.install_intercept(c, InterceptAccess.WRITE, InterceptType.X64IoPort, 0x61)
        hv.resume_vp(c, 0)
        m = hv.next_message(timeout=60)
        port, size, is_write, rax = m.io_port()
        print(f"intercept {m.message_type:#x} port {port:#x} write {is_write} rax {rax & 0xFF}")
    """
)


def test_child_started_in_paged_long_mode_runs_on_the_emulator() -> None:
    r = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-3000:])
    assert "intercept 0x80010000 port 0x61 write True rax 42" in r.stdout, r.stdout
