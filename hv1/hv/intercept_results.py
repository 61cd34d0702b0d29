"""Registered intercept results: answers a parent gives the hypervisor in advance so that a child's
CPUID or MSR access completes without an intercept message (HvCallRegisterInterceptResult /
HvCallUnregisterInterceptResult; datatypes/hv_register_intercept_result_parameters.md,
hv_unregister_intercept_result_parameters.md; tlfs-inventory.md §6.5 "Intercept results").

- CPUID: for (leaf, subleaf) - or every subleaf of the leaf when SubleafSpecific is 0 - the result is
  the default with the masked bits replaced: `(default & ~mask) | (value & mask)` per register (a mask
  bit of 0 is "don't care": the default stays). A subleaf-specific entry wins over an all-subleaves
  one.
- MSR: for an MSR index and access direction(s), the action HV_UNIMPLEMENTED_MSR_ACTION: 0 fault
  (#GP), 1 ignore the write / read zero.

Results are per VP; VP index HV_ANY_VP registers one for every VP of the partition (an hv1 choice: the
md pages take a VP index and say nothing of a wildcard; a VP's own entry wins over the wildcard).
Registering the same key again replaces the earlier result. Data structure only: the engine
(hv1/hv/hypervisor.py) checks the partition, VP and parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hv1.tlfs.intercepts import InterceptAccess
from hv1.tlfs.virtualization_host import UnimplementedMsrAction
from hv1.tlfs.vp import HV_ANY_VP

Regs = tuple[int, int, int, int]  # eax, ebx, ecx, edx


@dataclass(frozen=True)
class CpuidResult:
    """HV_REGISTER_X64_CPUID_RESULT_PARAMETERS: values and masks in (eax, ebx, ecx, edx) order."""

    values: Regs
    masks: Regs
    always_override: bool = False

    def apply(self, default: Regs) -> Regs:
        a, b, c, d = ((x & ~m) | (v & m) for x, v, m in zip(default, self.values, self.masks, strict=True))
        return a, b, c, d


@dataclass
class InterceptResults:
    """The registered results of one partition."""

    # (vp, leaf, subleaf or None for all subleaves) -> result
    cpuid: dict[tuple[int, int, int | None], CpuidResult] = field(default_factory=dict)
    # (vp, msr index, READ or WRITE) -> action
    msr: dict[tuple[int, int, InterceptAccess], UnimplementedMsrAction] = field(default_factory=dict)

    def register_cpuid(self, vp: int, leaf: int, subleaf: int | None, result: CpuidResult) -> None:
        self.cpuid[(vp, leaf, subleaf)] = result

    def unregister_cpuid(self, vp: int, leaf: int, subleaf: int | None) -> bool:
        return self.cpuid.pop((vp, leaf, subleaf), None) is not None

    def cpuid_result(self, vp: int, leaf: int, subleaf: int) -> CpuidResult | None:
        for key in (
            (vp, leaf, subleaf),
            (vp, leaf, None),
            (HV_ANY_VP, leaf, subleaf),
            (HV_ANY_VP, leaf, None),
        ):
            r = self.cpuid.get(key)
            if r is not None:
                return r
        return None

    def register_msr(
        self, vp: int, index: int, access: InterceptAccess, action: UnimplementedMsrAction
    ) -> None:
        for direction in (InterceptAccess.READ, InterceptAccess.WRITE):
            if access & direction:
                self.msr[(vp, index, direction)] = action

    def unregister_msr(self, vp: int, index: int, access: InterceptAccess) -> bool:
        found = False
        for direction in (InterceptAccess.READ, InterceptAccess.WRITE):
            if access & direction:
                found |= self.msr.pop((vp, index, direction), None) is not None
        return found

    def msr_action(self, vp: int, index: int, is_write: bool) -> UnimplementedMsrAction | None:
        direction = InterceptAccess.WRITE if is_write else InterceptAccess.READ
        r = self.msr.get((vp, index, direction))
        return r if r is not None else self.msr.get((HV_ANY_VP, index, direction))

    def drop_vp(self, vp: int) -> None:
        """A deleted VP's results go with it."""
        self.cpuid = {k: v for k, v in self.cpuid.items() if k[0] != vp}
        self.msr = {k: v for k, v in self.msr.items() if k[0] != vp}


@dataclass(frozen=True)
class CpuidResultParameters:
    """HV_REGISTER_X64_CPUID_RESULT_PARAMETERS as the hypercall carries it (hv1/tlfs layouts)."""

    leaf: int
    subleaf: int
    subleaf_specific: int
    always_override: int
    values: Regs
    masks: Regs
    padding: int = 0


@dataclass(frozen=True)
class MsrResultParameters:
    """HV_REGISTER_X64_MSR_RESULT_PARAMETERS."""

    msr_index: int
    access_type: int
    action: int


@dataclass(frozen=True)
class CpuidUnregisterParameters:
    """HV_UNREGISTER_X64_CPUID_RESULT_PARAMETERS."""

    leaf: int
    subleaf: int
    subleaf_specific: int


@dataclass(frozen=True)
class MsrUnregisterParameters:
    """HV_UNREGISTER_X64_MSR_RESULT_PARAMETERS."""

    msr_index: int
    access_type: int
