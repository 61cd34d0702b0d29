"""hv1 as a library: a Python program as the root partition (TLFS virtualization-host.md).

    import hv1
    with hv1.Hypervisor(memory=64 << 20) as hv:
        child = hv.create_partition()
        hv.initialize_partition(child)              # after deposit_memory(child, pages)
        hv.map_gpa_pages(child, 0, MapGpaFlags.READABLE | ..., source_pages)
        hv.create_vp(child, 0)
        hv.set_vp_registers(child, 0, {HvRegisterName.Rip: ..., ...})
        hv.install_intercept(child, InterceptAccess.WRITE, InterceptType.X64IoPort, 0x3F8)
        hv.set_vp_registers(child, 0, {HvRegisterName.ExplicitSuspend: 0})   # it runs
        msg = hv.next_message(timeout=10)           # an intercept: complete it, resume the VP
        hv.complete_intercept(msg, rax=...)

`Hypervisor` gives the program a root partition with its own GPA space (`memory` bytes of host RAM
it reads and writes with `read`/`write`; it has no VPs) and one method per virtualization-host
hypercall, named after the hypercall in snake_case, taking the input fields (TLFS names in
snake_case) and returning the output fields; a failure raises `hv1.HvError` with the HV_STATUS.
The engine behind it (hv1/hv/hypervisor.py) is the same one a root guest's hypercalls reach
(`hv1 run --hv root`), and children run on the backend hv1 runs guests on (hv1/machine/child.py).

Messages for the root (intercepts, failures of a child's VP, messages children post to a port of
the root) arrive in one queue: `next_message(timeout)` blocks until one is there and returns a
`Message` (the TLFS HV_MESSAGE: type, sender, payload, with the intercept header decoded).
docs/partitions.md has the API table (method -> hypercall -> TLFS section -> statuses).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TextIO

from hv1.backends.memory import GuestRam
from hv1.hv.hypercalls.vp_calls import SegmentRegister
from hv1.hv.hypervisor import ROOT_PRIVILEGES, HvError
from hv1.hv.hypervisor import Hypervisor as Engine
from hv1.hv.ports import HostMessage, PortError
from hv1.hv.vp_registers import encode_segment
from hv1.machine import boot
from hv1.machine.child import ChildPartition, ChildRuntime
from hv1.machine.entry_state import EntryMode, EntryState
from hv1.tlfs import intercepts as ti
from hv1.tlfs.messages import (
    HV_MESSAGE_PAYLOAD_SIZE,
    HV_MESSAGE_SIZE,
    MESSAGE_HEADER,
    HvMessageType,
    message_type_name,
)
from hv1.tlfs.registers import HvRegisterName
from hv1.tlfs.status import HvStatus
from hv1.trace import Tracer

__all__ = ["ChildRun", "HvError", "Hypervisor", "InterceptHeader", "Message", "serve_consoles"]


@dataclass(frozen=True)
class InterceptHeader:
    """HV_X64_INTERCEPT_MESSAGE_HEADER (PDF §13.2): the first 40 bytes of every intercept payload."""

    vp_index: int
    instruction_length: int
    intercept_access_type: int
    execution_state: int
    cs: SegmentRegister
    rip: int
    rflags: int

    @classmethod
    def unpack(cls, payload: bytes) -> InterceptHeader:
        vp, ilen, access, state, cs, rip, rflags = ti.INTERCEPT_HEADER.unpack_from(payload, 0)
        return cls(vp, ilen & 0xF, access, state, SegmentRegister(*ti.SEGMENT.unpack(cs)), rip, rflags)


@dataclass(frozen=True)
class Message:
    """An HV_MESSAGE for the root. `partition_id` / `vp_index` name the child and its VP it is
    about (the header's Sender is the port for port messages); `payload` is the message payload."""

    message_type: int
    payload: bytes
    partition_id: int
    vp_index: int
    sender: int = 0

    @property
    def name(self) -> str:
        return message_type_name(self.message_type)

    @property
    def is_intercept(self) -> bool:
        return self.message_type in _INTERCEPTS

    @property
    def header(self) -> InterceptHeader:
        return InterceptHeader.unpack(self.payload)

    def pack(self) -> bytes:
        """The 256-byte HV_MESSAGE, as it would stand in a SIMP slot."""
        head = MESSAGE_HEADER.pack(self.message_type, len(self.payload), 0, 0, self.sender)
        return (head + self.payload).ljust(HV_MESSAGE_SIZE, b"\0")

    # ---- the payloads the root handles most ----
    def io_port(self) -> tuple[int, int, bool, int]:
        """HvMessageTypeX64IoPortIntercept -> (port, access size, is_write, rax)."""
        port, info, _n, _r, rax = ti.IO_PORT_INTERCEPT.unpack_from(self.payload, ti.INTERCEPT_HEADER.size)[:5]
        size = {code: n for n, code in ti.IO_ACCESS_SIZE_CODES.items()}.get(info & 7, 1)
        return port, size, self.header.intercept_access_type == ti.InterceptAccessType.WRITE, rax

    def msr(self) -> tuple[int, bool, int]:
        """HvMessageTypeMsrIntercept -> (msr, is_write, value)."""
        msr, _r, rdx, rax = ti.MSR_INTERCEPT.unpack_from(self.payload, ti.INTERCEPT_HEADER.size)
        value = ((rdx & 0xFFFF_FFFF) << 32) | (rax & 0xFFFF_FFFF)
        return msr, self.header.intercept_access_type == ti.InterceptAccessType.WRITE, value

    def memory(self) -> tuple[int, int]:
        """HvMessageTypeUnmappedGpa / GpaIntercept -> (guest physical address, access type)."""
        fields = ti.MEMORY_INTERCEPT.unpack_from(self.payload, ti.INTERCEPT_HEADER.size)
        return fields[6], self.header.intercept_access_type


_INTERCEPTS = {
    HvMessageType.HvMessageTypeX64IoPortIntercept,
    HvMessageType.HvMessageTypeMsrIntercept,
    HvMessageType.HvMessageTypeUnmappedGpa,
    HvMessageType.HvMessageTypeGpaIntercept,
    HvMessageType.HvMessageTypeX64CpuidIntercept,
    HvMessageType.HvMessageTypeExceptionIntercept,
}

# Messages after which a child's VP does not go on unless its host intervenes.
_ENDS_A_CHILD = {
    HvMessageType.HvMessageTypeUnrecoverableException,
    HvMessageType.HvMessageTypeInvalidVpRegisterValue,
}

Registers = Mapping[int, int] | Sequence[tuple[int, int]]

FLAT_CODE32 = SegmentRegister(base=0, limit=0xFFFF_FFFF, selector=0x08, attributes=0xC09B)
FLAT_DATA32 = SegmentRegister(base=0, limit=0xFFFF_FFFF, selector=0x10, attributes=0xC093)


def flat_protected_mode(entry: EntryState) -> dict[int, int]:
    """Registers of a Multiboot entry state (Multiboot 0.6.96 §3.2): flat 4 GiB segments, CR0 = PE
    | ET, paging and long mode off, IF = 0, the loader's GPRs."""
    r = HvRegisterName
    values: dict[int, int] = {
        r.Cs: encode_segment(dataclasses.replace(FLAT_CODE32, selector=entry.code_selector))
    }
    data = encode_segment(dataclasses.replace(FLAT_DATA32, selector=entry.data_selector))
    values |= {r.Ds: data, r.Es: data, r.Fs: data, r.Gs: data, r.Ss: data}
    values |= {r.Cr0: 0x11, r.Cr3: 0, r.Cr4: 0, r.Efer: 0, r.Rflags: 2, r.Rip: entry.rip}
    names = {"rax": r.Rax, "rbx": r.Rbx, "rcx": r.Rcx, "rdx": r.Rdx, "rsi": r.Rsi, "rdi": r.Rdi}
    for name, value in entry.gprs.items():
        values[names[name]] = value
    return values


class Hypervisor:
    """The root partition of a partitioning hypervisor, driven from Python."""

    def __init__(
        self,
        memory: int = 64 << 20,
        *,
        backend: str = "auto",
        privileges: int = ROOT_PRIVILEGES,
        tracer: Tracer | None = None,
        diag: TextIO | None = None,
    ) -> None:
        if memory <= 0 or memory % 0x1000:
            raise ValueError("memory must be a positive multiple of 4 KiB")
        self.ram = GuestRam(memory)
        self.engine = Engine(memory >> 12, root_privileges=privileges, ram=self.ram, tracer=tracer)
        self.root_id = self.engine.root_id
        self._messages: queue.Queue[Message] = queue.Queue()
        self.runtime = ChildRuntime(
            self.engine, self.ram, self._deliver, backend=backend, tracer=tracer, diag=diag
        )
        self._closed = False
        self._lock = threading.Lock()
        self.consoles: dict[int, ChildRun] = {}  # serve_consoles: what each child printed so far

    # ---- the root's own memory ----
    def read(self, gpa: int, length: int) -> bytes:
        return self.ram.read(gpa, length)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.ram.write(gpa, data)

    # ---- messages ----
    def _deliver(self, parent_id: int, partition_id: int, vp_index: int, kind: int, payload: bytes) -> None:
        if parent_id == self.root_id:
            self._messages.put(Message(kind, payload[:HV_MESSAGE_PAYLOAD_SIZE], partition_id, vp_index))

    def next_message(self, timeout: float | None = None) -> Message:
        """The next message for the root, waiting up to `timeout` seconds (None: forever).
        Raises TimeoutError when none came."""
        try:
            return self._messages.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no message for the root within {timeout} s") from None

    def pending_messages(self) -> int:
        return self._messages.qsize()

    def complete_intercept(
        self,
        message: Message,
        registers: Registers | None = None,
        *,
        rax: int | None = None,
        advance: bool = True,
    ) -> None:
        """Finish an intercept the way a virtualization host does (PDF §13.2): set `registers` (and
        RAX, e.g. an IN's result), step RIP over the instruction unless `advance` is False, then
        clear InterceptSuspend so the VP runs on."""
        values = dict(registers.items() if isinstance(registers, Mapping) else registers or ())
        if rax is not None:
            values[HvRegisterName.Rax] = rax
        if advance and message.is_intercept:
            h = message.header
            values.setdefault(HvRegisterName.Rip, h.rip + h.instruction_length)
        # One HvCallSetVpRegisters: the engine applies the pairs in order and lets the VP run only
        # after the whole list, so InterceptSuspend goes last (a register after it would meet a
        # running VP: INVALID_VP_STATE). One engine call less per intercept.
        values.pop(HvRegisterName.InterceptSuspend, None)
        values[HvRegisterName.InterceptSuspend] = 0
        self.set_vp_registers(message.partition_id, message.vp_index, values)

    # ---- lifecycle (virtualization-host.md "Partition Lifecycle") ----
    def create_partition(
        self,
        flags: int = 0,
        proximity_domain_info: int = 0,
        compatibility_version: int = 0,
        disabled_processor_features: bytes = bytes(16),
        disabled_processor_xsave_features: int = 0,
    ) -> int:
        """HvCallCreatePartition -> NewPartitionId."""
        return self.engine.create_partition(
            self.root_id,
            flags,
            proximity_domain_info,
            compatibility_version,
            disabled_processor_features,
            disabled_processor_xsave_features,
        )

    def initialize_partition(self, partition_id: int) -> None:
        self.engine.initialize_partition(self.root_id, partition_id)

    def finalize_partition(self, partition_id: int) -> None:
        """HvCallFinalizePartition: its VPs stop for good and its GPA map is emptied."""
        self.engine.finalize_partition(self.root_id, partition_id)

    def delete_partition(self, partition_id: int) -> None:
        self.engine.delete_partition(self.root_id, partition_id)

    def get_next_child_partition(self, previous_child_id: int = 0) -> int:
        """HvCallGetNextChildPartition -> NextChildId (0: no more)."""
        return self.engine.get_next_child_partition(self.root_id, self.root_id, previous_child_id)

    def get_partition_property(self, partition_id: int, property_code: int) -> int:
        return self.engine.get_partition_property(self.root_id, partition_id, property_code)

    def set_partition_property(self, partition_id: int, property_code: int, property_value: int) -> None:
        self.engine.set_partition_property(self.root_id, partition_id, property_code, property_value)

    # ---- memory (virtualization-host.md "Memory Management") ----
    def deposit_memory(self, partition_id: int, gpa_page_list: Sequence[int]) -> int:
        """HvCallDepositMemory: root pages (page numbers) into the partition's pool."""
        return self.engine.deposit_memory(self.root_id, partition_id, gpa_page_list)

    def withdraw_memory(self, partition_id: int, count: int, proximity_domain_info: int = 0) -> list[int]:
        """HvCallWithdrawMemory -> the root pages returned."""
        return self.engine.withdraw_memory(self.root_id, partition_id, count, proximity_domain_info)

    def get_memory_balance(self, partition_id: int) -> tuple[int, int]:
        """HvCallGetMemoryBalance -> (PagesAvailable, PagesInUse)."""
        return self.engine.get_memory_balance(self.root_id, partition_id)

    def map_gpa_pages(
        self,
        target_partition_id: int,
        target_gpa_base: int,
        map_flags: int,
        source_gpa_page_list: Sequence[int],
    ) -> int:
        """HvCallMapGpaPages: root pages at consecutive target pages (page numbers)."""
        return self.engine.map_gpa_pages(
            self.root_id, target_partition_id, target_gpa_base, map_flags, source_gpa_page_list
        )

    def map_sparse_gpa_pages(
        self, target_partition_id: int, map_flags: int, page_list: Sequence[tuple[int, int]]
    ) -> int:
        return self.engine.map_sparse_gpa_pages(self.root_id, target_partition_id, map_flags, page_list)

    def modify_sparse_gpa_pages(
        self, target_partition_id: int, map_flags: int, gpa_page_list: Sequence[int]
    ) -> int:
        return self.engine.modify_sparse_gpa_pages(
            self.root_id, target_partition_id, map_flags, gpa_page_list
        )

    def unmap_gpa_pages(
        self, target_partition_id: int, target_gpa_base: int, count: int, unmap_flags: int = 0
    ) -> int:
        """HvCallUnmapGpaPages: when it returns, no VP of the child reaches those pages any more."""
        return self.engine.unmap_gpa_pages(
            self.root_id, target_partition_id, target_gpa_base, count, unmap_flags
        )

    # ---- VPs (virtualization-host.md "Virtual Processor Management") ----
    def create_vp(self, partition_id: int, vp_index: int, flags: int = 0) -> None:
        self.engine.create_vp(self.root_id, partition_id, vp_index, flags)

    def delete_vp(self, partition_id: int, vp_index: int) -> None:
        self.engine.delete_vp(self.root_id, partition_id, vp_index)

    def get_vp_registers(self, partition_id: int, vp_index: int, names: Sequence[int]) -> list[int]:
        return self.engine.get_vp_registers(self.root_id, partition_id, vp_index, names)

    def set_vp_registers(self, partition_id: int, vp_index: int, values: Registers) -> None:
        """HvCallSetVpRegisters: (name, value) pairs in order (a mapping keeps its order). Clearing
        ExplicitSuspend or InterceptSuspend lets the VP run."""
        pairs = list(values.items()) if isinstance(values, Mapping) else list(values)
        self.engine.set_vp_registers(self.root_id, partition_id, vp_index, pairs)

    def suspend_vp(self, partition_id: int, vp_index: int, timeout: float = 5.0) -> None:
        """Set ExplicitSuspend and wait until the VP has stopped and saved its state (its registers
        can then be read). Raises TimeoutError if it did not stop in time."""
        self.set_vp_registers(partition_id, vp_index, {HvRegisterName.ExplicitSuspend: 1})
        deadline = threading.Event()
        for _ in range(int(timeout / 0.005) + 1):
            with self.engine.lock:
                vp = self.engine.partition(partition_id).vps.get(vp_index)
                if vp is None or vp.stopped:
                    return
            deadline.wait(0.005)
        raise TimeoutError(f"partition {partition_id:#x} VP {vp_index} did not stop")

    def resume_vp(self, partition_id: int, vp_index: int) -> None:
        self.set_vp_registers(partition_id, vp_index, {HvRegisterName.ExplicitSuspend: 0})

    def translate_virtual_address(
        self, partition_id: int, vp_index: int, control_flags: int, gva_page: int
    ) -> tuple[int, int]:
        """HvCallTranslateVirtualAddress -> (TranslationResult, GpaPage)."""
        return self.engine.translate_virtual_address(
            self.root_id, partition_id, vp_index, control_flags, gva_page
        )

    # ---- intercepts (PDF §6) ----
    def install_intercept(
        self, partition_id: int, access_type: int, intercept_type: int, intercept_parameter: int
    ) -> None:
        self.engine.install_intercept(
            self.root_id, partition_id, access_type, intercept_type, intercept_parameter
        )

    # ---- ports and connections (inter-partition-communication.md) ----
    def _running(self, partition_id: int) -> ChildPartition:
        """The running form of a child (its SynICs and port tables): built when it first needs
        them, from the VPs created so far (docs/partitions.md: VPs created later do not run)."""
        with self.engine.lock:
            p = self.engine.partition(partition_id)
            if p.parent != self.root_id:
                raise HvError(
                    HvStatus.ACCESS_DENIED, f"partition {partition_id:#x} is not a child of the root"
                )
            c = self.runtime.child(partition_id)
            if c is None:
                if not p.vps:
                    raise HvError(HvStatus.INVALID_PARTITION_STATE, "create the partition's VPs first")
                c = self.runtime.children[partition_id] = ChildPartition(self.runtime, partition_id)
            return c

    def create_port(
        self,
        port_partition_id: int,
        port_id: int,
        port_type: int,
        connection_partition_id: int,
        target_vp: int = 0,
        target_sint: int = 0,
        base_flag_number: int = 0,
        flag_count: int = 0,
    ) -> None:
        """HvCallCreatePort: a port in `port_partition_id` (HV_PORT_INFO: message, event or monitor
        port targeting one of its VPs and SINTs) that `connection_partition_id` may connect to. The
        root owns it: the child cannot delete it (the engine's registry, hv1/hv/port_registry.py)."""
        self.engine.create_port(
            self.root_id, port_partition_id, port_id, 0, 0, connection_partition_id, port_type, target_vp,
            target_sint, base_flag_number, flag_count,
        )  # fmt: skip

    def delete_port(self, port_partition_id: int, port_id: int) -> None:
        self.engine.delete_port(self.root_id, port_partition_id, port_id)

    def connect_port(
        self, connection_partition_id: int, connection_id: int, port_partition_id: int, port_id: int
    ) -> None:
        """HvCallConnectPort: connection `connection_id` of a child to a port created for it. A
        message or event sent through it arrives in the port's SynIC; the sender gets the port's
        answer (INSUFFICIENT_BUFFERS when its 16 buffers are in use)."""
        with self.engine.lock:
            port = self.engine.port_registry.ports.get((port_partition_id, port_id))
        if port is None:
            raise HvError(
                HvStatus.INVALID_PORT_ID, f"no port {port_id:#x} in partition {port_partition_id:#x}"
            )
        self.engine.connect_port(
            self.root_id,
            connection_partition_id,
            connection_id,
            0,
            port_partition_id,
            port_id,
            port.port_type,
        )

    def disconnect_port(self, connection_partition_id: int, connection_id: int) -> None:
        self.engine.disconnect_port(self.root_id, connection_partition_id, connection_id)

    def on_message(self, partition_id: int, connection_id: int) -> None:
        """A connection of the child whose messages come to the root's queue (next_message: the
        Message's `sender` is the connection ID)."""
        ports = self._running(partition_id).partition.ports

        def got(m: HostMessage) -> None:
            self._messages.put(Message(m.msg_type, m.payload, partition_id, m.sender_vp, m.connection_id))

        try:
            ports.on_message(connection_id, got)
        except PortError as e:
            raise HvError(HvStatus(e.status), str(e)) from None

    def post_message(self, port_partition_id: int, port_id: int, message_type: int, payload: bytes) -> None:
        """The root posts through a port of a child (HvCallPostMessage from the root's side)."""
        st = self._running(port_partition_id).partition.ports.post_to_port(port_id, message_type, payload)
        if st != HvStatus.SUCCESS:
            raise HvError(HvStatus(st), f"post to port {port_id:#x}")

    def signal_event(self, port_partition_id: int, port_id: int, flag_number: int) -> None:
        st = self._running(port_partition_id).partition.ports.signal_port(port_id, flag_number)
        if st != HvStatus.SUCCESS:
            raise HvError(HvStatus(st), f"signal port {port_id:#x}")

    # ---- loading a guest kernel into a child (hv1's own convenience, not a hypercall) ----
    def load_kernel(self, partition_id: int, path: str, cmdline: str = "", vp_index: int = 0) -> int:
        """Load a Multiboot kernel (guests/build/*.elf) into the child's mapped memory as `hv1 run`
        would, with the Multiboot information and `cmdline`, and set VP `vp_index` to its entry
        state (32-bit flat protected mode, EAX = the magic, EBX = the information). The pages must
        be mapped writable already; the VP stays suspended. Returns the entry point."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ValueError(f"cannot read kernel {path}: {e.strerror}") from None
        mem = self.engine.partition_memory(partition_id)
        b = boot.load_kernel(path, data, mem, append=cmdline)
        if b.entry.mode is not EntryMode.PROTECTED32 or b.is_linux:
            raise ValueError("children boot Multiboot kernels (a Linux child needs its own loader state)")
        self.set_vp_registers(partition_id, vp_index, flat_protected_mode(b.entry))
        return b.entry.rip

    # ---- inspection ----
    def child_counters(self, partition_id: int) -> dict[str, int]:
        c = self.runtime.child(partition_id)
        return dict(c.counters) if c is not None else {}

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with self.engine.lock:
            self.runtime.close()
        self.ram.close()

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# ---- the console a virtualization host gives its children (a convenience on top of the API) ----
COM1_DATA = 0x3F8
DEBUG_EXIT_PORT = 0xF4  # hv1 run's isa-debug-exit port: a child's exit code


@dataclass
class ChildRun:
    """What a child did on the console `serve_consoles` gave it."""

    output: bytearray = dataclasses.field(default_factory=bytearray)
    exit_status: int | None = None  # (value << 1) | 1 once it wrote the debug-exit port, as hv1 run exits
    messages: list[Message] = dataclasses.field(default_factory=list)  # anything else for the root
    failure: str | None = None  # the message that ended it otherwise (an unrecoverable exception, ...)

    @property
    def done(self) -> bool:
        return self.exit_status is not None or self.failure is not None

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")


def attach_console(hv: Hypervisor, partition_id: int) -> None:
    """Intercept the child's COM1 data writes and its debug-exit port: the two ports hv1's test
    kernels talk through (their other port reads, e.g. the UART status, get all-ones: ready)."""
    for port in (COM1_DATA, DEBUG_EXIT_PORT):
        hv.install_intercept(
            partition_id, int(ti.InterceptAccess.WRITE), int(ti.InterceptType.X64IoPort), port
        )


def serve_consoles(
    hv: Hypervisor,
    partitions: Sequence[int],
    *,
    timeout: float,
    on_message: Callable[[Message], bool] | None = None,
) -> dict[int, ChildRun]:
    """Handle the root's messages until every child in `partitions` has written its debug-exit
    port (its VP then stays suspended) or `timeout` seconds passed (TimeoutError). Every child's
    COM1 bytes go to its output, whichever children are waited for (`hv.consoles` keeps them across
    calls); `on_message` may handle any other message (True: handled); the rest are recorded in the
    child's `messages` and left as they are. An intercept left so, or a message that ends a VP
    (an unrecoverable exception, an invalid register value), ends that child's wait (`failure`)."""
    runs = hv.consoles
    for pid in partitions:
        runs.setdefault(pid, ChildRun())
    deadline = time.monotonic() + timeout
    while not all(runs[pid].done for pid in partitions):
        left = deadline - time.monotonic()
        if left <= 0:
            waiting = ", ".join(f"{pid:#x}" for pid in partitions if not runs[pid].done)
            raise TimeoutError("children still running: " + waiting)
        m = hv.next_message(timeout=left)
        run = runs.setdefault(m.partition_id, ChildRun())
        if m.message_type == HvMessageType.HvMessageTypeX64IoPortIntercept:
            port, size, is_write, rax = m.io_port()
            if is_write and port == DEBUG_EXIT_PORT:
                # The access's bytes only, as QEMU's isa-debug-exit and hv1's own (devices/debug_exit.py)
                # take them: `out 0xf4, al` with AH set is AL's status.
                run.exit_status = ((rax & ((1 << (8 * size)) - 1)) << 1) | 1
                continue
            if is_write and port == COM1_DATA:
                run.output.append(rax & 0xFF)
                hv.complete_intercept(m)
                continue
        if on_message is not None and on_message(m):
            continue
        run.messages.append(m)
        if m.message_type in _ENDS_A_CHILD:
            run.failure = m.name
        elif m.is_intercept:
            # Nobody here completes it, so the VP stays in InterceptSuspend: waiting for its debug
            # exit could only end in the timeout.
            run.failure = f"unhandled {m.name} at RIP {m.header.rip:#x}"
    return {pid: runs[pid] for pid in partitions}
