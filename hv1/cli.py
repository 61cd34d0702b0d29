"""Command line: `hv1 run`, `hv1 info`, `hv1 demo`, and the trace tools `hv1 stats`, `hv1 timeline`.

Conventions follow QEMU where there is one: `--memory` sizes take K/M/G suffixes (plain numbers are
MiB), the isa-debug-exit status is (v << 1) | 1, and a mistake on the command line gets one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

from hv1.backends.base import BACKENDS, resolve_backend
from hv1.errors import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, Hv1Error, UsageError
from hv1.hv.inject import InjectError, Injector
from hv1.profiler import Profiler
from hv1.timeline import Timeline
from hv1.trace import TraceError, Tracer, parse_categories

if TYPE_CHECKING:
    from hv1.machine.machine import RunResult

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'128M', '1G', '512K', '64' (MiB, as QEMU's -m) → bytes."""
    m = _SIZE.match(text)
    if not m:
        raise UsageError(f"bad size {text!r}: use a number with an optional K, M or G suffix (e.g. 256M)")
    n = int(m.group(1)) * _UNITS[m.group(2).upper()]
    if n <= 0:
        raise UsageError(f"bad size {text!r}: must be positive")
    return n


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"hv1: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hv1", description="The Microsoft Hypervisor Interface (Hv#1) on Linux KVM.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="boot a Multiboot or Linux kernel (like qemu-system-x86_64 -kernel)")
    r.add_argument(
        "kernel", help="Multiboot kernel (ELF32/ELF64 or a.out-kludge), Linux bzImage or PVH vmlinux"
    )
    r.add_argument("--cpus", "-smp", default="1", help="number of virtual processors, 1-64 (default 1)")
    r.add_argument(
        "--vp-index-map",
        default=None,
        metavar="I0,I1,...",
        help="Hv VP index of each vCPU in APIC-ID order (default 0..N-1); the first must be 0",
    )
    r.add_argument("--memory", "-m", default="128M", help="guest RAM, e.g. 256M or 1G (default 128M)")
    r.add_argument("--append", default="", help="kernel command line")
    r.add_argument("--module", action="append", default=[], metavar="FILE[,ARGS]",
                   help="Multiboot module (repeatable); ARGS become its string")  # fmt: skip
    r.add_argument("--initrd", metavar="FILE", help="Linux: initial ramdisk (e.g. a cpio initramfs)")
    r.add_argument("--linux-entry", default="pvh", choices=("pvh", "64bit"),
                   help="Linux bzImage: pvh = decompress the payload on the host, enter through PVH "
                        "(default: no in-guest decompressor); 64bit = the 64-bit boot protocol")  # fmt: skip
    r.add_argument("--host-workarounds", default="auto", choices=("auto", "on", "off"),
                   help="emulated-ring-0 host workarounds (int3 -> #BP, fwait skipped, CX16 hidden); "
                        "auto: when kvm_pvm is loaded")  # fmt: skip
    r.add_argument("--apic", default="kernel", choices=("kernel", "user"),
                   help="kernel: KVM's local APIC; user: hv1's APIC model (full TLFS fidelity)")  # fmt: skip
    r.add_argument("--hv", default="default", metavar="PROFILE",
                   help="capability profile: minimal | default, with +feature/-feature edits")  # fmt: skip
    r.add_argument("--backend", default="kvm", choices=BACKENDS,
                   help="kvm (default): /dev/kvm; emu: the Unicorn CPU emulator (needs --apic user, "
                        "pip install 'hv1[emu]'); auto: kvm when /dev/kvm works, else emu")  # fmt: skip
    r.add_argument("--trace", default="", metavar="CATS", help="comma-separated trace categories, or 'all'")
    r.add_argument("--trace-json", metavar="FILE", help="write every trace event as a JSON line to FILE")
    r.add_argument("--trace-perfetto", metavar="FILE",
                   help="write the trace as a Chrome JSON timeline (ui.perfetto.dev) to FILE")  # fmt: skip
    r.add_argument("--inject", action="append", default=[], metavar="SPEC",
                   help="fault injection rule (repeatable), e.g. "
                   "hypercall=HvCallPostMessage:status=INSUFFICIENT_BUFFERS:every=3; "
                   "see `hv1 info --inject`")  # fmt: skip
    r.add_argument("--serial", metavar="FILE", help="write COM1 output to FILE instead of stdout")
    r.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop the guest after this long (exit 124)"
    )
    r.add_argument("--on-crash", choices=("stop", "continue"), default="stop",
                   help="what a guest crash notification does (default: stop, exit 6)")  # fmt: skip
    r.add_argument("--no-reboot", action="store_true",
                   help="exit (status 0) instead of rebooting when the guest resets")  # fmt: skip
    r.add_argument("--stats", action="store_true",
                   help="print exit, hypercall and MSR counts when the guest stops")  # fmt: skip
    r.add_argument("--profile", metavar="FILE",
                   help="per-exit cost breakdown (hv1/profiler.py): a table on stderr when the guest "
                   "stops, and the JSON summary in FILE ('-': the table only)")  # fmt: skip
    r.add_argument("--gdb", metavar="HOST:PORT",
                   help="gdb remote stub on HOST:PORT (QEMU's -gdb; ':1234' or 'tcp::1234' is localhost): "
                   "every VP is a thread, `target remote :1234` in gdb")  # fmt: skip
    r.add_argument("--gdb-wait", action="store_true",
                   help="with --gdb: every VP waits before its first instruction until gdb continues "
                   "(QEMU's -S)")  # fmt: skip

    i = sub.add_parser("info", help="show host KVM capabilities and what hv1 will use")
    i.add_argument("--hv", metavar="PROFILE", help="decode the CPUID leaves of a capability profile")
    i.add_argument("--apic", default="kernel", choices=("kernel", "user"), help="APIC mode for --hv")
    i.add_argument("--hypercalls", action="store_true", help="print the hypercall table")
    i.add_argument("--inject", action="store_true",
                   help="print the --inject grammar and each injectable outcome's TLFS reason")  # fmt: skip

    st = sub.add_parser("stats", help="hypercall/MSR counts and latency percentiles of a --trace-json file")
    st.add_argument("trace", metavar="FILE", help="a file written by hv1 run --trace-json")
    st.add_argument("--histogram", metavar="PNG", help="also draw a latency histogram (needs matplotlib)")

    tl = sub.add_parser("timeline", help="convert a --trace-json file to a Chrome JSON timeline (Perfetto)")
    tl.add_argument("trace", metavar="FILE", help="a file written by hv1 run --trace-json")
    tl.add_argument("out", metavar="OUT", help="the timeline to write (open it in ui.perfetto.dev)")

    d = sub.add_parser("demo", help="build and run the demo guest")
    d.add_argument("--cpus", default="2", help="virtual processors (default 2)")
    d.add_argument("--apic", default=None, choices=("kernel", "user"),
                   help="APIC mode (default: kernel on KVM, user on the emulator)")  # fmt: skip
    d.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="kvm, emu or auto (default: KVM if /dev/kvm is usable, else the emulator)",
    )
    return p


