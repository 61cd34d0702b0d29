"""Kicks: making a vCPU's thread leave KVM_RUN soon, with a signal that only ever reaches that thread.

KVM_RUN returns with EINTR when a signal is pending for the calling thread; `immediate_exit` in
kvm_run covers a kick that comes just before the thread enters KVM_RUN (host-kvm.md). The signal is
SIGUSR1, sent with pthread_kill. Two rules keep it from ever killing the process (issue 9, bug 6:
exit 138 = 128 + SIGUSR1 after a reset with several VPs, and at shutdown):

1. The signal only goes to a thread that is registered, under a per-vCPU lock that the thread also
   takes to unregister, and the thread unregisters (clears its thread ID) before it stops running
   the vCPU. So a kick never targets a thread that has ended — whose pthread_t glibc may already
   have handed to another VP's thread started by a reset — and the thread cannot end while a kick is
   being sent to it.
2. The handler is a native no-op installed once per process with sigaction(2), never reset to
   SIG_DFL. A kick already sent is delivered to its live thread (or dropped with it, if it ends with
   the signal pending) and does nothing but interrupt a system call. A handler installed through
   Python's `signal.signal` would not do: the interpreter puts SIG_DFL back while it shuts down
   (with VP threads possibly still running), and a late kick then terminates the process.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import signal
import threading
from collections.abc import Callable, Iterator

KICK_SIGNAL = signal.SIGUSR1

_libc = ctypes.CDLL(None, use_errno=True)

# endbr64; ret — the whole handler (the kernel's signal frame returns through glibc's restorer).
_HANDLER_CODE = bytes.fromhex("f30f1efa c3")
_SA_RESTART = 0x1000_0000  # other system calls of the thread resume; KVM_RUN still returns EINTR
_SIG_DFL, _SIG_IGN = 0, 1


class _Sigaction(ctypes.Structure):
    """glibc's struct sigaction on x86-64 (sa_restorer is filled in by glibc's sigaction())."""

    _fields_ = [
        ("sa_handler", ctypes.c_void_p),
        ("sa_mask", ctypes.c_uint64 * 16),  # sigset_t: 1024 bits
        ("sa_flags", ctypes.c_int),
        ("sa_restorer", ctypes.c_void_p),
    ]


_sigaction = _libc.sigaction
_sigaction.argtypes = [ctypes.c_int, ctypes.POINTER(_Sigaction), ctypes.POINTER(_Sigaction)]
_sigaction.restype = ctypes.c_int

_mmap = _libc.mmap
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_mmap.restype = ctypes.c_void_p
_mprotect = _libc.mprotect
_mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_mprotect.restype = ctypes.c_int
_MAP_FAILED = ctypes.c_void_p(-1).value

_handler_address = 0
_install_lock = threading.Lock()


def _handler() -> int:
    """The handler's code, in a page of its own that is never unmapped: a Python mmap object would be
    freed while the interpreter shuts down, and a signal then would jump into nothing (SIGSEGV)."""
    global _handler_address
    if not _handler_address:
        size = mmap.PAGESIZE
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        addr = _mmap(None, size, prot, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if addr is None or addr == _MAP_FAILED:
            raise OSError(ctypes.get_errno(), "mmap for the kick handler failed")
        ctypes.memmove(addr, _HANDLER_CODE, len(_HANDLER_CODE))
        if _mprotect(addr, size, mmap.PROT_READ | mmap.PROT_EXEC) != 0:
            raise OSError(ctypes.get_errno(), "mprotect for the kick handler failed")
        _handler_address = int(addr)
    return _handler_address


def current_handler() -> int:
    """The address (or SIG_DFL 0 / SIG_IGN 1) of the process's KICK_SIGNAL handler now."""
    old = _Sigaction()
    if _sigaction(KICK_SIGNAL, None, ctypes.byref(old)) != 0:
        raise OSError(ctypes.get_errno(), "sigaction(SIGUSR1) query failed")
    return int(old.sa_handler or 0)


def kick_handler_installed() -> bool:
    return _handler_address != 0 and current_handler() == _handler_address


def install_kick_handler() -> None:
    """Make KICK_SIGNAL a native no-op for the whole process (any thread may call this; it is cheap
    when the handler is in place, and puts it back if something replaced it)."""
    with _install_lock:
        address = _handler()
        if current_handler() == address:
            return
        act = _Sigaction()
        act.sa_handler = address
        act.sa_flags = _SA_RESTART
        if _sigaction(KICK_SIGNAL, ctypes.byref(act), None) != 0:
            raise OSError(ctypes.get_errno(), "sigaction(SIGUSR1) failed")


class KickTarget:
    """The thread running one vCPU, as kickers see it. `kick()` runs `on_kick` (the vCPU sets
    immediate_exit) and signals the registered thread, if any; `running()` registers the calling
    thread for the duration of its vCPU loop. Both under one lock, so a kick and the thread's exit
    never interleave. After `close()` a kick does nothing (the vCPU's kvm_run mapping is gone)."""

    def __init__(self, on_kick: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._tid: int | None = None
        self._closed = False
        self._on_kick = on_kick
        self.signals_sent = 0

    @property
    def thread_id(self) -> int | None:
        """The registered thread (threading.get_ident(): its pthread_t), None when none runs."""
        return self._tid

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Register the calling thread as the one to signal, until the block ends however it ends."""
        install_kick_handler()  # before any kick can be sent to this thread
        me = threading.get_ident()
        with self._lock:
            if self._tid is not None and self._tid != me:
                raise RuntimeError(f"vCPU already run by thread {self._tid:#x}")
            self._tid = me
        try:
            yield
        finally:
            with self._lock:
                self._tid = None

    def kick(self) -> bool:
        """True when a signal was sent (a thread was registered)."""
        with self._lock:
            if self._closed:
                return False
            if self._on_kick is not None:
                self._on_kick()
            tid = self._tid
            if tid is None:
                return False
            # The registered thread is alive: it cannot unregister, hence end, while we hold the lock.
            signal.pthread_kill(tid, KICK_SIGNAL)
            self.signals_sent += 1
            return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
