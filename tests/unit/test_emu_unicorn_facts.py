"""The Unicorn 2.1.4 behaviours the emulator backend's design rests on (hv1/backends/emu/vcpu.py,
codescan.py), checked on a bare Unicorn instance so that an upgrade that changes one shows up here:

- UC_HOOK_INSN exists for CPUID (answered in its hook) but not for RDMSR/WRMSR (so they are found
  by scanning code and hooked by address);
- a code hook limited to one address runs for that instruction only, once the block holding it is
  translated again (so the scan drops a page's translations after hooking it);
- uc.emu_stop inside a block hook stops in front of the block;
- a stop request pending when an MMIO access happens aborts the instruction after the callback
  ran, and the next run executes it again: the callback runs twice (so kicks are flags the block
  hook polls, never uc.emu_stop from another thread).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("unicorn") is None, reason="unicorn not installed")

CODE = 0x1000
MMIO = 0x100000


def _uc(code: bytes) -> Any:
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc

    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    uc.mem_write(CODE, code)
    return uc


def test_cpuid_has_an_instruction_hook_rdmsr_and_wrmsr_do_not() -> None:
    from unicorn import UC_HOOK_INSN, UcError
    from unicorn.x86_const import UC_X86_INS_CPUID, UC_X86_INS_RDMSR, UC_X86_INS_WRMSR, UC_X86_REG_EAX

    uc = _uc(b"\x0f\xa2\xf4")  # cpuid; hlt
    seen: list[int] = []

    def on_cpuid(uc: object, _: object) -> int:
        seen.append(1)
        return 1  # skip the emulator's own CPUID

    uc.hook_add(UC_HOOK_INSN, on_cpuid, None, 1, 0, UC_X86_INS_CPUID)
    uc.reg_write(UC_X86_REG_EAX, 0x1234)
    uc.emu_start(CODE, 1 << 32)
    assert seen == [1] and uc.reg_read(UC_X86_REG_EAX) == 0x1234
    for insn in (UC_X86_INS_RDMSR, UC_X86_INS_WRMSR):
        with pytest.raises(UcError):
            uc.hook_add(UC_HOOK_INSN, on_cpuid, None, 1, 0, insn)


def test_an_address_hook_applies_once_the_block_is_translated_again() -> None:
    from unicorn import UC_HOOK_CODE

    uc = _uc(b"\x90\x90\x40\xf4")  # nop; nop; inc eax; hlt
    uc.emu_start(CODE, 1 << 32)
    hits: list[int] = []
    uc.hook_add(UC_HOOK_CODE, lambda uc, addr, size, _: hits.append(addr), None, CODE + 1, CODE + 1)
    uc.emu_start(CODE, 1 << 32)
    assert hits == []  # the cached block was translated before the hook existed
    uc.ctl_remove_cache(CODE, CODE + 4)
    uc.emu_start(CODE, 1 << 32)
    assert hits == [CODE + 1]


def test_emu_stop_in_a_block_hook_stops_in_front_of_the_block() -> None:
    from unicorn import UC_HOOK_BLOCK
    from unicorn.x86_const import UC_X86_REG_EAX, UC_X86_REG_EIP

    uc = _uc(b"\x40\x40\xeb\x00\x40\x40\xf4")  # inc; inc; jmp +0; inc; inc; hlt

    def on_block(uc: Any, addr: int, size: int, _: object) -> None:
        if addr == CODE + 4:
            uc.emu_stop()

    uc.hook_add(UC_HOOK_BLOCK, on_block)
    uc.reg_write(UC_X86_REG_EAX, 0)
    uc.emu_start(CODE, 1 << 32)
    assert uc.reg_read(UC_X86_REG_EIP) == CODE + 4 and uc.reg_read(UC_X86_REG_EAX) == 2


def test_a_pending_stop_makes_an_mmio_write_happen_twice() -> None:
    from unicorn import UC_HOOK_INSN
    from unicorn.x86_const import UC_X86_INS_IN, UC_X86_REG_EIP

    # mov esi, MMIO; in al, 0x10 (its hook asks for a stop); inc ebx; mov dword [esi+4], 5; hlt
    code = b"\xbe" + MMIO.to_bytes(4, "little") + b"\xe4\x10\x43\xc7\x46\x04\x05\x00\x00\x00\xf4"
    uc = _uc(code)
    writes: list[int] = []
    uc.mmio_map(MMIO, 0x1000, lambda *a: 0, None, lambda uc, off, size, value, _: writes.append(value), None)

    def on_in(uc: Any, port: int, size: int, _: object) -> int:
        uc.emu_stop()
        return 0

    uc.hook_add(UC_HOOK_INSN, on_in, None, 1, 0, UC_X86_INS_IN)
    uc.emu_start(CODE, 1 << 32)
    write_insn = CODE + 8
    assert writes == [5] and uc.reg_read(UC_X86_REG_EIP) == write_insn  # aborted after the callback
    uc.emu_start(write_insn, 1 << 32)
    assert writes == [5, 5]  # and done again
