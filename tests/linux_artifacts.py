"""Real Linux artifacts for the tests: Debian 12's cloud kernel (fetched by .ci/run with
`apt-get download`, extracted with `dpkg-deb -x` under ~/.cache/hv1/linux; never in the repo) and a
tiny initramfs around busybox-static, written by a cpio "newc" writer here (stdlib only).

cpio newc (the format the kernel unpacks, Documentation/driver-api/early-userspace/buffer-format.rst):
each member is "070701", 13 eight-digit hex fields (ino, mode, uid, gid, nlink, mtime, filesize,
devmajor, devminor, rdevmajor, rdevminor, namesize incl. the NUL, check), the name, padding to 4
bytes, the data, padding to 4; the archive ends with a member named "TRAILER!!!".
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

LINUX_CACHE = Path(os.environ.get("HV1_LINUX_CACHE", Path.home() / ".cache" / "hv1" / "linux"))
KERNEL_GLOB = "vmlinuz-*-cloud-amd64"
BUSYBOX = Path("/bin/busybox")

S_IFDIR, S_IFREG, S_IFCHR = 0o040000, 0o100000, 0o020000
USERSPACE_MARKER = "HV1-INITRAMFS: user space reached"
# /init: what user space can see of the enlightenments (the current clocksource and clockevent, and
# the Hyper-V stimer interrupt count), then the marker, then a reboot, which hv1 --no-reboot turns
# into exit status 0 (ACPI RESET_REG -> the 8042 reset pulse).
INIT_SCRIPT = f"""#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B echo "HV1-CLOCKSOURCE: $($B cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
$B echo "HV1-CLOCKEVENT: $($B cat /sys/devices/system/clockevents/clockevent0/current_device)"
$B echo "HV1-STIMER-IRQS: $($B grep HVS /proc/interrupts)"
$B echo "{USERSPACE_MARKER}"
$B reboot -f
"""


def debian_kernel() -> Path | None:
    """The newest extracted Debian cloud kernel bzImage in the cache, if .ci/run (or a developer)
    fetched one."""
    found = sorted(LINUX_CACHE.glob(f"**/boot/{KERNEL_GLOB}"))
    return found[-1] if found else None


KERNEL_SKIP = (
    None
    if debian_kernel() is not None
    else f"no Debian cloud kernel under {LINUX_CACHE} (.ci/run fetches linux-image-6.1.0-*-cloud-amd64)"
)


def _member(name: str, mode: int, data: bytes = b"", *, ino: int, rdev: tuple[int, int] = (0, 0)) -> bytes:
    fields = (
        ino,
        mode,
        0,
        0,
        2 if mode & S_IFDIR else 1,
        0,
        len(data),
        0,
        0,
        rdev[0],
        rdev[1],
        len(name) + 1,
        0,
    )
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
    head += bytes(-len(head) % 4)
    return head + data + bytes(-len(data) % 4)


def cpio_newc(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """(name, mode, data, (rdevmajor, rdevminor)) members, then the trailer."""
    out = bytearray()
    for i, (name, mode, data, rdev) in enumerate(entries, start=1):
        out += _member(name, mode, data, ino=i, rdev=rdev)
    out += _member("TRAILER!!!", 0, ino=0)
    return bytes(out + bytes(-len(out) % 512))


def busybox_initramfs(busybox: Path = BUSYBOX, init: str = INIT_SCRIPT) -> bytes:
    """/init (a busybox sh script), /bin/busybox, /dev/console (5,1) so init has a console, and the
    mount points /proc and /sys."""
    return cpio_newc([
        ("dev", S_IFDIR | 0o755, b"", (0, 0)),
        ("proc", S_IFDIR | 0o755, b"", (0, 0)),
        ("sys", S_IFDIR | 0o755, b"", (0, 0)),
        ("dev/console", S_IFCHR | 0o600, b"", (5, 1)),
        ("bin", S_IFDIR | 0o755, b"", (0, 0)),
        ("bin/busybox", S_IFREG | 0o755, busybox.read_bytes(), (0, 0)),
        ("init", S_IFREG | 0o755, init.encode(), (0, 0)),
    ])  # fmt: skip


BUSYBOX_SKIP = None if BUSYBOX.is_file() and shutil.which("busybox") else "busybox-static is not installed"
