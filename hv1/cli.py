"""Command line: `hv1 run`, `hv1 info`, `hv1 demo`.

Conventions follow QEMU where there is one: `--memory` sizes take K/M/G suffixes (plain numbers are
MiB), the isa-debug-exit status is (v << 1) | 1, and a mistake on the command line gets one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from hv1.backends.base import BACKENDS, resolve_backend
from hv1.errors import EXIT_OK, EXIT_USAGE, Hv1Error, UsageError
from hv1.trace import TraceError, Tracer, parse_categories

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

    r = sub.add_parser("run", help="boot a Multiboot kernel (like qemu-system-x86_64 -kernel)")
    r.add_argument("kernel", help="Multiboot kernel image (ELF32/ELF64 or a.out-kludge)")
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
    r.add_argument("--apic", default="kernel", choices=("kernel", "user"),
                   help="kernel: KVM's local APIC; user: hv1's APIC model (full TLFS fidelity)")  # fmt: skip
    r.add_argument("--hv", default="default", metavar="PROFILE",
                   help="capability profile: minimal | default, with +feature/-feature edits")  # fmt: skip
    r.add_argument("--backend", default="kvm", choices=BACKENDS,
                   help="kvm (default): /dev/kvm; emu: the Unicorn CPU emulator (needs --apic user, "
                        "pip install 'hv1[emu]'); auto: kvm when /dev/kvm works, else emu")  # fmt: skip
    r.add_argument("--trace", default="", metavar="CATS", help="comma-separated trace categories, or 'all'")
    r.add_argument("--trace-json", metavar="FILE", help="write every trace event as a JSON line to FILE")
    r.add_argument("--serial", metavar="FILE", help="write COM1 output to FILE instead of stdout")
    r.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop the guest after this long (exit 124)"
    )
    r.add_argument("--on-crash", choices=("stop", "continue"), default="stop",
                   help="what a guest crash notification does (default: stop, exit 6)")  # fmt: skip
    r.add_argument("--no-reboot", action="store_true",
                   help="exit (status 0) instead of rebooting when the guest resets")  # fmt: skip
    r.add_argument("--stats", action="store_true", help="print exit counts when the guest stops")

    i = sub.add_parser("info", help="show host KVM capabilities and what hv1 will use")
    i.add_argument("--hv", metavar="PROFILE", help="decode the CPUID leaves of a capability profile")
    i.add_argument("--apic", default="kernel", choices=("kernel", "user"), help="APIC mode for --hv")
    i.add_argument("--hypercalls", action="store_true", help="print the hypercall table")

    d = sub.add_parser("demo", help="build and run the demo guest")
    d.add_argument("--cpus", default="2", help="virtual processors (default 2)")
    d.add_argument("--apic", default="kernel", choices=("kernel", "user"))
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
    try:
        cats = parse_categories(a.trace)
    except TraceError as e:
        raise UsageError(str(e)) from None
    json_out = open(a.trace_json, "w") if a.trace_json else None  # noqa: SIM115 - closed below
    serial = open(a.serial, "wb") if a.serial else None  # noqa: SIM115 - closed below
    tracer = Tracer(cats, text=sys.stderr, json_out=json_out)
    cfg = MachineConfig(
        kernel=a.kernel, cpus=cpus, memory=memory, append=a.append, modules=modules, apic=a.apic,
        hv=a.hv, timeout=a.timeout, on_crash=a.on_crash, no_reboot=a.no_reboot,
        vp_index_map=_vp_index_map(a.vp_index_map, cpus), backend=a.backend,
    )  # fmt: skip
    try:
        machine = Machine(cfg, tracer=tracer, serial_out=serial)
        try:
            result = machine.run()
        finally:
            machine.close()
    finally:
        tracer.close()
        if json_out:
            json_out.close()
        if serial:
            serial.close()
    if result.reason not in ("debug-exit",) and result.status != EXIT_OK:
        sys.stderr.write(f"hv1: {result.reason} (exit status {result.status})\n")
    if a.stats:
        sys.stderr.write(
            "hv1: exits: " + ", ".join(f"{k}={v}" for k, v in sorted(result.exits.items())) + "\n"
        )
    return result.status


def _cmd_info(a: argparse.Namespace) -> int:
    from hv1.hv import caps as capsmod

    if a.hypercalls:
        from hv1.hv.enlightenments import ENLIGHTENMENT_HYPERCALLS
        from hv1.hv.hypercalls import core_table, format_table
        from hv1.hv.hypercalls.synic_calls import DEFS as SYNIC_HYPERCALLS

        # Every hypercall a partition can have: the core ones plus what the subsystems register.
        table = core_table()
        for d in (*SYNIC_HYPERCALLS, *ENLIGHTENMENT_HYPERCALLS):
            if table.get(d.code) is None:
                table.register(d)
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
    from hv1.backends.kvm.vm import KvmSystem, host_info

    print("backends (hv1 run --backend kvm|emu|auto; default kvm):")
    kvm = "usable" if kvm_usable() else "not usable: no read/write access to /dev/kvm"
    print(f"  kvm                    {kvm}")
    print(f"  emu                    {_emu_status()}")
    print(f"  auto would pick        {resolve_backend('auto')}")
    if not kvm_usable():
        return EXIT_OK
    system = KvmSystem()
    h = host_info(system)
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
    print(f"  PV CPUID enforcement   {yes[h.enforce_pv_cpuid]} (KVM's own PV MSRs #GP)")
    print("hv1 will use:")
    print("  hypercall trap         `out` to port 0x90 from the hypercall page (VMCALL is not used)")
    print("  APIC modes             kernel (split irqchip + KVM_SIGNAL_MSI), user (hv1's APIC model)")
    print("  devices                COM1 16550, isa-debug-exit 0xf4, fw_cfg 0x510, PIC/PIT/CMOS stubs")
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
    ns = _build_parser().parse_args(
        ["run", str(kernel), "--cpus", a.cpus, "--apic", a.apic, "--timeout", "60"]
    )
    status = _cmd_run(ns)
    # The demo guest exits through the debug port with 0, i.e. status 1 under QEMU's convention.
    return EXIT_OK if status == 1 else status


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "info":
            return _cmd_info(args)
        return _cmd_demo(args)
    except Hv1Error as e:
        sys.stderr.write(f"hv1: {e}\n")
        return e.status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
