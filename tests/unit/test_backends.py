"""Backend selection (hv1/backends/base.py): `--backend kvm|emu|auto`, and the emulator's limits as
usage errors (exit 2, one line) before any guest runs."""

from __future__ import annotations

import pytest

from hv1.backends import base
from hv1.cli import main
from hv1.errors import EXIT_USAGE, UsageError


@pytest.mark.parametrize(("usable", "picked"), [(True, "kvm"), (False, "emu")])
def test_auto_picks_kvm_when_dev_kvm_is_usable_else_emu(
    monkeypatch: pytest.MonkeyPatch, usable: bool, picked: str
) -> None:
    monkeypatch.setattr(base, "kvm_usable", lambda: usable)
    assert base.resolve_backend("auto") == picked
    assert base.resolve_backend("kvm") == "kvm" and base.resolve_backend("emu") == "emu"


def test_unknown_backend_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        base.resolve_backend("xen")


def test_emu_with_the_kernel_apic_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--apic user"):
        base.open_vm("emu", "kernel")


def test_cli_emu_kernel_apic_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    from tests.unit.test_cli import _kernel, _mb_aout

    status = main(
        ["run", _kernel(tmp_path, _mb_aout(0x100000, 0x101000)), "--backend", "emu", "--apic", "kernel"]
    )
    err = capsys.readouterr().err
    assert status == EXIT_USAGE and err.count("\n") == 1 and "--apic user" in err, err


def test_exit_kinds_share_kvm_numbering() -> None:
    """The KVM backend passes its exit reason through untranslated (base.EXIT_* = KVM_EXIT_*)."""
    from hv1.backends.kvm import ioctls as k

    for kind in ("IO", "HLT", "MMIO", "IRQ_WINDOW_OPEN", "SHUTDOWN", "INTR", "INTERNAL_ERROR"):
        assert getattr(base, f"EXIT_{kind}") == getattr(k, f"KVM_EXIT_{kind}")
    assert base.EXIT_RDMSR == k.KVM_EXIT_X86_RDMSR and base.EXIT_WRMSR == k.KVM_EXIT_X86_WRMSR
    assert base.EXIT_EXCEPTION == k.KVM_EXIT_EXCEPTION
    assert dict(base.EXIT_NAMES) == k.EXIT_NAMES
