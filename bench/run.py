#!/usr/bin/env python3
"""hv1 benchmarks: every figure next to its floor, measured in the same run.

    python bench/run.py [--quick] [--json OUT.json] [--only NAME[,NAME]] [--markdown] [--list]
    python bench/run.py --render bench/results/latest.json      # table from saved results, no runs

A *row* measures one thing hv1 does (the figure) and the cheapest known way to do the same thing (the
floor: a minimal C VMM, QEMU, a bare ioctl), reports median / p10 / p90 over many samples (this host is
noisy: 2 shared vCPUs inside a nested PVM) and the ratio figure / floor. Rows whose prerequisites are
missing (no `hv1 run` yet, guest kernel not built, no gcc, no /dev/kvm) are reported as
"skipped: <reason>" instead of failing the whole run.

Adding a row: most later rows (hypercall round trip, SynIC message latency, timers, ...) come from
`BENCH <name> cycles_per_op=<n> [key=value ...]` lines printed by a guest bench kernel. For those, add one
`guest_bench_row(...)` entry to ROWS with the kernel, the hv1 arguments, the BENCH line that is the
figure and where the floor comes from (`GuestLine(...)`: another BENCH line of the same guest, or
`CFloor(...)`: a key of bench/kvm_floor's JSON). Anything else is a `Row` with its own measure function.

Standard library only. Output: a Markdown table on stdout (progress goes to stderr) and JSON with a
stable key order in bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fcntl
import json
import os
import platform
import re
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
BUILD_DIR = BENCH_DIR / "build"
RESULTS_DIR = BENCH_DIR / "results"
FLOOR_SRC = BENCH_DIR / "kvm_floor.c"
FLOOR_BIN = BUILD_DIR / "kvm_floor"
GUESTS_BUILD = REPO / "guests" / "build"

KVM_CHECK_EXTENSION = 0xAE03
KVM_CAP_SYNC_REGS = 74


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class Skip(Exception):
    """A prerequisite is missing: the row is reported as skipped, with this reason."""


NEEDS_KVM = "needs /dev/kvm"


def need_kvm() -> None:
    """Rows measured on KVM say so where it is missing (issue 13: a row never just disappears)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise Skip(f"{NEEDS_KVM} (no read/write access here)")


# ----------------------------------------------------------------------------------------------------------
# Statistics


@dataclass(frozen=True)
class Stat:
    """Summary of samples in one unit. Percentiles by nearest rank (same rule as kvm_floor.c)."""

    median: float
    p10: float
    p90: float
    n: int

    @staticmethod
    def of(samples: Sequence[float]) -> Stat:
        if not samples:
            raise ValueError("no samples")
        v = sorted(samples)
        n = len(v)

        def rank(q: float) -> float:
            return v[int(q * (n - 1) + 0.5)]

        return Stat(median=rank(0.5), p10=rank(0.1), p90=rank(0.9), n=n)

    def scaled(self, k: float) -> Stat:
        return Stat(self.median * k, self.p10 * k, self.p90 * k, self.n)

    def to_json(self) -> dict[str, Any]:
        return {
            "median": round(self.median, 4),
            "p10": round(self.p10, 4),
            "p90": round(self.p90, 4),
            "n": self.n,
        }


@dataclass
class Figure:
    """One line of the table: a measured figure, its floor and their ratio."""

    figure: str  # what is measured, e.g. "hv1: guest-timed out exit"
    unit: str  # "us", "ms" or "s"
    value: Stat
    floor_label: str  # e.g. "C VMM (kvm_floor)"
    floor: Stat | None

    @property
    def ratio(self) -> float | None:
        if self.floor is None or self.floor.median <= 0:
            return None
        return self.value.median / self.floor.median

    def to_json(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "figure": self.figure,
            "unit": self.unit,
            "value": self.value.to_json(),
            "floor_label": self.floor_label,
            "floor": self.floor.to_json() if self.floor else None,
            "ratio": round(ratio, 3) if ratio is not None else None,
        }


@dataclass
class RowResult:
    name: str
    status: str  # "ok", "skipped" or "error"
    reason: str = ""
    figures: list[Figure] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "figures": [f.to_json() for f in self.figures],
            "extra": self.extra,
        }


@dataclass(frozen=True)
class Config:
    quick: bool
    hv1_cmd: list[str] | None  # from --hv1, else found automatically
    kernels: Path = GUESTS_BUILD  # where guest kernels are (--kernels)


# ----------------------------------------------------------------------------------------------------------
# Shared prerequisites (each found or built at most once per run)


_cache: dict[str, Any] = {}


def build_floor() -> Path:
    """Compile bench/kvm_floor.c into bench/build/ (cached: rebuilt only when the source is newer)."""
    if "floor_bin" in _cache:
        return Path(_cache["floor_bin"])
    need_kvm()
    if FLOOR_BIN.exists() and FLOOR_BIN.stat().st_mtime >= FLOOR_SRC.stat().st_mtime:
        _cache["floor_bin"] = str(FLOOR_BIN)
        return FLOOR_BIN
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise Skip("no C compiler (gcc) to build bench/kvm_floor.c")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    cmd = [gcc, "-O2", "-Wall", "-Wextra", "-o", str(FLOOR_BIN), str(FLOOR_SRC)]
    log("building the C floor: " + " ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"building kvm_floor failed:\n{r.stderr}")
    _cache["floor_bin"] = str(FLOOR_BIN)
    return FLOOR_BIN


def run_floor(cfg: Config) -> dict[str, Any]:
    """Run the C floor once; returns its JSON (see kvm_floor.c)."""
    exe = build_floor()
    args = [
        "--exits",
        "200",
        "--batches",
        "10" if cfg.quick else "40",
        "--ioctls",
        "5000" if cfg.quick else "20000",
    ]
    r = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"kvm_floor failed (status {r.returncode}): {r.stderr.strip()}")
    data: dict[str, Any] = json.loads(r.stdout)
    _cache["tsc_khz"] = int(data["tsc_khz"])
    return data


def tsc_khz() -> float:
    """TSC frequency: from kvm_floor (KVM_GET_TSC_KHZ on its vCPU) if it ran, else /proc/cpuinfo."""
    if "tsc_khz" in _cache:
        return float(_cache["tsc_khz"])
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) * 1000.0
    except OSError:
        pass
    raise Skip("TSC frequency unknown (no tsc_khz in BENCH line, kvm_floor or /proc/cpuinfo)")


def hv1_command(cfg: Config) -> list[str]:
    """The command that starts hv1 (prefix of `... run KERNEL`). Raises Skip when hv1 run is not there yet."""
    if "hv1_cmd" in _cache:
        cached = _cache["hv1_cmd"]
        if isinstance(cached, Skip):
            raise cached
        return list(cached)
    if cfg.hv1_cmd is not None:
        cmd = cfg.hv1_cmd
    elif (REPO / "hv1" / "__main__.py").exists():
        cmd = [sys.executable, "-m", "hv1"]  # the working tree (PYTHONPATH set in hv1_env)
    elif shutil.which("hv1"):
        cmd = ["hv1"]
    else:
        err = Skip("hv1 CLI not available (no hv1/__main__.py, no `hv1` on PATH)")
        _cache["hv1_cmd"] = err
        raise err
    try:
        r = subprocess.run([*cmd, "run", "--help"], capture_output=True, text=True, timeout=60, env=hv1_env())
    except (OSError, subprocess.TimeoutExpired) as e:
        err = Skip(f"`{' '.join(cmd)} run --help` failed: {e}")
        _cache["hv1_cmd"] = err
        raise err from None
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        err = Skip(f"`hv1 run` not available yet: {last}")
        _cache["hv1_cmd"] = err
        raise err
    _cache["hv1_cmd"] = cmd
    return list(cmd)


