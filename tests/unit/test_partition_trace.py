"""`--trace partitions` from the partition engine (hv1/hv/hypervisor.py, issue 11 item 6): one event
per successful state change of TLFS virtualization-host.md (the partition lifecycle, the memory pool,
GPA maps, intercepts, VPs), as JSON lines through the tracer's JSON output; failed calls emit none."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest

from hv1.hv.hypervisor import ROOT_PARTITION_ID, HvError, Hypervisor
from hv1.tlfs.intercepts import InterceptAccess, InterceptType
from hv1.tlfs.virtualization_host import MapGpaFlags
from hv1.trace import Tracer

ROOT = ROOT_PARTITION_ID
RWX = int(MapGpaFlags.READABLE | MapGpaFlags.WRITABLE | MapGpaFlags.KERNEL_EXECUTABLE)


def traced() -> tuple[Hypervisor, io.StringIO]:
    out = io.StringIO()
    return Hypervisor(root_pages=4096, tracer=Tracer(["partitions"], text=io.StringIO(), json_out=out)), out


def events(out: io.StringIO) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, out.getvalue().splitlines()) if e["cat"] == "partitions"]


def test_virtualization_host_lifecycle_is_traced_in_order_with_its_fields() -> None:
    hv, out = traced()
    cid = hv.create_partition(ROOT)
    hv.deposit_memory(ROOT, cid, list(range(100, 130)))
    hv.initialize_partition(ROOT, cid)
    hv.install_intercept(ROOT, cid, int(InterceptAccess.WRITE), int(InterceptType.X64IoPort), 0x60)
    hv.create_vp(ROOT, cid, 0)
    hv.map_gpa_pages(ROOT, cid, 0x10, RWX, [200, 201, 202])
    hv.set_explicit_suspend(ROOT, cid, 0, suspended=False)
    hv.set_explicit_suspend(ROOT, cid, 0, suspended=True)
    hv.unmap_gpa_pages(ROOT, cid, 0x10, 2)
    hv.delete_vp(ROOT, cid, 0)
    hv.finalize_partition(ROOT, cid)
    hv.withdraw_memory(ROOT, cid, 30)
    hv.delete_partition(ROOT, cid)
    ev = events(out)
    assert [e["event"] for e in ev] == [
        "partition-create", "deposit", "partition-initialize", "intercept-install", "vp-create", "map",
        "vp-resume", "vp-suspend", "unmap", "vp-delete", "partition-finalize", "withdraw", "partition-delete",
    ]  # fmt: skip
    assert all(e["partition"] == cid and e["vp"] == -1 for e in ev)
    by = {e["event"]: e for e in ev}
    assert by["partition-create"]["parent"] == ROOT
    assert (by["deposit"]["depositor"], by["deposit"]["count"], by["deposit"]["pool"]) == (ROOT, 30, 30)
    assert (by["intercept-install"]["type"], by["intercept-install"]["parameter"]) == (0, 0x60)
    assert (by["map"]["gpa_page"], by["map"]["count"], by["map"]["flags"]) == (0x10, 3, RWX)
    assert (by["unmap"]["gpa_page"], by["unmap"]["count"]) == (0x10, 2)
    assert by["vp-resume"]["vp_index"] == 0 and by["vp-suspend"]["reason"] == "explicit"
    assert (by["withdraw"]["count"], by["withdraw"]["pool"]) == (30, 0)


def test_a_refused_call_changes_nothing_and_traces_nothing() -> None:
    hv, out = traced()
    cid = hv.create_partition(ROOT)
    before = len(events(out))
    for call in (
        lambda: hv.initialize_partition(ROOT, cid),  # empty pool: INSUFFICIENT_MEMORY
        lambda: hv.delete_partition(ROOT, cid),  # not finalized: INVALID_PARTITION_STATE
        lambda: hv.deposit_memory(ROOT, cid, [1 << 30]),  # not the caller's page: INVALID_PARAMETER
    ):
        try:
            call()
        except HvError:
            pass
        else:
            raise AssertionError("the call should have been refused")
    assert len(events(out)) == before


def test_a_rep_map_or_unmap_that_fails_part_way_traces_the_elements_done() -> None:
    """A rep call's elements before the failing one are done (HvError.reps_done): so is their event."""
    hv, out = traced()
    cid = hv.create_partition(ROOT)
    hv.deposit_memory(ROOT, cid, list(range(100, 130)))
    hv.initialize_partition(ROOT, cid)
    hv.map_gpa_pages(ROOT, cid, 0x10, RWX, [200, 201])
    cases: list[tuple[Callable[[], int], int]] = [
        (lambda: hv.map_gpa_pages(ROOT, cid, 0x20, RWX, [202, 1 << 30]), 1),  # the second is not the caller's
        (lambda: hv.unmap_gpa_pages(ROOT, cid, 0x10, 3), 2),  # 0x12 is not mapped
    ]
    for call, done in cases:
        with pytest.raises(HvError) as e:
            call()
        assert e.value.reps_done == done
    ev = [e for e in events(out) if e["event"] in ("map", "unmap")]
    assert [(e["event"], e["gpa_page"], e["count"]) for e in ev] == [
        ("map", 0x10, 2), ("map", 0x20, 1), ("unmap", 0x10, 2)
    ]  # fmt: skip


def test_the_engine_traces_nothing_by_default() -> None:
    """Without a tracer the engine writes nowhere (the shared null tracer has no sink)."""
    hv = Hypervisor(root_pages=64)
    assert not hv.tracer.wants("partitions")
    hv.create_partition(ROOT)