def _parse_cpus(text: str) -> int:
    try:
        n = int(text, 0)
    except ValueError:
        raise UsageError(f"--cpus must be a whole number, not {text!r}") from None
    if not 1 <= n <= 64:
        raise UsageError(f"--cpus must be between 1 and 64, not {n}")
    return n


def _vp_index_map(spec: str | None, cpus: int) -> list[int] | None:
    from hv1.hv.vpset import parse_vp_index_map

    if spec is None:
        return None
    try:
        return parse_vp_index_map(spec, cpus)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _cmd_run(a: argparse.Namespace) -> int:
    from hv1.machine.machine import Machine, MachineConfig
    from hv1.machine.multiboot import Module

    cpus = _parse_cpus(a.cpus)
    memory = parse_size(a.memory)
    if a.timeout is not None and a.timeout <= 0:
        raise UsageError("--timeout must be positive")
    modules = []
    for spec in a.module:
        path, _, args = spec.partition(",")
        if not path:
            raise UsageError(f"bad --module {spec!r}: expected FILE[,ARGS]")
        if not os.path.isfile(path):
            raise UsageError(f"module not found: {path}")
        modules.append(Module(path, args))
    if not os.path.exists(a.kernel):
        raise UsageError(f"kernel image not found: {a.kernel}")
    if a.initrd is not None and not os.path.isfile(a.initrd):
        raise UsageError(f"initrd not found: {a.initrd}")
    if a.gdb_wait and a.gdb is None:
        raise UsageError("--gdb-wait needs --gdb HOST:PORT")
    if a.gdb is not None:
        from hv1.gdbstub.server import parse_address

        try:
            parse_address(a.gdb)
        except ValueError as e:
            raise UsageError(str(e)) from None
    try:
        cats = parse_categories(a.trace)
    except TraceError as e:
        raise UsageError(str(e)) from None
    try:
        injector = Injector.parse(a.inject)  # every spec checked before anything is opened
    except InjectError as e:
        raise UsageError(str(e)) from None
    json_out = open(a.trace_json, "w") if a.trace_json else None  # noqa: SIM115 - closed below
    perfetto_out = open(a.trace_perfetto, "w") if a.trace_perfetto else None  # noqa: SIM115 - closed below
    serial = open(a.serial, "wb") if a.serial else None  # noqa: SIM115 - closed below
    timeline = Timeline(perfetto_out) if perfetto_out else None
    tracer = Tracer(cats, text=sys.stderr, json_out=json_out, timeline=timeline)
    cfg = MachineConfig(
        kernel=a.kernel, cpus=cpus, memory=memory, append=a.append, modules=modules, apic=a.apic,
        hv=a.hv, timeout=a.timeout, on_crash=a.on_crash, no_reboot=a.no_reboot,
        vp_index_map=_vp_index_map(a.vp_index_map, cpus), inject=injector, initrd=a.initrd,
        linux_entry=a.linux_entry, host_workarounds=a.host_workarounds, gdb=a.gdb, gdb_wait=a.gdb_wait,
        backend=a.backend,
    )  # fmt: skip
    prof = None
    if a.profile:
        from hv1 import profiler

        prof = profiler.ACTIVE = Profiler()  # before the machine: the VP loops read it
    try:
        machine = Machine(cfg, tracer=tracer, serial_out=serial)
        if machine.boot.linux is not None and machine.boot.linux.note:
            sys.stderr.write(f"hv1: note: {machine.boot.linux.note}\n")
        try:
            result = machine.run()
        finally:
            machine.close()
    finally:
        tracer.close()
        if json_out:
            json_out.close()
        if perfetto_out:
            perfetto_out.close()
        if serial:
            serial.close()
    if result.reason not in ("debug-exit",) and result.status != EXIT_OK:
        sys.stderr.write(f"hv1: {result.reason} (exit status {result.status})\n")
    if prof is not None:
        _write_profile(prof, a.profile)
    if a.stats:
        sys.stderr.write(format_run_stats(result))
    return result.status