def hv1_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def guest_kernel(cfg: Config, name: str) -> Path:
    """A guest kernel from guests/build (or --kernels); tries the guests build once if it is missing."""
    path = cfg.kernels / name
    if path.exists():
        return path
    if cfg.kernels == GUESTS_BUILD and "guests_built" not in _cache:
        _cache["guests_built"] = True
        if (REPO / "guests" / "Makefile").exists() and shutil.which("make"):
            log("guest kernels missing: running `make -C guests`")
            subprocess.run(["make", "-C", str(REPO / "guests")], capture_output=True, timeout=600)
    if path.exists():
        return path
    raise Skip(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path} not built")


def qemu_binary() -> str:
    """qemu-system-x86_64, installed from Debian's packages when missing and we are root."""
    exe = shutil.which("qemu-system-x86_64")
    if exe:
        return exe
    if os.geteuid() != 0:
        raise Skip("qemu-system-x86_64 not installed (and not root to install it)")
    if "qemu_install_tried" not in _cache:
        _cache["qemu_install_tried"] = True
        for cmd in (
            ["apt-get", "install", "-y", "qemu-system-x86"],
            ["apt-get", "update"],
            ["apt-get", "install", "-y", "qemu-system-x86"],
        ):
            log("installing QEMU: " + " ".join(cmd))
            r = subprocess.run(
                cmd,
                stdout=sys.stderr,
                stderr=sys.stderr,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
            if cmd[1] == "install" and r.returncode == 0:
                break
    exe = shutil.which("qemu-system-x86_64")
    if not exe:
        raise Skip("qemu-system-x86_64 missing and `apt-get install -y qemu-system-x86` did not provide it")
    return exe


# ----------------------------------------------------------------------------------------------------------
# BENCH lines printed by guest bench kernels

BENCH_RE = re.compile(r"^BENCH\s+(\S+)((?:\s+\S+=\S+)*)\s*$")


def parse_bench_lines(text: str) -> list[tuple[str, dict[str, str]]]:
    """`BENCH <name> key=value ...` lines, in order (a guest may print one line per batch)."""
    out: list[tuple[str, dict[str, str]]] = []
    for raw in text.splitlines():
        m = BENCH_RE.match(raw.strip())
        if m:
            kv = dict(tok.split("=", 1) for tok in m.group(2).split())
            out.append((m.group(1), kv))
    return out


def run_hv1(
    cfg: Config, kernel: Path, args: Sequence[str], timeout: int = 120
) -> subprocess.CompletedProcess[str]:
    cmd = [*hv1_command(cfg), "run", str(kernel), *args, "--timeout", str(timeout)]
    log("running " + " ".join(shlex.quote(c) for c in cmd))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30, env=hv1_env())


# ----------------------------------------------------------------------------------------------------------
# Rows

Measure = Callable[[Config], RowResult]


@dataclass(frozen=True)
class Row:
    name: str
    what: str  # one line for --list and the README
    measure: Measure


@dataclass(frozen=True)
class GuestLine:
    """Floor = another BENCH line printed by the same guest run (e.g. a native/in-guest baseline)."""

    name: str
    metric: str = "cycles_per_op"
    label: str = ""


@dataclass(frozen=True)
class CFloor:
    """Floor = a per-batch statistic of bench/kvm_floor's JSON, in guest TSC cycles (or `unit`)."""

    key: str
    label: str = "C VMM (kvm_floor)"
    unit: str = "cycles"  # "cycles" (converted with the TSC frequency) or "us"


Floor = GuestLine | CFloor


def cycles_to_us(cycles: float, khz: float) -> float:
    return cycles / khz * 1000.0


def guest_bench_row(
    name: str,
    what: str,
    kernel: str,
    line: str,
    floor: Floor,
    hv1_args: Sequence[str] = (),
    metric: str = "cycles_per_op",
    figure: str | None = None,
    runs: int = 3,
    quick_runs: int = 1,
    kvm: bool = True,
) -> Row:
    """A row from a guest bench kernel: run `hv1 run KERNEL HV1_ARGS` `runs` times, take every
    `BENCH <line> <metric>=<cycles>` as one sample (a guest may print one per batch), convert cycles to
    microseconds with the TSC frequency (tsc_khz= on the line, else KVM_GET_TSC_KHZ via kvm_floor, else
    /proc/cpuinfo), and compare with the floor. A metric whose name does not start or end with "cycles"
    is taken as microseconds already. A CFloor runs kvm_floor before and after the hv1 runs
    and pools both, so slow drift of this noisy host hits figure and floor alike."""

    def measure(cfg: Config) -> RowResult:
        if kvm:
            need_kvm()
        kpath = guest_kernel(cfg, kernel)
        hv1_command(cfg)  # Skip early, before the floor runs, if hv1 run is not there
        floors: list[dict[str, Any]] = []
        if isinstance(floor, CFloor):
            floors.append(run_floor(cfg))
        samples: list[float] = []
        floor_samples: list[float] = []
        line_khz: list[float] = []
        statuses: list[int] = []
        for _ in range(quick_runs if cfg.quick else runs):
            r = run_hv1(cfg, kpath, hv1_args)
            statuses.append(r.returncode)
            found = False
            for bname, kv in parse_bench_lines(r.stdout):
                if "tsc_khz" in kv:
                    line_khz.append(float(kv["tsc_khz"]))
                if bname == line and metric in kv:
                    samples.append(float(kv[metric]))
                    found = True
                if isinstance(floor, GuestLine) and bname == floor.name and floor.metric in kv:
                    floor_samples.append(float(kv[floor.metric]))
            if not found:
                tail = (r.stdout + r.stderr).strip().splitlines()[-8:]
                reason = f"no `BENCH {line} {metric}=` line in hv1's output (status {r.returncode})"
                return RowResult(name, "error", reason, extra={"output_tail": tail})
        if isinstance(floor, CFloor):
            floors.append(run_floor(cfg))
            for f in floors:
                floor_samples.extend(float(x) for x in f[floor.key]["samples"])
        khz = statistics.median(line_khz) if line_khz else tsc_khz()
        conv = (
            (lambda c: cycles_to_us(c, khz))
            if (metric.startswith("cycles") or metric.endswith("cycles"))
            else float
        )
        value = Stat.of([conv(s) for s in samples])
        fl: Stat | None = None
        if floor_samples:
            fconv = conv if isinstance(floor, GuestLine) or floor.unit == "cycles" else float
            fl = Stat.of([fconv(s) for s in floor_samples])
        label = floor.label or (f"guest `{floor.name}`" if isinstance(floor, GuestLine) else "")
        fig = Figure(figure or f"hv1: guest `{line}`", "us", value, label, fl)
        extra: dict[str, Any] = {
            "kernel": kernel,
            "hv1_args": list(hv1_args),
            "tsc_khz": khz,
            "hv1_exit_status": statuses,
            "cycles": Stat.of(samples).to_json(),
        }
        if isinstance(floor, CFloor):
            extra["floor_cycles"] = Stat.of(floor_samples).to_json()
            extra["floor_runs"] = [_floor_summary(f) for f in floors]
        res = RowResult(name, "ok", figures=[fig], extra=extra)
        if isinstance(floor, CFloor) and floor.key == "guest_out_loop_cycles":
            # Also the host-timed view of the same C floor (KVM_RUN -> KVM_EXIT_IO -> KVM_RUN), for scale.
            host = [float(x) for f in floors for x in f["host_batch_us_per_exit"]["samples"]]
            res.extra["floor_host_timed_us_per_exit"] = Stat.of(host).to_json()
        return res

    return Row(name, what, measure)


