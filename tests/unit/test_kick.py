"""vCPU kicks with real threads and real signals, no KVM (issue 9, bug 6; hv1/backends/kvm/kick.py).

A kick must only reach the thread it is meant for and never outlive it: a thread that has left the
run loop is never signalled (glibc reuses pthread_t values, so a stale ID names another thread), and
the kick signal's handler is a native one that even the interpreter's shutdown leaves in place.

Signals are observed without any handler running: the threads involved block SIGUSR1, so a signal
sent to one stays pending there and `signal.sigpending()` in that thread shows where it landed.
"""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hv1.backends.kvm import ioctls as k
from hv1.backends.kvm.kick import KICK_SIGNAL, KickTarget, current_handler, kick_handler_installed
from hv1.backends.kvm.vcpu import KvmVcpu, install_kick_handler

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def blocked() -> Iterator[None]:
    """SIGUSR1 blocked in this thread and every thread it starts; stray signals checked at the end."""
    install_kick_handler()  # a stray signal must be harmless when the mask is restored
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {KICK_SIGNAL})
    try:
        yield
        assert KICK_SIGNAL not in signal.sigpending(), "a kick reached a thread it was not meant for"
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def in_thread(fn: Callable[[], object]) -> object:
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def consume_pending() -> bool:
    """True if SIGUSR1 was pending for the calling thread (and take it)."""
    if KICK_SIGNAL not in signal.sigpending():
        return False
    signal.sigwait({KICK_SIGNAL})
    return True


def test_a_kick_reaches_the_registered_thread(blocked: None) -> None:
    target = KickTarget()

    def run() -> bool:
        with target.running():
            assert target.thread_id == threading.get_ident()
            assert target.kick()
            return consume_pending()

    assert in_thread(run) is True
    assert target.thread_id is None


def test_a_kick_after_the_thread_left_reaches_nobody_even_when_its_id_is_reused(blocked: None) -> None:
    """The reset case: VP thread A ran the vCPU and ended, thread B (often with A's very pthread_t)
    now runs another VP. A kick for A's vCPU must not land in B."""
    target = KickTarget()
    first: list[int] = []

    def run_a() -> None:
        with target.running():
            first.append(threading.get_ident())

    in_thread(run_a)
    for _ in range(20):  # glibc usually hands A's stack and pthread_t to the next thread

        def run_b() -> bool:
            assert not target.kick()  # nobody registered: no signal at all
            return consume_pending()

        assert in_thread(run_b) is False
    assert target.signals_sent == 0


def test_kicks_racing_thread_exits_never_hit_a_bystander(blocked: None) -> None:
    """A kicker hammers one vCPU while threads take turns running it and others (bystanders, started
    meanwhile, likely reusing the ended threads' IDs) just live: only registered threads get signals."""
    target = KickTarget()
    stop = threading.Event()
    strays: list[int] = []

    def kicker() -> None:
        while not stop.is_set():
            target.kick()

    def runner() -> None:
        with target.running():
            for _ in range(50):
                pass
        consume_pending()  # a kick sent while registered: ours, fine

    def bystander() -> None:
        for _ in range(200):
            pass
        if consume_pending():
            strays.append(threading.get_ident())

    kt = threading.Thread(target=kicker)
    kt.start()
    try:
        for _ in range(100):
            r = threading.Thread(target=runner)
            r.start()
            r.join()
            b = threading.Thread(target=bystander)
            b.start()
            b.join()
    finally:
        stop.set()
        kt.join()
    assert strays == []


def test_a_second_thread_cannot_take_over_a_running_vcpu() -> None:
    target = KickTarget()

    def take_over() -> bool:
        try:
            with target.running():
                return False
        except RuntimeError:
            return True

    with target.running():
        assert in_thread(take_over) is True
        assert target.thread_id == threading.get_ident()
    assert target.thread_id is None


def test_a_closed_target_ignores_kicks() -> None:
    hits: list[int] = []
    target = KickTarget(on_kick=lambda: hits.append(1))
    assert not target.kick() and hits == [1]
    target.close()
    assert not target.kick() and hits == [1]