def format_run_stats(result: RunResult) -> str:
    """`--stats`: exits by kind, then hypercalls by TLFS name and MSR reads/writes by name, the most
    frequent first (one line each, "none" when there were none)."""

    def by_count(counts: dict[str, int]) -> str:
        items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return ", ".join(f"{k}={v}" for k, v in items) or "none"

    return (
        "hv1: exits: " + ", ".join(f"{k}={v}" for k, v in sorted(result.exits.items())) + "\n"
        f"hv1: hypercalls: {by_count(result.hypercalls)}\n"
        f"hv1: rdmsr: {by_count(result.rdmsrs)}\n"
        f"hv1: wrmsr: {by_count(result.wrmsrs)}\n"
    )


def _write_profile(prof: Profiler, path: str) -> None:
    import json

    from hv1 import profiler

    profiler.ACTIVE = None
    summary = prof.summary()
    sys.stderr.write("hv1: per-exit profile (hv1/profiler.py)\n" + profiler.format_summary(summary) + "\n")
    if path != "-":
        with open(path, "w") as f:
            json.dump(summary, f, indent=2, sort_keys=True)
            f.write("\n")


def _cmd_info(a: argparse.Namespace) -> int:
    from hv1.hv import caps as capsmod

    if a.inject:
        from hv1.hv.inject import describe

        print(describe())
        return EXIT_OK
    if a.hypercalls:
        from hv1.hv.enlightenments import ENLIGHTENMENT_HYPERCALLS
        from hv1.hv.hypercalls import core_table, format_table, virtualization_host
        from hv1.hv.hypercalls.synic_calls import DEFS as SYNIC_HYPERCALLS

        # Every hypercall a partition can have: the core ones plus what the subsystems register, and
        # the virtualization-host calls of a partition attached to the engine (docs/partitions.md).
        table = core_table()
        for d in (*SYNIC_HYPERCALLS, *ENLIGHTENMENT_HYPERCALLS, *virtualization_host.DEFS):
            if table.get(d.code) is None:
                table.register(d)
        for d in virtualization_host.PORT_DEFS:  # same gates, the engine's handlers
            table.replace(d)
        try:
            caps = capsmod.parse_profile(a.hv, apic_mode=a.apic) if a.hv else None
        except ValueError as e:
            raise UsageError(f"--hv: {e}") from None
        print(format_table(table, caps))
        return EXIT_OK
    if a.hv:
        try:
            c = capsmod.parse_profile(a.hv, apic_mode=a.apic)
        except ValueError as e:
            raise UsageError(f"--hv: {e}") from None
        print(capsmod.describe(c))
        return EXIT_OK
    from hv1.backends.base import kvm_usable
    from hv1.backends.kvm import guest_debug_probe, host_workarounds
    from hv1.backends.kvm.vm import KvmSystem, host_info

    print("backends (hv1 run --backend kvm|emu|auto; default kvm):")
    kvm = "usable" if kvm_usable() else "not usable: no read/write access to /dev/kvm"
    print(f"  kvm                    {kvm}")
    print(f"  emu                    {_emu_status()}")
    print(f"  auto would pick        {resolve_backend('auto')}")
    w = host_workarounds.detect()
    print("host workarounds (hv1/backends/kvm/host_workarounds.py):")
    print(f"  needed                 {'yes' if w.enabled else 'no'} ({w.reason})")
    if w.enabled:
        print("  applied                int3 at CPL0 -> #BP (RIP+1), fwait skipped, CPUID.1:ECX.CX16 hidden")
        print(f"  Linux command line     {w.recommended_cmdline}")
        print("                         (add to --append: this host cannot emulate what these turn off)")
    if not kvm_usable():
        return EXIT_OK
    system = KvmSystem()
    try:
        h = host_info(system)
        try:
            dbg: str = guest_debug_probe.host_support(system.fd, system.vcpu_mmap_size).describe()
        except OSError as e:
            dbg = f"probe failed: {e}"
    finally:
        system.close()
    yes = {True: "yes", False: "no"}
    print("host KVM (/dev/kvm):")
    print(f"  API version            {h.api_version}")
    print(f"  max vCPUs              {h.max_vcpus}")
    print(f"  sync regs              {h.sync_regs:#x} (hv1 reads registers through kvm_run)")
    print(f"  split irqchip          {yes[h.split_irqchip]} (--apic kernel)")
    print(f"  userspace MSR exits    {yes[h.user_space_msr]}, MSR filter {yes[h.msr_filter]}")
    print(f"  immediate exit         {yes[h.immediate_exit]} (vCPU kicks)")
    print(f"  KVM_SIGNAL_MSI         {yes[h.signal_msi]}")
    print(f"  TSC frequency          {h.tsc_khz} kHz")
    print(f"  in-kernel Hyper-V      {yes[h.in_kernel_hyperv]} (hv1 implements Hv#1 itself either way)")
    print(f"  KVM SynIC (SYNIC2)     {yes[h.synic_auto_eoi]} (its AutoEOI bitmap: AutoEOI in --apic kernel)")
    print(f"  PV CPUID enforcement   {yes[h.enforce_pv_cpuid]} (KVM's own PV MSRs #GP)")
    print(f"  debug registers        deliver (probed at CPL0): {dbg}")
    print("                         (--gdb: without write breakpoints, `watch` write-protects the page)")
    print("hv1 will use:")
    print("  hypercall trap         `out` to port 0x90 from the hypercall page (VMCALL is not used)")
    print("  APIC modes             kernel (split irqchip + KVM_SIGNAL_MSI), user (hv1's APIC model)")
    print("  devices                COM1 16550 (IRQ 4), isa-debug-exit 0xf4, fw_cfg 0x510, PIC/PIT stubs,")
    print("                         CMOS/RTC, i8042 reset line, I/O APIC at 0xfec00000")
    print("  Linux                  bzImage or PVH vmlinux, --initrd, ACPI tables (RSDP/XSDT/FADT/MADT/DSDT)")
    print("  test devices (on)      hyperv-testdev at 0x3000 (QEMU-compatible SynIC test device),")
    print("                         hv1-time-test at 0x3004 (pause reference time, simulate TSC migration),")
    print("                         hv1-bench at 0x3008 (timed host posts/interrupts for bench/run.py)")
    print("  profiles               minimal, default (see `hv1 info --hv default`)")
    return EXIT_OK


