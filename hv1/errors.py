"""Exit statuses of `hv1 run` and the errors that produce them.

A guest that writes v to the isa-debug-exit port makes hv1 exit with (v << 1) | 1, as QEMU does: an
odd number. Every status hv1 chooses itself is even, so the two never collide.
"""

from __future__ import annotations

EXIT_OK = 0  # the guest powered off / reset with --no-reboot semantics, or `hv1 info`/`demo` succeeded
EXIT_USAGE = 2  # bad command line, missing/invalid kernel image, no /dev/kvm
EXIT_GUEST_FATAL = 4  # triple fault, emulation failure, entry failure: the partition was stopped
EXIT_GUEST_CRASH = 6  # the guest reported a crash through the Hyper-V crash MSRs (--on-crash stop)
EXIT_INTERNAL = 8  # an internal VMM fault stopped the partition (a bug in hv1: please report)
EXIT_TIMEOUT = 124  # --timeout expired (same as timeout(1))
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C) stopped the run: 128 + SIGINT, as a shell reports it


class Hv1Error(Exception):
    """An error reported to the user as one line, with an exit status."""

    status = EXIT_USAGE


class UsageError(Hv1Error):
    status = EXIT_USAGE


class LoaderError(Hv1Error):
    status = EXIT_USAGE


class KvmUnavailable(Hv1Error):
    status = EXIT_USAGE
