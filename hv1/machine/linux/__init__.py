"""Booting Linux: the x86 boot protocol's setup header and zero page, the PVH direct-boot ABI, the
host-side extraction of a bzImage's payload, and the loader that ties them together (loader.py)."""
