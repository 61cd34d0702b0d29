"""A virtualization host in Python: hv1 as a library (README "hv1 as a library").

The program is the root partition. It creates two child partitions, gives each a memory pool and
16 MiB of its own RAM, loads hv1's `partition_peer` test kernel into both, connects them through a
port (a message port in the receiver, a connection in the sender), gives them a console (their COM1
writes are I/O-port intercepts the root completes), runs them until they exit through the
debug-exit port, and tears everything down with the TLFS lifecycle calls.

    python3 examples/virtualization_host.py [--backend auto|kvm|emu] [--messages N]

Exit status 0 when both children passed every check.
"""

from __future__ import annotations

import argparse
import sys
import time

import hv1
from hv1.host import attach_console, serve_consoles
from hv1.hv.ports import PortType
from hv1.machine.guests import build_guest
from hv1.tlfs.virtualization_host import MapGpaFlags

RWX = (
    MapGpaFlags.READABLE | MapGpaFlags.WRITABLE | MapGpaFlags.KERNEL_EXECUTABLE | MapGpaFlags.USER_EXECUTABLE
)
CHILD_RAM_PAGES = 4096  # 16 MiB
POOL_PAGES = 64  # what hv1 charges for a partition and a VP, with room for the GPA tables
PORT_ID, CONNECTION_ID, SINT = 0x55, 0x77, 2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="auto", choices=("auto", "kvm", "emu"))
    ap.add_argument("--messages", type=int, default=8)
    args = ap.parse_args()
    kernel = str(build_guest("partition_peer"))
    with hv1.Hypervisor(memory=128 << 20, backend=args.backend) as hv:
        next_page = 0x400  # root RAM page numbers handed out from here (the first 4 MiB stay the root's)

        def take(n: int) -> list[int]:
            nonlocal next_page
            pages = list(range(next_page, next_page + n))
            next_page += n
            return pages

        children = []
        roles = (
            f"role=receiver sint={SINT} count={args.messages}",
            f"role=sender conn={CONNECTION_ID:#x} count={args.messages}",
        )
        for cmdline in roles:
            child = hv.create_partition()  # HvCallCreatePartition
            hv.deposit_memory(child, take(POOL_PAGES))  # HvCallDepositMemory
            hv.initialize_partition(child)  # HvCallInitializePartition
            hv.map_gpa_pages(child, 0, RWX, take(CHILD_RAM_PAGES))  # HvCallMapGpaPages: child GPA 0..16 MiB
            hv.create_vp(child, 0)  # HvCallCreateVp: VP 0, ExplicitSuspend
            hv.load_kernel(child, kernel, cmdline)  # writes the image, HvCallSetVpRegisters for the entry
            attach_console(hv, child)  # HvCallInstallIntercept: COM1 data and debug-exit port writes
            children.append(child)
        receiver, sender = children
        hv.create_port(receiver, PORT_ID, PortType.MESSAGE, sender, target_vp=0, target_sint=SINT)
        hv.connect_port(sender, CONNECTION_ID, receiver, PORT_ID)

        t0 = time.monotonic()
        for child in children:
            hv.resume_vp(child, 0)  # clears ExplicitSuspend: the VP runs
        runs = serve_consoles(hv, children, timeout=300)
        took = time.monotonic() - t0

        ok = True
        for name, child in (("receiver", receiver), ("sender", sender)):
            run = runs[child]
            print(f"--- child partition {child:#x} ({name}), exit status {run.exit_status}")
            sys.stdout.write(run.text)
            ok &= run.exit_status == 1
        intercepts = sum(hv.child_counters(c)["intercepts"] for c in children)
        print(f"--- {args.messages} messages between partitions in {took:.2f} s; {intercepts} intercepts")
        for child in children:
            hv.finalize_partition(child)  # HvCallFinalizePartition: VPs gone, GPA map emptied
            hv.withdraw_memory(child, POOL_PAGES)  # HvCallWithdrawMemory: the pool back to the root
            hv.delete_partition(child)  # HvCallDeletePartition
        assert hv.get_next_child_partition() == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
