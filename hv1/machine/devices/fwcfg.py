"""QEMU's fw_cfg, the legacy I/O interface (selector 0x510, data 0x511): enough for a test kernel to
learn the CPU count, RAM size and command line the way it would under QEMU."""

from __future__ import annotations

import struct

FW_CFG_PORT_SEL = 0x510
FW_CFG_PORT_DATA = 0x511

FW_CFG_SIGNATURE = 0x00
FW_CFG_ID = 0x01
FW_CFG_RAM_SIZE = 0x03
FW_CFG_NB_CPUS = 0x05
FW_CFG_MAX_CPUS = 0x0F
FW_CFG_CMDLINE_SIZE = 0x14
FW_CFG_CMDLINE_DATA = 0x15
FW_CFG_FILE_DIR = 0x19


class FwCfg:
    name = "fw_cfg"

    def __init__(self, cpus: int, ram_size: int, cmdline: str) -> None:
        cmd = cmdline.encode() + b"\0"
        self.items: dict[int, bytes] = {
            FW_CFG_SIGNATURE: b"QEMU",
            FW_CFG_ID: struct.pack("<I", 1),  # traditional interface only, no DMA
            FW_CFG_RAM_SIZE: struct.pack("<Q", ram_size),
            FW_CFG_NB_CPUS: struct.pack("<H", cpus),
            FW_CFG_MAX_CPUS: struct.pack("<H", cpus),
            FW_CFG_CMDLINE_SIZE: struct.pack("<I", len(cmd)),
            FW_CFG_CMDLINE_DATA: cmd,
            FW_CFG_FILE_DIR: struct.pack(">I", 0),
        }
        self.selector = 0
        self.offset = 0

    def io_read(self, port: int, size: int) -> int:
        if port != FW_CFG_PORT_DATA:
            return 0
        item = self.items.get(self.selector, b"")
        value = 0
        for i in range(size):
            b = item[self.offset] if self.offset < len(item) else 0
            self.offset += 1
            value |= b << (8 * i)
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == FW_CFG_PORT_SEL:
            self.selector = value & 0xFFFF
            self.offset = 0
