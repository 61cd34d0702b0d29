"""Which loader boots an image, as `qemu-system-x86_64 -kernel` decides: a Linux bzImage (its 'HdrS'
setup header), else a Multiboot kernel (a Multiboot header in the first 8 KiB, unchanged from before
Linux support), else an ELF vmlinux with a PVH entry note. The result is what the machine needs: the
BSP's entry state and the RAM ranges written (the rest is still zero: HvExtCallGetBootZeroedMemory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hv1.errors import LoaderError
from hv1.hv.interfaces import GuestMemory
from hv1.machine import multiboot
from hv1.machine.entry_state import EntryState
from hv1.machine.linux import loader as linux
from hv1.machine.linux import setup_header


@dataclass
class Boot:
    kind: str  # "multiboot" or one of the linux kinds (linux/loader.py)
    entry: EntryState
    loaded: list[tuple[int, int]] = field(default_factory=list)
    linux: linux.LinuxBoot | None = None

    @property
    def is_linux(self) -> bool:
        return self.linux is not None


def load_kernel(
    kernel_path: str,
    data: bytes,
    mem: GuestMemory,
    *,
    append: str = "",
    modules: list[tuple[multiboot.Module, bytes]] | None = None,
    initrd: bytes | None = None,
    apic_ids: list[int] | None = None,
    linux_entry: str = "pvh",
    cache_dir: Path | None = None,
) -> Boot:
    if setup_header.is_bzimage(data) or (not _has_multiboot_header(data) and linux.is_linux(data)):
        if modules:
            raise LoaderError("--module is for Multiboot kernels; a Linux kernel takes --initrd")
        lb = linux.load(data, mem, cmdline=append, initrd=initrd, apic_ids=apic_ids, entry=linux_entry,
                        cache_dir=cache_dir)  # fmt: skip
        return Boot(lb.kind, lb.entry, lb.loaded, lb)
    if initrd is not None:
        raise LoaderError("--initrd is for Linux kernels; a Multiboot kernel takes --module")
    try:
        mb = multiboot.load(kernel_path, data, mem, append, modules)
    except LoaderError as e:
        if "no Multiboot header" in str(e):
            raise LoaderError(
                "no Multiboot header in the first 8 KiB of the image, and not a Linux bzImage or an ELF "
                "vmlinux with a PVH entry note either"
            ) from None
        raise
    return Boot("multiboot", EntryState.multiboot(mb.entry, mb.eax, mb.mbi), mb.loaded)


def _has_multiboot_header(data: bytes) -> bool:
    try:
        multiboot.find_header(data)
    except LoaderError:
        return False
    return True
