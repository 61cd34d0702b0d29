"""The trace tools of issue 14 on a unit-level run (the real dispatcher, SynIC, timers and tracer with
fakes; no guest can run without KVM): `--trace-perfetto` timelines (hv1/timeline.py), checked for
structure and, where Perfetto's trace processor binary is available, loaded and queried with it;
`hv1 stats` (hv1/stats.py); and the CLI around them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hv1.cli import main
from hv1.errors import EXIT_OK, EXIT_USAGE
from hv1.hv.inject import Injector
from hv1.hv.ports import PortType
from hv1.stats import collect, format_stats, percentile
from hv1.timeline import HOST_TID, Timeline, convert, read_trace_json
from hv1.tlfs import msrs as M
from hv1.trace import Tracer
from tests.fakes import FakeClock
from tests.unit.test_inject import POST_EVERY_3, RetryingGuest, TracedEnv

MESSAGES = 6


def record_run(tmp_path: Path) -> tuple[Path, Path, RetryingGuest]:
    """A small partition's life, traced to JSON lines and a timeline at once (as `hv1 run` does): VP 1
    posts messages to a port on VP 0 SINT 2 through injected INSUFFICIENT_BUFFERS failures, the queue
    fills behind the busy slot and drains on EOM, both VPs read MSRs, STIMER0 fires on VP 0."""
    jsonl, perfetto = tmp_path / "trace.jsonl", tmp_path / "trace.perfetto.json"
    with open(jsonl, "w") as jf, open(perfetto, "w") as pf:
        tracer = Tracer(json_out=jf, timeline=Timeline(pf))
        env = TracedEnv(tracer)
        env.p.set_injection(Injector.parse([POST_EVERY_3]))
        env.enable(0, {2: 0x50, 3: 0x51})
        env.ports.create_port(0x100, PortType.MESSAGE, target_vp=0, target_sint=2)
        env.ports.connect_port(0x200, 0x100)
        guest = RetryingGuest(env, vp=1, connection=0x200)
        for i in range(MESSAGES):
            guest.send(b"m%d" % i)
        for _ in range(MESSAGES):  # the guest on VP 0 consumes: clear the slot, EOM
            env.clear(0, 2)
            env.p.wrmsr(0, M.HV_X64_MSR_EOM, 0)
        for vp in (0, 1):
            env.p.rdmsr(vp, M.HV_X64_MSR_VP_INDEX)
        clock: FakeClock = env.p.clock  # type: ignore[assignment]
        env.p.wrmsr(0, M.HV_X64_MSR_STIMER0_CONFIG, 1 | 3 << 16)
        env.p.wrmsr(0, M.HV_X64_MSR_STIMER0_COUNT, 1000)
        clock.t = 1000
        env.p.time.poll_vp(0)
        tracer.emit("vp", -1, "reset-requested")
        tracer.close()
    return jsonl, perfetto, guest


def load(path: Path) -> list[dict[str, Any]]:
    doc = json.loads(path.read_text())
    assert doc["displayTimeUnit"] == "ns"
    events: list[dict[str, Any]] = doc["traceEvents"]
    return events


# --- timeline structure --------------------------------------------------------------------------------


def test_timeline_layout_process_threads_slices_instants_counters(tmp_path: Path) -> None:
    _, perfetto, guest = record_run(tmp_path)
    events = load(perfetto)
    meta = {(e["name"], e["tid"]): e["args"] for e in events if e["ph"] == "M"}
    assert meta[("process_name", HOST_TID)] == {"name": "partition 1"}
    assert meta[("thread_name", 1)] == {"name": "vp0"} and meta[("thread_name", 2)] == {"name": "vp1"}
    assert meta[("thread_name", HOST_TID)] == {"name": "host"}
    assert {e["pid"] for e in events} == {1}

    calls = [e for e in events if e["ph"] == "X" and e["cat"] == "hypercall"]
    assert len(calls) == len(guest.statuses) and {e["tid"] for e in calls} == {2}
    assert [e["args"]["status"] for e in calls] == ["SUCCESS" if s == 0 else "INSUFFICIENT_BUFFERS"
                                                    for s in guest.statuses]  # fmt: skip
    first = calls[0]
    assert first["name"] == "HvCallPostMessage" and first["args"]["code"] == "0x5c"
    assert first["args"]["reps"] == 0 and first["dur"] > 0
    msr_slices = {e["name"] for e in events if e["ph"] == "X" and e["cat"] == "msr"}
    assert {"rdmsr HV_X64_MSR_VP_INDEX", "wrmsr HV_X64_MSR_EOM"} <= msr_slices

    instants = {(e["name"], e["tid"]) for e in events if e["ph"] == "i"}
    assert ("STIMER0 fire", 1) in instants and ("STIMER0 deliver", 1) in instants
    assert ("inject hypercall", 2) in instants
    assert ("reset-requested", HOST_TID) in instants

    depth = [e["args"]["depth"] for e in events if e["ph"] == "C" and e["name"] == "vp0 sint2 queue"]
    assert max(depth) == MESSAGES - 1  # all but the first wait behind the busy slot
    assert depth[-1] == 0  # drained by the EOMs


def test_timeline_slices_of_a_vp_never_overlap(tmp_path: Path) -> None:
    _, perfetto, _ = record_run(tmp_path)
    by_tid: dict[int, list[tuple[float, float]]] = {}
    for e in load(perfetto):
        if e["ph"] == "X":
            by_tid.setdefault(e["tid"], []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in by_tid.values():
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end


def test_offline_conversion_is_the_same_code_and_output(tmp_path: Path) -> None:
    """`hv1 timeline TRACE.jsonl OUT` converts with the code `--trace-perfetto` streams with."""
    jsonl, perfetto, _ = record_run(tmp_path)
    out = tmp_path / "again.json"
    with open(jsonl) as f, open(out, "w") as o:
        convert(read_trace_json(f), o)
    assert out.read_text() == perfetto.read_text()
    assert main(["timeline", str(jsonl), str(tmp_path / "cli.json")]) == EXIT_OK
    assert (tmp_path / "cli.json").read_text() == perfetto.read_text()


# --- Perfetto's trace processor ---------------------------------------------------------------------------


def _trace_processor_binary() -> str:
    """trace_processor_shell: $HV1_TRACE_PROCESSOR, else the perfetto package's own prebuilt (cached, or
    fetched by the package: it downloads from Google Cloud Storage, so the test skips where only
    package registries are reachable, with the package's error)."""
    pytest.importorskip("perfetto.trace_processor", reason="the perfetto package is not installed")
    path = os.environ.get("HV1_TRACE_PROCESSOR")
    if path:
        return path
    code = (
        "from perfetto.prebuilts.manifests.trace_processor_shell import TRACE_PROCESSOR_SHELL_MANIFEST as m\n"
        "from perfetto.prebuilts.perfetto_prebuilts import get_perfetto_prebuilt\n"
        "print(get_perfetto_prebuilt(m))"
    )
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip("fetching the trace_processor_shell prebuilt timed out")
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines or not os.path.exists(lines[-1]):
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(
            f"no trace_processor_shell binary (set HV1_TRACE_PROCESSOR): the package's fetch failed: {tail}"
        )
    return lines[-1]