def _emu_status() -> str:
    """The emulator backend's availability, for `hv1 info`."""
    try:
        import unicorn
    except ImportError:
        return "not installed (pip install 'hv1[emu]')"
    return f"Unicorn {unicorn.__version__} (QEMU TCG): --apic user only, ~1.3 us per guest instruction"


def _cmd_demo(a: argparse.Namespace) -> int:
    from hv1.machine.guests import build_guest

    kernel = build_guest("demo")
    # The demo is the first thing a new user runs: unlike `hv1 run` it takes whichever backend this
    # host has (and the APIC mode that backend does), saying so when it is the emulator.
    backend = resolve_backend(a.backend)
    apic = a.apic or ("kernel" if backend == "kvm" else "user")
    if backend == "emu" and a.backend == "auto":
        sys.stderr.write(
            "hv1: no usable /dev/kvm: running the demo on the emulator backend (--backend emu)\n"
        )
    ns = _build_parser().parse_args(
        ["run", str(kernel), "--cpus", a.cpus, "--apic", apic, "--backend", backend, "--timeout", "120"]
    )
    status = _cmd_run(ns)
    # The demo guest exits through the debug port with 0, i.e. status 1 under QEMU's convention.
    return EXIT_OK if status == 1 else status


def _read_records(path: str) -> list[dict[str, Any]]:
    from hv1.timeline import read_trace_json

    try:
        with open(path) as f:
            return list(read_trace_json(f))
    except OSError as e:
        raise UsageError(f"cannot read trace {path}: {e.strerror}") from None
    except ValueError as e:
        raise UsageError(f"{path}: {e} (expected a file written by hv1 run --trace-json)") from None


