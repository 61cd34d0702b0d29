r"""The ACPI tables hv1 writes for a Linux guest: RSDP, XSDT, FADT, MADT and a DSDT.

What Linux needs from them, and no more (ACPI 6.0 section numbers):

- **RSDP** (5.2.5), revision 2 with the XSDT address only: Linux finds it through boot_params
  acpi_rsdp_addr / hvm_start_info rsdp_paddr, or by scanning 0xE0000-0xFFFFF, where it is placed.
- **XSDT** (5.2.8) listing the FADT and the MADT.
- **FADT** (5.2.9), revision 6, **hardware-reduced** (flag HW_REDUCED_ACPI, 5.2.9 Table 5-35): hv1 has
  no PM1 event/control blocks, PM timer, GPEs or SCI, and Linux's reduced-hardware path
  (arch/x86/kernel/acpi/boot.c acpi_reduced_hw_init) then skips the legacy PIC and the PIT, which hv1
  does not wire to interrupts either; time comes from the TLFS reference TSC page and synthetic timers.
  Also: CENTURY = CMOS register 0x32 (Linux reads the century there), IAPC_BOOT_ARCH "VGA not present"
  and no 8042 (hv1 models only the 8042's reset line), and the RESET_REG (5.2.9, "Reset register"):
  System I/O port 0x64, value 0xFE, the 8042 pulse that resets the partition, so `reboot` works by
  ACPI as well as by the keyboard-controller method.
- **MADT** (5.2.12): a Processor Local APIC per VP (enabled, ACPI processor UID = index, the VP's
  APIC ID), one I/O APIC (ID 0, at 0xFEC00000, GSI base 0, as QEMU lays it out), the interrupt source
  override ISA IRQ0 → GSI2 (the PIT's pin on a PC I/O APIC, as QEMU declares it; QEMU's other
  overrides are for its PCI INTx links at IRQs 5, 9, 10, 11, which hv1 does not have), and a Local APIC
  NMI on LINT1 for all processors. Flags: no PCAT_COMPAT (hv1's 8259 pair never raises interrupts).
- **DSDT** (5.2.11.1): `\_SB.COM1` (PNP0501: I/O 0x3F8-0x3FF, IRQ 4) and `\_SB.RTC` (PNP0B00: I/O
  0x70-0x71, IRQ 8), in AML written here (ACPI 6.0 chapter 20; resource descriptors 6.4). They matter
  because a hardware-reduced platform has no legacy PIC, so Linux maps no ISA IRQ numbers by itself
  (acpi_parse_ioapic makes the I/O APIC's IRQ domain dynamic when nr_legacy_irqs() is 0): the 8250
  driver gets a working IRQ for ttyS0 only through this PNP device (8250_pnp takes over the legacy
  port at the same address; Debian's 6.1 prints "ttyS0 at I/O 0x3f8 (irq = 25 ...)" for it: a
  dynamic number for GSI 4), and user space's console output depends on that interrupt. As in
  Firecracker's and Cloud Hypervisor's DSDTs.

Each table's checksum makes its bytes sum to zero (5.2.6); the RSDP has two (first 20 bytes, all 36).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

DEFAULT_BASE = 0xE0000
OEM_ID = b"HV1   "
OEM_TABLE_ID = b"HV1ACPI "
OEM_REVISION = 1
CREATOR_ID = b"HV1 "
CREATOR_REVISION = 1

IOAPIC_ID = 0
IOAPIC_ADDR = 0xFEC00000
LAPIC_ADDR = 0xFEE00000
CMOS_CENTURY = 0x32
RESET_PORT, RESET_VALUE = 0x64, 0xFE

# FADT flags (5.2.9 Table 5-35) and IA-PC boot architecture flags (5.2.9.3 Table 5-36)
FADT_WBINVD = 1 << 0
FADT_PWR_BUTTON = 1 << 4  # no fixed-feature power button
FADT_SLP_BUTTON = 1 << 5  # no fixed-feature sleep button
FADT_RESET_REG_SUP = 1 << 10
FADT_HW_REDUCED_ACPI = 1 << 20
IAPC_VGA_NOT_PRESENT = 1 << 2

# MADT structure types (5.2.12 Table 5-45)
MADT_LOCAL_APIC = 0
MADT_IO_APIC = 1
MADT_INT_SRC_OVERRIDE = 2
MADT_LOCAL_APIC_NMI = 4
MADT_LAPIC_ENABLED = 1
GAS_SYSTEM_IO = 1
HEADER = struct.Struct("<4sIBB6s8sI4sI")  # the 36-byte System Description Table header (5.2.6)


def checksum(data: bytes | bytearray) -> int:
    """The byte that makes `data` sum to 0 mod 256."""
    return (-sum(data)) & 0xFF


def sdt(signature: bytes, revision: int, body: bytes) -> bytes:
    """A System Description Table: header + body, with its length and checksum."""
    table = bytearray(HEADER.pack(signature, HEADER.size + len(body), revision, 0, OEM_ID, OEM_TABLE_ID,
                                  OEM_REVISION, CREATOR_ID, CREATOR_REVISION) + body)  # fmt: skip
    table[9] = checksum(table)
    return bytes(table)


def gas(space: int, bit_width: int, address: int, access_size: int) -> bytes:
    """A Generic Address Structure (5.2.3.2)."""
    return struct.pack("<BBBBQ", space, bit_width, 0, access_size, address)


def rsdp(xsdt_addr: int) -> bytes:
    r = bytearray(struct.pack("<8sB6sBIIQB3x", b"RSD PTR ", 0, OEM_ID, 2, 0, 36, xsdt_addr, 0))
    r[8] = checksum(r[:20])
    r[32] = checksum(r)
    return bytes(r)


def xsdt(entries: list[int]) -> bytes:
    return sdt(b"XSDT", 1, b"".join(struct.pack("<Q", a) for a in entries))


# ---- AML (ACPI 6.0 chapter 20), just the constructs the DSDT needs ----
AML_NAME_OP, AML_SCOPE_OP, AML_BUFFER_OP, AML_BYTE_PREFIX, AML_DWORD_PREFIX, AML_ZERO = (
    0x08,
    0x10,
    0x11,
    0x0A,
    0x0C,
    0,
)
AML_DEVICE_OP = b"\x5b\x82"


def aml_pkglength(body_len: int) -> bytes:
    """PkgLength (20.2.4) of a package whose contents after the PkgLength are `body_len` bytes; the
    encoded value counts the PkgLength bytes themselves."""
    for n in range(1, 5):
        total = body_len + n
        if n == 1 and total < 0x40:
            return bytes([total])
        if n > 1 and total < 1 << (4 + 8 * (n - 1)):
            return bytes([((n - 1) << 6) | (total & 0xF)]) + (total >> 4).to_bytes(n - 1, "little")
    raise ValueError("AML package too large")


def aml_name_seg(name: str) -> bytes:
    seg = name.encode().ljust(4, b"_")
    assert len(seg) == 4, name
    return seg


def aml_name(name: str, value: bytes) -> bytes:
    """Name(name, value) with an already-encoded value."""
    return bytes([AML_NAME_OP]) + aml_name_seg(name) + value


def aml_dword(v: int) -> bytes:
    return bytes([AML_DWORD_PREFIX]) + struct.pack("<I", v)


def aml_buffer(data: bytes) -> bytes:
    size = bytes([AML_BYTE_PREFIX, len(data)]) if len(data) < 256 else b"\x0b" + struct.pack("<H", len(data))
    body = size + data
    return bytes([AML_BUFFER_OP]) + aml_pkglength(len(body)) + body


def aml_device(name: str, *contents: bytes) -> bytes:
    body = aml_name_seg(name) + b"".join(contents)
    return AML_DEVICE_OP + aml_pkglength(len(body)) + body


def aml_scope(path: bytes, *contents: bytes) -> bytes:
    body = path + b"".join(contents)
    return bytes([AML_SCOPE_OP]) + aml_pkglength(len(body)) + body


def eisa_id(text: str) -> int:
    """EisaId("PNP0501") (19.6.35): three 5-bit letters big-endian, then four hex digits."""
    v = ((ord(text[0]) - 0x40) << 10) | ((ord(text[1]) - 0x40) << 5) | (ord(text[2]) - 0x40)
    product = int(text[3:], 16)
    return int.from_bytes(bytes([v >> 8, v & 0xFF, product >> 8, product & 0xFF]), "little")


def resources(io_base: int, io_len: int, io_align: int, irq: int) -> bytes:
    """ResourceTemplate { IO (Decode16, base, base, align, len), IRQNoFlags () {irq} } (6.4.2.5, 6.4.2.1;
    IRQNoFlags means edge-triggered, active-high: an ISA line), then the end tag (6.4.2.9)."""
    io = struct.pack("<BBHHBB", 0x47, 0x01, io_base, io_base, io_align, io_len)
    irqd = struct.pack("<BH", 0x22, 1 << irq)
    return io + irqd + b"\x79\x00"


def legacy_device(name: str, hid: str, io_base: int, io_len: int, io_align: int, irq: int) -> bytes:
    return aml_device(
        name,
        aml_name("_HID", aml_dword(eisa_id(hid))),
        aml_name("_UID", bytes([AML_ZERO])),
        aml_name("_CRS", aml_buffer(resources(io_base, io_len, io_align, irq))),
    )


def dsdt() -> bytes:
    body = aml_scope(
        b"\\_SB_",
        legacy_device("COM1", "PNP0501", 0x3F8, 8, 0, 4),  # the same descriptors QEMU's DSDT has
        legacy_device("RTC", "PNP0B00", 0x70, 2, 1, 8),
    )
    return sdt(b"DSDT", 2, body)  # revision 2: 64-bit AML integers


def fadt(dsdt_addr: int) -> bytes:
    body = bytearray(276 - HEADER.size)

    def put(offset: int, fmt: str, *values: int | bytes) -> None:
        struct.pack_into("<" + fmt, body, offset - HEADER.size, *values)

    put(40, "I", dsdt_addr)  # DSDT (32-bit)
    put(108, "B", CMOS_CENTURY)  # CENTURY
    put(109, "H", IAPC_VGA_NOT_PRESENT)  # IAPC_BOOT_ARCH
    put(112, "I", FADT_WBINVD | FADT_PWR_BUTTON | FADT_SLP_BUTTON | FADT_RESET_REG_SUP | FADT_HW_REDUCED_ACPI)
    body[116 - HEADER.size : 128 - HEADER.size] = gas(GAS_SYSTEM_IO, 8, RESET_PORT, 1)  # RESET_REG
    put(128, "B", RESET_VALUE)
    put(131, "B", 0)  # FADT minor version: ACPI 6.0
    put(140, "Q", dsdt_addr)  # X_DSDT
    put(268, "8s", b"hv1\0\0\0\0\0")  # Hypervisor Vendor Identity
    return sdt(b"FACP", 6, bytes(body))


def madt(apic_ids: list[int]) -> bytes:
    body = bytearray(struct.pack("<II", LAPIC_ADDR, 0))
    for uid, apic_id in enumerate(apic_ids):
        if not 0 <= apic_id <= 0xFE:
            raise ValueError(f"APIC ID {apic_id} needs an x2APIC structure (not generated)")
        body += struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, uid, apic_id, MADT_LAPIC_ENABLED)
    body += struct.pack("<BBBBII", MADT_IO_APIC, 12, IOAPIC_ID, 0, IOAPIC_ADDR, 0)
    body += struct.pack("<BBBBIH", MADT_INT_SRC_OVERRIDE, 10, 0, 0, 2, 0)  # ISA IRQ0 -> GSI2, conforming
    body += struct.pack("<BBBHB", MADT_LOCAL_APIC_NMI, 6, 0xFF, 0, 1)  # all processors, LINT1
    return sdt(b"APIC", 4, bytes(body))


@dataclass(frozen=True)
class AcpiTables:
    base: int
    blob: bytes  # everything, to be written at `base`
    rsdp: int
    tables: dict[str, tuple[int, int]]  # signature -> (address, length)


def build(base: int, apic_ids: list[int]) -> AcpiTables:
    """Lay the tables out from `base` (16-byte aligned: the RSDP scan steps by 16)."""
    if base % 16:
        raise ValueError("the ACPI base must be 16-byte aligned")
    parts: list[tuple[str, bytes]] = []
    cursor = base + 48  # after the RSDP (36 bytes, rounded up)
    layout: dict[str, tuple[int, int]] = {}

    def place(sig: str, blob: bytes) -> int:
        nonlocal cursor
        addr = cursor
        layout[sig] = (addr, len(blob))
        parts.append((sig, blob))
        cursor = (cursor + len(blob) + 15) & ~15
        return addr

    dsdt_addr = place("DSDT", dsdt())
    fadt_addr = place("FACP", fadt(dsdt_addr))
    madt_addr = place("APIC", madt(apic_ids))
    xsdt_addr = place("XSDT", xsdt([fadt_addr, madt_addr]))
    out = bytearray(cursor - base)
    out[0:36] = rsdp(xsdt_addr)
    layout["RSDP"] = (base, 36)
    for sig, blob in parts:
        addr = layout[sig][0]
        out[addr - base : addr - base + len(blob)] = blob
    return AcpiTables(base, bytes(out), base, layout)
