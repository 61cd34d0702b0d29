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
interpreters, so that both see the same host load; the ratios are this tree / REV. For the issue-13
baseline (c42417b) it also prints REV's per-phase breakdown, measured with this tree's laps inserted at
the same places in REV's dispatcher (see _BASELINE_LAPS).

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
    import inspect
    import struct

    from hv1.hv.caps import parse_profile
    from hv1.hv.partition import Partition
    from tests.fakes import FakeClock, FakeHooks, FakeIrq, FakeMemory

    # A revision from before the Kicker went (--compare c42417b) still takes one (which it never calls).
    old = {"kicker": FakeIrq()} if "kicker" in inspect.signature(Partition).parameters else {}
    p = Partition(
        parse_profile("default"), 2, FakeMemory(1 << 20), FakeClock(), FakeIrq(), hooks=FakeHooks(), **old
    )
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


# The laps of this tree's instrumentation, put at the same places in c42417b's dispatcher and
# Partition.hypercall (the issue-13 baseline), so that its null-hypercall breakdown is measured the
# same way as this tree's: (file, text there, text with the laps). A revision where a text is not
# found cannot be instrumented (the breakdown is then left out, saying so).
_BASELINE_LAPS = (
    ("hv1/hv/hypercalls/dispatch.py", "    t0 = time.perf_counter_ns()\n    mode = regs.mode()",
     "    global _CLK\n    from hv1 import profiler as _P\n"
     "    _CLK = _P.ACTIVE.clock() if _P.ACTIVE is not None else None\n"
     "    t0 = time.perf_counter_ns()\n    mode = regs.mode()"),
    ("hv1/hv/hypercalls/dispatch.py", "            out.status = d.handler(ctx)\n",
     "            _CLK and _CLK.lap('dispatch')\n            out.status = d.handler(ctx)\n"
     "            _CLK and _CLK.lap('handler')\n"),
    ("hv1/hv/hypercalls/dispatch.py", "    status = d.handler(ctx) if d.handler is not None else SUCCESS\n",
     "    _CLK and _CLK.lap('dispatch')\n"
     "    status = d.handler(ctx) if d.handler is not None else SUCCESS\n"),
    ("hv1/hv/hypercalls/dispatch.py", "    del view_in, view_out\n",
     "    del view_in, view_out\n    _CLK and _CLK.lap('handler')\n"),
    ("hv1/hv/hypercalls/dispatch.py", "    ns = time.perf_counter_ns() - t0  # duration",
     "    if _CLK:\n        _CLK.lap('dispatch')\n"
     "        _CLK.label = 'hypercall ' + (d.name if d else '?')\n"
     "    ns = time.perf_counter_ns() - t0  # duration"),
    ("hv1/hv/hypercalls/dispatch.py", "        reps=out.reps, us=ns // 1000, ns=ns,\n    )  # fmt: skip\n",
     "        reps=out.reps, us=ns // 1000, ns=ns,\n    )  # fmt: skip\n    _CLK and _CLK.lap('trace')\n"),
    ("hv1/hv/partition.py",
     "        vp = self._vp_by_index[vp_index]\n        try:\n            with self.lock:\n"
     "                dispatch(self, vp, regs)\n        finally:\n            vp.run_deferred()\n",
     "        from hv1 import profiler as _P\n        if _P.ACTIVE is None:\n"
     "            vp = self._vp_by_index[vp_index]\n            try:\n                with self.lock:\n"
     "                    dispatch(self, vp, regs)\n            finally:\n                vp.run_deferred()\n"
     "            return\n        clk = _P.ACTIVE.clock()\n        clk.lap('route')\n"
     "        vp = self._vp_by_index[vp_index]\n        try:\n            self.lock.acquire()\n"
     "            clk.lap('lock')\n            try:\n                dispatch(self, vp, regs)\n"
     "            finally:\n                self.lock.release()\n                clk.lap('lock')\n"
     "        finally:\n            vp.run_deferred()\n            clk.lap('deferred')\n"),
)  # fmt: skip


def instrument_baseline(root: Path) -> bool:
    """Add this tree's profiler and the laps of _BASELINE_LAPS to the exported tree at `root`."""
    patched: dict[Path, str] = {}
    for rel, old, new in _BASELINE_LAPS:
        path = root / rel
        text = patched.get(path, path.read_text())
        if text.count(old) != 1:
            return False
        patched[path] = text.replace(old, new)
    for path, text in patched.items():
        path.write_text(text)
    (root / "hv1" / "profiler.py").write_text((REPO / "hv1" / "profiler.py").read_text())
    return True


def breakdown_worker(argv: list[str]) -> int:
    """`breakdown` in this interpreter's hv1 (an instrumented baseline, or this tree): JSON."""
    json.dump(breakdown(int(argv[0])), sys.stdout)
    return 0


def _breakdown_in(root: Path, n: int) -> Any:
    env = {**os.environ, "PYTHONPATH": str(root)}
    res = subprocess.run([sys.executable, __file__, "_breakdown", str(n)], env=env, check=True,
                         capture_output=True, text=True)  # fmt: skip
    return json.loads(res.stdout)


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
    # The per-phase breakdowns, each in a fresh interpreter, back to back (this tree, then REV).
    doc["breakdown"] = _breakdown_in(REPO, a.iterations)
    if a.compare:
        with tempfile.TemporaryDirectory() as tmp:
            export_rev(a.compare, Path(tmp))
            if instrument_baseline(Path(tmp)):
                doc["baseline_breakdown"] = _breakdown_in(Path(tmp), a.iterations)
            else:
                print(f"\n{a.compare}: its dispatcher is not the one _BASELINE_LAPS knows: no laps breakdown")
    for case, summary in doc["breakdown"].items():
        print(f"\nper-exit profile, {case} (this tree):")
        print(format_summary(summary))
        if "baseline_breakdown" in doc:
            print(f"per-exit profile, {case} ({a.compare}, the same laps):")
            print(format_summary(doc["baseline_breakdown"][case]))
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
    if argv[:1] == ["_breakdown"]:
        return breakdown_worker(argv[1:])
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
