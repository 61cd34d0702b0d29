"""hv1's ACPI tables (ACPI 6.0: 5.2.5 RSDP, 5.2.6 headers and checksums, 5.2.8 XSDT, 5.2.9 FADT,
5.2.11.1 DSDT, 5.2.12 MADT), checked byte by byte and decoded with `iasl -d` (acpica-tools)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from hv1.machine import acpi

BASE = 0xE0000


def table(t: acpi.AcpiTables, sig: str) -> bytes:
    addr, n = t.tables[sig]
    return t.blob[addr - t.base : addr - t.base + n]


@pytest.mark.parametrize("cpus", [1, 2, 64])
def test_every_table_sums_to_zero_and_has_its_length(cpus: int) -> None:
    t = acpi.build(BASE, list(range(cpus)))
    for sig in ("XSDT", "FACP", "APIC", "DSDT"):
        data = table(t, sig)
        assert data[:4] == sig.encode()
        assert struct.unpack_from("<I", data, 4)[0] == len(data)
        assert sum(data) % 256 == 0, sig
    rsdp = table(t, "RSDP")
    assert rsdp[:8] == b"RSD PTR " and rsdp[15] == 2  # revision 2: the XSDT is used
    assert sum(rsdp[:20]) % 256 == 0 and sum(rsdp) % 256 == 0  # both RSDP checksums
    assert struct.unpack_from("<I", rsdp, 20)[0] == 36


def test_rsdp_is_where_linux_scans_and_xsdt_lists_fadt_and_madt() -> None:
    t = acpi.build(BASE, [0, 1])
    assert t.rsdp == BASE and BASE % 16 == 0 and 0xE0000 <= BASE < 0x100000
    xsdt_addr = struct.unpack_from("<Q", table(t, "RSDP"), 24)[0]
    assert xsdt_addr == t.tables["XSDT"][0]
    xsdt = table(t, "XSDT")
    entries = struct.unpack_from(f"<{(len(xsdt) - 36) // 8}Q", xsdt, 36)
    assert [t.blob[a - BASE : a - BASE + 4] for a in entries] == [b"FACP", b"APIC"]


def test_fadt_is_hardware_reduced_with_century_reset_and_dsdt() -> None:
    t = acpi.build(BASE, [0])
    f = table(t, "FACP")
    assert len(f) == 276 and f[8] == 6  # FADT revision 6 (ACPI 6.0)
    flags = struct.unpack_from("<I", f, 112)[0]
    assert flags & acpi.FADT_HW_REDUCED_ACPI and flags & acpi.FADT_RESET_REG_SUP
    assert f[108] == 0x32  # CENTURY: CMOS 0x32
    assert struct.unpack_from("<H", f, 109)[0] & 2 == 0  # no 8042 to probe
    assert f[116:128] == acpi.gas(1, 8, 0x64, 1) and f[128] == 0xFE  # RESET_REG: the 8042 reset pulse
    dsdt = t.tables["DSDT"][0]
    assert struct.unpack_from("<I", f, 40)[0] == dsdt and struct.unpack_from("<Q", f, 140)[0] == dsdt
    assert struct.unpack_from("<H", f, 46)[0] == 0  # no SCI in hardware-reduced ACPI


def test_madt_lists_each_vp_the_ioapic_and_the_irq0_override() -> None:
    ids = [0, 1, 2, 5]
    m = table(acpi.build(BASE, ids), "APIC")
    assert struct.unpack_from("<II", m, 36) == (0xFEE00000, 0)
    subs = []
    i = 44
    while i < len(m):
        subs.append(m[i : i + m[i + 1]])
        i += m[i + 1]
    assert i == len(m)
    lapics = [s for s in subs if s[0] == 0]
    assert [(s[2], s[3], struct.unpack_from("<I", s, 4)[0]) for s in lapics] == [
        (uid, aid, 1) for uid, aid in enumerate(ids)
    ]
    (io,) = [s for s in subs if s[0] == 1]
    assert struct.unpack("<BBBBII", io) == (1, 12, 0, 0, 0xFEC00000, 0)
    (iso,) = [s for s in subs if s[0] == 2]
    assert struct.unpack("<BBBBIH", iso) == (2, 10, 0, 0, 2, 0)  # ISA IRQ0 -> GSI2
    (nmi,) = [s for s in subs if s[0] == 4]
    assert nmi[2] == 0xFF and nmi[5] == 1  # all processors, LINT1


def test_madt_refuses_apic_ids_beyond_xapic() -> None:
    with pytest.raises(ValueError, match="x2APIC"):
        acpi.madt([0, 255])


def test_dsdt_declares_com1_and_the_rtc_in_aml() -> None:
    d = acpi.dsdt()
    assert d[8] == 2 and sum(d) % 256 == 0
    body = d[36:]
    pkglen = acpi.aml_pkglength(len(body) - 3)  # the scope is the whole body, with a 2-byte PkgLength
    assert body[0] == acpi.AML_SCOPE_OP and body[1:3] == pkglen and body[3:8] == b"\\_SB_"
    com1 = body.index(b"\x5b\x82") + 2  # DeviceOp, PkgLength, "COM1"
    assert body[com1 + 1 : com1 + 5] == b"COM1"
    assert struct.pack("<I", 0x0105D041) in body  # EisaId("PNP0501")
    assert acpi.resources(0x3F8, 8, 0, 4) in body and acpi.resources(0x70, 2, 1, 8) in body


@pytest.mark.parametrize(
    ("text", "value"), [("PNP0501", 0x0105D041), ("PNP0B00", 0x000BD041), ("PNP0A03", 0x030AD041)]
)
def test_eisa_id(text: str, value: int) -> None:
    assert acpi.eisa_id(text) == value


@pytest.mark.parametrize("n", [0, 1, 61, 62, 63, 200, 4094, 4095, 70000])
def test_aml_pkglength_counts_itself(n: int) -> None:
    enc = acpi.aml_pkglength(n)
    nbytes = (enc[0] >> 6) + 1
    value = enc[0] & 0x3F if nbytes == 1 else (enc[0] & 0xF) | int.from_bytes(enc[1:], "little") << 4
    assert len(enc) == nbytes and value == n + nbytes


IASL = shutil.which("iasl")


@pytest.mark.skipif(IASL is None, reason="iasl not installed (apt-get install acpica-tools; .ci/run does)")
@pytest.mark.parametrize(
    ("sig", "expect"),
    [
        ("FACP", ["Hardware Reduced (V5) : 1", "RTC Century Index : 32", "Value to cause reset : FE",
                  "Reset Register Supported (V2) : 1", "Address : 0000000000000064"]),
        ("APIC", ["Local Apic ID : 03", "Processor Enabled : 1", "[I/O APIC]", "Address : FEC00000",
                  "[Interrupt Source Override]", "Interrupt : 00000002", "[Local APIC NMI]"]),
        ("XSDT", ["ACPI Table Address   0", "ACPI Table Address   1"]),
        ("DSDT", ['DefinitionBlock ("", "DSDT", 2, "HV1   ", "HV1ACPI ", 0x00000001)', "Scope (\\_SB)",
                  "Device (COM1)", 'EisaId ("PNP0501")', "0x03F8, // Range Minimum", "IRQNoFlags () {4}",
                  "Device (RTC)", 'EisaId ("PNP0B00")', "IRQNoFlags () {8}"]),
    ],
)  # fmt: skip
def test_iasl_decodes_each_table(tmp_path: Path, sig: str, expect: list[str]) -> None:
    data = table(acpi.build(BASE, [0, 1, 2, 3]), sig)
    src = tmp_path / f"{sig.lower()}.dat"
    src.write_bytes(data)
    r = subprocess.run(
        [IASL or "iasl", "-d", src.name], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr
    text = " ".join((tmp_path / f"{sig.lower()}.dsl").read_text().split())
    assert "Invalid" not in text and "Error" not in text
    for e in expect:
        assert " ".join(e.split()) in text, e