def _floor_summary(f: dict[str, Any]) -> dict[str, Any]:
    keep = ("exit_roundtrip_us_median", "p10", "p90", "n", "tsc_khz", "exits_per_batch", "batches")
    out = {k: f[k] for k in keep}
    for k in ("guest_out_loop_cycles", "guest_empty_loop_cycles", "check_extension_us"):
        out[k] = {s: f[k][s] for s in ("median", "p10", "p90", "n")}
    return out


# --- kvm-floor: the C floor alone (always runnable where /dev/kvm is; no hv1 needed) ---


def measure_kvm_floor(cfg: Config) -> RowResult:
    f = run_floor(cfg)
    khz = float(f["tsc_khz"])
    host = Stat(f["exit_roundtrip_us_median"], f["p10"], f["p90"], f["n"])
    batch = [float(x) for x in f["host_batch_us_per_exit"]["samples"]]
    gout = [cycles_to_us(float(x), khz) for x in f["guest_out_loop_cycles"]["samples"]]
    gempty = [cycles_to_us(float(x), khz) for x in f["guest_empty_loop_cycles"]["samples"]]
    figs = [
        Figure("C: host-timed KVM_RUN→IO exit→KVM_RUN", "us", host, "", None),
        Figure("C: host-timed, batch mean per exit", "us", Stat.of(batch), "", None),
        Figure("C: guest-timed out exit (out; dec; jnz)", "us", Stat.of(gout), "", None),
        Figure("C: guest-timed empty loop (nop; dec; jnz)", "us", Stat.of(gempty), "", None),
    ]
    return RowResult("kvm-floor", "ok", figures=figs, extra={"kvm_floor": _floor_summary(f)})


# --- kvm-ioctl: one ioctl from Python (what every hv1 exit pays several times) vs from C ---


def measure_ioctl(cfg: Config) -> RowResult:
    need_kvm()
    f = run_floor(cfg)
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise Skip(f"/dev/kvm: {e}") from None
    n = 5000 if cfg.quick else 20000
    samples: list[float] = []
    try:
        ioctl = fcntl.ioctl
        clock = time.perf_counter_ns
        for _ in range(200):  # warm-up
            ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS)
        for _ in range(n):
            t0 = clock()
            ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS)
            samples.append((clock() - t0) / 1000.0)
    finally:
        os.close(fd)
    c = f["check_extension_us"]
    floor = Stat(c["median"], c["p10"], c["p90"], c["n"])
    fig = Figure(
        "Python fcntl.ioctl(KVM_CHECK_EXTENSION)", "us", Stat.of(samples), "C ioctl (kvm_floor)", floor
    )
    return RowResult("kvm-ioctl", "ok", figures=[fig])


# --- startup: process start -> first serial byte, and -> exit; hv1 next to QEMU ---


@dataclass
class StartupSample:
    first_byte_ms: float | None
    exit_ms: float
    status: int | None
    output: bytes
    timed_out: bool


