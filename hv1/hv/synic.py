"""The per-VP synthetic interrupt controller (TLFS inter-partition-communication.md; inventory §3.3
"SynIC MSRs", §6.5).

One `Synic` per VP holds SCONTROL, SIEFP, SIMP, SINT0-15, the SIM and SIEF overlay pages and one
message queue per SINT. It is a pure state machine: guest MSR accesses come in through
`read_msr`/`write_msr`, posters (ports, timers, the root API, the Hyper-V test device) call
`post_message`/`signal_event`, and the only outputs are guest memory writes (the overlay pages) and
`InterruptSink.request_interrupt(vp, vector, auto_eoi)`.

Message slot protocol (inter-partition-communication.md "Messages", "SIM Page", "EOM Register";
datatypes/hv_message.md):
- A slot is empty iff its MessageType (u32 at offset 0) is HvMessageTypeNone (0).
- Posting appends to the SINT's FIFO queue (bounded: a full queue answers
  HV_STATUS_INSUFFICIENT_BUFFERS, nothing is dropped), then delivery is attempted: when SCONTROL and
  SIMP are enabled and the slot is empty, the head is written - header and payload first, MessageType
  last, so a guest never sees a half-written message - and the SINT interrupt is requested unless the
  SINT is masked (the interrupt is lost, TLFS) or polling.
- A busy slot gets MessagePending (flags bit 0) so that the guest writes EOM after emptying it. The
  slot type is re-read after setting the flag: if the guest emptied it meanwhile we deliver at once,
  so either the guest sees the flag or we see the empty slot: a full barrier (`_fence`) separates our
  flag store from the re-read, as the guest's barrier separates its type clear from its flag read
  (Linux vmbus_signal_eom).
  A newly delivered message carries MessagePending when more messages wait behind it ("the flag may
  be set by the hypervisor upon message delivery or at any time afterwards").
- Delivery is retried on EOM, on APIC EOI of a SINT vector (`eoi(vector)`), when a message is
  queued, when SCONTROL/SIMP become enabled, on every SINT write, and on `rescan()` - the periodic
  retry the TLFS allows ("after an unspecified time"); the VP loop should call it while
  `has_pending` is true (e.g. every few ms, or on each exit) as a backstop for a guest that cleared a
  slot without seeing MessagePending.
Per SINT the order is FIFO; a message leaves the queue exactly once, into the slot. No loss, no
duplicates.

Event flags (inter-partition-communication.md "SynIC Event Flags"): 2048 flags per SINT at offset
sint * 256 of the SIEF page. `signal_event` sets a flag with a read-modify-write of one byte that only
ever sets bits; hv code is serialized by the partition lock, and the guest clears flags with locked
operations. A guest clearing *another* bit of the same byte between our read and write can see that
bit come back (a spurious flag, never a lost one). The SINT interrupt is requested only when the flag
went 0 -> 1 and the SINT is unmasked and not polling.

Choices where the TLFS is silent or ambiguous (inventory §7):
- §7.8: an invalid vector (0-15) #GPs only when the Masked bit is clear (nested Hyper-V writes
  0x10000 at boot; KVM's rule).
- §7.4: SIM/SIEF pages are zeroed when they go from disabled to enabled; moving an enabled page keeps
  its contents (they follow the overlay, hv/overlay.py). Queued messages survive SIMP disable.
- §7.7 / §7.25: EOM reads 0 and ignores the written value; RsvdP bits of every SynIC MSR are stored.
- A SIM/SIEF page whose GPFN is not guest RAM stays "enabled but not accessible": deliveries go to the
  page's hidden content and become visible if the guest moves the page onto RAM.
- AutoEOI: passed through to request_interrupt; hv1's APIC honours it per delivery, and with KVM's
  in-kernel APIC the machine mirrors the SINTs into KVM's AutoEOI bitmap (hv1/machine/auto_eoi.py;
  `sint_generation` tells it when to). Where a host cannot (`auto_eoi_supported=False`, caps.auto_eoi)
  the caps recommend deprecating AutoEOI, and a SINT write that sets it is traced as
  "auto-eoi-unsupported" and logged once per VP and SINT.

Thread safety: every public method takes `lock` (the partition lock, an RLock, so hv code that already
holds it may call in). Interrupt requests are made with the lock held; the sinks never call back into
the SynIC synchronously.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from hv1.hv.caps import privilege_gate
from hv1.hv.interfaces import GuestMemory, InterruptSink, TraceSink, gp
from hv1.hv.msrs import MsrTable, Scope
from hv1.hv.overlay import OverlayLayer, OverlayPage
from hv1.hv.vp import missing_state
from hv1.tlfs import msrs as M
from hv1.tlfs.feature_discovery import FeaturesEdx
from hv1.tlfs.messages import (
    HV_MESSAGE_PAYLOAD_SIZE,
    HV_MESSAGE_SIZE,
    MESSAGE_FLAG_PENDING,
    MESSAGE_FLAGS_OFFSET,
    MESSAGE_HEADER,
    MESSAGE_HEADER_TAIL,
    MESSAGE_PAYLOAD_OFFSET,
)
from hv1.tlfs.partition import PartitionPrivilege
from hv1.tlfs.status import HvStatus
from hv1.tlfs.synic import (
    HV_EVENT_FLAGS_BYTE_COUNT,
    HV_EVENT_FLAGS_COUNT,
    HV_SYNIC_FIRST_VALID_VECTOR,
    HV_SYNIC_VERSION,
    PAGE_ENABLE,
    PAGE_GPFN_SHIFT,
    SCONTROL_ENABLE,
    SINT_AUTO_EOI,
    SINT_COUNT,
    SINT_MASKED,
    SINT_POLLING,
    SINT_RESET,
    SINT_VECTOR_MASK,
)

if TYPE_CHECKING:
    from hv1.hv.inject import Injector
    from hv1.hv.partition import Partition
    from hv1.hv.ports import PartitionPorts
    from hv1.hv.vp import Vp

log = logging.getLogger("hv1.synic")

# The register bits (inter-partition-communication.md "SynIC Registers") are in hv1/tlfs/synic.py and
# the HV_MESSAGE layout in hv1/tlfs/messages.py.
_U32 = struct.Struct("<I")
_FENCE_LOCK = threading.Lock()


def _fence() -> None:
    """A full memory barrier between our MessagePending store and the re-read of the slot type (the
    Dekker handshake with the guest's "clear type; mfence; read flags"): taking an uncontended lock is a
    locked read-modify-write, which orders earlier stores before later loads on x86."""
    _FENCE_LOCK.acquire()
    _FENCE_LOCK.release()


MASK64 = (1 << 64) - 1
ALL_SINTS = (1 << SINT_COUNT) - 1

SYNIC_MSRS: tuple[int, ...] = (
    M.HV_X64_MSR_SCONTROL,
    M.HV_X64_MSR_SVERSION,
    M.HV_X64_MSR_SIEFP,
    M.HV_X64_MSR_SIMP,
    M.HV_X64_MSR_EOM,
    *range(M.HV_X64_MSR_SINT0, M.HV_X64_MSR_SINT0 + SINT_COUNT),
)

# Fault injection (hv/inject.py slot-busy): when a message held behind a slot made to look busy is
# tried again: 1 ms, the first retry of a pending timer message (hv/timers.RETRY_MIN); the TLFS leaves
# the interval to the hypervisor. 100 ns units.
HELD_RETRY = 10_000

# Messages waiting per SINT before a poster gets HV_STATUS_INSUFFICIENT_BUFFERS. Ports also have
# their own 16 buffers (inter-partition-communication.md "Guest Message Buffers").
DEFAULT_QUEUE_DEPTH = 16


class BufferOwner(Protocol):
    """Who lent the buffer of a queued message (a port, a timer). `release_message_buffer` is called
    exactly once per posted message: when it reaches the slot, or when it is dropped (VP reset, owner
    deleted)."""

    def release_message_buffer(self) -> None: ...


@dataclass(slots=True)
class QueuedMessage:
    msg_type: int
    payload: bytes
    origin: int = 0  # header Sender / Port / OriginationId
    owner: BufferOwner | None = None
    not_before: int = 0  # reference time before which it stays queued (injected message-delay)


@dataclass(frozen=True, slots=True)
class SintConfig:
    """A decoded SINTx register."""

    raw: int

    @property
    def vector(self) -> int:
        return self.raw & SINT_VECTOR_MASK

    @property
    def masked(self) -> bool:
        return bool(self.raw & SINT_MASKED)

    @property
    def auto_eoi(self) -> bool:
        return bool(self.raw & SINT_AUTO_EOI)

    @property
    def polling(self) -> bool:
        return bool(self.raw & SINT_POLLING)


def encode_message(msg_type: int, payload: bytes, origin: int = 0, flags: int = 0) -> bytes:
    """A 256-byte HV_MESSAGE (tests, PostMessageDirect)."""
    buf = bytearray(HV_MESSAGE_SIZE)
    MESSAGE_HEADER.pack_into(buf, 0, msg_type, len(payload), flags, 0, origin)
    buf[MESSAGE_PAYLOAD_OFFSET : MESSAGE_PAYLOAD_OFFSET + len(payload)] = payload
    return bytes(buf)


class Synic:
    """SynIC state of one VP (TLFS: "Each virtual processor has its own copy of these registers")."""

    def __init__(
        self,
        vp_index: int,
        memory: GuestMemory,
        irq: InterruptSink,
        *,
        layer: OverlayLayer | None = None,
        lock: threading.RLock | None = None,
        tracer: TraceSink | None = None,
        queue_depth: int = DEFAULT_QUEUE_DEPTH,
        auto_eoi_supported: bool = True,
        polling_supported: bool = True,
    ) -> None:
        if queue_depth < 1:
            raise ValueError("queue_depth must be at least 1")
        self.vp_index = vp_index
        self.memory = memory
        self.irq = irq
        self.lock = lock if lock is not None else threading.RLock()
        self.tracer = tracer
        self.queue_depth = queue_depth
        self.auto_eoi_supported = auto_eoi_supported
        self.polling_supported = polling_supported
        layer = layer if layer is not None else OverlayLayer(memory)
        self.simp_page = OverlayPage(memory, layer)
        self.siefp_page = OverlayPage(memory, layer)
        self.scontrol = 0
        self.simp = 0
        self.siefp = 0
        self.sints = [SINT_RESET] * SINT_COUNT
        self._queues: list[deque[QueuedMessage]] = [deque() for _ in range(SINT_COUNT)]
        self._pending = 0  # bit s: SINT s has queued messages
        self._auto_eoi_warned: set[int] = set()  # SINTs whose unsupported AutoEOI has been logged
        self.sint_generation = 0  # bumped whenever a SINTx value may have changed (write, reset)
        # Called with a SINT number when that SINT may take a message now (see `add_ready_listener`).
        self._ready_listeners: list[Callable[[int], None]] = []
        self.counters = {"posted": 0, "delivered": 0, "queued": 0, "eom": 0, "events": 0, "interrupts": 0}
        self.inject: Injector | None = None  # fault injection (hv/inject.py, Partition.set_injection)

    # --- decoded state -------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """SCONTROL.Enable: message queuing and event flag notifications may target this VP."""
        return bool(self.scontrol & SCONTROL_ENABLE)

    @property
    def simp_enabled(self) -> bool:
        return bool(self.simp & PAGE_ENABLE)

    @property
    def siefp_enabled(self) -> bool:
        return bool(self.siefp & PAGE_ENABLE)

    def sint(self, sint: int) -> SintConfig:
        return SintConfig(self.sints[sint])

    @property
    def has_pending(self) -> bool:
        """Messages are waiting in some SINT queue (the VP loop should `rescan()` now and then)."""
        return self._pending != 0

    def queued(self, sint: int) -> int:
        return len(self._queues[sint])

    def can_accept_messages(self) -> bool:
        """Eligible as a message target (inter-partition-communication.md "Messages": SynIC and SIM
        page enabled)."""
        return self.enabled and self.simp_enabled

    def can_accept_events(self, sint: int | None = None) -> bool:
        """Eligible as an event target: SynIC and SIEF page enabled and, for a given SINT, not masked
        (polling counts as unmasked)."""
        if not (self.enabled and self.siefp_enabled):
            return False
        return sint is None or self._sint_unmasked(self.sints[sint])

    def _trace(self, event: str, **fields: Any) -> None:
        t = self.tracer
        if t is not None and t.wants("synic"):
            t.emit("synic", self.vp_index, event, **fields)

    # --- MSRs (inter-partition-communication.md "SynIC Registers") ---------------------------------------
    def read_msr(self, index: int) -> int:
        with self.lock:
            if index == M.HV_X64_MSR_SCONTROL:
                return self.scontrol
            if index == M.HV_X64_MSR_SVERSION:
                return HV_SYNIC_VERSION
            if index == M.HV_X64_MSR_SIEFP:
                return self.siefp
            if index == M.HV_X64_MSR_SIMP:
                return self.simp
            if index == M.HV_X64_MSR_EOM:
                return 0  # "Reads from the EOM register always returns zeros" (inventory §7.25)
            s = index - M.HV_X64_MSR_SINT0
            if 0 <= s < SINT_COUNT:
                return self.sints[s]
            raise gp()

    def write_msr(self, index: int, value: int) -> None:
        value &= MASK64
        with self.lock:
            if index == M.HV_X64_MSR_SCONTROL:
                was = self.enabled
                self.scontrol = value  # 63:1 RsvdP: stored
                if self.enabled and not was:
                    self._scan_all()
                    self._announce_ready(ALL_SINTS)
            elif index == M.HV_X64_MSR_SVERSION:
                raise gp()  # "Attempts to write to this register result in a #GP fault"
            elif index == M.HV_X64_MSR_SIEFP:
                old, self.siefp = self.siefp, value
                self._place_page(self.siefp_page, old, value)
            elif index == M.HV_X64_MSR_SIMP:
                old, self.simp = self.simp, value
                self._place_page(self.simp_page, old, value)
                if self.simp_enabled:
                    self._scan_all()
                    self._announce_ready(ALL_SINTS)
            elif index == M.HV_X64_MSR_EOM:
                self.eom()
            elif M.HV_X64_MSR_SINT0 <= index < M.HV_X64_MSR_SINT0 + SINT_COUNT:
                self._write_sint(index - M.HV_X64_MSR_SINT0, value)
            else:
                raise gp()

    def _write_sint(self, sint: int, value: int) -> None:
        # "Valid values for vector are 16-255 inclusive. Specifying an invalid vector number results
        # in #GP." Only for an unmasked SINT (inventory §7.8).
        if value & SINT_VECTOR_MASK < HV_SYNIC_FIRST_VALID_VECTOR and not value & SINT_MASKED:
            raise gp()
        self.sints[sint] = value  # 63:19 and 15:8 RsvdP: stored
        self.sint_generation += 1
        if value & SINT_AUTO_EOI and not self.auto_eoi_supported:
            # This host's in-kernel APIC puts the vector in service anyway: the guest will miss EOIs.
            if self.tracer is not None:
                self.tracer.emit("synic", self.vp_index, "auto-eoi-unsupported", sint=sint, value=value)
            if sint not in self._auto_eoi_warned:  # once per SINT: each one is a separate guest bug
                self._auto_eoi_warned.add(sint)
                log.warning(
                    "VP %d sets AutoEOI on SINT%d although this host's in-kernel APIC cannot honour it "
                    "(KVM without KVM_CAP_HYPERV_SYNIC2; deprecation recommended in CPUID "
                    "0x40000004.EAX[9]); the guest must EOI itself",
                    self.vp_index,
                    sint,
                )
        self._trace("sint-config", sint=sint, value=value)
        if self._pending >> sint & 1:
            self._try_deliver(sint)
        self._announce_ready(1 << sint)

    @staticmethod
    def _place_page(page: OverlayPage, old: int, new: int) -> None:
        """SIMP/SIEFP: enable lays the overlay at the GPFN (zeroed when it was disabled, inventory
        §7.4), a move while enabled carries the contents along, disable uncovers the RAM below."""
        if new & PAGE_ENABLE:
            page.map(new >> PAGE_GPFN_SHIFT)
            if not old & PAGE_ENABLE:
                page.zero()
        else:
            page.unmap()

    # --- messages ---------------------------------------------------------------------------------
    def post_message(
        self,
        sint: int,
        msg_type: int,
        payload: bytes | bytearray | memoryview,
        origin: int = 0,
        owner: BufferOwner | None = None,
        *,
        delayable: bool = True,
    ) -> HvStatus:
        """Queue a message for SINT `sint` and try to deliver it.

        INVALID_SYNIC_STATE when SCONTROL or SIMP is disabled (HvCallPostMessage.md), and
        INSUFFICIENT_BUFFERS when the SINT's queue is full; the message is then not taken (and
        `owner` not charged). SUCCESS means queued: it will reach the slot exactly once, in order.
        `msg_type` and the payload length are the caller's to validate (non-zero, <= 240 bytes).
        `delayable=False` exempts the message from an injected message-delay (timer messages, whose
        DeliveryTime is stamped when they are posted)."""
        self._check_sint(sint)
        if not msg_type or msg_type >> 32 or len(payload) > HV_MESSAGE_PAYLOAD_SIZE:
            raise ValueError(f"bad message type {msg_type:#x} or payload size {len(payload)}")
        with self.lock:
            if not self.can_accept_messages():
                return HvStatus.INVALID_SYNIC_STATE
            q = self._queues[sint]
            if len(q) >= self.queue_depth:
                self._trace("post-full", sint=sint, type=msg_type, queued=len(q))
                return HvStatus.INSUFFICIENT_BUFFERS
            msg = QueuedMessage(msg_type, bytes(payload), origin, owner)
            inj = self.inject
            if inj is not None and delayable and inj.delays_messages:
                delay = inj.message_delay(self.vp_index, sint)
                if delay:
                    msg.not_before = inj.now() + delay
            q.append(msg)
            self._pending |= 1 << sint
            self.counters["posted"] += 1
            self._trace("post", sint=sint, type=msg_type, size=len(payload), origin=origin, queued=len(q))
            if not self._try_deliver(sint, injectable=delayable):
                self.counters["queued"] += 1
                self._trace("queued", sint=sint, type=msg_type, queued=len(q))
            return HvStatus.SUCCESS

    def _try_deliver(self, sint: int, injectable: bool = True) -> bool:
        """Move the head of the SINT's queue into its slot if possible. True if one was delivered.
        `injectable=False`: the caller (try_post) has consulted the fault injector already."""
        q = self._queues[sint]
        if not q or not self.can_accept_messages():
            return False
        inj = self.inject
        if inj is not None and injectable and self._held(inj, sint, q[0]):
            return False
        view = self.simp_page.data()
        off = sint * HV_MESSAGE_SIZE
        if _U32.unpack_from(view, off)[0] != 0:
            # Busy: ask the guest for an EOM, then look again in case it emptied the slot meanwhile.
            view[off + MESSAGE_FLAGS_OFFSET] |= MESSAGE_FLAG_PENDING
            _fence()
            if _U32.unpack_from(view, off)[0] != 0:
                return False
        msg = q.popleft()
        more = bool(q)
        if not more:
            self._pending &= ~(1 << sint)
        n = len(msg.payload)
        # Payload and the rest of the header first, MessageType last (publish).
        view[off + 4 : off + MESSAGE_PAYLOAD_OFFSET] = MESSAGE_HEADER_TAIL.pack(
            n, MESSAGE_FLAG_PENDING if more else 0, 0, msg.origin
        )
        view[off + MESSAGE_PAYLOAD_OFFSET : off + MESSAGE_PAYLOAD_OFFSET + n] = msg.payload
        view[off : off + 4] = msg.msg_type.to_bytes(4, "little")
        self.counters["delivered"] += 1
        self._trace("delivered", sint=sint, type=msg.msg_type, size=n, pending=more, queued=len(q))
        if msg.owner is not None:
            msg.owner.release_message_buffer()
        self._notify(sint)
        return True

    def _held(self, inj: Injector, sint: int, head: QueuedMessage) -> bool:
        """Fault injection: the head message must wait (its message-delay has not passed) or the slot is
        made to look busy (slot-busy). Either way it stays queued, as behind an occupied slot."""
        if head.not_before and inj.now() < head.not_before:
            return True
        if inj.slot_busy(self.vp_index, sint):
            head.not_before = inj.now() + HELD_RETRY  # tried again then (PartitionTime.poll_vp wakes)
            return True
        return False

    def next_release(self) -> int | None:
        """The earliest reference time at which a message held by fault injection (message-delay,
        slot-busy) may go (PartitionTime.poll_vp wakes a VP then), or None."""
        best: int | None = None
        pending = self._pending
        while pending:
            s = (pending & -pending).bit_length() - 1
            pending &= pending - 1
            t = self._queues[s][0].not_before if self._queues[s] else 0
            if t and (best is None or t < best):
                best = t
        return best

    def _scan_all(self) -> None:
        pending = self._pending
        while pending:
            s = (pending & -pending).bit_length() - 1
            pending &= pending - 1
            self._try_deliver(s)

    def eom(self) -> None:
        """HV_X64_MSR_EOM write: "scan the internal message buffer queue(s)" of this VP and deliver
        where the slot is empty, even for a masked SINT (that drains it); no-op when all are empty."""
        with self.lock:
            self.counters["eom"] += 1
            self._trace("eom", pending=self._pending)
            self._scan_all()
            self._announce_ready(ALL_SINTS)

    def eoi(self, vector: int) -> None:
        """The guest EOIed `vector` at its APIC: retry the SINTs that use it ("Multiple message
        buffers ... until ... The guest indicates the end of interrupt")."""
        with self.lock:
            mask = 0
            for s in range(SINT_COUNT):
                if self.sints[s] & SINT_VECTOR_MASK == vector:
                    mask |= 1 << s
                    if self._pending >> s & 1:
                        self._try_deliver(s)
            if mask:
                self._announce_ready(mask)

    def rescan(self) -> None:
        """Retry every queued message (the periodic retry; cheap when nothing is queued)."""
        if self._pending:
            with self.lock:
                self._scan_all()
                self._announce_ready(ALL_SINTS)

    def drop_messages(self, owner: BufferOwner) -> int:
        """Remove the queued (undelivered) messages whose buffers belong to `owner` (a deleted port:
        "Deletion of the target port will always free all of the port's message buffers")."""
        dropped = 0
        with self.lock:
            for s, q in enumerate(self._queues):
                if not q:
                    continue
                keep = deque(m for m in q if m.owner is not owner)
                gone = len(q) - len(keep)
                if gone:
                    self._queues[s] = keep
                    if not keep:
                        self._pending &= ~(1 << s)
                    for _ in range(gone):
                        owner.release_message_buffer()
                    dropped += gone
        return dropped

    def slot_message(self, sint: int) -> tuple[int, int, int, bytes]:
        """(type, flags, origin, payload) of slot `sint` as the guest would see it (tests, debugging)."""
        self._check_sint(sint)
        with self.lock:
            raw = bytes(self.simp_page.data()[sint * HV_MESSAGE_SIZE : (sint + 1) * HV_MESSAGE_SIZE])
        msg_type, size, flags, _, origin = MESSAGE_HEADER.unpack_from(raw)
        size = min(size, HV_MESSAGE_PAYLOAD_SIZE)
        return msg_type, flags, origin, raw[MESSAGE_PAYLOAD_OFFSET : MESSAGE_PAYLOAD_OFFSET + size]

    # --- single-buffer producers (synthetic timers) --------------------------------------------------
    def slot_ready(self, sint: int) -> bool:
        """SINT `sint` can take a message right now without queuing: SynIC and SIMP enabled, the SINT
        unmasked (or polling), nothing queued before it, and its slot empty."""
        if self._queues[sint] or not self.can_accept_messages() or not self._sint_unmasked(self.sints[sint]):
            return False
        off = sint * HV_MESSAGE_SIZE
        return bool(_U32.unpack_from(self.simp_page.data(), off)[0] == 0)

    def try_post(self, sint: int, message_type: int, payload: bytes, origin: int = 0) -> bool:
        """Deliver now or not at all (hv/timers.py TimerSynic: a timer has one message buffer and keeps
        its expiry pending itself). When the SINT cannot take it, an occupied slot gets MessagePending
        so that the guest writes EOM, and False is returned; listeners hear when to retry."""
        self._check_sint(sint)
        with self.lock:
            inj = self.inject
            if inj is not None and self.can_accept_messages() and inj.slot_busy(self.vp_index, sint):
                return False  # fault injection: the slot looks busy; the timer keeps its expiry pending
            if not self.slot_ready(sint):
                if not self.can_accept_messages() or self._queues[sint]:
                    return False
                view = self.simp_page.data()
                off = sint * HV_MESSAGE_SIZE
                if _U32.unpack_from(view, off)[0] != 0:
                    # Same handshake as _try_deliver: flag, barrier, look again.
                    view[off + MESSAGE_FLAGS_OFFSET] |= MESSAGE_FLAG_PENDING
                    _fence()
                if not self.slot_ready(sint):
                    return False
            return self.post_message(sint, message_type, payload, origin, delayable=False) == HvStatus.SUCCESS

    def add_ready_listener(self, callback: Callable[[int], None]) -> None:
        """`callback(sint)` runs (with the lock held) whenever SINT `sint` may have become able to take
        a message: after EOM, an EOI of its vector, a write of its SINT register, SCONTROL or SIMP
        enable, and a `rescan()` that had queued messages - for each such SINT that is `slot_ready`."""
        self._ready_listeners.append(callback)

    def _announce_ready(self, mask: int) -> None:
        if not self._ready_listeners:
            return
        while mask:
            s = (mask & -mask).bit_length() - 1
            mask &= mask - 1
            if self.slot_ready(s):
                for cb in self._ready_listeners:
                    cb(s)

    # --- event flags --------------------------------------------------------------------------------
    def signal_event(self, sint: int, flag: int) -> tuple[HvStatus, bool]:
        """Set event flag `flag` of SINT `sint` (HvCallSignalEvent / SignalEventDirect semantics).

        Returns (status, newly_signaled). INVALID_SYNIC_STATE when SCONTROL or SIEFP is disabled or
        the SINT is masked (inter-partition-communication.md "Event Flag Delivery")."""
        self._check_sint(sint)
        if not 0 <= flag < HV_EVENT_FLAGS_COUNT:
            raise ValueError(f"event flag {flag} out of range")
        with self.lock:
            if not self.can_accept_events(sint):
                return HvStatus.INVALID_SYNIC_STATE, False
            view = self.siefp_page.data()
            i = sint * HV_EVENT_FLAGS_BYTE_COUNT + (flag >> 3)
            bit = 1 << (flag & 7)
            old = view[i]
            newly = not old & bit
            if newly:
                view[i] = old | bit  # only ever sets bits (module docstring)
            self.counters["events"] += 1
            self._trace("event", sint=sint, flag=flag, newly=newly)
            if newly:
                self._notify(sint)
            return HvStatus.SUCCESS, newly

    def event_flag(self, sint: int, flag: int) -> bool:
        """Whether flag `flag` of SINT `sint` is set in the SIEF page (tests, debugging)."""
        with self.lock:
            return bool(
                self.siefp_page.data()[sint * HV_EVENT_FLAGS_BYTE_COUNT + (flag >> 3)] >> (flag & 7) & 1
            )

    # --- interrupts -----------------------------------------------------------------------------------
    def _sint_unmasked(self, raw: int) -> bool:
        # "Setting the polling bit will have the effect of unmasking an interrupt source, except that
        # an actual interrupt is not generated."
        return not raw & SINT_MASKED or (self.polling_supported and bool(raw & SINT_POLLING))

    def _notify(self, sint: int) -> bool:
        raw = self.sints[sint]
        if raw & SINT_MASKED or (self.polling_supported and raw & SINT_POLLING):
            return False  # masked: "the interrupt is lost"; polling: no interrupt
        vector = raw & SINT_VECTOR_MASK
        auto_eoi = bool(raw & SINT_AUTO_EOI)
        self.counters["interrupts"] += 1
        self._trace("sint", sint=sint, vector=vector, auto_eoi=auto_eoi)
        self.irq.request_interrupt(self.vp_index, vector, auto_eoi)
        return True

    def raise_sint(self, sint: int) -> bool:
        """Assert SINT `sint` without a message or flag (the Hyper-V test device's "set SINT").
        Needs SCONTROL enabled and an unmasked, non-polling SINT; True if an interrupt was requested."""
        self._check_sint(sint)
        with self.lock:
            if not self.enabled:
                return False
            return self._notify(sint)

    # --- lifecycle ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """VP creation/reset values: all registers 0 except SINTx = 0x10000 (masked); SIM and SIEF
        pages cleared; message queues empty (their buffers released)."""
        with self.lock:
            self.scontrol = self.simp = self.siefp = 0
            self.sints = [SINT_RESET] * SINT_COUNT
            self.sint_generation += 1
            for page in (self.simp_page, self.siefp_page):
                page.unmap()
                page.zero()
            for q in self._queues:
                while q:
                    m = q.popleft()
                    if m.owner is not None:
                        m.owner.release_message_buffer()
            self._pending = 0

    def describe(self) -> dict[str, Any]:
        """State dump for `hv1 info`/diagnostics."""
        with self.lock:
            return {
                "vp": self.vp_index,
                "scontrol": self.scontrol,
                "simp": self.simp,
                "siefp": self.siefp,
                "sints": list(self.sints),
                "queued": [len(q) for q in self._queues],
                "counters": dict(self.counters),
            }

    @staticmethod
    def _check_sint(sint: int) -> None:
        if not 0 <= sint < SINT_COUNT:
            raise ValueError(f"SINT {sint} out of range 0..15")


# --- wiring into a Partition (hv/partition.py extension points) ---------------------------------------


def synic_of(vp: Vp) -> Synic:
    """The SynIC of `vp` (attached by `attach_synic` as `vp.state.synic`)."""
    synic = vp.state.synic
    if synic is None:
        raise missing_state(vp, "SynIC")
    return synic


def _msr_reader(index: int) -> Callable[[Vp], int]:
    return lambda vp: synic_of(vp).read_msr(index)


def _msr_writer(index: int) -> Callable[[Vp, int], None]:
    return lambda vp, value: synic_of(vp).write_msr(index, value)


def register_synic_msrs(table: MsrTable) -> None:
    """SCONTROL..EOM and SINT0-15, per VP, gated by AccessSynicRegs (PDF §8.10: #GP without it)."""
    gate = privilege_gate(PartitionPrivilege.AccessSynicRegs)
    for index in SYNIC_MSRS:
        if index == M.HV_X64_MSR_SVERSION:
            reset = HV_SYNIC_VERSION
        elif index >= M.HV_X64_MSR_SINT0:
            reset = SINT_RESET
        else:
            reset = 0
        table.register(
            index,
            M.msr_name(index),
            gate,
            read=_msr_reader(index),
            write=None if index == M.HV_X64_MSR_SVERSION else _msr_writer(index),
            reset=reset,
            scope=Scope.VP,
        )


def attach_synic(partition: Partition, *, queue_depth: int = DEFAULT_QUEUE_DEPTH) -> PartitionPorts:
    """Give every VP of `partition` a SynIC (`vp.state.synic`), register the SynIC MSRs and the
    SynIC hypercalls, and attach the port tables (subsystem "ports", returned).

    AutoEOI is honoured where caps.auto_eoi says the machine can (both APIC modes on a usual host);
    polling follows
    CPUID 0x40000003.EDX[17]. Call once, before the first VP runs."""
    from hv1.hv.hypercalls import synic_calls
    from hv1.hv.ports import PartitionPorts

    existing = partition.subsystems.get("ports")
    if isinstance(existing, PartitionPorts):
        return existing  # the Partition attaches its SynICs itself; this keeps older callers working
    caps = partition.caps
    synics = []
    for vp in partition.vps:
        synic = Synic(
            vp.index,
            partition.memory,
            partition.irq,
            layer=partition.overlays,
            lock=partition.lock,
            tracer=partition.tracer,
            queue_depth=queue_depth,
            auto_eoi_supported=caps.auto_eoi,
            polling_supported=caps.has_feature(FeaturesEdx.SintPollingModeAvailable),
        )
        if vp.state.synic is not None:
            raise ValueError(f"VP {vp.index} already has a SynIC")
        vp.state.synic = synic
        synics.append(synic)
    ports = PartitionPorts(
        synics, lock=partition.lock, tracer=partition.tracer, partition_id=partition.partition_id
    )
    partition.add_subsystem("ports", ports)
    register_synic_msrs(partition.msrs)
    for d in synic_calls.DEFS:
        partition.hypercalls.register(d)
    return ports
