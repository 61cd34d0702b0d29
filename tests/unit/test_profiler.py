"""The per-exit profile (hv1/profiler.py, issue 13): off by default, and when on, every exit of a
thread split into the phases its hooks lap, hypercalls labelled with their name."""

from __future__ import annotations

import threading

import pytest

from hv1 import profiler
from hv1.hv.hypercalls import build_control
from hv1.profiler import PHASES, PhaseClock, Profiler, format_summary, profiling
from hv1.tlfs.hypercalls import HypercallCode as C
from tests.unit.test_hypercalls_support import RIP_AT_EXIT, make, regs_for, status

NULL_FAST = build_control(C.HvExtCallQueryCapabilities, fast=True)


def test_profiling_is_off_by_default() -> None:
    assert profiler.ACTIVE is None


def test_hypercalls_create_no_clock_while_profiling_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: PhaseClock) -> None:
        raise AssertionError("a PhaseClock was created with profiling off")

    monkeypatch.setattr(PhaseClock, "__init__", refuse)
    p, _ = make()
    r = regs_for(NULL_FAST)
    p.hypercall(0, r)
    assert status(r) == 0


def test_profiling_block_installs_and_removes_the_profiler() -> None:
    with profiling() as prof:
        assert profiler.ACTIVE is prof
    assert profiler.ACTIVE is None


def test_a_profiled_hypercall_is_one_exit_labelled_with_its_name() -> None:
    p, _ = make()
    with profiling() as prof:
        clk = prof.clock()
        clk.restart()
        for _ in range(5):
            r = regs_for(NULL_FAST)
            p.hypercall(0, r)
            assert status(r) == 0 and r.gprs["rip"] == RIP_AT_EXIT
            clk.end("io")
    summary = prof.summary()
    k = summary["kinds"]["hypercall HvExtCallQueryCapabilities"]
    assert k["count"] == 5
    # Partition.hypercall and the dispatcher lap these (the harness itself laps nothing here).
    assert {"route", "lock", "dispatch", "handler", "trace", "deferred"} <= set(k["phases"])
    assert set(summary["kinds"]) == {"hypercall HvExtCallQueryCapabilities"}
    # Means add up to the mean total (every nanosecond is in one phase).
    assert sum(ph["mean"] for ph in k["phases"].values()) == pytest.approx(k["total"]["mean"], abs=1)
    assert "HvExtCallQueryCapabilities" in format_summary(summary)


def test_exits_without_a_label_are_recorded_under_their_kind() -> None:
    c = PhaseClock()
    c.lap("run")
    c.lap("decode")
    c.end("io")
    c.label = "hypercall X"
    c.lap("handler")
    c.end("io")
    c.lap("run")
    c.end("hlt")
    assert c.counts == {"io": 1, "hypercall X": 1, "hlt": 1}
    assert c.label is None
    assert len(c.sums["io"]) == len(PHASES)


def test_each_thread_has_its_own_clock_and_the_summary_merges_them() -> None:
    prof = Profiler()
    clocks: list[PhaseClock] = []

    def vp_thread() -> None:
        c = prof.clock()
        clocks.append(c)
        c.lap("run")
        c.end("io")

    threads = [threading.Thread(target=vp_thread) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in clocks}) == 3
    assert prof.summary()["kinds"]["io"]["count"] == 3


def test_cli_run_has_a_profile_option() -> None:
    from hv1.cli import _build_parser

    a = _build_parser().parse_args(["run", "k.elf", "--profile", "-"])
    assert a.profile == "-"