def time_startup(cmd: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> StartupSample:
    """Spawn `cmd` with stdout on a pipe; time (from just before spawning) the first byte on stdout and
    the process exit."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, bufsize=0, env=env
        )
        assert p.stdout is not None
        fd = p.stdout.fileno()
        first: float | None = None
        chunks: list[bytes] = []
        deadline = t0 + timeout
        timed_out = False
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                timed_out = True
                p.kill()
                break
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            data = os.read(fd, 1 if first is None else 65536)
            if not data:
                break
            if first is None:
                first = time.perf_counter()
            chunks.append(data)
        status = p.wait()
        t_exit = time.perf_counter()
        p.stdout.close()
    return StartupSample(
        first_byte_ms=(first - t0) * 1000.0 if first is not None else None,
        exit_ms=(t_exit - t0) * 1000.0,
        status=None if timed_out else status,
        output=b"".join(chunks),
        timed_out=timed_out,
    )


def portable_cmdline(cmd: Sequence[str]) -> str:
    """A command line for the JSON that does not depend on where the repository is checked out."""
    out = []
    for c in cmd:
        if c == sys.executable:
            c = "python"
        elif c.startswith("/") and Path(c).is_relative_to(REPO):
            c = str(Path(c).relative_to(REPO))
        elif c.startswith("/") and shutil.which(Path(c).name) == c:
            c = Path(c).name
        out.append(c)
    return shlex.join(out)


def qemu_cmd(exe: str, kernel: Path, accel: str) -> list[str]:
    accel_args = ["-enable-kvm"] if accel == "kvm" else ["-accel", "tcg"]
    return [
        exe,
        *accel_args,
        "-kernel",
        str(kernel),
        "-serial",
        "stdio",
        "-display",
        "none",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-no-reboot",
    ]


def measure_startup(cfg: Config) -> RowResult:
    need_kvm()
    kernel = guest_kernel(cfg, "hello.elf")
    hv1 = [*hv1_command(cfg), "run", str(kernel), "--timeout", "60"]
    qemu = qemu_binary()
    runs = 3 if cfg.quick else 10
    timeout = 90.0

    # QEMU with KVM may not boot on this nested PVM host: probe once (also the warm-up) and fall back to TCG.
    extra: dict[str, Any] = {"kernel": "hello.elf", "runs": runs}
    comparators: dict[str, list[str]] = {}
    probe = time_startup(qemu_cmd(qemu, kernel, "kvm"), timeout)
    if probe.first_byte_ms is not None and not probe.timed_out:
        comparators["qemu-kvm"] = qemu_cmd(qemu, kernel, "kvm")
    else:
        extra["qemu_kvm_failed"] = (
            "timed out" if probe.timed_out else f"no serial output, status {probe.status}"
        )
        log(f"QEMU with -enable-kvm failed here ({extra['qemu_kvm_failed']}): using -accel tcg as the floor")
    tcg = "qemu-tcg" if "qemu-kvm" in comparators else "qemu-tcg (qemu-kvm failed here)"
    comparators[tcg] = qemu_cmd(qemu, kernel, "tcg")
    extra["qemu_cmdlines"] = {k: portable_cmdline(v) for k, v in comparators.items()}
    extra["hv1_cmdline"] = portable_cmdline(hv1)

    log(f"startup warm-up: {shlex.join(hv1)}")
    warm = time_startup(hv1, timeout, env=hv1_env())
    if warm.first_byte_ms is None:
        reason = "timed out" if warm.timed_out else f"status {warm.status}"
        return RowResult("startup", "error", f"hv1 produced no serial output ({reason})")
    time_startup(comparators[tcg], timeout)

    results: dict[str, list[StartupSample]] = {"hv1": [], **{k: [] for k in comparators}}
    for i in range(runs):  # interleaved, so drift of the host hits all alike
        log(f"startup run {i + 1}/{runs}")
        results["hv1"].append(time_startup(hv1, timeout, env=hv1_env()))
        for k, cmd in comparators.items():
            results[k].append(time_startup(cmd, timeout))

    def stats(k: str, attr: str) -> Stat | None:
        vals = [getattr(s, attr) for s in results[k] if getattr(s, attr) is not None and not s.timed_out]
        return Stat.of(vals) if vals else None

    figs: list[Figure] = []
    hv1_first, hv1_exit = stats("hv1", "first_byte_ms"), stats("hv1", "exit_ms")
    if hv1_first is None or hv1_exit is None:
        return RowResult("startup", "error", "hv1 timed out or printed nothing in every run", extra=extra)
    for k in comparators:
        figs.append(
            Figure("hv1 run: start → first serial byte", "ms", hv1_first, k, stats(k, "first_byte_ms"))
        )
        figs.append(Figure("hv1 run: start → exit", "ms", hv1_exit, k, stats(k, "exit_ms")))
    ref = results[tcg][0].output
    extra["same_serial_output_as_qemu"] = all(s.output == ref for s in results["hv1"])
    extra["exit_status"] = {k: sorted({s.status for s in v}, key=str) for k, v in results.items()}
    label = "startup" if "qemu-kvm" in comparators else "startup (QEMU floor: tcg; KVM failed)"
    extra["label"] = label
    return RowResult("startup", "ok", figures=figs, extra=extra)


# --- Linux (issue 12): time to "Run /init" under hv1 vs QEMU, same kernel, initramfs, cmdline, CPUs ---

RUN_INIT = b"Run /init as init process"
LINUX_CMDLINE = "console=ttyS0 panic=-1 nokaslr clocksource=hyperv_clocksource_tsc_page"


@dataclass
class BootSample:
    init_s: float | None  # spawn -> "Run /init" on the serial output (None: never)
    stderr: str


def time_to_init(cmd: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> BootSample:
    """Spawn `cmd` (serial on stdout), time spawn -> RUN_INIT on stdout, then SIGINT it (hv1 then still
    prints --stats/--profile; QEMU just quits) and collect stderr."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            # SIGINT at its default in the child (a background job of a shell starts with it ignored,
            # and then hv1 installs no handler and never prints its --stats/--profile)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        assert p.stdout is not None
        fd = p.stdout.fileno()
        seen, tail = None, b""
        while seen is None and time.perf_counter() - t0 < timeout:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            data = os.read(fd, 65536)
            if not data:
                break
            tail = (tail + data)[-4096:]
            if RUN_INIT in tail:
                seen = time.perf_counter() - t0
        p.send_signal(signal.SIGINT)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        p.stdout.close()
        err.seek(0)
        return BootSample(seen, err.read().decode(errors="replace"))


def _hv1_time_split(profile: dict[str, Any]) -> tuple[float, float]:
    """(seconds inside KVM_RUN, seconds in hv1 between exits) summed over every VP thread's exits, from
    `hv1 run --profile` JSON: the `run` phase is the guest running (here: emulated ring 0) or halted
    in the kernel; the rest of each exit's round trip is the VMM."""
    run_ns = vmm_ns = 0.0
    for kind in profile["kinds"].values():
        n = kind["count"]
        total = kind["total"]["mean"] * n
        run = kind["phases"].get("run", {}).get("mean", 0.0) * n
        run_ns += run
        vmm_ns += total - run
    return run_ns / 1e9, vmm_ns / 1e9


def measure_linux_boot(cfg: Config, apic: str = "kernel") -> RowResult:
    """One hv1 boot with `--apic APIC` and one QEMU boot (row linux-boot: kernel, linux-boot-user: user)."""
    row = "linux-boot" if apic == "kernel" else f"linux-boot-{apic}"
    need_kvm()
    sys.path.insert(0, str(REPO))
    from hv1.backends.kvm import host_workarounds
    from tests.linux_artifacts import BUSYBOX_SKIP, KERNEL_SKIP, busybox_initramfs, debian_kernel

    if KERNEL_SKIP or BUSYBOX_SKIP:
        raise Skip(KERNEL_SKIP or BUSYBOX_SKIP or "")
    kernel = debian_kernel()
    assert kernel is not None
    w = host_workarounds.detect()
    cmdline = " ".join(filter(None, [LINUX_CMDLINE, w.recommended_cmdline]))
    cpus, memory = "2", "512M"
    timeout = 1800.0  # one boot took 930-1,120 s to Run /init on this host (README "Booting Linux")
    qemu = qemu_binary()
    with tempfile.TemporaryDirectory() as d:
        initrd = Path(d) / "initramfs.cpio"
        initrd.write_bytes(busybox_initramfs())
        profile = Path(d) / "profile.json"
        hv1 = [*hv1_command(cfg), "run", str(kernel), "--initrd", str(initrd), "--append", cmdline,
               "--cpus", cpus, "--apic", apic, "--memory", memory, "--no-reboot", "--stats",
               "--profile", str(profile), "--timeout", str(int(timeout))]  # fmt: skip
        # QEMU+KVM stops at the first ring-0 int3 on a host that emulates ring 0 (host_workarounds.py),
        # so there the floor is QEMU's TCG; elsewhere QEMU+KVM.
        accel = ["-accel", "tcg"] if w.enabled else ["-enable-kvm", "-cpu", "host"]
        floor_label = "QEMU TCG" if w.enabled else "QEMU+KVM"
        qemu_cmd_ = [qemu, *accel, "-smp", cpus, "-m", memory, "-kernel", str(kernel), "-initrd", str(initrd),
                     "-append", cmdline, "-serial", "stdio", "-display", "none", "-no-reboot"]  # fmt: skip
        log(f"linux-boot: {shlex.join(hv1)}")
        h = time_to_init(hv1, timeout, env=hv1_env())
        log(f"linux-boot: {shlex.join(qemu_cmd_)}")
        q = time_to_init(qemu_cmd_, timeout)
        extra: dict[str, Any] = {
            "kernel": kernel.name,
            "cmdline": cmdline,
            "cpus": int(cpus),
            "apic": apic,
            "runs": 1,
            "hv1_cmdline": portable_cmdline(hv1),
            "qemu_cmdline": portable_cmdline(qemu_cmd_),
            "host_workarounds": w.reason,
        }
        for kind in ("exits", "hypercalls", "rdmsr", "wrmsr"):  # hv1 run --stats (hv1/cli.py)
            m = re.search(rf"hv1: {kind}: (.*)", h.stderr)
            extra[f"hv1_{kind}"] = m.group(1) if m else None
        if profile.exists():
            in_run, in_vmm = _hv1_time_split(json.loads(profile.read_text()))
            extra["hv1_vp_seconds_in_kvm_run"] = round(in_run, 1)
            extra["hv1_vp_seconds_in_vmm"] = round(in_vmm, 1)
    if h.init_s is None:
        return RowResult(row, "error", "hv1 never printed Run /init", extra=extra)
    figs = [
        Figure(
            f'hv1 --apic {apic}: start → "Run /init" (Debian 12 cloud kernel, 2 VPs)',
            "s",
            Stat.of([h.init_s]),
            floor_label,
            Stat.of([q.init_s]) if q.init_s is not None else None,
        )
    ]
    if "hv1_vp_seconds_in_kvm_run" in extra:
        run_s, vmm_s = extra["hv1_vp_seconds_in_kvm_run"], extra["hv1_vp_seconds_in_vmm"]
        figs.append(
            Figure(
                "hv1: VP-thread seconds in KVM_RUN (guest code; emulated ring 0 here)",
                "s",
                Stat.of([run_s]),
                "VP-thread seconds in hv1 between exits",
                Stat.of([vmm_s]),
            )  # fmt: skip
        )
    return RowResult(row, "ok", figures=figs, extra=extra)


# --- rows with several figures from one set of guest runs (SynIC, time, VP enlightenments) ---


@dataclass(frozen=True)
class GuestFig:
    """One figure of a `guest_figures_row`: BENCH line `line` (its `metric`) next to the BENCH line `floor`
    of the same guest runs (its `floor_metric`, default the same metric). Metrics whose name starts or ends
    with "cycles" are converted to µs; others are taken as `unit` already (e.g. latency_us, host_cpu_pct).
    `ratio=False` for figures whose ratio means nothing (a period error near 0)."""

    line: str
    figure: str
    floor: str | None = None
    floor_label: str = ""
    metric: str = "cycles_per_op"
    floor_metric: str | None = None
    unit: str = "us"
    ratio: bool = True


class NoRatioFigure(Figure):
    """A figure shown next to its floor without a ratio."""

    @property
    def ratio(self) -> float | None:
        return None


@dataclass(frozen=True)
class ExitCount:
    """A host-counted figure: `hv1 run --stats` of the guest with `--append "count=<variant> count_n=<n>"`
    (bench kernels run only that loop and print the same text whatever the variant), exits of all kinds.
    Value per run: (exits(variant) - exits(minus)) / n * per, e.g. exits per read, or exits saved per 1000
    interrupts with `minus` another variant."""

    variant: str
    minus: str
    figure: str
    unit: str = "exits/op"
    per: float = 1.0


def guest_runs(cfg: Config, kernel: Path, args: Sequence[str], runs: int, timeout: int) -> list[Any]:
    """`runs` runs of `hv1 run KERNEL ARGS`, cached for the whole bench invocation so that rows sharing one
    guest invocation (e.g. vp-ipi, vp-flush, vp-eoi) run it once."""
    key = "guest_runs " + shlex.join([str(kernel), *args, f"x{runs}"])
    if key not in _cache:
        _cache[key] = [run_hv1(cfg, kernel, args, timeout=timeout) for _ in range(runs)]
    return list(_cache[key])


EXITS_RE = re.compile(r"^hv1: exits: (.*)$", re.MULTILINE)


def total_exits(stderr: str) -> int | None:
    """Sum of the exit counts `hv1 run --stats` prints on stderr ("hv1: exits: io=772, rdmsr=3499")."""
    m = EXITS_RE.search(stderr)
    if m is None:
        return None
    return sum(int(kv.split("=", 1)[1]) for kv in m.group(1).split(", ") if "=" in kv)


def _metric_value(kv: dict[str, str], metric: str) -> float | None:
    try:
        return float(kv[metric])
    except (KeyError, ValueError):
        return None  # absent, or "na" (e.g. host_cpu_pct without the bench device)


def guest_figures_row(
    name: str,
    what: str,
    kernel: str,
    figs: Sequence[GuestFig],
    hv1_args: Sequence[str] = (),
    append: str = "",
    quick_append: str | None = None,
    runs: int = 3,
    quick_runs: int = 1,
    timeout: int = 120,
    exit_counts: Sequence[ExitCount] = (),
    count_n: int = 1000,
    count_args: Sequence[str] | None = None,
    kvm: bool = True,
) -> Row:
    """A row of several figures from one set of guest runs: every `BENCH <line> k=v ...` line is one sample
    (guests print one line per batch, figure and floor batches interleaved). Figures whose line is missing are
    left out and listed in extra["missing"] (with the guest's "skip" lines); no figure at all is an error, or
    a skip when the guest said why. `exit_counts` adds host-counted figures (see ExitCount)."""

    def measure(cfg: Config) -> RowResult:
        if kvm:
            need_kvm()
        kpath = guest_kernel(cfg, kernel)
        hv1_command(cfg)
        app = quick_append if (cfg.quick and quick_append is not None) else append
        args = [*hv1_args, *(["--append", app] if app else [])]
        results = guest_runs(cfg, kpath, args, quick_runs if cfg.quick else runs, timeout)
        lines: list[tuple[str, dict[str, str]]] = []
        skips: list[str] = []
        for r in results:
            lines.extend(parse_bench_lines(r.stdout))
            skips.extend(ln.strip() for ln in r.stdout.splitlines() if ": skip" in ln or ": no " in ln)
        khzs = [float(kv["tsc_khz"]) for _, kv in lines if "tsc_khz" in kv]
        khz = statistics.median(khzs) if khzs else tsc_khz()

        def samples(line: str, metric: str) -> list[float]:
            vals = [_metric_value(kv, metric) for b, kv in lines if b == line]
            conv = metric.startswith("cycles") or metric.endswith("cycles")
            return [cycles_to_us(v, khz) if conv else v for v in vals if v is not None]

        figures: list[Figure] = []
        missing: list[str] = []
        for g in figs:
            vals = samples(g.line, g.metric)
            if not vals:
                missing.append(f"{g.line} {g.metric}")
                continue
            fl = samples(g.floor, g.floor_metric or g.metric) if g.floor else []
            label = g.floor_label or (f"guest `{g.floor}`" if g.floor else "")
            cls = Figure if g.ratio else NoRatioFigure
            figures.append(cls(g.figure, g.unit, Stat.of(vals), label, Stat.of(fl) if fl else None))
        extra: dict[str, Any] = {
            "kernel": kernel,
            "hv1_args": args,
            "tsc_khz": khz,
            "hv1_exit_status": [r.returncode for r in results],
        }
        if exit_counts:
            c_runs = quick_runs if cfg.quick else max(1, runs - 1)
            cargs = list(hv1_args if count_args is None else count_args)
            counts: dict[str, list[int | None]] = {}
            for v in sorted({e.variant for e in exit_counts} | {e.minus for e in exit_counts}):
                rs = guest_runs(cfg, kpath, [*cargs, "--stats", "--append", f"count={v} count_n={count_n}"],
                                c_runs, timeout)  # fmt: skip
                counts[v] = [total_exits(r.stderr) for r in rs]
            extra["exit_counts"] = counts
            for e in exit_counts:
                per_run = [
                    (a - b) / count_n * e.per
                    for a, b in zip(counts[e.variant], counts[e.minus], strict=True)
                    if a is not None and b is not None
                ]
                if per_run:
                    figures.append(Figure(e.figure, e.unit, Stat.of(per_run), "", None))
                else:
                    missing.append(f"exits count={e.variant}")
        if missing:
            extra["missing"] = missing
        if skips:
            extra["guest_skips"] = sorted(set(skips))
        if not figures:
            if skips:
                raise Skip("; ".join(sorted(set(skips)))[:300])
            tail = (results[-1].stdout + results[-1].stderr).strip().splitlines()[-8:] if results else []
            return RowResult(name, "error", "no BENCH lines of this row in hv1's output",
                             extra={**extra, "output_tail": tail})  # fmt: skip
        return RowResult(name, "ok", figures=figures, extra=extra)

    return Row(name, what, measure)


BENCH_DEV_FLOOR = "host MSI → handler (bench device)"
SYNC_FLOOR = "guest OUT → host MSI in the exit → handler"
SYNIC_FIGS = (
    GuestFig("host-msg-latency", "host post_message → guest SINT handler (guest in hlt)", "host-irq-latency",
             BENCH_DEV_FLOOR, metric="latency_us"),
    GuestFig("post-message-rtt", "guest HvCallPostMessage → testdev echo → SINT handler", "irq-sync-rtt",
             SYNC_FLOOR),
    GuestFig("signal-event-rtt", "guest HvCallSignalEvent (fast) → event flag → SINT handler", "irq-sync-rtt",
             SYNC_FLOOR),
)  # fmt: skip
LAPIC_FLOOR = "in-kernel LAPIC TSC-deadline timer, every 1 ms"
STIMER_FIGS = tuple(
    GuestFig(line, f"{label}: {what}", "lapic-timer", LAPIC_FLOOR, metric=metric, ratio=ratio)
    for line, label in (("stimer-direct", "STIMER0 direct 1 ms"), ("stimer-message", "STIMER0 message 1 ms"))
    for metric, what, ratio in (
        ("mean_period_error_us", "mean period error", False),
        ("p50_lateness_us", "p50 lateness", True),
        ("p99_lateness_us", "p99 lateness", True),
    )
)
IDLE_CPU_FIGS = (
    GuestFig("timer-idle", "hv1 CPU, idle guest, no timer armed", metric="host_cpu_pct", unit="%"),
    GuestFig("stimer-direct", "hv1 CPU, idle guest + STIMER0 direct 1 ms", "lapic-timer",
             "idle + in-kernel LAPIC TSC-deadline timer 1 ms", metric="host_cpu_pct", unit="%"),
    GuestFig("stimer-message", "hv1 CPU, idle guest + STIMER0 message 1 ms", "lapic-timer",
             "idle + in-kernel LAPIC TSC-deadline timer 1 ms", metric="host_cpu_pct", unit="%"),
)  # fmt: skip
TIME_STIMER_KW: dict[str, Any] = {
    "kernel": "time_bench.elf",
    "hv1_args": ("--hv", "default"),
    "append": "reads=0 seconds=5",
    "quick_append": "reads=0 seconds=2",
    "runs": 2,
    "quick_runs": 1,
    "timeout": 150,
}
VP_KW: dict[str, Any] = {
    "kernel": "vp_bench.elf",
    "hv1_args": ("--hv", "default", "--apic", "user", "--cpus", "4"),
    "append": "batches=10 n=20",
    "quick_append": "batches=3 n=10",
}


# --- the dispatcher alone, on fakes (bench/profile.py): measurable without KVM ---


def _profile_module() -> Any:
    """bench/profile.py as a module (its worker times Partition.hypercall on tests/fakes.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hv1_bench_profile", BENCH_DIR / "profile.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FAKES_FIGS = (
    ("unknown", "dispatcher alone: unknown code (INVALID_HYPERCALL_CODE)", None, ""),
    ("null", "null fast hypercall (HvExtCallQueryCapabilities, result in RDX)", "unknown", "unknown code"),
    ("mem", "memory hypercall (the same call, 8 bytes out to a page)", "null", "null fast hypercall"),
    ("rep1", "rep hypercall, 1 element (HvCallGetVpIndexFromApicId)", "null", "null fast hypercall"),
    ("rep510", "rep hypercall, 510 elements (a full page in and out)", "rep1", "rep hypercall, 1 element"),
    ("spin", "fast HvCallNotifyLongSpinWait (8 bytes in, a deferred action)", "null", "null fast hypercall"),
)


def measure_fakes(cfg: Config) -> RowResult:
    """Partition.hypercall on fakes, per call (no guest, no backend): rounds of every case, each round
    in a fresh interpreter, so that host drift hits every case alike."""
    mod = _profile_module()
    rounds, n = (2, 1000) if cfg.quick else (8, 5000)
    times = mod.run_rounds({"tree": REPO}, n, rounds)["tree"]
    stats = {c: Stat.of([v / 1000.0 for v in times[c]]) for c in times}
    figs = [
        Figure(f"fakes: {what}", "us", stats[c], label, stats[f] if f else None)
        for c, what, f, label in FAKES_FIGS
    ]
    per_element = (stats["rep510"].median - stats["rep1"].median) / 509
    extra = {"rounds": rounds, "iterations": n, "rep510_per_element_us": round(per_element, 4)}
    return RowResult("fakes-dispatch", "ok", figures=figs, extra=extra)


# hv_bench.elf figures (guests/bench/hv_bench.c), as the table names them: each next to the same
# guest's bare `out` exit, and the 510-element rep call next to the 1-element one.
OUT_FLOOR = "bare out exit, same guest"
HV_CORE_FIGS = (
    GuestFig("hvcall_null", "null fast hypercall (HvExtCallQueryCapabilities)", "out_exit", OUT_FLOOR),
    GuestFig("hvcall_mem", "memory hypercall (1 page out)", "out_exit", OUT_FLOOR),
    GuestFig("rdmsr_vp_index", "rdmsr HV_X64_MSR_VP_INDEX", "out_exit", OUT_FLOOR),
    GuestFig("hvcall_rep510", "rep hypercall, 510 elements", "hvcall_rep1", "rep hypercall, 1 element"),
    GuestFig("hvcall_rep510_per_element", "rep hypercall, per element of 510", "out_exit", OUT_FLOOR),
    GuestFig("hvcall_spin_wait", "fast HvCallNotifyLongSpinWait", "out_exit", OUT_FLOOR),
)
EMU_ARGS = ("--backend", "emu", "--apic", "user", "--hv", "default")


# ----------------------------------------------------------------------------------------------------------
# The registry. Order = table order.

ROWS: list[Row] = [
    Row(
        "kvm-floor",
        "the C floor alone: KVM exit round trip host-timed and guest-timed (no hv1 needed)",
        measure_kvm_floor,
    ),
    guest_bench_row(
        "kvm-exit-roundtrip",
        "guest-timed `out` exit: hv1's run loop (bench_exit.elf) vs the same guest loop in kvm_floor.c",
        kernel="bench_exit.elf",
        line="out_exit",
        floor=CFloor("guest_out_loop_cycles"),
        figure="hv1: guest-timed out exit",
        runs=5,
        quick_runs=2,
    ),
    Row("kvm-ioctl", "one KVM ioctl (KVM_CHECK_EXTENSION) from Python vs from C", measure_ioctl),
    Row(
        "startup", "process start → first serial byte / exit for hello.elf: hv1 run vs QEMU", measure_startup
    ),
    Row(
        "linux-boot",
        "time to Run /init (Debian 12 kernel, busybox initramfs, 2 VPs): hv1 vs QEMU (TCG if ring 0 is slow)",
        measure_linux_boot,
    ),
    Row(
        "linux-boot-user",
        "the same with --apic user (hv1's APIC: the VP assist page, APIC MSRs and IPI hypercalls in use)",
        lambda cfg: measure_linux_boot(cfg, "user"),
    ),
    # Hv#1 core (issue 6): hv_bench.elf under `--hv default`; the floor is the same guest's bare `out` exit.
    *(
        guest_bench_row(
            name,
            what,
            kernel="hv_bench.elf",
            line=line,
            floor=GuestLine("out_exit", label="bare out exit, same guest"),
            hv1_args=("--hv", "default"),
            figure=figure,
        )
        for name, line, figure, what in (
            (
                "hv-hypercall-null",
                "hvcall_null",
                "hv1: fast hypercall, no input (HvExtCallQueryCapabilities)",
                "null hypercall round trip: fast HvExtCallQueryCapabilities (no input, result in RDX)",
            ),
            (
                "hv-hypercall-spin-wait",
                "hvcall_spin_wait",
                "hv1: fast HvCallNotifyLongSpinWait",
                "fast HvCallNotifyLongSpinWait (8-byte input in RDX; hv1 also yields the host thread)",
            ),
            (
                "hv-hypercall-mem",
                "hvcall_mem",
                "hv1: memory hypercall, output to a page",
                "memory-based HvExtCallQueryCapabilities: output written to a guest page",
            ),
            (
                "hv-hypercall-rep1",
                "hvcall_rep1",
                "hv1: rep hypercall, 1 element",
                "memory-based HvCallGetVpIndexFromApicId with 1 element, per call",
            ),
            (
                "hv-hypercall-rep510",
                "hvcall_rep510",
                "hv1: rep hypercall, 510 elements (full page in and out)",
                "memory-based HvCallGetVpIndexFromApicId, 510 elements (the most a page holds), per call",
            ),
            (
                "hv-rdmsr-vp-index",
                "rdmsr_vp_index",
                "hv1: rdmsr HV_X64_MSR_VP_INDEX",
                "RDMSR of the synthetic VP_INDEX MSR",
            ),
        )
    ),
    # Issue 13's table, one row per APIC mode: the hypercall figures next to their floors.
    guest_figures_row(
        "hv-core",
        "issue 13's hypercall figures (--apic kernel): null, memory, rdmsr vs the bare exit; rep 510 vs 1",
        "hv_bench.elf",
        HV_CORE_FIGS,
        hv1_args=("--hv", "default"),
        runs=6,  # 60 batches per figure: the previous session's 3 runs moved the ratios by up to 50 %
        quick_runs=1,
    ),
    guest_figures_row(
        "hv-core-user",
        "the same under --apic user (hv1's APIC model)",
        "hv_bench.elf",
        HV_CORE_FIGS,
        hv1_args=("--hv", "default", "--apic", "user"),
        runs=6,
        quick_runs=1,
    ),
    # Without KVM: the same guest on the emulator backend, and the dispatcher alone on fakes.
    guest_figures_row(
        "emu-hv-core",
        "the same figures on the emulator backend (--backend emu --apic user): no KVM needed",
        "hv_bench.elf",
        HV_CORE_FIGS,
        hv1_args=EMU_ARGS,
        append="n=100",
        quick_append="n=40",
        runs=4,
        quick_runs=1,
        timeout=300,
        kvm=False,
    ),
    Row(
        "fakes-dispatch",
        "Partition.hypercall on fakes (bench/profile.py): the dispatcher alone",
        measure_fakes,
    ),
    # SynIC (issue 3): synic_bench.elf; host-side events come from hv1's bench device (port 0x3008).
    guest_figures_row(
        "synic",
        "SynIC (--apic kernel): host→guest message latency, PostMessage echo and SignalEvent round trips",
        "synic_bench.elf",
        SYNIC_FIGS,
        hv1_args=("--hv", "default"),
        append="batches=10 k=10",
        quick_append="batches=3 k=10",
    ),
    guest_figures_row(
        "synic-user",
        "the same under --apic user (hv1's APIC model)",
        "synic_bench.elf",
        SYNIC_FIGS,
        hv1_args=("--hv", "default", "--apic", "user"),
        append="batches=10 k=10",
        quick_append="batches=3 k=10",
    ),
    # Time (issue 4): time_bench.elf.
    guest_figures_row(
        "time-read",
        "reading reference time: rdmsr TIME_REF_COUNT vs the TSC page; exits per read counted with --stats",
        "time_bench.elf",
        (
            GuestFig(
                "rdmsr-time-ref-count",
                "rdmsr HV_X64_MSR_TIME_REF_COUNT",
                "out_exit",
                "bare out exit, same guest",
            ),
            GuestFig(
                "tsc-page-read", "reference TSC page read (TLFS loop)", "rdtsc", "rdtsc alone, same guest"
            ),
            GuestFig(
                "tsc-page-read",
                "reference TSC page read (TLFS loop)",
                "rdmsr-time-ref-count",
                "vs rdmsr TIME_REF_COUNT",
            ),
        ),
        hv1_args=("--hv", "default"),
        append="timers=0 batches=10 n=200",
        quick_append="timers=0 batches=3 n=100",
        exit_counts=(
            ExitCount("msr", "none", "exits per rdmsr TIME_REF_COUNT (host-counted, --stats)", "exits"),
            ExitCount("page", "none", "exits per TSC-page read (host-counted, --stats)", "exits"),
        ),
    ),
    guest_figures_row(
        "time-stimer",
        "STIMER0 periodic 1 ms, 5 s (direct, message): period error, lateness; vs the in-kernel LAPIC timer",
        figs=STIMER_FIGS,
        **TIME_STIMER_KW,
    ),
    guest_figures_row(
        "time-idle-cpu",
        "hv1 process CPU (all threads) while the guest idles in hlt with a periodic 1 ms timer, % of a core",
        figs=IDLE_CPU_FIGS,
        **TIME_STIMER_KW,
    ),
    # VP enlightenments (issue 5): vp_bench.elf on 4 VPs, --apic user (APIC MSRs, assist page, cluster IPIs).
    guest_figures_row(
        "vp-ipi",
        "HvCallSendSyntheticClusterIpi vs x2APIC ICR writes, to 1 and 3 APs, until all took it (--apic user)",
        figs=tuple(
            GuestFig(
                f"ipi-hypercall-{n}",
                f"cluster-IPI hypercall → {n} AP(s)",
                f"ipi-icr-{n}",
                f"x2APIC ICR write per AP → {n} AP(s)",
            )
            for n in (1, 3)
        ),
        **VP_KW,
    ),
    guest_figures_row(
        "vp-flush",
        "HvCallFlushVirtualAddressSpace vs IPI + INVLPG shootdown, 1-3 target APs (--apic user)",
        figs=tuple(
            GuestFig(
                f"flush-hypercall-{n}",
                f"flush hypercall, {n} target AP(s)",
                f"flush-ipi-invlpg-{n}",
                f"IPI + INVLPG + ack, {n} AP(s)",
            )
            for n in (1, 2, 3)
        ),
        **VP_KW,
    ),
    guest_figures_row(
        "vp-flush-kernel",
        "the same flush comparison under --apic kernel (the native shootdown uses KVM's in-kernel APIC)",
        figs=tuple(
            GuestFig(
                f"flush-hypercall-{n}",
                f"flush hypercall, {n} target AP(s)",
                f"flush-ipi-invlpg-{n}",
                f"IPI + INVLPG + ack, {n} AP(s)",
            )
            for n in (1, 2, 3)
        ),
        # The flush hypercall works in kernel mode too; `all-calls` makes the guest time it although
        # this very comparison is why `remote-flush` is not recommended there.
        **{
            **VP_KW,
            "hv1_args": ("--hv", "default", "--cpus", "4"),
            "append": "batches=10 n=20 all-calls",
            "quick_append": "batches=3 n=10 all-calls",
        },
    ),
    guest_figures_row(
        "vp-eoi",
        "self-IPI + EOI: HV_X64_MSR_EOI and lazy EOI (VP assist page) vs the APIC EOI (--apic user, 4 VPs)",
        figs=(
            GuestFig(
                "selfipi-eoi-hv-msr", "self-IPI + HV_X64_MSR_EOI", "selfipi-eoi-apic", "self-IPI + x2APIC EOI"
            ),
            GuestFig(
                "selfipi-eoi-lazy",
                "self-IPI + lazy EOI (assist page)",
                "selfipi-eoi-hv-msr",
                "self-IPI + HV_X64_MSR_EOI",
            ),
        ),
        exit_counts=(
            ExitCount("eoi-apic", "none", "exits per self-IPI + x2APIC EOI (host-counted)", "exits"),
            ExitCount("eoi-msr", "none", "exits per self-IPI + HV_X64_MSR_EOI (host-counted)", "exits"),
            ExitCount("eoi-lazy", "none", "exits per self-IPI + lazy EOI (host-counted)", "exits"),
            ExitCount(
                "eoi-msr",
                "eoi-lazy",
                "lazy EOI: exits saved per 1000 interrupts (host-counted)",
                "exits",
                per=1000.0,
            ),
        ),
        **VP_KW,
    ),
]


# ----------------------------------------------------------------------------------------------------------
# Output


def fmt(v: float, unit: str) -> str:
    if v >= 1000:
        return f"{v:,.0f} {unit}"
    if v >= 100:
        return f"{v:.0f} {unit}"
    if v >= 10:
        return f"{v:.1f} {unit}"
    return f"{v:.2f} {unit}"


def markdown(rows: dict[str, dict[str, Any]], order: Sequence[str]) -> str:
    out = [
        "| row | figure | median | p10 | p90 | floor (median) | ratio |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for name in order:
        r = rows.get(name)
        if r is None:
            continue
        if r["status"] != "ok":
            reason = r["reason"].splitlines()[0] if r["reason"] else ""
            out.append(f"| {name} | {r['status']}: {reason.replace('|', '/')} | | | | | |")
            continue
        for f in r["figures"]:
            u, v, fl = f["unit"].replace("us", "µs"), f["value"], f["floor"]
            floor = f"{f['floor_label']}: {fmt(fl['median'], u)}" if fl else "—"
            ratio = f"{f['ratio']:.2f}×" if f["ratio"] is not None else "—"
            out.append(
                f"| {name} | {f['figure']} | {fmt(v['median'], u)} | {fmt(v['p10'], u)} | {fmt(v['p90'], u)} "
                f"| {floor} | {ratio} |"
            )
    return "\n".join(out)


def host_meta(cfg: Config) -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = ""
    try:
        r = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        commit = r.stdout.strip()
    except OSError:
        pass
    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "commit": commit,
        "quick": cfg.quick,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer iterations and runs (a smoke test)")
    ap.add_argument("--json", type=Path, default=RESULTS_DIR / "latest.json", help="where to write the JSON")
    ap.add_argument("--only", action="append", default=[], help="run only these rows (repeatable, or a,b)")
    ap.add_argument("--markdown", action="store_true", help="print only the Markdown table on stdout")
    ap.add_argument("--render", type=Path, help="print the table of a saved results JSON and exit (no runs)")
    ap.add_argument("--list", action="store_true", help="list the rows and exit")
    ap.add_argument("--hv1", help="command that starts hv1 (default: python -m hv1 from this tree, or hv1)")
    ap.add_argument(
        "--kernels", type=Path, default=GUESTS_BUILD, help="guest kernels directory (guests/build)"
    )
    a = ap.parse_args(argv)

    if a.list:
        for row in ROWS:
            print(f"{row.name:20} {row.what}")
        return 0
    if a.render:
        saved = json.loads(a.render.read_text())["rows"]
        known = [r.name for r in ROWS]
        print(markdown(saved, [n for n in known if n in saved] + sorted(n for n in saved if n not in known)))
        return 0

    wanted = [n for item in a.only for n in item.split(",") if n]
    names = [r.name for r in ROWS]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        print(f"unknown row(s): {', '.join(unknown)}; rows: {', '.join(names)}", file=sys.stderr)
        return 2
    cfg = Config(quick=a.quick, hv1_cmd=shlex.split(a.hv1) if a.hv1 else None, kernels=a.kernels.resolve())

    results: dict[str, dict[str, Any]] = {}
    for row in ROWS:
        if wanted and row.name not in wanted:
            continue
        log(f"row {row.name}: {row.what}")
        t0 = time.monotonic()
        try:
            res = row.measure(cfg)
        except Skip as e:
            res = RowResult(row.name, "skipped", str(e))
        except Exception as e:  # one broken row must not lose the others
            res = RowResult(row.name, "error", f"{type(e).__name__}: {e}")
        res.extra["seconds"] = round(time.monotonic() - t0, 1)
        results[row.name] = res.to_json()
        if res.status != "ok":
            log(f"row {row.name}: {res.status}: {res.reason}")

    # --only merges into the existing file so that the saved table stays complete.
    doc: dict[str, Any] = {"meta": host_meta(cfg), "rows": {}}
    if wanted and a.json.exists():
        with contextlib.suppress(OSError, ValueError):
            doc["rows"] = json.loads(a.json.read_text()).get("rows", {})
    doc["rows"].update(results)
    doc["rows"] = {n: doc["rows"][n] for n in names if n in doc["rows"]}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.json.with_suffix(a.json.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    tmp.replace(a.json)

    table = markdown(results, [n for n in names if n in results])
    if a.markdown:
        print(table)
    else:
        print(table)
        print()
        for name, r in results.items():
            if r["status"] != "ok":
                print(f"{name}: {r['status']}: {r['reason']}")
                for t in r["extra"].get("output_tail", []):
                    print(f"    {t}")
        print(f"\nJSON: {a.json}")
    return 1 if any(r["status"] == "error" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
