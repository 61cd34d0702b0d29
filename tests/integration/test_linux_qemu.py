"""hv1's Linux boot image, booted by a real Linux under QEMU TCG (no KVM needed).

Everything hv1's loader produces for Linux: the kernel (the bzImage payload extracted by hv1's LZ4
decoder, or the protected-mode kernel for the 64-bit boot protocol), hvm_start_info or the zero page
with hv1's e820 map, the command line, the initrd and hv1's ACPI tables, is copied byte for byte into
QEMU's RAM (`-device loader`), and tests/qemu_entry_fw.S puts the BSP in the loader's EntryState. So
a green run says that Debian's kernel accepts hv1's layout and tables: it parses the RSDP/XSDT/FADT/
MADT/DSDT, brings up both CPUs from the MADT, finds COM1 with an IRQ through the DSDT (the IRQ it
prints is a dynamic number: a hardware-reduced platform maps no ISA IRQs by itself), and runs the
initramfs's user space to its reboot.

Not covered here: hv1's own devices and vCPU setup (QEMU's microvm provides the UART, I/O APIC and
RTC) and Hyper-V (TCG has none; `tsc_early_khz` stands in for the TSC frequency hv1 gives through
HV_X64_MSR_TSC_FREQUENCY). Those are tests/integration/test_linux.py, on KVM.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hv1.machine.entry_state import EntryMode, EntryState
from hv1.machine.linux import boot_params, loader, payload
from tests.fakes import FakeMemory
from tests.linux_artifacts import (
    BUSYBOX_SKIP,
    KERNEL_SKIP,
    USERSPACE_MARKER,
    busybox_initramfs,
    debian_kernel,
)

FIRMWARE = Path(__file__).resolve().parents[1] / "qemu_entry_fw.S"
QEMU = shutil.which("qemu-system-x86_64")
TOOLS_SKIP = (
    None if QEMU and shutil.which("as") and shutil.which("ld") else "needs qemu-system-x86_64 and binutils"
)

pytestmark = [
    pytest.mark.skipif(KERNEL_SKIP is not None, reason=KERNEL_SKIP or ""),
    pytest.mark.skipif(BUSYBOX_SKIP is not None, reason=BUSYBOX_SKIP or ""),
    pytest.mark.skipif(TOOLS_SKIP is not None, reason=TOOLS_SKIP or ""),
]

MEMORY = 512 << 20
CMDLINE = "console=ttyS0 panic=-1 nokaslr tsc_early_khz=2600000 tsc=reliable"
OOPS = re.compile(r"Oops|BUG:|kernel BUG|Kernel panic|general protection fault|WARNING: CPU")


def firmware(tmp: Path, st: EntryState) -> Path:
    gdt = st.gdt or (0, 0)
    syms = {
        "LONG": int(st.mode is EntryMode.LONG64), "ENTRY": st.rip, "RBX": st.gprs.get("rbx", 0),
        "RSI": st.gprs.get("rsi", 0), "CR3": st.cr3, "CS_SEL": st.code_selector, "DS_SEL": st.data_selector,
        "GDT_BASE": gdt[0], "GDT_LIMIT": gdt[1],
    }  # fmt: skip
    defs = [a for k, v in syms.items() for a in ("--defsym", f"{k}={v:#x}")]
    subprocess.run(["as", "--32", *defs, "-o", str(tmp / "fw.o"), str(FIRMWARE)], check=True)
    out = tmp / "fw.bin"
    link = ["ld", "-m", "elf_i386", "-Ttext=0", "--oformat", "binary", "-o", str(out), str(tmp / "fw.o")]
    subprocess.run(link, check=True)
    assert out.stat().st_size == 0x10000
    return out


@pytest.mark.timeout(240)
@pytest.mark.parametrize("entry", ["pvh", "64bit"])
def test_debian_kernel_boots_from_hv1s_image_under_qemu(tmp_path: Path, entry: str) -> None:
    kernel = debian_kernel()
    assert kernel is not None and QEMU is not None
    mem = FakeMemory(MEMORY)
    b = loader.load(kernel.read_bytes(), mem, cmdline=CMDLINE, initrd=busybox_initramfs(), apic_ids=[0, 1],
                    entry=entry, cache_dir=payload.default_cache_dir())  # fmt: skip
    devices = []
    for i, (gpa, n) in enumerate(sorted(b.loaded)):
        chunk = tmp_path / f"chunk{i}.bin"
        chunk.write_bytes(mem.read(gpa, n))
        devices += ["-device", f"loader,file={chunk},addr={gpa:#x},force-raw=on"]
    serial = tmp_path / "serial.log"
    cmd = [
        QEMU, "-M", "microvm,acpi=off,pic=off,pit=on,rtc=on,isa-serial=on", "-accel", "tcg", "-cpu", "max",
        "-m", f"{MEMORY >> 20}M", "-smp", "2", "-bios", str(firmware(tmp_path, b.entry)), "-nodefaults",
        "-no-user-config", "-display", "none", "-serial", f"file:{serial}", "-no-reboot", *devices,
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=200)
    log = serial.read_text(errors="replace") if serial.exists() else ""
    why = f"qemu status {r.returncode}: {r.stderr[-2000:]}\n--- serial ---\n{log[-6000:]}"
    assert f"Command line: {CMDLINE}" in log, why
    for e in boot_params.e820_map(MEMORY):  # hv1's map, as Linux read it (PVH appends the ISA hole itself)
        if e.type == boot_params.E820_RAM:
            assert f"[mem {e.addr:#018x}-{e.addr + e.size - 1:#018x}] usable" in log, why
    assert "ACPI: RSDP 0x00000000000E0000 000024 (v02 HV1   )" in log, why
    for sig in ("XSDT", "FACP", "DSDT", "APIC"):
        assert re.search(rf"ACPI: {sig} 0x[0-9A-F]+ [0-9A-F]+ \(v0\d HV1    HV1ACPI", log), sig + "\n" + why
    assert "IOAPIC[0]: apic_id 0, version 32, address 0xfec00000, GSI 0-23" in log, why
    assert "ACPI: INT_SRC_OVR (bus 0 bus_irq 0 global_irq 2 dfl dfl)" in log, why
    assert "smp: Brought up 1 node, 2 CPUs" in log, why
    assert re.search(r"ttyS0 at I/O 0x3f8 \(irq = \d+, base_baud = 115200\) is a 16550A", log), why
    assert "Run /init as init process" in log and USERSPACE_MARKER in log, why
    assert OOPS.search(log) is None, why
    assert "reboot: Restarting system" in log, why  # /init's reboot -f
