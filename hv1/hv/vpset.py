"""Processor sets: the 64-bit ProcessorMask of the original hypercalls and the sparse HV_VP_SET of the
*Ex* hypercalls (TLFS datatypes/hv_vp_set.md; PDF §7.8.7.3-5; inventory §6.3.4), plus the VP index
map of a partition (VP index != APIC ID configurations, `--vp-index-map`).

HV_VP_SET layout:

    UINT64 Format;          0 = HvGenericSetSparse4k (sparse), 1 = HvGenericSetAll (every VP)
    UINT64 ValidBanksMask;  bit b set <=> bank b (VP indexes 64*b .. 64*b+63) has an element below
    UINT64 BankContents[];  popcount(ValidBanksMask) masks, ascending bank order; a zero bank is legal

In the *Ex* hypercalls BankContents is the variable header, so the control word's VarHeaderSize (in
QWORDs) must equal popcount(ValidBanksMask) (hypercall-interface.md "Variable Sized Hypercall Input
Headers"). Choices where the TLFS is silent:

- A VarHeaderSize that disagrees with popcount(ValidBanksMask) -> HV_STATUS_INVALID_HYPERCALL_INPUT,
  for both formats (inventory §4.7; as KVM). Linux and Windows send Format 1 with ValidBanksMask 0.
- A Format other than 0 or 1 -> HV_STATUS_INVALID_PARAMETER (an undefined field value).
- Bits naming VP indexes that no VP has are ignored (inventory §6.3.4; as KVM): the set is resolved
  against the partition's VP indexes.

Parsing never raises anything but `VpSetError` (carrying the HV_STATUS), whatever the bytes are.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from hv1.tlfs.status import HvStatus

HV_GENERIC_SET_SPARSE_4K = 0
HV_GENERIC_SET_ALL = 1

VP_SET_HEADER = struct.Struct("<QQ")  # Format, ValidBanksMask
BANK_SIZE = 8
VPS_PER_BANK = 64
MAX_BANKS = 64  # ValidBanksMask is 64 bits
MAX_VP_INDEX = MAX_BANKS * VPS_PER_BANK - 1  # 4095: the largest VP index an HV_VP_SET can name

MASK64 = (1 << 64) - 1


class VpSetError(Exception):
    """An HV_VP_SET (or VP index map) that must be rejected; `status` is the HV_STATUS to return."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class VpSet:
    """A decoded processor set: every VP (`all`) or the VP indexes named (unresolved: may include
    indexes no VP has)."""

    all: bool
    indexes: frozenset[int] = frozenset()

    def resolve(self, existing: Collection[int]) -> frozenset[int]:
        """The VP indexes of the set that exist in the partition."""
        if self.all:
            return frozenset(existing)
        return frozenset(i for i in self.indexes if i in existing)

    def describe(self) -> str:
        return "all" if self.all else ",".join(str(i) for i in sorted(self.indexes)) or "-"


ALL_VPS = VpSet(all=True)


def mask_to_indexes(mask: int, base: int = 0) -> frozenset[int]:
    """The VP indexes of a 64-bit processor mask (bit n = VP index base + n)."""
    mask &= MASK64
    out = []
    while mask:
        low = mask & -mask
        out.append(base + low.bit_length() - 1)
        mask ^= low
    return frozenset(out)


def indexes_to_mask(indexes: Iterable[int]) -> int:
    """A 64-bit processor mask of VP indexes 0..63 (for tests and tools). ValueError above 63."""
    mask = 0
    for i in indexes:
        if not 0 <= i < VPS_PER_BANK:
            raise ValueError(f"VP index {i} does not fit a 64-bit processor mask")
        mask |= 1 << i
    return mask


def processor_mask_set(mask: int) -> VpSet:
    """The set of a 64-bit ProcessorMask (HvCallSendSyntheticClusterIpi, the non-Ex flushes)."""
    return VpSet(all=False, indexes=mask_to_indexes(mask))


def vp_set_size(data: bytes | bytearray | memoryview) -> int:
    """Bytes an HV_VP_SET at the start of `data` occupies according to its ValidBanksMask (16 if the
    header itself is incomplete)."""
    if len(data) < VP_SET_HEADER.size:
        return VP_SET_HEADER.size
    _fmt, banks = VP_SET_HEADER.unpack_from(data)
    return VP_SET_HEADER.size + BANK_SIZE * bin(banks).count("1")


