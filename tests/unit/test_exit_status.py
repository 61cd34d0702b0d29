"""No failure ever exits with an odd status (issue 9, bug 7; hv1/errors.py): odd statuses are the
guest's debug-exit writes, so an exception anywhere in hv1 — the command, another thread, a finalizer,
the interpreter's shutdown — exits with EXIT_INTERNAL (8) and a diagnostic, never Python's 1."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hv1 import cli
from hv1.errors import EXIT_INTERNAL, EXIT_OK

ROOT = Path(__file__).resolve().parents[2]


def test_an_exception_in_the_command_exits_8_with_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(a: argparse.Namespace) -> int:
        raise RuntimeError("device model bug")

    monkeypatch.setattr(cli, "_cmd_info", boom)
    assert cli.main(["info"]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "internal error" in err and "RuntimeError: device model bug" in err and "Traceback" in err


def test_an_exception_in_another_thread_turns_any_status_into_8(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def guest_passed_but_a_thread_died(a: argparse.Namespace) -> int:
        t = threading.Thread(target=lambda: 1 // 0, name="hv1-helper")
        t.start()
        t.join()
        return 1  # what the guest wrote (0 to port 0xF4): must not stand

    monkeypatch.setattr(cli, "_cmd_info", guest_passed_but_a_thread_died)
    assert cli.main(["info"]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "hv1-helper" in err and "ZeroDivisionError" in err
    assert threading.excepthook is not cli._FaultWatch._thread_fault  # restored after main()


def test_an_unraisable_exception_turns_the_status_into_8(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Leaky:
        def __del__(self) -> None:
            raise OSError("close failed")

    def run(a: argparse.Namespace) -> int:
        Leaky()  # the exception in __del__ is "ignored" by Python: hv1 counts it
        return EXIT_OK

    monkeypatch.setattr(cli, "_cmd_info", run)
    assert cli.main(["info"]) == EXIT_INTERNAL
    assert "close failed" in capsys.readouterr().err


def test_a_closed_stdout_is_not_a_fault() -> None:
    r = subprocess.Popen(
        [sys.executable, "-m", "hv1", "info", "--hv", "default"], cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert r.stdout is not None and r.stderr is not None
    r.stdout.close()  # as `hv1 info | head -0` would
    err = r.stderr.read().decode()
    assert r.wait(timeout=120) == EXIT_OK and "internal error" not in err, err


def test_a_clean_command_keeps_its_status(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_cmd_info", lambda a: 7)  # e.g. a guest that wrote 3
    assert cli.main(["info"]) == 7


def _program(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_program_exits_8_not_1_on_an_uncaught_exception() -> None:
    r = _program(
        "import sys; sys.argv = ['hv1', 'info']\n"
        "import hv1.cli as c\n"
        "def boom(a): raise KeyError('late')\n"
        "c._cmd_info = boom\n"
        "c.entry()\n"
    )
    assert r.returncode == EXIT_INTERNAL, r.stderr
    assert "KeyError" in r.stderr


def test_the_program_ignores_a_thread_still_running_at_exit() -> None:
    """A daemon thread still busy when the command ends (a VP thread that did not stop in time) does
    not get to fail the interpreter's shutdown: the status main() decided is the exit status."""
    r = _program(
        "import sys, threading, time; sys.argv = ['hv1', 'info']\n"
        "import hv1.cli as c\n"
        "def run(a):\n"
        "    def late():\n"
        "        time.sleep(0.5)\n"
        "        raise RuntimeError('after exit')\n"
        "    threading.Thread(target=late, daemon=True).start()\n"
        "    print('serial output')\n"
        "    return 5\n"
        "c._cmd_info = run\n"
        "c.entry()\n"
    )
    assert r.returncode == 5 and r.stdout == "serial output\n" and "after exit" not in r.stderr


def test_python_dash_m_hv1_uses_the_same_entry() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, "-m", "hv1", "info", "--hv", "default"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == EXIT_OK and "features:" in r.stdout, r
    r = subprocess.run([sys.executable, "-m", "hv1", "nonsense"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2


def test_an_internal_fault_after_the_guest_exited_still_makes_the_status_8() -> None:
    """Machine.fatal: the first outcome stands (a triple fault on another VP after the debug exit does
    not change the guest's status), but an internal fault replaces it, with its dump on stderr."""
    import io
    from types import SimpleNamespace

    from hv1.errors import EXIT_GUEST_FATAL
    from hv1.machine.machine import Machine, RunResult
    from hv1.trace import Tracer

    class NoRegs:
        def snapshot(self) -> None:
            raise OSError("vCPU gone")

    m = Machine.__new__(Machine)
    m._stop_lock = threading.Lock()
    m._stop = threading.Event()
    m.tracer = Tracer()
    m.diag = io.StringIO()
    m.result = RunResult(1, "debug-exit")
    vp = SimpleNamespace(index=1, vcpu=NoRegs())
    m.fatal(vp, "triple-fault", "late", EXIT_GUEST_FATAL)  # type: ignore[arg-type]
    assert m.result.status == 1
    m.fatal(vp, "internal-fault", "KeyError: 65", EXIT_INTERNAL)  # type: ignore[arg-type]
    assert m.result.status == EXIT_INTERNAL and m.result.reason == "internal-fault"
    out = m.diag.getvalue()
    assert "after the run had ended (debug-exit, status 1)" in out and "KeyError: 65" in out
    m.fatal(vp, "internal-fault", "another", EXIT_INTERNAL)  # type: ignore[arg-type]
    assert "another" not in m.diag.getvalue()