# --- KvmVcpu over an anonymous kvm_run area: the run loop unregisters however it ends ---------------------


class StopAtOnce:
    """An ExitHandler whose vCPU fd is not a vCPU: KVM_RUN fails (EBADF) and the loop reports it."""

    def __init__(self) -> None:
        self.fatals: list[str] = []

    def before_entry(self) -> None:
        pass

    def fatal(self, kind: str, detail: str) -> None:
        self.fatals.append(kind)


def fake_vcpu() -> tuple[KvmVcpu, int]:
    fd = os.open(os.devnull, os.O_RDONLY)  # ioctl(KVM_RUN) on it fails with ENOTTY
    return KvmVcpu.over(0, fd, mmap.mmap(-1, 3 * mmap.PAGESIZE)), fd


def test_vcpu_run_clears_its_thread_before_the_thread_ends(blocked: None) -> None:
    vcpu, fd = fake_vcpu()
    h = StopAtOnce()
    seen: list[int | None] = []

    def thread() -> bool:
        vcpu.run(h)  # type: ignore[arg-type]
        seen.append(vcpu.thread_id)
        vcpu.kick()  # the machine kicks a VP whose loop has ended (halt, reset): no signal
        return consume_pending()

    assert in_thread(thread) is False
    assert h.fatals == ["kvm-run-failed"] and seen == [None]
    assert vcpu.kick_target.signals_sent == 0
    assert vcpu.run_mm[k.RUN_IMMEDIATE_EXIT] == 1  # immediate_exit still set for the next entry
    vcpu.close()
    vcpu.kick()  # after close (which also closed the fd): nothing, not even the immediate_exit byte


def test_vcpu_run_unregisters_when_the_handler_raises(blocked: None) -> None:
    vcpu, _ = fake_vcpu()

    class Raising(StopAtOnce):
        def before_entry(self) -> None:
            raise RuntimeError("bug")

    def thread() -> str:
        try:
            vcpu.run(Raising())  # type: ignore[arg-type]
        except RuntimeError as e:
            return str(e)
        return ""

    assert in_thread(thread) == "bug"
    assert vcpu.thread_id is None
    vcpu.close()


# --- the handler: native, once per process, and still there while the interpreter shuts down -------------


def test_the_handler_is_native_and_not_python_s() -> None:
    install_kick_handler()
    assert kick_handler_installed()
    assert current_handler() not in (0, 1)  # not SIG_DFL, not SIG_IGN
    assert not callable(signal.getsignal(KICK_SIGNAL))  # no Python handler, so none for Python to reset


def test_the_handler_is_put_back_if_something_replaced_it() -> None:
    install_kick_handler()
    signal.signal(KICK_SIGNAL, signal.SIG_IGN)  # Python keeps SIG_IGN in its table: never reset later
    try:
        assert not kick_handler_installed()
        install_kick_handler()
        assert kick_handler_installed()
    finally:
        install_kick_handler()


def test_a_kick_during_interpreter_shutdown_does_not_kill_the_process() -> None:
    """After Py_Finalize the process waits in pause() (an atexit handler of libc, i.e. after Python
    reset its signal handlers); the test sends SIGUSR1 until the process ends. With a handler Python
    owns the signal kills it (exit -SIGUSR1, the issue's 138); with the native one pause() returns."""
    code = (
        "import ctypes\n"
        "from hv1.backends.kvm.vcpu import install_kick_handler\n"
        "install_kick_handler()\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.__cxa_atexit.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]\n"
        "libc.__cxa_atexit(ctypes.cast(libc.pause, ctypes.c_void_p), None, None)\n"
        "print('ready', flush=True)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        rc: int | None = None
        for _ in range(3000):  # a hang guard only (~60 s): it ends after the first signal in pause()
            p.send_signal(KICK_SIGNAL)
            try:
                rc = p.wait(timeout=0.02)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert rc == 0, f"exit status {rc} (-{int(KICK_SIGNAL)}: killed by the kick signal)"
