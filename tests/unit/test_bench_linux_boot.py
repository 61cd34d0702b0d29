"""bench/run.py's linux-boot row: how it splits hv1's VP-thread time (from `hv1 run --profile` JSON)
into time inside KVM_RUN and time in hv1 between exits (issue 12 item 6: "where hv1's time goes")."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench" / "run.py"


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hv1_bench_run", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look the module up while the class is created
    spec.loader.exec_module(mod)
    return mod


def test_time_split_sums_run_phase_and_the_rest_over_exit_kinds() -> None:
    profile = {
        "unit": "ns",
        "kinds": {
            # 10 exits of 30 µs, 20 of them in KVM_RUN; 2 of 1 s, all in KVM_RUN (an in-kernel halt)
            "io": {
                "count": 10,
                "phases": {"run": {"mean": 20_000.0}, "handler": {"mean": 9_000.0}},
                "total": {"mean": 30_000.0},
            },  # fmt: skip
            "hlt": {"count": 2, "phases": {"run": {"mean": 1e9}}, "total": {"mean": 1e9}},
            "start": {"count": 1, "phases": {}, "total": {"mean": 5e6}},  # no run lap: all VMM
        },
    }
    in_run, in_vmm = bench()._hv1_time_split(profile)
    assert abs(in_run - (10 * 20e-6 + 2.0)) < 1e-9
    assert abs(in_vmm - (10 * 10e-6 + 5e-3)) < 1e-9


def test_the_row_is_registered() -> None:
    assert "linux-boot" in [r.name for r in bench().ROWS]
