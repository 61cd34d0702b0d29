"""CLI mistakes get one clear line on stderr and exit status 2, before any KVM work."""

from __future__ import annotations

import os
import struct

import pytest

from hv1.cli import main, parse_size
from hv1.errors import EXIT_USAGE, UsageError


@pytest.mark.parametrize(("text", "size"), [("128M", 128 << 20), ("1G", 1 << 30), ("64", 64 << 20),
                                            ("512K", 512 << 10), ("2GiB", 2 << 30)])  # fmt: skip
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "12Q", "-5M", "0", "lots"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


def _kernel(tmp_path: os.PathLike[str], data: bytes) -> str:
    p = os.path.join(tmp_path, "k.bin")
    with open(p, "wb") as f:
        f.write(data)
    return p


def _mb_aout(load: int, end: int) -> bytes:
    magic, flags = 0x1BADB002, 0x10003
    hdr = struct.pack("<III", magic, flags, (-(magic + flags)) & 0xFFFFFFFF)
    return hdr + struct.pack("<IIIII", load, load, 0, end, load + 32) + b"\xf4" * 64


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    try:
        status = main(list(args))
    except SystemExit as e:  # argparse errors
        status = int(e.code or 0)
    err = capsys.readouterr().err
    return status, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "/nonexistent/kernel"], "kernel image not found"),
        (["run", "KERNEL", "--cpus", "0"], "--cpus must be between 1 and 64"),
        (["run", "KERNEL", "--cpus", "65"], "--cpus must be between 1 and 64"),
        (["run", "KERNEL", "--cpus", "two"], "--cpus must be a whole number"),
        (["run", "KERNEL", "--memory", "lots"], "bad size"),
        (["run", "KERNEL", "--memory", "1K"], "--memory must be between"),
        (["run", "KERNEL", "--memory", "64G"], "--memory must be between"),
        (["run", "KERNEL", "--module", "/nonexistent/mod"], "module not found"),
        (["run", "KERNEL", "--trace", "bogus"], "unknown trace category"),
        (["run", "KERNEL", "--timeout", "-1"], "--timeout must be positive"),
        (["run", "KERNEL", "--apic", "weird"], "invalid choice"),
        (["run", "KERNEL", "--hv", "default,+no-such-feature"], "--hv"),
        (["frobnicate"], "invalid choice"),
        (["run", "KERNEL", "--gdb-wait"], "--gdb-wait needs --gdb"),
        (["run", "KERNEL", "--gdb", "1234"], "bad --gdb address"),
        (["run", "KERNEL", "--gdb", ":99999"], "bad --gdb port"),
    ],
)
def test_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: os.PathLike[str], args: list[str],
                      message: str) -> None:  # fmt: skip
    kernel = _kernel(tmp_path, _mb_aout(0x100000, 0x101000))
    args = [kernel if a == "KERNEL" else a for a in args]
    status, err = run_cli(capsys, *args)
    assert status == EXIT_USAGE
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("hv1: ") and message in lines[0], err


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"just some text, no kernel here\n" * 4, "no Multiboot header"),
        (
            struct.pack("<III", 0x1BADB002, 3, (-(0x1BADB002 + 3)) & 0xFFFFFFFF) + bytes(64),
            "not an ELF image",
        ),
        (_mb_aout(0x7F00000, 0x9000000), "does not fit"),
    ],
)
def test_bad_kernels(capsys: pytest.CaptureFixture[str], tmp_path: os.PathLike[str], data: bytes,
                     message: str) -> None:  # fmt: skip
    status, err = run_cli(capsys, "run", _kernel(tmp_path, data), "--memory", "128M")
    assert status == EXIT_USAGE
    assert err.count("\n") == 1 and message in err, err


def test_directory_as_kernel(capsys: pytest.CaptureFixture[str], tmp_path: os.PathLike[str]) -> None:
    status, err = run_cli(capsys, "run", str(tmp_path))
    assert status == EXIT_USAGE and "directory" in err


@pytest.mark.parametrize(
    ("error", "hint"),
    [(FileNotFoundError, "modprobe kvm"), (PermissionError, "usermod -aG kvm")],
)
def test_missing_or_forbidden_dev_kvm_says_how_to_fix(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: os.PathLike[str],
    error: type[OSError],
    hint: str,
) -> None:
    import hv1.backends.kvm.vm as vm

    real_open = os.open

    def fake_open(path: str, flags: int, *a: object) -> int:
        if path == vm.KVM_PATH:
            raise error(path)
        return real_open(path, flags, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(vm.os, "open", fake_open)
    status, err = run_cli(capsys, "run", _kernel(tmp_path, _mb_aout(0x100000, 0x101000)))
    assert status == EXIT_USAGE
    assert err.count("\n") == 1 and "/dev/kvm" in err and hint in err, err


def test_gdb_options_reach_the_machine_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    """`--gdb HOST:PORT --gdb-wait` (QEMU's -gdb/-S) end up in MachineConfig, which wires the stub."""
    import hv1.machine.machine as machine

    seen = []

    def fake_machine(cfg: machine.MachineConfig, **_: object) -> None:
        seen.append(cfg)
        raise UsageError("stop here")  # main() reports it as one line with its status

    monkeypatch.setattr(machine, "Machine", fake_machine)
    kernel = _kernel(tmp_path, _mb_aout(0x100000, 0x101000))
    assert main(["run", kernel, "--gdb", "tcp::1234", "--gdb-wait"]) == UsageError.status
    assert seen[0].gdb == "tcp::1234" and seen[0].gdb_wait


def test_stats_lines_count_per_hypercall_and_msr() -> None:
    """`hv1 run --stats`: exits by kind (sorted by name), then hypercalls and MSR reads/writes by
    name, the most frequent first, "none" for a kind that did not occur."""
    from hv1.cli import format_run_stats
    from hv1.machine.machine import RunResult

    r = RunResult(0, "debug-exit", exits={"wrmsr": 3, "io": 7},
                  hypercalls={"HvCallSignalEvent": 1, "HvCallPostMessage": 4},
                  wrmsrs={"HV_X64_MSR_EOM": 2, "HV_X64_MSR_SIMP": 2})  # fmt: skip
    assert format_run_stats(r).splitlines() == [
        "hv1: exits: io=7, wrmsr=3",
        "hv1: hypercalls: HvCallPostMessage=4, HvCallSignalEvent=1",
        "hv1: rdmsr: none",
        "hv1: wrmsr: HV_X64_MSR_EOM=2, HV_X64_MSR_SIMP=2",
    ]