def test_perfetto_trace_processor_loads_and_queries_the_timeline(tmp_path: Path) -> None:
    binary = _trace_processor_binary()
    from perfetto.trace_processor import TraceProcessor, TraceProcessorConfig

    _, perfetto, guest = record_run(tmp_path)
    tp = TraceProcessor(trace=str(perfetto), config=TraceProcessorConfig(bin_path=binary))
    try:
        rows = list(
            tp.query(
                "select s.name as name, s.dur as dur, extract_arg(s.arg_set_id, 'args.status') as status, "
                "t.name as thread, p.name as process from slice s "
                "join thread_track tt on s.track_id = tt.id join thread t using (utid) "
                "left join process p using (upid) where s.category = 'hypercall' order by s.ts"
            )
        )
        assert len(rows) == len(guest.statuses)
        assert {(r.name, r.thread, r.process) for r in rows} == {("HvCallPostMessage", "vp1", "partition 1")}
        assert [r.status for r in rows].count("INSUFFICIENT_BUFFERS") == len(guest.failures)
        assert all(r.dur > 0 for r in rows)
        threads = {r.name for r in tp.query("select name from thread where name is not null")}
        assert {"vp0", "vp1", "host"} <= threads
        depth = {
            r.name: r.top
            for r in tp.query(
                "select t.name as name, max(c.value) as top from counter c "
                "join counter_track t on c.track_id = t.id group by t.name"
            )
        }
        assert depth["vp0 sint2 queue depth"] == MESSAGES - 1
        timer = list(tp.query("select count(*) as n from slice where name = 'STIMER0 deliver' and dur = 0"))
        assert timer[0].n == 1
    finally:
        tp.close()


# --- hv1 stats ---------------------------------------------------------------------------------------------


