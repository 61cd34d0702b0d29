"""Composing the guest's CPUID table: the host/backend leaves plus the hypervisor leaves.

feature-discovery.md "Hypervisor Discovery": CPUID.01h:ECX[31] = 1 announces a hypervisor, and the
leaves 0x40000000.. describe it. Any other hypervisor's leaves that the backend would pass through
(KVM's "KVMKVMKVM" signature at 0x40000000, its features at 0x40000001) are replaced: the range
0x40000000-0x4FFFFFFF belongs to Hv#1 here, and a leaf above max_leaf must read as zero (the
Requirements doc recommends "return 0 for all CPUID leaves except those ... required").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from hv1.hv.caps import Caps
from hv1.tlfs.feature_discovery import CPUID_1_ECX_HYPERVISOR_PRESENT

HYPERVISOR_RANGE = range(0x40000000, 0x50000000)

# (partition id, VP index, leaf, subleaf) -> (eax, ebx, ecx, edx): the CPUID a VP sees
# (Hypervisor.cpuid_provider).
CpuidProvider = Callable[[int, int, int, int], tuple[int, int, int, int]]


@dataclass(frozen=True)
class CpuidEntry:
    function: int
    index: int = 0
    flags: int = 0  # backend-specific (e.g. KVM_CPUID_FLAG_SIGNIFCANT_INDEX); passed through
    eax: int = 0
    ebx: int = 0
    ecx: int = 0
    edx: int = 0


def compose(host: Iterable[CpuidEntry], caps: Caps, guest_os_id_set: bool = False) -> list[CpuidEntry]:
    """The guest CPUID: `host` with CPUID.1:ECX[31] set, its hypervisor range dropped, and the Hv#1
    leaves of `caps` added (sorted by function, index)."""
    out: list[CpuidEntry] = []
    for e in host:
        if e.function in HYPERVISOR_RANGE:
            continue
        if e.function == 1:
            e = replace(e, ecx=e.ecx | CPUID_1_ECX_HYPERVISOR_PRESENT)
        out.append(e)
    for leaf, (a, b, c, d) in caps.cpuid_leaves(guest_os_id_set).items():
        out.append(CpuidEntry(leaf, 0, 0, a, b, c, d))
    out.sort(key=lambda e: (e.function, e.index))
    return out


def default_vp_cpuid(partition_id: int, vp_index: int, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    """The CPUID a child VP sees when no host supplied a `Hypervisor.cpuid_provider`: hv1's Hv#1 leaves
    of the default profile (an ordinary enlightened guest), leaf 0 reporting basic leaf 1 as the
    highest, leaf 1 with only the hypervisor-present bit and the initial APIC ID (= the VP index, hv1's
    choice for children) and every other leaf zero, as the Requirements doc recommends for leaves a
    hypervisor does not define. (eax, ebx, ecx, edx)."""
    if leaf in HYPERVISOR_RANGE:
        a, b, c, d = _default_hv_leaves().get(leaf, (0, 0, 0, 0))
        return a, b, c, d
    if leaf == 0:
        return 1, 0, 0, 0
    if leaf == 1:
        return 0, (vp_index & 0xFF) << 24, CPUID_1_ECX_HYPERVISOR_PRESENT, 0
    return 0, 0, 0, 0


_DEFAULT_HV_LEAVES: dict[int, tuple[int, int, int, int]] = {}


def _default_hv_leaves() -> dict[int, tuple[int, int, int, int]]:
    if not _DEFAULT_HV_LEAVES:
        from hv1.hv.caps import parse_profile

        _DEFAULT_HV_LEAVES.update(parse_profile("default").cpuid_leaves())
    return _DEFAULT_HV_LEAVES
