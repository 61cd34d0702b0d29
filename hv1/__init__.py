"""hv1: the Microsoft Hypervisor Interface (Hv#1) implemented in Python on Linux KVM."""

__version__ = "0.1.0"
