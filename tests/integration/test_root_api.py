"""The root partition's Python API as the README shows it: a Machine built in-process, ports and
connections created from Python, a host echo service, host -> guest messages and events."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest

from hv1.hv.ports import PortType
from hv1.machine.machine import Machine, MachineConfig
from hv1.tlfs.status import HvStatus
from tests.integration.conftest import requires_kvm

pytestmark = [requires_kvm, pytest.mark.timeout(120)]


def test_readme_root_api_example(guest: Callable[[str], Path]) -> None:
    serial = io.BytesIO()
    m = Machine(MachineConfig(kernel=str(guest("hello")), cpus=2, timeout=60), serial_out=serial)
    try:
        ports = m.partition.ports
        ports.create_port(0x100, PortType.MESSAGE, target_vp=0, target_sint=2)
        ports.connect_port(0x200, 0x100)
        ports.on_message(0x300, lambda msg: ports.post_message(msg.sender_vp, 2, msg.msg_type, msg.payload))
        # The guest has not enabled its SynIC: the host is told so, nothing is lost or raised.
        assert ports.post_message(vp=1, sint=2, msg_type=0x1234, payload=b"hello") != HvStatus.SUCCESS
        status, _ = ports.signal_event(vp=0, sint=3, flag=7)
        assert status != HvStatus.SUCCESS
        m.partition.time.simulate_migration(3_000_000_000)
        assert m.run().status == 1
    finally:
        m.close()
    assert b"hello from hv1 guest" in serial.getvalue()


def test_internal_fault_stops_the_partition_with_a_diagnostic(
    guest: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in hv1 (here: a hypercall handler that raises) stops that partition cleanly with exit
    status 8, the registers, the instruction bytes at RIP, the last trace events and the traceback."""
    from hv1.errors import EXIT_INTERNAL
    from hv1.hv.partition import Partition

    def broken(self: Partition, vp_index: int, regs: object) -> None:
        raise RuntimeError("injected bug")

    monkeypatch.setattr(Partition, "hypercall", broken)
    diag = io.StringIO()
    m = Machine(MachineConfig(kernel=str(guest("demo")), timeout=60), serial_out=io.BytesIO(), diag=diag)
    try:
        result = m.run()
    finally:
        m.close()
    report = diag.getvalue()
    assert result.status == EXIT_INTERNAL, report
    assert "internal-fault" in report and "injected bug" in report
    assert "rip=" in report and "code at rip" in report and "last trace events" in report
