#!/usr/bin/env python3
"""Per-exit cost breakdown and the dispatcher's own cost (issue 13).

    python bench/profile.py fakes [--iterations N] [--rounds R] [--compare REV] [--json FILE]
    python bench/profile.py run KERNEL [hv1 run arguments ...]

`fakes`: the hypercall dispatcher alone. A partition on the fakes of tests/fakes.py (memory, registers,
clock) and `Partition.hypercall` driven in a loop, as a backend would after an exit, for each case below:
per-call wall time (median, p10, p90 over every call of every round), then the same loop again with the
per-exit profile on (hv1/profiler.py), which splits each call into route / lock / dispatch / handler /
trace / deferred. `--compare REV` runs the timing loops of git revision REV too (its hv1/ and tests/
exported to a temporary directory), round by round interleaved with this tree's in separate
interpreters, so that both see the same host load; the ratios are this tree / REV.

Cases: `unknown` (a code no call has: answered HV_STATUS_INVALID_HYPERCALL_CODE by the dispatcher
alone, its fixed cost), `null` (fast HvExtCallQueryCapabilities: no input, 8 bytes out in RDX, the
null hypercall of the bench guests), `mem` (the same call memory-based: output to a page), `rep1` and `rep510`
(memory-based HvCallGetVpIndexFromApicId with 1 and 510 elements: a full input and output page),
`spin` (fast HvCallNotifyLongSpinWait: 8 bytes in RDX, a deferred action).

`run`: `hv1 run KERNEL ... --profile FILE` (any backend), then the breakdown table. E.g.
`python bench/profile.py run guests/build/hv_bench.elf --backend emu --apic user --hv default`.

Standard library only (plus hv1 itself). Output: tables on stdout, JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

# HvCallCode values and shapes, spelled out so that the worker runs against any revision's hv1.
EXT_QUERY_CAPABILITIES = 0x8001
GET_VP_INDEX_FROM_APIC_ID = 0x009A
NOTIFY_LONG_SPIN_WAIT = 0x0008
CASES = ("unknown", "null", "mem", "rep1", "rep510", "spin")
UNKNOWN_CODE = 0x7FFF  # no such call: HV_STATUS_INVALID_HYPERCALL_CODE, the dispatcher's fixed cost
EXPECTED_STATUS = {"unknown": 0x0002}  # every other case: HV_STATUS_SUCCESS
IN_GPA, OUT_GPA = 0x10000, 0x11000
SLICE = 100  # calls of one case before the next case's turn (rep510: proportionally fewer)
STUB_RIP = 0x5000 + 12  # any RIP: the dispatcher only rewinds it on a continuation


def _control(code: int, fast: bool = False, rep_count: int = 0) -> int:
    return code | (1 << 16 if fast else 0) | (rep_count << 32)


def case_regs(case: str) -> tuple[int, int, int]:
    """(RCX, RDX, R8) of one call of `case`."""
    if case == "unknown":
        return _control(UNKNOWN_CODE, fast=True), 0, 0
    if case == "null":
        return _control(EXT_QUERY_CAPABILITIES, fast=True), 0, 0
    if case == "mem":
        return _control(EXT_QUERY_CAPABILITIES), 0, OUT_GPA
    if case == "rep1":
        return _control(GET_VP_INDEX_FROM_APIC_ID, rep_count=1), IN_GPA, OUT_GPA
    if case == "rep510":
        return _control(GET_VP_INDEX_FROM_APIC_ID, rep_count=510), IN_GPA, OUT_GPA
    if case == "spin":
        return _control(NOTIFY_LONG_SPIN_WAIT, fast=True), 1, 0
    raise ValueError(case)


def make_partition() -> Any:
    """A 2-VP `default` partition on fakes, the rep input page filled (APIC IDs 0 and 1 alternating)."""
    import struct

    from hv1.hv.caps import parse_profile
    from hv1.hv.partition import Partition
    from tests.fakes import FakeClock, FakeHooks, FakeIrq, FakeKicker, FakeMemory

    p = Partition(parse_profile("default"), 2, FakeMemory(1 << 20), FakeClock(), FakeIrq(), FakeKicker(),
                  FakeHooks())  # fmt: skip
    p.rep_budget_ns = 10**15  # no continuation because this host was slow: every call is one call
    header = struct.pack("<QB7x", (1 << 64) - 1, 0)  # HV_PARTITION_ID_SELF, VTL 0
    p.memory.write(IN_GPA, header + b"".join(struct.pack("<I4x", i & 1) for i in range(510)))
    return p


def time_case(p: Any, case: str, n: int, clk: Any = None) -> list[int]:
    """`n` calls of `case`; per-call ns. With `clk` (a PhaseClock), each call is one profiled exit."""
    from tests.fakes import FakeRegs

    rcx, rdx, r8 = case_regs(case)
    regs = FakeRegs()
    g = regs.gprs
    call = p.hypercall
    perf = time.perf_counter_ns
    out: list[int] = []
    append = out.append
    if clk is not None:
        clk.restart()
    for _ in range(n):
        g["rcx"], g["rdx"], g["r8"], g["rip"] = rcx, rdx, r8, STUB_RIP
        t = perf()
        call(0, regs)
        append(perf() - t)
        if clk is not None:
            clk.lap("decode")  # the harness's own loop: what a backend's exit decode would be
            clk.end("")
    if g["rax"] & 0xFFFF != EXPECTED_STATUS.get(case, 0) or g["rip"] != STUB_RIP:
        raise RuntimeError(f"{case}: status {g['rax'] & 0xFFFF:#x} rip {g['rip']:#x}")
    return out


def iterations(case: str, n: int) -> int:
    return max(20, n // 50) if case == "rep510" else n


def worker(argv: list[str]) -> int:
    """One round of timing loops in this interpreter's hv1 (PYTHONPATH): JSON {case: [ns, ...]}. The
    cases take turns in slices of SLICE calls, so that a burst of host load hits all of them alike."""
    n = int(argv[0])
    p = make_partition()
    res: dict[str, list[int]] = {case: [] for case in CASES}
    for case in CASES:
        time_case(p, case, 50)  # warm-up: plans, caches
    todo = {case: iterations(case, n) for case in CASES}
    while any(todo.values()):
        for case in CASES:
            k = min(todo[case], max(1, SLICE * iterations(case, n) // n))
            if k:
                res[case].extend(time_case(p, case, k))
                todo[case] -= k
    json.dump(res, sys.stdout)
    return 0


WRAPPED_PHASES = ("lock", "handler", "trace", "deferred", "dispatch")


def wrapped_breakdown_worker(argv: list[str]) -> int:
    """The same breakdown for any revision, without its instrumentation: the partition's lock, trace
    sink, handlers and deferred-action runner replaced by timing wrappers (the same wrappers for
    every tree, so their own cost, one clock read pair each, is the same on both sides), and
    dispatch = the rest of Partition.hypercall. JSON {case: {phase: median ns}, ...}."""
    import dataclasses

    n = int(argv[0])
    perf = time.perf_counter_ns
    acc = dict.fromkeys(WRAPPED_PHASES, 0)

    def timed(phase: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kw: Any) -> Any:
            t = perf()
            try:
                return fn(*args, **kw)
            finally:
                acc[phase] += perf() - t

        return wrapper

    class TimedLock:
        def __init__(self, lock: Any) -> None:
            self._lock = lock

        def __enter__(self) -> None:
            t = perf()
            self._lock.acquire()
            acc["lock"] += perf() - t

        def __exit__(self, *exc: object) -> None:
            t = perf()
            self._lock.release()
            acc["lock"] += perf() - t

        def __getattr__(self, name: str) -> Any:
            return getattr(self._lock, name)

    p = make_partition()
    p.lock = TimedLock(p.lock)
    for name in ("emit", "record"):
        if hasattr(p.tracer, name):
            setattr(p.tracer, name, timed("trace", getattr(p.tracer, name)))
    for vp in p.vps:
        vp.run_deferred = timed("deferred", vp.run_deferred)
    for d in list(p.hypercalls):
        kw = {
            f: timed("handler", getattr(d, f)) for f in ("handler", "element", "batch") if getattr(d, f, None)
        }
        p.hypercalls.replace(dataclasses.replace(d, **kw))
    out: dict[str, Any] = {}
    from tests.fakes import FakeRegs

    for case in CASES:
        rcx, rdx, r8 = case_regs(case)
        regs = FakeRegs()
        g = regs.gprs
        rows: list[dict[str, int]] = []
        for i in range(iterations(case, n) + 50):
            g["rcx"], g["rdx"], g["r8"], g["rip"] = rcx, rdx, r8, STUB_RIP
            for k in acc:
                acc[k] = 0
            t = perf()
            p.hypercall(0, regs)
            total = perf() - t
            if i >= 50:  # after the warm-up
                acc["dispatch"] = total - sum(v for k, v in acc.items() if k != "dispatch")
                rows.append({**acc, "total": total})
        out[case] = {k: statistics.median(r[k] for r in rows) for k in (*WRAPPED_PHASES, "total")}
    json.dump(out, sys.stdout)
    return 0


def wrapped_breakdowns(roots: dict[str, Path], n: int, rounds: int) -> dict[str, dict[str, dict[str, float]]]:
    """Median of the per-round medians of `wrapped_breakdown_worker`, per tree, rounds interleaved."""
    got: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in roots}
    for r in range(rounds):
        for name in list(roots) if r % 2 == 0 else list(reversed(roots)):
            env = {**os.environ, "PYTHONPATH": str(roots[name])}
            res = subprocess.run([sys.executable, __file__, "_wrapped", str(n)], env=env, check=True,
                                 capture_output=True, text=True)  # fmt: skip
            got[name].append(json.loads(res.stdout))
    return {
        name: {c: {k: statistics.median(x[c][k] for x in runs) for k in runs[0][c]} for c in CASES}
        for name, runs in got.items()
    }


def format_wrapped(b: dict[str, dict[str, dict[str, float]]], cases: tuple[str, ...] = CASES) -> str:
    names = list(b)
    head = f"{'case':<8} {'tree':<12}" + "".join(f"{k:>10}" for k in (*WRAPPED_PHASES, "total"))
    lines = [head]
    for c in cases:
        for name in names:
            row = b[name][c]
            lines.append(
                f"{c:<8} {name[:12]:<12}"
                + "".join(f"{row[k] / 1000:>10.2f}" for k in (*WRAPPED_PHASES, "total"))
            )
    lines.append("(µs per call, medians; dispatch = Partition.hypercall minus the wrapped parts)")
    return "\n".join(lines)


def stat(samples: list[float]) -> dict[str, float]:
    v = sorted(samples)
    rank = lambda q: v[int(q * (len(v) - 1) + 0.5)]  # noqa: E731 - nearest rank, as bench/run.py
    return {"median": rank(0.5), "p10": rank(0.1), "p90": rank(0.9), "n": len(v)}


def export_rev(rev: str, dest: Path) -> None:
    """hv1/ and tests/ of git revision `rev` into `dest` (what the worker imports)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "hv1", "tests"], check=True,
                             capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def run_rounds(roots: dict[str, Path], n: int, rounds: int) -> dict[str, dict[str, list[int]]]:
    """`rounds` rounds; in each, one worker per tree, in alternating order."""
    out: dict[str, dict[str, list[int]]] = {name: {c: [] for c in CASES} for name in roots}
    names = list(roots)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            env = {**os.environ, "PYTHONPATH": str(roots[name])}
            res = subprocess.run([sys.executable, __file__, "_worker", str(n)], env=env, check=True,
                                 capture_output=True, text=True)  # fmt: skip
            for case, v in json.loads(res.stdout).items():
                out[name][case].extend(v)
        print(f"[profile] round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    return out


def breakdown(n: int) -> dict[str, Any]:
    """The per-exit profile of each case in this tree (one PhaseClock; each call one exit)."""
    from hv1 import profiler

    p = make_partition()
    out: dict[str, Any] = {}
    for case in CASES:
        time_case(p, case, 50)
        with profiler.profiling() as prof:
            time_case(p, case, iterations(case, n), prof.clock())
        out[case] = prof.summary()
    return out


def cmd_fakes(a: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO))
    from hv1.profiler import format_summary

    roots = {"this tree": REPO}
    with tempfile.TemporaryDirectory() as tmp:
        if a.compare:
            export_rev(a.compare, Path(tmp))
            roots[a.compare] = Path(tmp)
        times = run_rounds(roots, a.iterations, a.rounds)
    doc: dict[str, Any] = {"iterations": a.iterations, "rounds": a.rounds, "timing_ns": {}, "ratios": {}}
    print(f"Partition.hypercall on fakes, ns per call ({a.rounds} rounds x {a.iterations} calls, "
          f"rep510 {iterations('rep510', a.iterations)}; median [p10, p90])")  # fmt: skip
    head = f"{'case':<8}" + "".join(f"{name:>32}" for name in roots) + ("   ratio" if a.compare else "")
    print(head)
    for case in CASES:
        cells = []
        for name in roots:
            s = stat([float(x) for x in times[name][case]])
            doc["timing_ns"].setdefault(name, {})[case] = s
            cells.append(f"{s['median'] / 1000:>10.2f} µs [{s['p10'] / 1000:.2f}, {s['p90'] / 1000:.2f}]")
        line = f"{case:<8}" + "".join(f"{c:>32}" for c in cells)
        if a.compare:
            r = doc["timing_ns"]["this tree"][case]["median"] / doc["timing_ns"][a.compare][case]["median"]
            doc["ratios"][case] = round(r, 3)
            line += f"   {r:.2f}x"
        print(line)
    for name in roots:
        t = doc["timing_ns"][name]
        r510 = t["rep510"]["median"] / t["rep1"]["median"]
        per = (t["rep510"]["median"] - t["rep1"]["median"]) / 509
        doc.setdefault("rep", {})[name] = {
            "rep510_over_rep1": round(r510, 2),
            "per_element_ns": round(per, 1),
        }
        print(f"{name}: rep510 / rep1 = {r510:.1f}x, per element {per / 1000:.3f} µs")
    if a.compare:
        with tempfile.TemporaryDirectory() as tmp:
            export_rev(a.compare, Path(tmp))
            wb = wrapped_breakdowns({"this tree": REPO, a.compare: Path(tmp)}, a.iterations, a.rounds)
        doc["wrapped_breakdown_ns"] = wb
        print("\nbreakdown by timing wrappers (the same for both trees):")
        print(format_wrapped(wb))
    doc["breakdown"] = breakdown(a.iterations)
    for case, summary in doc["breakdown"].items():
        print(f"\nper-exit profile, {case} (this tree):")
        print(format_summary(summary))
    if a.json:
        a.json.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return 0


def cmd_run(a: argparse.Namespace, rest: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "profile.json"
        cmd = [sys.executable, "-m", "hv1", "run", *rest, "--profile", str(out)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        r = subprocess.run(cmd, env=env)
        if out.exists() and a.json:
            a.json.write_text(out.read_text())
    return r.returncode


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker(argv[1:])
    if argv[:1] == ["_wrapped"]:
        return wrapped_breakdown_worker(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fakes", help="the dispatcher alone, on fakes")
    f.add_argument("--iterations", type=int, default=5000, help="calls per case per round (rep510: /50)")
    f.add_argument("--rounds", type=int, default=6, help="rounds (one interpreter per tree per round)")
    f.add_argument("--compare", metavar="REV", help="also time git revision REV, interleaved")
    f.add_argument("--json", type=Path)
    r = sub.add_parser("run", help="hv1 run ... --profile: the breakdown of a guest run")
    r.add_argument("--json", type=Path, help="keep the JSON summary here")
    a, rest = ap.parse_known_args(argv)
    if a.cmd == "run":
        return cmd_run(a, rest)
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    return cmd_fakes(a)


if __name__ == "__main__":
    sys.exit(main())
