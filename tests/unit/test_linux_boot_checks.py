"""The Linux boot test's log checks (tests/integration/test_linux.py) hold without a VM: every string it
looks for is a printk format in the real Debian kernel's .rodata, and its parsers read what that
kernel and hv1's tracer print."""

from __future__ import annotations

import pytest

from hv1.machine.linux import payload
from hv1.machine.linux import setup_header as sh
from hv1.trace import format_line
from tests.integration import test_linux as boot_test
from tests.linux_artifacts import KERNEL_SKIP, debian_kernel

# (what the test looks for, the format in the kernel it comes from)
PRINTK_FORMATS = [
    ("Hypervisor detected: Microsoft Hyper-V", b"Hypervisor detected: %s"),
    ("Hypervisor detected: Microsoft Hyper-V", b"Microsoft Hyper-V\0"),
    (
        "Hyper-V: privilege flags low ...",
        b"Hyper-V: privilege flags low 0x%x, high 0x%x, hints 0x%x, misc 0x%x",
    ),
    (
        "clocksource: Switched to clocksource hyperv_clocksource_tsc_page",
        b"clocksource: Switched to clocksource %s",
    ),
    ("clocksource: Switched to clocksource hyperv_clocksource_tsc_page", b"hyperv_clocksource_tsc_page\0"),
    ("Run /init as init process", b"Run %s as init process"),
    ("HV1-CLOCKEVENT: Hyper-V clockevent", b"Hyper-V clockevent\0"),
    ("Hyper-V: Using enlightened APIC", b"Hyper-V: Using enlightened APIC (%s mode)"),
    ("Hyper-V: Using hypercall for remote TLB flush", b"Hyper-V: Using hypercall for remote TLB flush"),
    ("Hyper-V: Using IPI hypercalls", b"Hyper-V: Using IPI hypercalls"),
]


@pytest.fixture(scope="module")
def vmlinux() -> bytes:
    path = debian_kernel()
    assert path is not None
    data = path.read_bytes()
    return payload.extract_vmlinux(data, sh.parse(data), payload.default_cache_dir())


@pytest.mark.skipif(KERNEL_SKIP is not None, reason=KERNEL_SKIP or "")
@pytest.mark.parametrize(("check", "fmt"), PRINTK_FORMATS)
def test_each_string_is_in_the_debian_kernel(vmlinux: bytes, check: str, fmt: bytes) -> None:
    assert fmt in vmlinux, f"{fmt!r} (for {check!r}) is not in the Debian kernel"


def test_privilege_line_parses_as_the_kernel_prints_it() -> None:
    line = "[    0.000000] Hyper-V: privilege flags low 0x8aef, high 0x3000b0, hints 0x20, misc 0xe8510"
    m = boot_test.PRIVILEGES.search(line)
    assert m is not None and [int(g, 16) for g in m.groups()] == [0x8AEF, 0x3000B0, 0x20, 0xE8510]


def test_wrmsr_parser_reads_hv1_trace_lines() -> None:
    ok = format_line(1.5, "msrs", 1, "wrmsr", {"msr": "HV_X64_MSR_STIMER0_CONFIG", "value": 0x1000B})
    gp = format_line(
        1.6, "msrs", 0, "wrmsr", {"msr": "HV_X64_MSR_VP_ASSIST_PAGE", "value": 0x1001, "gp": True}
    )
    small = format_line(1.7, "msrs", 0, "wrmsr", {"msr": "HV_X64_MSR_HYPERCALL", "value": 1})
    r = boot_test.LinuxBoot(None, "", "\n".join([ok, gp, small]), 0.0, False, None)
    assert r.wrmsrs("HV_X64_MSR_STIMER0_CONFIG") == [0x1000B]
    assert r.wrmsrs("HV_X64_MSR_VP_ASSIST_PAGE") == []  # refused with #GP: not counted
    assert r.wrmsrs("HV_X64_MSR_HYPERCALL") == [1]


def test_oops_pattern() -> None:
    assert boot_test.OOPS.search("BUG: kernel NULL pointer dereference") is not None
    assert boot_test.OOPS.search("WARNING: CPU: 1 PID: 1 at kernel/x.c:1") is not None
    assert boot_test.OOPS.search("unchecked MSR access error: WRMSR to 0x40000073") is None