def parse_vp_set(data: bytes | bytearray | memoryview, var_header_qwords: int | None = None) -> VpSet:
    """Decode the HV_VP_SET at the start of `data` (the rest of an Ex hypercall's input header).

    `var_header_qwords` is the control word's VarHeaderSize for an Ex hypercall: it must equal the
    number of banks (INVALID_HYPERCALL_INPUT otherwise). None: no such check (a set embedded in a
    fixed layout). Raises VpSetError; never anything else."""
    if len(data) < VP_SET_HEADER.size:
        raise VpSetError(HvStatus.INVALID_HYPERCALL_INPUT, "HV_VP_SET header truncated")
    fmt, valid_banks = VP_SET_HEADER.unpack_from(data)
    nbanks = bin(valid_banks).count("1")
    if var_header_qwords is not None and var_header_qwords != nbanks:
        raise VpSetError(
            HvStatus.INVALID_HYPERCALL_INPUT,
            f"variable header of {var_header_qwords} qwords for {nbanks} banks "
            f"(ValidBanksMask {valid_banks:#x})",
        )
    if len(data) < VP_SET_HEADER.size + BANK_SIZE * nbanks:
        raise VpSetError(HvStatus.INVALID_HYPERCALL_INPUT, f"HV_VP_SET with {nbanks} banks truncated")
    if fmt == HV_GENERIC_SET_ALL:
        return ALL_VPS
    if fmt != HV_GENERIC_SET_SPARSE_4K:
        raise VpSetError(HvStatus.INVALID_PARAMETER, f"unknown HV_VP_SET format {fmt:#x}")
    indexes: set[int] = set()
    off = VP_SET_HEADER.size
    banks = valid_banks
    while banks:
        low = banks & -banks
        bank = low.bit_length() - 1
        banks ^= low
        (contents,) = struct.unpack_from("<Q", data, off)
        off += BANK_SIZE
        indexes |= mask_to_indexes(contents, bank * VPS_PER_BANK)
    return VpSet(all=False, indexes=frozenset(indexes))


def encode_vp_set(
    indexes: Iterable[int] | None, *, all_vps: bool = False, keep_empty_banks: Iterable[int] = ()
) -> bytes:
    """An HV_VP_SET (for tests, tools and the conformance guests' expectations). `all_vps`: Format 1
    with no banks. `keep_empty_banks`: banks to include even though they name no VP."""
    if all_vps:
        return VP_SET_HEADER.pack(HV_GENERIC_SET_ALL, 0)
    banks: dict[int, int] = {b: 0 for b in keep_empty_banks}
    for i in indexes or ():
        if not 0 <= i <= MAX_VP_INDEX:
            raise ValueError(f"VP index {i} cannot be named in an HV_VP_SET")
        banks[i // VPS_PER_BANK] = banks.get(i // VPS_PER_BANK, 0) | 1 << (i % VPS_PER_BANK)
    valid = 0
    for b in banks:
        valid |= 1 << b
    body = b"".join(struct.pack("<Q", banks[b]) for b in sorted(banks))
    return VP_SET_HEADER.pack(HV_GENERIC_SET_SPARSE_4K, valid) + body


# --- the partition's VP index map ----------------------------------------------------------------


def parse_vp_index_map(spec: str, cpus: int) -> list[int]:
    """`--vp-index-map 0,65,130,3`: the VP index (HV_X64_MSR_VP_INDEX) of each vCPU, in APIC-ID order
    (vCPU slot i has APIC ID i). Rules (vp-properties.md "Virtual Processor Indices", PDF §7.6,
    datatypes/hv_vp_index.md):
    - one distinct index per vCPU; sparse indexes are allowed ("Not all indices in the valid range
      need to be used");
    - each index <= 4095, so that an HV_VP_SET can name it (64 banks of 64);
    - the boot processor (slot 0) has VP index 0 ("VP index 0 is the BSP", PDF §7.6).
    Raises ValueError with a message for the user."""
    parts = [p.strip() for p in spec.split(",")]
    if not spec.strip() or any(not p for p in parts):
        raise ValueError(f"--vp-index-map {spec!r}: expected a comma-separated list of VP indexes")
    try:
        indexes = [int(p, 0) for p in parts]
    except ValueError:
        raise ValueError(f"--vp-index-map {spec!r}: VP indexes must be integers") from None
    if len(indexes) != cpus:
        raise ValueError(f"--vp-index-map has {len(indexes)} entries for {cpus} vCPUs (one per vCPU)")
    for i in indexes:
        if not 0 <= i <= MAX_VP_INDEX:
            raise ValueError(f"--vp-index-map: VP index {i} outside 0..{MAX_VP_INDEX}")
    if len(set(indexes)) != len(indexes):
        raise ValueError(f"--vp-index-map {spec!r}: VP indexes must be distinct")
    if indexes[0] != 0:
        raise ValueError("--vp-index-map: the boot processor (first entry) must have VP index 0")
    return indexes
