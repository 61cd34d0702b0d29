"""The gdb remote stub (hv1/gdbstub) over a socket pair against the fake CPU (tests/fake_debug.py).

Each test plays gdb's side of the Remote Serial Protocol (GDB manual, Appendix E) byte by byte, so
framing, acks, checksums and every packet's reply format are checked as gdb would see them.
"""

from __future__ import annotations

import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hv1.gdbstub import registers as regs
from hv1.gdbstub.packets import Decoder, Packet, checksum, escape, frame, unescape
from hv1.gdbstub.server import Session, parse_address
from tests.fake_debug import FakeCpuTarget, Insn
from tests.fakes import FakeMemory

pytestmark = pytest.mark.timeout(30)

CODE = 0x1000
DATA = 0x3000
STACK = 0x8000


class Gdb:
    """gdb's end of the connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(10)
        self.buf = b""
        self.acks = True

    def _byte(self) -> int:
        while not self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        b, self.buf = self.buf[0], self.buf[1:]
        return b

    def raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, data: bytes) -> None:
        self.sock.sendall(frame(data))
        if self.acks:
            assert self._byte() == ord("+")

    def reply(self) -> bytes:
        while self._byte() != ord("$"):
            pass
        data = bytearray()
        while (b := self._byte()) != ord("#"):
            data.append(b)
        cs = bytes((self._byte(), self._byte()))
        assert int(cs, 16) == checksum(bytes(data))
        if self.acks:
            self.sock.sendall(b"+")
        return bytes(data)

    def ask(self, data: bytes) -> bytes:
        self.send(data)
        return self.reply()


def loop_program() -> dict[int, Insn]:
    """VP 0: CODE, CODE+1 (store to DATA), CODE+2, then exit at CODE+3. VP 1 spins at CODE+0x10."""
    inc: Insn = Insn(
        store=(DATA, 4, lambda old, _: (int.from_bytes(old, "little") + 1).to_bytes(4, "little"))
    )
    return {
        CODE: Insn(),
        CODE + 1: inc,
        CODE + 2: Insn(),
        CODE + 3: Insn(op="exit"),
        CODE + 0x10: Insn(next=CODE + 0x10),
        CODE + 0x20: Insn(next=CODE + 0x20),  # a spin for VP 0 (Ctrl-C test)
    }


def make_target(**kw: object) -> FakeCpuTarget:
    mem = FakeMemory(1 << 20)
    mem.write(CODE, bytes(range(0x90, 0x90 + 0x30)))
    mem.write(DATA, (41).to_bytes(4, "little"))
    return FakeCpuTarget(mem, loop_program(), {0: CODE, 1: CODE + 0x10}, {0: STACK, 1: STACK - 0x100}, **kw)  # type: ignore[arg-type]


@pytest.fixture
def target() -> FakeCpuTarget:
    return make_target()


@pytest.fixture
def gdb(target: FakeCpuTarget) -> Iterator[Gdb]:
    ours, theirs = socket.socketpair()
    session = Session(ours, target)
    session.attach()
    t = threading.Thread(target=session.run, daemon=True)
    t.start()
    g = Gdb(theirs)
    g.session = session  # type: ignore[attr-defined]
    yield g
    theirs.close()
    t.join(5)


# ---- framing ----
def test_checksum_and_escape_round_trip() -> None:
    assert frame(b"OK") == b"$OK#9a"
    data = bytes(range(256))
    assert unescape(escape(data)) == data
    assert b"#" not in escape(b"#$}*") and escape(b"}") == b"}]"


def test_decoder_bad_checksum_is_none_and_interrupt_between_packets() -> None:
    d = Decoder()
    evs = list(d.feed(b"+$g#00\x03$g#67-"))
    assert evs[0] is not None and evs[1] is None and evs[3] == Packet(b"g")
    assert len(evs) == 5 and d.bad_packets == 1


def test_bad_checksum_gets_nak_then_retransmission_is_answered(gdb: Gdb) -> None:
    gdb.raw(b"$qC#00")
    assert gdb._byte() == ord("-")
    assert gdb.ask(b"qC") == b"QC1"


def test_unknown_packet_gets_empty_reply(gdb: Gdb) -> None:
    assert gdb.ask(b"qNoSuchThing") == b""
    assert gdb.ask(b"!") == b""


# ---- negotiation ----
def test_qsupported_and_no_ack_mode(gdb: Gdb) -> None:
    reply = gdb.ask(b"qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386")
    feats = reply.split(b";")
    assert b"qXfer:features:read+" in feats and b"QStartNoAckMode+" in feats and b"swbreak+" in feats
    assert b"PacketSize=4000" in feats
    assert gdb.ask(b"QStartNoAckMode") == b"OK"
    gdb.acks = False
    gdb.send(b"qC")
    assert gdb.reply() == b"QC1"  # no '+' in front of it any more


def test_target_xml_in_chunks_is_an_x86_64_description(gdb: Gdb) -> None:
    doc = b""
    while True:
        r = gdb.ask(b"qXfer:features:read:target.xml:%x,80" % len(doc))
        doc += unescape(r[1:])
        if r[:1] == b"l":
            break
        assert r[:1] == b"m"
    root = ET.fromstring(doc)
    assert root.findtext("architecture") == "i386:x86-64"
    names = [r.get("name") for r in root.iter("reg")]
    assert names == [r.name for r in regs.X86_64]
    features = {f.get("name") for f in root.iter("feature")}
    assert {"org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse", "org.gnu.gdb.i386.segments"} <= features
    assert {"cr0", "cr3", "cr4", "efer", "fs_base", "gs_base"} <= set(names)
    assert gdb.ask(b"qXfer:features:read:other.xml:0,10") == b"E00"


# ---- registers ----
def test_g_packet_layout_and_p_P(gdb: Gdb, target: FakeCpuTarget) -> None:
    target.vps[0].regs.update(rax=0x1122334455667788, cr3=0xABC000, fs_base=0x7F00)
    g = gdb.ask(b"g")
    assert len(g) == regs.G_PACKET_CHARS
    assert g[:16] == b"8877665544332211"  # rax, little-endian
    off = sum(r.bits // 4 for r in regs.X86_64[: regs.REGNUM["rip"]])
    assert int.from_bytes(bytes.fromhex(g[off : off + 16].decode()), "little") == CODE
    st0 = sum(r.bits // 4 for r in regs.X86_64[: regs.REGNUM["st0"]])
    assert g[st0 : st0 + 20] == b"x" * 20  # the fake has no x87 state: unavailable, not zero
    assert gdb.ask(b"p%x" % regs.REGNUM["cr3"]) == (0xABC000).to_bytes(8, "little").hex().encode()
    assert gdb.ask(b"p%x" % regs.REGNUM["fs_base"]) == (0x7F00).to_bytes(8, "little").hex().encode()
    assert gdb.ask(b"P%x=%s" % (regs.REGNUM["rbx"], (5).to_bytes(8, "little").hex().encode())) == b"OK"
    assert target.vps[0].regs["rbx"] == 5
    assert gdb.ask(b"p999") == b"E00"
    assert gdb.ask(b"P0=12") == b"E00"  # wrong width


def test_G_writes_every_register_given(gdb: Gdb, target: FakeCpuTarget) -> None:
    g = bytearray(gdb.ask(b"g"))
    g[0:16] = (0xDEAD).to_bytes(8, "little").hex().encode()
    assert gdb.ask(b"G" + bytes(g)) == b"OK"
    assert target.vps[0].regs["rax"] == 0xDEAD


# ---- memory ----
def test_memory_read_write_and_binary_write(gdb: Gdb, target: FakeCpuTarget) -> None:
    assert gdb.ask(b"m%x,4" % DATA) == (41).to_bytes(4, "little").hex().encode()
    assert gdb.ask(b"M%x,2:abcd" % DATA) == b"OK"
    assert target.memory.read(DATA, 2) == b"\xab\xcd"
    payload = b"#$}*\x00\xff"
    assert gdb.ask(b"X%x,%x:" % (DATA, len(payload)) + escape(payload)) == b"OK"
    assert target.memory.read(DATA, len(payload)) == payload
    assert gdb.ask(b"X%x,0:" % DATA) == b"OK"
    assert gdb.ask(b"M%x,2:ab" % DATA) == b"E16"  # length and data disagree


def test_memory_beyond_ram_is_an_error_and_short_reads_stop_at_the_end(gdb: Gdb) -> None:
    assert gdb.ask(b"m%x,4" % (1 << 30)) == b"E0e"
    assert gdb.ask(b"m%x,8" % ((1 << 20) - 4)) == b"00000000"
    assert gdb.ask(b"M%x,1:00" % (1 << 30)) == b"E0e"
    assert gdb.ask(b"mzz,4") == b"E16"


def _identity_tables(mem: FakeMemory, root: int, va: int, pa: int) -> None:
    """4-level page tables at `root` mapping one 4 KiB page va -> pa (Intel SDM 4.5)."""
    pdpt, pd, pt = root + 0x1000, root + 0x2000, root + 0x3000
    mem.write(root + ((va >> 39) & 0x1FF) * 8, (pdpt | 3).to_bytes(8, "little"))
    mem.write(pdpt + ((va >> 30) & 0x1FF) * 8, (pd | 3).to_bytes(8, "little"))
    mem.write(pd + ((va >> 21) & 0x1FF) * 8, (pt | 3).to_bytes(8, "little"))
    mem.write(pt + ((va >> 12) & 0x1FF) * 8, (pa | 3).to_bytes(8, "little"))


def test_memory_by_virtual_address_goes_through_the_vps_page_tables() -> None:
    t = make_target(paging=(0x80000001, 0x10000, 0x20, 0x500))
    va = 0xFFFF_8000_0000_0000
    _identity_tables(t.memory, 0x10000, va, DATA)
    ours, theirs = socket.socketpair()
    s = Session(ours, t)
    s.attach()
    threading.Thread(target=s.run, daemon=True).start()
    g = Gdb(theirs)
    assert g.ask(b"m%x,4" % va) == (41).to_bytes(4, "little").hex().encode()
    assert g.ask(b"m%x,4" % (va + 0x1000)) == b"E0e"  # the next page is not mapped
    assert g.ask(b"M%x,1:07" % va) == b"OK" and t.memory.read(DATA, 1) == b"\x07"
    theirs.close()


# ---- execution, breakpoints, watchpoints ----
def test_software_breakpoint_hides_its_int3_and_stops_with_swbreak(gdb: Gdb, target: FakeCpuTarget) -> None:
    gdb.ask(b"qSupported:swbreak+;hwbreak+")
    orig = target.memory.read(CODE + 2, 1)
    assert gdb.ask(b"Z0,%x,1" % (CODE + 2)) == b"OK"
    assert target.memory.read(CODE + 2, 1) == b"\xcc"  # planted in RAM
    assert gdb.ask(b"m%x,1" % (CODE + 2)) == orig.hex().encode()  # but gdb sees the original
    assert gdb.ask(b"vCont;c") == b"T05thread:1;swbreak:;"
    assert target.vps[0].regs["rip"] == CODE + 2
    assert gdb.ask(b"z0,%x,1" % (CODE + 2)) == b"OK"
    assert target.memory.read(CODE + 2, 1) == orig
    assert gdb.ask(b"z0,%x,1" % (CODE + 2)) == b"E01"  # nothing there any more


def test_debugger_write_over_a_planted_breakpoint_updates_the_saved_byte(
    gdb: Gdb, target: FakeCpuTarget
) -> None:
    assert gdb.ask(b"Z0,%x,1" % CODE) == b"OK"
    assert gdb.ask(b"M%x,1:55" % CODE) == b"OK"
    assert target.memory.read(CODE, 1) == b"\xcc"
    assert gdb.ask(b"z0,%x,1" % CODE) == b"OK"
    assert target.memory.read(CODE, 1) == b"\x55"


def test_swbreak_field_only_when_gdb_asked_for_it(gdb: Gdb) -> None:
    assert gdb.ask(b"Z0,%x,1" % (CODE + 2)) == b"OK"
    assert gdb.ask(b"c") == b"T05thread:1;"


def test_hardware_breakpoint_and_the_four_slot_limit(gdb: Gdb, target: FakeCpuTarget) -> None:
    gdb.ask(b"qSupported:swbreak+;hwbreak+")
    assert gdb.ask(b"Z1,%x,1" % (CODE + 3)) == b"OK"
    assert gdb.ask(b"vCont;c") == b"T05thread:1;hwbreak:;"
    assert target.vps[0].regs["rip"] == CODE + 3
    for i in range(3):
        assert gdb.ask(b"Z1,%x,1" % (CODE + 0x40 + i)) == b"OK"
    assert gdb.ask(b"Z1,%x,1" % (CODE + 0x50)) == b"E01"  # DR0-DR3 are all taken
    assert gdb.ask(b"z1,%x,1" % (CODE + 3)) == b"OK"


def test_write_watchpoint_reports_after_the_store(gdb: Gdb, target: FakeCpuTarget) -> None:
    assert gdb.ask(b"Z2,%x,4" % DATA) == b"OK"
    assert gdb.ask(b"vCont;c") == b"T05thread:1;watch:%x;" % DATA
    assert target.memory.read(DATA, 4) == (42).to_bytes(4, "little")
    assert target.vps[0].regs["rip"] == CODE + 2  # a trap: the store has completed
    assert gdb.ask(b"Z2,%x,4" % (DATA + 1)) == b"E01"  # misaligned for a 4-byte DR (SDM 18.2.5)


def test_access_watchpoint_and_read_watchpoints_refused(gdb: Gdb) -> None:
    assert gdb.ask(b"Z3,%x,4" % DATA) == b""  # x86 has no read-only data breakpoint
    assert gdb.ask(b"Z4,%x,4" % DATA) == b"OK"
    assert gdb.ask(b"vCont;c") == b"T05thread:1;awatch:%x;" % DATA


def test_single_step_with_others_running(gdb: Gdb, target: FakeCpuTarget) -> None:
    assert gdb.ask(b"vCont?") == b"vCont;c;C;s;S;t"
    assert gdb.ask(b"vCont;s:1;c") == b"T05thread:1;"
    assert target.vps[0].regs["rip"] == CODE + 1
    assert gdb.ask(b"s") == b"T05thread:1;"
    assert target.vps[0].regs["rip"] == CODE + 2


def test_step_another_thread_leaves_the_rest_stopped(gdb: Gdb, target: FakeCpuTarget) -> None:
    assert gdb.ask(b"vCont;s:2;t") == b"T05thread:2;"
    assert target.vps[0].regs["rip"] == CODE  # VP 0 was told to stay stopped
    assert gdb.ask(b"vCont;s:1;s:2") == b"E16"  # one stepping VP at a time


def test_ctrl_c_interrupts_a_running_guest(gdb: Gdb, target: FakeCpuTarget) -> None:
    target.vps[0].regs["rip"] = CODE + 0x20  # both VPs spin
    gdb.send(b"vCont;c")
    gdb.raw(b"\x03")
    assert gdb.reply().startswith(b"T02thread:")


def test_run_to_the_end_reports_exit(gdb: Gdb) -> None:
    assert gdb.ask(b"c") == b"W01"
    assert gdb.ask(b"?") == b"W01"
    assert gdb.ask(b"g") == b"E01"


# ---- threads ----
def test_every_vp_is_a_thread(gdb: Gdb, target: FakeCpuTarget) -> None:
    assert gdb.ask(b"qfThreadInfo") == b"m1,2"
    assert gdb.ask(b"qsThreadInfo") == b"l"
    assert gdb.ask(b"?") == b"T02thread:1;"  # attaching stopped the guest
    assert gdb.ask(b"T2") == b"OK" and gdb.ask(b"T3") == b"E01"
    assert gdb.ask(b"Hg2") == b"OK"
    assert gdb.ask(b"qC") == b"QC2"
    off = sum(r.bits // 4 for r in regs.X86_64[: regs.REGNUM["rip"]])
    rip = int.from_bytes(bytes.fromhex(gdb.ask(b"g")[off : off + 16].decode()), "little")
    assert rip == CODE + 0x10
    assert gdb.ask(b"Hg3") == b"E01"
    assert bytes.fromhex(gdb.ask(b"qThreadExtraInfo,2").decode()) == b"VP 1 (fake CPU)"
    assert gdb.ask(b"qAttached") == b"1"


# ---- monitor, detach, kill ----
def _monitor(gdb: Gdb, cmd: str) -> str:
    return bytes.fromhex(gdb.ask(b"qRcmd," + cmd.encode().hex().encode()).decode()).decode()


def test_monitor_phys_and_target_commands(gdb: Gdb) -> None:
    out = _monitor(gdb, "phys 0x3000 4")
    assert out.startswith("0x00003000: 29 00 00 00")
    assert "(not RAM)" in _monitor(gdb, f"phys {(1 << 20) - 2} 4")
    assert _monitor(gdb, "hv synic") == "fake synic state\n"
    assert "unknown monitor command" in _monitor(gdb, "frobnicate")
    assert "phys ADDR" in _monitor(gdb, "help") and "hv synic" in _monitor(gdb, "help")
    assert "usage" in _monitor(gdb, "phys")


def test_detach_removes_breakpoints_and_lets_the_guest_go(gdb: Gdb, target: FakeCpuTarget) -> None:
    gdb.ask(b"Z0,%x,1" % CODE)
    assert gdb.ask(b"D") == b"OK"
    assert target.detached and target.memory.read(CODE, 1) == b"\x90"


def test_kill_ends_the_run(gdb: Gdb, target: FakeCpuTarget) -> None:
    gdb.send(b"k")
    gdb.sock.settimeout(5)
    assert gdb.sock.recv(10) == b""  # the stub closed the connection
    assert target.killed


def test_lost_connection_detaches(target: FakeCpuTarget) -> None:
    ours, theirs = socket.socketpair()
    s = Session(ours, target)
    s.attach()
    t = threading.Thread(target=s.run, daemon=True)
    t.start()
    theirs.close()
    t.join(5)
    assert target.detached


@pytest.mark.parametrize(
    ("spec", "want"),
    [(":1234", ("127.0.0.1", 1234)), ("tcp::1234", ("127.0.0.1", 1234)),
     ("0.0.0.0:1", ("0.0.0.0", 1)), ("tcp:[::1]:9", ("::1", 9)), ("localhost:0", ("localhost", 0))],
)  # fmt: skip
def test_parse_address(spec: str, want: tuple[str, int]) -> None:
    assert parse_address(spec) == want


@pytest.mark.parametrize("spec", ["1234", "host:", "host:x", ":70000"])
def test_parse_address_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_address(spec)


_PACKET = st.one_of(
    st.binary(min_size=1, max_size=40),
    st.builds(lambda c, rest: c + rest, st.sampled_from([b"m", b"M", b"X", b"p", b"P", b"Z", b"z", b"H",
              b"T", b"G", b"qXfer:features:read:", b"qRcmd,", b"vCont;", b"qThreadExtraInfo,"]),
              st.binary(max_size=30)),
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_PACKET)
def test_malformed_packets_never_end_the_session(data: bytes) -> None:
    """Whatever gdb (or anything else on the port) sends, the stub answers and keeps serving."""
    if data.startswith((b"c", b"s", b"vCont;", b"k", b"D")):
        return  # these resume, kill or detach: their effects are tested above
    a, b = socket.socketpair()
    with a, b:
        s = Session(a, make_target())
        s.attach()
        reply = s.handle(data)
        assert reply is None or isinstance(reply, bytes)
        assert s.handle(b"qC") == b"QC1"
