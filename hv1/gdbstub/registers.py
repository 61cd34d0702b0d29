"""gdb's x86-64 register layout and the target description the stub serves (qXfer:features:read).

GDB manual, "Target Descriptions" and "i386 Features": an x86-64 target needs the feature
`org.gnu.gdb.i386.core` (the 16 GPRs, rip, eflags, the six segment selectors and the x87 state, in
that order) and `org.gnu.gdb.i386.sse` (xmm0-15, mxcsr); `org.gnu.gdb.i386.segments` gives fs_base
and gs_base. The control registers and EFER have no standard feature, so they come in hv1's own
`org.hv1.x86.sys` (gdb shows them as $cr0 ... $efer). Register numbers are the table's order; the
`g` packet carries them all in that order, little-endian.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reg:
    name: str
    bits: int
    type: str
    feature: str
    group: str | None = None


CORE = "org.gnu.gdb.i386.core"
SSE = "org.gnu.gdb.i386.sse"
SEGMENTS = "org.gnu.gdb.i386.segments"
SYS = "org.hv1.x86.sys"

_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")  # fmt: skip
_X87_CTRL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")

X86_64: tuple[Reg, ...] = (
    *(Reg(n, 64, "data_ptr" if n in ("rbp", "rsp") else "int64", CORE) for n in _GPRS),
    Reg("rip", 64, "code_ptr", CORE),
    Reg("eflags", 32, "i386_eflags", CORE),
    *(Reg(n, 32, "int32", CORE) for n in ("cs", "ss", "ds", "es", "fs", "gs")),
    *(Reg(f"st{i}", 80, "i387_ext", CORE) for i in range(8)),
    *(Reg(n, 32, "int", CORE, "float") for n in _X87_CTRL),
    *(Reg(f"xmm{i}", 128, "vec128", SSE) for i in range(16)),
    Reg("mxcsr", 32, "i386_mxcsr", SSE, "vector"),
    Reg("fs_base", 64, "int", SEGMENTS),
    Reg("gs_base", 64, "int", SEGMENTS),
    *(Reg(n, 64, "int", SYS, "system") for n in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")),
)
REGNUM = {r.name: i for i, r in enumerate(X86_64)}
PC = "rip"

# Types the features above refer to (GDB manual, "Predefined Target Types" has int64, code_ptr,
# i387_ext, ...; flags and unions are defined here, as gdb's own 64bit-core.xml/64bit-sse.xml do).
_EFLAGS_POS = {"CF": 0, "": 1, "PF": 2, "AF": 4, "ZF": 6, "SF": 7, "TF": 8, "IF": 9, "DF": 10,
               "OF": 11, "NT": 14, "RF": 16, "VM": 17, "AC": 18, "VIF": 19, "VIP": 20, "ID": 21}  # fmt: skip
_MXCSR_POS = {"IE": 0, "DE": 1, "ZE": 2, "OE": 3, "UE": 4, "PE": 5, "DAZ": 6, "IM": 7, "DM": 8,
              "ZM": 9, "OM": 10, "UM": 11, "PM": 12, "FZ": 15}  # fmt: skip
_TYPES = {
    CORE: '  <flags id="i386_eflags" size="4">\n'
    + "".join(f'    <field name="{n}" start="{p}" end="{p}"/>\n' for n, p in _EFLAGS_POS.items())
    + "  </flags>\n",
    SSE: (
        '  <vector id="v4f" type="ieee_single" count="4"/>\n'
        '  <vector id="v2d" type="ieee_double" count="2"/>\n'
        '  <vector id="v16i8" type="int8" count="16"/>\n'
        '  <vector id="v8i16" type="int16" count="8"/>\n'
        '  <vector id="v4i32" type="int32" count="4"/>\n'
        '  <vector id="v2i64" type="int64" count="2"/>\n'
        '  <union id="vec128">\n'
        '    <field name="v4_float" type="v4f"/>\n    <field name="v2_double" type="v2d"/>\n'
        '    <field name="v16_int8" type="v16i8"/>\n    <field name="v8_int16" type="v8i16"/>\n'
        '    <field name="v4_int32" type="v4i32"/>\n    <field name="v2_int64" type="v2i64"/>\n'
        '    <field name="uint128" type="uint128"/>\n'
        "  </union>\n"
        '  <flags id="i386_mxcsr" size="4">\n'
        + "".join(f'    <field name="{n}" start="{p}" end="{p}"/>\n' for n, p in _MXCSR_POS.items())
        + "  </flags>\n"
    ),
}


def target_xml() -> bytes:
    """The whole description as one document (served as `target.xml`)."""
    out = ['<?xml version="1.0"?>\n<!DOCTYPE target SYSTEM "gdb-target.dtd">\n<target version="1.0">\n',
           "<architecture>i386:x86-64</architecture>\n"]  # fmt: skip
    for feature in (CORE, SSE, SEGMENTS, SYS):
        out.append(f'<feature name="{feature}">\n')
        out.append(_TYPES.get(feature, ""))
        for r in X86_64:
            if r.feature == feature:
                group = f' group="{r.group}"' if r.group else ""
                attrs = f'name="{r.name}" bitsize="{r.bits}" type="{r.type}" regnum="{REGNUM[r.name]}"'
                out.append(f"  <reg {attrs}{group}/>\n")
        out.append("</feature>\n")
    out.append("</target>\n")
    return "".join(out).encode()


def encode(values: dict[str, int], reg: Reg) -> bytes:
    """One register as `g`/`p` send it: little-endian hex, or `xx..` when unavailable."""
    n = reg.bits // 8
    v = values.get(reg.name)
    if v is None:
        return b"xx" * n
    return (v & ((1 << reg.bits) - 1)).to_bytes(n, "little").hex().encode()


def decode(hexdata: bytes, reg: Reg) -> int | None:
    """A register value from `G`/`P` hex (None for gdb's `xx` placeholder)."""
    if hexdata.startswith(b"x"):
        return None
    return int.from_bytes(bytes.fromhex(hexdata.decode()), "little")


G_PACKET_CHARS = sum(r.bits // 8 for r in X86_64) * 2
