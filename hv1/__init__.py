"""hv1: the Microsoft Hypervisor Interface (Hv#1) implemented in Python on Linux KVM."""

__version__ = "0.1.0"

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hv1.host import HvError, Hypervisor, Message

__all__ = ["HvError", "Hypervisor", "Message"]


def __getattr__(name: str) -> object:
    """`hv1.Hypervisor` and friends (hv1/host.py), imported on first use so that `import hv1`
    stays cheap for the CLI."""
    if name in __all__:
        from hv1 import host

        return getattr(host, name)
    raise AttributeError(f"module 'hv1' has no attribute {name!r}")
