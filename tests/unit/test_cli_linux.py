"""`hv1 run` for Linux kernels and `hv1 info`'s host-workaround section: command-line mistakes get one
line and exit status 2, before /dev/kvm is opened (the kernel is loaded first)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from hv1.backends.kvm import host_workarounds
from hv1.cli import main
from hv1.errors import EXIT_OK, EXIT_USAGE
from tests.unit.test_cli import _kernel, _mb_aout, run_cli
from tests.unit.test_linux_loader import tiny_bzimage, tiny_vmlinux


def no_kvm(monkeypatch: pytest.MonkeyPatch) -> None:
    """/dev/kvm is missing, whatever this host has: nothing here may start a VM."""
    import hv1.backends.base as base
    import hv1.backends.kvm.vm as vm

    real_open = os.open

    def fake_open(path: str, flags: int, *a: object) -> int:
        if path == vm.KVM_PATH:
            raise FileNotFoundError(path)
        return real_open(path, flags, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(vm.os, "open", fake_open)
    monkeypatch.setattr(base, "kvm_usable", lambda: False)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--initrd", "/no/such/initrd"], "initrd not found"),
        (["--linux-entry", "16bit"], "invalid choice"),
        (["--host-workarounds", "maybe"], "invalid choice"),
    ],
)
def test_linux_option_mistakes(
    capsys: pytest.CaptureFixture[str], tmp_path: os.PathLike[str], extra: list[str], message: str
) -> None:
    status, err = run_cli(capsys, "run", _kernel(tmp_path, tiny_vmlinux()), *extra)
    assert status == EXIT_USAGE and err.count("\n") == 1 and message in err, err


def test_initrd_with_a_multiboot_kernel_is_a_mistake(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"x")
    status, err = run_cli(
        capsys, "run", _kernel(tmp_path, _mb_aout(0x100000, 0x101000)), "--initrd", str(initrd)
    )
    assert status == EXIT_USAGE and "--initrd is for Linux kernels" in err, err


@pytest.mark.parametrize(
    ("memory", "message"),
    [("8M", "raise --memory"), ("64M", None)],
)
def test_bzimage_is_loaded_before_kvm_is_opened(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, memory: str,
    message: str | None,
) -> None:  # fmt: skip
    no_kvm(monkeypatch)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    kernel = _kernel(tmp_path, tiny_bzimage(gzip.compress(tiny_vmlinux())))
    status, err = run_cli(capsys, "run", kernel, "--memory", memory, "--append", "console=ttyS0")
    assert status == EXIT_USAGE
    # A kernel that does not fit is reported as such; one that loads gets as far as opening /dev/kvm.
    assert (message or "does not exist") in err, err


def test_info_prints_the_host_workarounds_and_command_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    no_kvm(monkeypatch)
    monkeypatch.setattr(
        host_workarounds, "detect", lambda mode="auto": host_workarounds.HostWorkarounds(True, "t")
    )
    assert main(["info"]) == EXIT_OK  # no /dev/kvm: the backends and workarounds parts, then no KVM part
    out = capsys.readouterr().out
    assert "host workarounds" in out and host_workarounds.RECOMMENDED_CMDLINE in out
