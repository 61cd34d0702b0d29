"""The Linux/x86 boot protocol's setup header (Documentation/arch/x86/boot.rst, "The Real-Mode Kernel
Header"), as a table of fields at their offsets in both the bzImage and boot_params.

The header starts at 0x1F1 in the image's first sector and is copied, as is, into the zero page at the
same offset; its end is 0x202 plus the byte at 0x201 (the second byte of the `jmp` at 0x200, boot.rst
"Details of Header Fields"). Fields newer than a kernel's protocol version are read as found (a loader
must check `version` before relying on them; load_bzimage does).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hv1.errors import LoaderError

HDRS_MAGIC = b"HdrS"
BOOT_FLAG = 0xAA55
SETUP_HEADER_START = 0x1F1

# (name, offset, struct code) per boot.rst; the protocol version that introduced each is in the
# comment where it matters to this loader.
FIELDS: tuple[tuple[str, int, str], ...] = (
    ("setup_sects", 0x1F1, "B"),
    ("root_flags", 0x1F2, "H"),
    ("syssize", 0x1F4, "I"),
    ("ram_size", 0x1F8, "H"),
    ("vid_mode", 0x1FA, "H"),
    ("root_dev", 0x1FC, "H"),
    ("boot_flag", 0x1FE, "H"),
    ("jump", 0x200, "H"),
    ("header", 0x202, "4s"),
    ("version", 0x206, "H"),
    ("realmode_swtch", 0x208, "I"),
    ("start_sys_seg", 0x20C, "H"),
    ("kernel_version", 0x20E, "H"),
    ("type_of_loader", 0x210, "B"),
    ("loadflags", 0x211, "B"),
    ("setup_move_size", 0x212, "H"),
    ("code32_start", 0x214, "I"),
    ("ramdisk_image", 0x218, "I"),
    ("ramdisk_size", 0x21C, "I"),
    ("bootsect_kludge", 0x220, "I"),
    ("heap_end_ptr", 0x224, "H"),
    ("ext_loader_ver", 0x226, "B"),
    ("ext_loader_type", 0x227, "B"),
    ("cmd_line_ptr", 0x228, "I"),  # 2.02
    ("initrd_addr_max", 0x22C, "I"),  # 2.03
    ("kernel_alignment", 0x230, "I"),  # 2.05
    ("relocatable_kernel", 0x234, "B"),  # 2.05
    ("min_alignment", 0x235, "B"),  # 2.10
    ("xloadflags", 0x236, "H"),  # 2.12
    ("cmdline_size", 0x238, "I"),  # 2.06
    ("hardware_subarch", 0x23C, "I"),  # 2.07
    ("hardware_subarch_data", 0x240, "Q"),
    ("payload_offset", 0x248, "I"),  # 2.08
    ("payload_length", 0x24C, "I"),  # 2.08
    ("setup_data", 0x250, "Q"),  # 2.09
    ("pref_address", 0x258, "Q"),  # 2.10
    ("init_size", 0x260, "I"),  # 2.10
    ("handover_offset", 0x264, "I"),  # 2.11
    ("kernel_info_offset", 0x268, "I"),  # 2.15
)
OFFSET = {name: off for name, off, _ in FIELDS}
_CODE = {name: code for name, _, code in FIELDS}

# loadflags
LOADED_HIGH = 1 << 0  # the protected-mode code is loaded at 0x100000 (a bzImage)
KASLR_FLAG = 1 << 1  # set by the kernel itself
QUIET_FLAG = 1 << 5
KEEP_SEGMENTS = 1 << 6
CAN_USE_HEAP = 1 << 7
# xloadflags
XLF_KERNEL_64 = 1 << 0  # has the 64-bit entry point at load address + 0x200
XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1
XLF_EFI_HANDOVER_32 = 1 << 2
XLF_EFI_HANDOVER_64 = 1 << 3
XLF_EFI_KEXEC = 1 << 4

TYPE_OF_LOADER_UNDEFINED = 0xFF  # boot.rst: "0xFF: undefined" for a loader without an assigned ID


@dataclass(frozen=True)
class SetupHeader:
    values: dict[str, int | bytes]
    raw: bytes  # 0x1F1 .. the header's end, to copy into the zero page
    end: int  # offset one past the header's last byte

    def __getitem__(self, name: str) -> int:
        v = self.values[name]
        assert isinstance(v, int), name
        return v

    @property
    def version(self) -> int:
        return self["version"]

    def has(self, name: str) -> bool:
        """Is the field inside this kernel's header (older protocols end earlier)?"""
        return OFFSET[name] + struct.calcsize(_CODE[name]) <= self.end

    @property
    def setup_size(self) -> int:
        """Bytes of real-mode setup code, boot sector included: the protected-mode kernel follows."""
        sects = self["setup_sects"] or 4  # boot.rst: "If this field is 0, the real value is 4."
        return (sects + 1) * 512


def is_bzimage(data: bytes) -> bool:
    return (
        len(data) >= 0x206
        and data[0x202:0x206] == HDRS_MAGIC
        and struct.unpack_from("<H", data, 0x1FE)[0] == BOOT_FLAG
    )


def parse(data: bytes) -> SetupHeader:
    """The setup header of a bzImage, or LoaderError for an image that is not one."""
    if not is_bzimage(data):
        raise LoaderError("not a Linux bzImage (no 'HdrS' setup header at 0x202)")
    end = 0x202 + data[0x201]
    if end > len(data) or end < 0x206:
        raise LoaderError("the bzImage setup header is truncated")
    values: dict[str, int | bytes] = {}
    for name, off, code in FIELDS:
        size = struct.calcsize(code)
        values[name] = struct.unpack_from("<" + code, data, off)[0] if off + size <= end else 0
    hdr = SetupHeader(values=values, raw=data[SETUP_HEADER_START:end], end=end)
    if hdr.setup_size >= len(data):
        raise LoaderError("the bzImage ends inside its setup code (setup_sects is larger than the image)")
    return hdr


def kernel_version_string(data: bytes, hdr: SetupHeader) -> str | None:
    """The version string `kernel_version` points to (offset - 0x200 from the setup start), if any."""
    ptr = hdr["kernel_version"]
    if not ptr:
        return None
    off = ptr + 0x200
    if off >= min(len(data), hdr.setup_size):
        return None
    end = data.find(b"\0", off, off + 256)
    return data[off : end if end >= 0 else off + 256].decode("ascii", "replace")
