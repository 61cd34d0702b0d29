"""Typed per-VP Hv state (hv/vp.py VpState): every subsystem's per-VP object in one typed field,
filled by the subsystem's attach function, reset with the VP (vp-properties.md; TLFS vsm.md
"Private State" for why it is one container: it is what a VTL will have one of)."""

from __future__ import annotations

import pytest

from hv1.hv import enlightenments
from hv1.hv.caps import parse_profile
from hv1.hv.partition import Partition
from hv1.hv.reftime import VpRuntime
from hv1.hv.synic import Synic, synic_of
from hv1.hv.timers import VpTimers
from hv1.hv.vp import VpState
from hv1.hv.vp_assist import VpAssist, vp_assist_of
from hv1.tlfs import msrs as M
from tests.fakes import FakeClock, FakeHooks, FakeIrq, FakeMemory


def _partition(vps: int = 2) -> Partition:
    caps = parse_profile("default", apic_mode="user")
    return Partition(caps, vps, FakeMemory(1 << 20), FakeClock(), FakeIrq(), FakeHooks())


def test_partition_fills_each_vps_typed_state() -> None:
    p = _partition()
    for vp in p.vps:
        assert isinstance(vp.state, VpState)
        assert isinstance(vp.state.synic, Synic) and vp.state.synic.vp_index == vp.index
        assert synic_of(vp) is vp.state.synic
        assert isinstance(vp.state.timers, VpTimers) and vp.state.timers is p.time.vp_timers[vp.index]
        assert isinstance(vp.state.runtime, VpRuntime) and vp.state.runtime is p.time.vp_runtime[vp.index]
        assert vp.state.assist is None  # hv/enlightenments.attach not called


def test_vp_assist_is_attached_by_enlightenments() -> None:
    p = _partition()
    with pytest.raises(KeyError, match="VP 0 has no VP assist page"):
        vp_assist_of(p.vps[0])
    enlightenments.attach(p)
    for vp in p.vps:
        assert isinstance(vp.state.assist, VpAssist)
        assert vp_assist_of(vp) is vp.state.assist is enlightenments.vp_assist(p, vp.index)
    with pytest.raises(ValueError, match="already has a VP assist page"):
        enlightenments.attach(p)  # one VpAssist per VP: attaching twice is a wiring bug


def test_timers_attach_once_per_vp() -> None:
    p = _partition(1)
    with pytest.raises(ValueError, match="already has synthetic timers"):
        p.time.attach_vp(p.vps[0], synic_of(p.vps[0]))


def test_vp_reset_resets_every_attached_subsystem() -> None:
    """Partition reset (HV_X64_MSR_RESET) reaches the per-VP state through Vp.reset: SINT0 written by
    the guest is back at its reset value (masked) afterwards."""
    p = _partition(1)
    enlightenments.attach(p)
    p.wrmsr(0, M.HV_X64_MSR_SINT0, 0x30)
    assert p.rdmsr(0, M.HV_X64_MSR_SINT0) == 0x30
    p.reset()
    assert (
        p.rdmsr(0, M.HV_X64_MSR_SINT0) == 1 << 16
    )  # HV_SYNIC_SINT.Masked (inter-partition-communication.md)


def test_accessor_names_the_missing_subsystem() -> None:
    p = _partition(1)
    p.vps[0].state.synic = None
    with pytest.raises(KeyError, match="VP 0 has no SynIC"):
        synic_of(p.vps[0])