def test_percentiles_are_nearest_rank() -> None:
    values = list(range(1, 11))
    assert (percentile(values, 50), percentile(values, 90), percentile(values, 99)) == (5, 9, 10)
    assert percentile([7], 99) == 7


def test_stats_counts_statuses_and_percentiles(tmp_path: Path) -> None:
    jsonl, _, guest = record_run(tmp_path)
    with open(jsonl) as f:
        series, injected = collect(read_trace_json(f))
    post = series["hypercall HvCallPostMessage"]
    assert post.count == len(guest.statuses) == len(post.latencies_ns)
    assert post.statuses == {"SUCCESS": MESSAGES, "INSUFFICIENT_BUFFERS": len(guest.failures)}
    assert series["rdmsr HV_X64_MSR_VP_INDEX"].count == 2
    assert series["wrmsr HV_X64_MSR_EOM"].count == MESSAGES
    assert injected == {"hypercall": len(guest.failures)}
    text = format_stats(series, injected)
    line = next(x for x in text.splitlines() if "HvCallPostMessage" in x)
    assert line.split()[:3] == ["hypercall", "HvCallPostMessage", str(len(guest.statuses))]
    assert f"INSUFFICIENT_BUFFERS={len(guest.failures)}" in line
    assert "p50 us" in text and "p99 us" in text and "injected: hypercall=" in text


def test_stats_cli_and_histogram(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'hv1[plot]')")
    jsonl, _, _ = record_run(tmp_path)
    png = tmp_path / "lat.png"
    assert main(["stats", str(jsonl), "--histogram", str(png)]) == EXIT_OK
    assert "HvCallPostMessage" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stats_histogram_without_matplotlib_is_one_clean_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    jsonl, _, _ = record_run(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["stats", str(jsonl), "--histogram", str(tmp_path / "x.png")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err == "hv1: --histogram needs matplotlib: pip install 'hv1[plot]'\n"


def test_stats_of_a_file_that_is_not_a_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"t": 0, "cat": "vp", "vp": 0, "event": "x"}\nnot json\n')
    assert main(["stats", str(bad)]) == EXIT_USAGE
    assert "line 2: not JSON" in capsys.readouterr().err
    assert main(["stats", str(tmp_path / "missing.jsonl")]) == EXIT_USAGE


# --- CLI ---------------------------------------------------------------------------------------------------


def test_info_inject_lists_grammar_and_justifications(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--inject"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "HvCallPostMessage:status=INSUFFICIENT_BUFFERS" in out and "timers.md" in out
    assert "slot-busy=vpN.sintM" in out and "--hv root" in out


def test_run_rejects_a_bad_inject_spec_before_kvm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kernel = tmp_path / "k.bin"
    kernel.write_bytes(b"\0" * 64)
    status = main(["run", str(kernel), "--inject", "hypercall=HvCallSignalEvent:status=INSUFFICIENT_BUFFERS"])
    assert status == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("hv1: bad --inject") and err.count("\n") == 1


def test_help_covers_the_tools(capsys: pytest.CaptureFixture[str]) -> None:
    cases = (
        (["run", "--help"], ("--inject", "--trace-perfetto")),
        (["stats", "--help"], ("--histogram",)),
        (["--help"], ("stats", "timeline")),
    )
    for argv, words in cases:
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        for w in words:
            assert w in out, (argv, w)


@pytest.mark.skipif(shutil.which("hv1") is None, reason="hv1 is not installed as a command")
def test_hv1_command_stats(tmp_path: Path) -> None:
    jsonl, _, _ = record_run(tmp_path)
    r = subprocess.run([sys.executable, "-m", "hv1.cli", "stats", str(jsonl)], capture_output=True, text=True)
    assert r.returncode == 0 and "HvCallPostMessage" in r.stdout


@pytest.mark.skipif(
    os.path.exists("/dev/kvm"), reason="with KVM this would boot the kernel (the KVM tests do)"
)
def test_run_without_kvm_still_closes_the_timeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The timeline is a complete JSON document whatever ends the run (here: no /dev/kvm, exit 2)."""
    from tests.unit.test_cli import _mb_aout

    kernel = tmp_path / "k.bin"
    kernel.write_bytes(_mb_aout(0x100000, 0x100000 + 96))
    out = tmp_path / "t.json"
    status = main(["run", str(kernel), "--trace-perfetto", str(out), "--inject", POST_EVERY_3])
    assert status == EXIT_USAGE, capsys.readouterr().err
    names = {e["args"]["name"] for e in load(out) if e["ph"] == "M" and "name" in e["args"]}
    assert names == {"partition 1", "host"}
