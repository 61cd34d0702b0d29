"""Installed intercepts (HvCallInstallIntercept; PDF §6 "Host Intercepts") and the x64 intercept
messages (PDF §13.2 "Intercept Message Header"; payload layouts of the published Hyper-V headers)."""

from __future__ import annotations

import struct

import pytest

from hv1.hv.hypercalls.vp_calls import SegmentRegister
from hv1.hv.hypervisor import ROOT_PARTITION_ID, HvError, Hypervisor
from hv1.hv.intercepts import (
    InterceptContext,
    InterceptError,
    InterceptTable,
    cpuid_message,
    exception_message,
    io_port_message,
    memory_message,
    msr_message,
)
from hv1.tlfs.intercepts import InterceptAccess, InterceptAccessType, InterceptType
from hv1.tlfs.messages import HV_MESSAGE_PAYLOAD_SIZE, HvMessageType
from hv1.tlfs.status import HvStatus

RW = int(InterceptAccess.READ | InterceptAccess.WRITE)
X = int(InterceptAccess.EXECUTE)
CS64 = SegmentRegister(base=0, limit=0xFFFFFFFF, selector=0x08, attributes=0xA09B)
CTX = InterceptContext(
    vp_index=65, instruction_length=1, cs=CS64, rip=0x1234, rflags=0x202, cr0=0x80050033, efer=0x500,
    instruction_bytes=b"\xee",
)  # fmt: skip


def test_io_port_intercepts_by_port_direction_and_range() -> None:
    t = InterceptTable()
    t.install(int(InterceptAccess.WRITE), InterceptType.X64IoPort, 0x3F8)
    assert t.io_port(0x3F8, is_write=True) and not t.io_port(0x3F8, is_write=False)
    t.install(RW, InterceptType.X64IoPortRange, 0x70 | (0x71 << 16))
    assert t.io_port(0x71, is_write=False) and not t.io_port(0x72, is_write=False)
    t.install(0, InterceptType.X64IoPort, 0x3F8)  # mask 0 removes it
    assert not t.io_port(0x3F8, is_write=True)


def test_msr_cpuid_and_exception_intercepts() -> None:
    t = InterceptTable()
    t.install(int(InterceptAccess.READ), InterceptType.X64Msr, 0x1B)
    assert t.msr(0x1B, is_write=False) and not t.msr(0x1B, is_write=True)
    t.install(X, InterceptType.X64Cpuid, 0x40000000)
    assert t.cpuid(0x40000000) and not t.cpuid(1)
    t.install(X, InterceptType.X64GlobalCpuid, 0)
    assert t.cpuid(1)
    t.install(X, InterceptType.Exception, 14)
    assert t.exception(14) and not t.exception(13)


@pytest.mark.parametrize(
    ("access", "kind", "param"),
    [
        (X, InterceptType.X64IoPort, 0x60),  # PDF §6.2: I/O ports take read/write flags
        (RW, InterceptType.X64Cpuid, 1),  # CPUID takes execute
        (RW, InterceptType.X64IoPort, 0x10000),  # not a port
        (RW, InterceptType.X64IoPortRange, 0x10 | (0x5 << 16)),  # end before base
        (X, InterceptType.Exception, 32),  # not an exception vector
        (X, 0x77, 0),  # no such type
        (RW, InterceptType.X64ApicWrite, 0),  # a type hv1 does not implement
    ],
)
def test_bad_intercepts_are_invalid_parameter(access: int, kind: int, param: int) -> None:
    with pytest.raises(InterceptError) as e:
        InterceptTable().install(access, kind, param)
    assert e.value.status == HvStatus.INVALID_PARAMETER


def test_install_intercept_needs_a_child() -> None:
    hv = Hypervisor(root_pages=512)
    c = hv.create_partition(ROOT_PARTITION_ID)
    hv.install_intercept(ROOT_PARTITION_ID, c, RW, InterceptType.X64IoPort, 0x3F8)
    assert hv.partition(c).intercepts.io_port(0x3F8, is_write=True)
    with pytest.raises(HvError) as e:
        hv.install_intercept(c, ROOT_PARTITION_ID, RW, InterceptType.X64IoPort, 0x3F8)
    assert e.value.status == HvStatus.ACCESS_DENIED
    with pytest.raises(HvError) as e:
        hv.install_intercept(ROOT_PARTITION_ID, c, X, InterceptType.X64IoPort, 0x3F8)
    assert e.value.status == HvStatus.INVALID_PARAMETER


def test_intercept_header_layout_pdf_13_2() -> None:
    kind, payload = msr_message(CTX, 0x40000090, is_write=True, rdx=0x1, rax=0x2)
    assert kind == HvMessageType.HvMessageTypeMsrIntercept
    vp, ilen, access, state = struct.unpack_from("<IBBH", payload, 0)
    assert (vp, ilen, access) == (65, 1, InterceptAccessType.WRITE)
    assert state & 0x3 == 0 and state & (1 << 2) and state & (1 << 4)  # CPL 0, CR0.PE, EFER.LMA
    base, limit, sel, attr = struct.unpack_from("<QIHH", payload, 8)
    assert (base, limit, sel, attr) == (0, 0xFFFFFFFF, 0x08, 0xA09B)
    assert struct.unpack_from("<QQ", payload, 24) == (0x1234, 0x202)
    assert struct.unpack_from("<IIQQ", payload, 40) == (0x40000090, 0, 1, 2)
    assert len(payload) == 64


def test_io_port_message_layout() -> None:
    kind, payload = io_port_message(CTX, 0x3F8, 1, is_write=True, rax=0x41, rcx=3)
    assert kind == HvMessageType.HvMessageTypeX64IoPortIntercept
    port, info, nbytes, _, rax = struct.unpack_from("<HBBIQ", payload, 40)
    assert (port, info & 7, nbytes, rax) == (0x3F8, 0b001, 1, 0x41)
    assert payload[56:57] == b"\xee"
    assert struct.unpack_from("<Q", payload, 40 + 16 + 16 + 32)[0] == 3  # RCX after DS, ES
    assert len(payload) == 128 <= HV_MESSAGE_PAYLOAD_SIZE


def test_cpuid_exception_and_memory_messages() -> None:
    kind, payload = cpuid_message(CTX, 0x40000000, 0, 0, 0, (0x40000005, 1, 2, 3))
    assert kind == HvMessageType.HvMessageTypeX64CpuidIntercept and len(payload) == 104
    assert struct.unpack_from("<4Q", payload, 72) == (0x40000005, 1, 2, 3)
    kind, payload = exception_message(CTX, 14, 0x2, {"rax": 7, "r15": 9}, parameter=0xDEAD000)
    assert kind == HvMessageType.HvMessageTypeExceptionIntercept
    assert len(payload) == HV_MESSAGE_PAYLOAD_SIZE  # the exception message fills the payload
    vec, info, _, err, cr2 = struct.unpack_from("<HBBIQ", payload, 40)
    assert (vec, info & 1, err, cr2) == (14, 1, 2, 0xDEAD000)
    assert struct.unpack_from("<Q", payload, 112)[0] == 7 and struct.unpack_from("<Q", payload, 232)[0] == 9
    kind, payload = memory_message(CTX, 0x5000, InterceptAccessType.READ, mapped=False)
    assert kind == HvMessageType.HvMessageTypeUnmappedGpa and len(payload) == 80
    assert struct.unpack_from("<Q", payload, 56)[0] == 0x5000
    kind, _ = memory_message(CTX, 0x5000, InterceptAccessType.WRITE, mapped=True, gva=0x7000)
    assert kind == HvMessageType.HvMessageTypeGpaIntercept