def _cmd_stats(a: argparse.Namespace) -> int:
    from hv1.stats import PlotUnavailable, collect, format_stats, histogram

    series, injected = collect(_read_records(a.trace))
    print(format_stats(series, injected))
    if a.histogram:
        try:
            histogram(series, a.histogram)
        except PlotUnavailable as e:
            raise UsageError(str(e)) from None
        except OSError as e:
            raise UsageError(f"cannot write {a.histogram}: {e.strerror}") from None
    return EXIT_OK


def _cmd_timeline(a: argparse.Namespace) -> int:
    from hv1.timeline import convert

    records = _read_records(a.trace)
    try:
        with open(a.out, "w") as out:
            n = convert(records, out)
    except OSError as e:
        raise UsageError(f"cannot write {a.out}: {e.strerror}") from None
    sys.stderr.write(f"hv1: {n} trace events written to {a.out} (open it in ui.perfetto.dev)\n")
    return EXIT_OK


def _commands() -> dict[str, Callable[[argparse.Namespace], int]]:
    """Sub-command -> handler, looked up when the command runs (tests replace handlers)."""
    return {
        "run": _cmd_run,
        "info": _cmd_info,
        "demo": _cmd_demo,
        "stats": _cmd_stats,
        "timeline": _cmd_timeline,
    }


class _FaultWatch:
    """While installed, an exception that escapes any thread (threading.excepthook) or is otherwise
    swallowed by Python (sys.unraisablehook: finalizers, callbacks) is printed with a traceback and
    recorded, so the command exits with EXIT_INTERNAL instead of whatever status it had: a failure
    must never read as a status the guest chose (those are odd, errors.py)."""

    def __init__(self) -> None:
        self.faults = 0
        self._thread_hook = threading.excepthook
        self._unraisable_hook = sys.unraisablehook

    def __enter__(self) -> _FaultWatch:
        threading.excepthook = self._thread_fault
        sys.unraisablehook = self._unraisable
        return self

    def __exit__(self, *exc: object) -> None:
        threading.excepthook = self._thread_hook
        sys.unraisablehook = self._unraisable_hook

    def _thread_fault(self, a: threading.ExceptHookArgs) -> None:
        if a.exc_type is SystemExit:
            return  # threading's own convention: a thread that calls sys.exit() just ends
        self.faults += 1
        name = a.thread.name if a.thread is not None else "?"
        _internal_error(f"uncaught exception in thread {name}", a.exc_type, a.exc_value, a.exc_traceback)

    def _unraisable(self, u: sys.UnraisableHookArgs) -> None:
        self.faults += 1
        what = u.err_msg or "exception ignored"
        _internal_error(f"{what} {u.object!r}", u.exc_type, u.exc_value, u.exc_traceback)


def _internal_error(
    what: str, exc_type: type[BaseException], exc: BaseException | None, tb: TracebackType | None
) -> None:
    try:
        sys.stderr.write(f"hv1: internal error (a bug in hv1, exit status {EXIT_INTERNAL}): {what}\n")
        sys.stderr.write("".join(traceback.format_exception(exc_type, exc, tb)))
        sys.stderr.flush()
    except Exception:  # stderr itself is gone: the exit status still says it
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """The command line. Returns the exit status: the command's, or EXIT_INTERNAL (with a diagnostic
    on stderr) when anything failed inside hv1 — an exception in this thread or any other, during the
    run or while shutting it down. Only a guest's debug-exit write yields an odd status."""
    args = _build_parser().parse_args(argv)
    with _FaultWatch() as watch:
        try:
            status = _commands()[args.command](args)
        except Hv1Error as e:
            sys.stderr.write(f"hv1: {e}\n")
            status = e.status
        except KeyboardInterrupt:
            status = 130
        except BrokenPipeError:
            # Whoever reads stdout stopped (`hv1 info | head`): not a fault. Later flushes go nowhere.
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            status = EXIT_OK
        except Exception as e:  # a bug: never Python's status 1, which reads as "the guest wrote 0"
            _internal_error(f"{args.command} failed", type(e), e, e.__traceback__)
            status = EXIT_INTERNAL
    if watch.faults and status != EXIT_INTERNAL:
        sys.stderr.write(f"hv1: exit status {status} replaced by {EXIT_INTERNAL}: hv1 failed meanwhile\n")
        status = EXIT_INTERNAL
    return status


def entry() -> NoReturn:
    """The `hv1` program (console script and `python -m hv1`): main(), then exit without Python's
    interpreter shutdown. Shutdown would run while VP threads that did not stop in time may still be
    inside KVM_RUN, reset signal handlers under them, and turn late exceptions into a status of its
    own; the status main() decided is final. Open files are flushed first (main() closed the trace
    and serial files; stdout carries COM1)."""
    try:
        status = main()
    except SystemExit as e:  # argparse: 0 for --help, EXIT_USAGE for a mistake
        status = e.code if isinstance(e.code, int) else EXIT_USAGE
    for f in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing more can be said there
            f.flush()
    os._exit(status)


if __name__ == "__main__":
    entry()
