"""The GDB Remote Serial Protocol server: one gdb at a time over TCP, against a `DebugTarget`.

Packets implemented (GDB manual, Appendix E "Packets", "General Query Packets", "Stop Reply
Packets"): `?`, `g`/`G`, `p`/`P`, `m`/`M`/`X`, `c`/`s`, `vCont` (c, s, t; C/S signals are
ignored: a VM has no Unix signals to take), `Z0`-`Z2`/`Z4` and `z` (`Z3`, a read-only watchpoint,
is refused: the x86 debug registers have no read-only condition, SDM 18.2.4), `H`, `T`,
`qfThreadInfo`/`qsThreadInfo`/`qC`/`qThreadExtraInfo`, `qSupported`, `qXfer:features:read`,
`QStartNoAckMode`, `qAttached`, `qRcmd` (monitor commands), `D`, `k`/`vKill`, and the 0x03
interrupt. Anything else gets the empty reply, which tells gdb the packet is not supported.

All-stop: after a stop reply every VP is stopped until gdb resumes; QEMU's conventions otherwise:
attaching stops the guest, detaching (or losing the connection) lets it run again, `kill` ends it.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import TextIO

from hv1.gdbstub import registers as regs
from hv1.gdbstub.packets import Ack, Decoder, Event, Interrupt, Packet, escape, frame, parse_hex, unescape
from hv1.gdbstub.target import BreakpointType, DebugTarget, StopEvent, StopKind

PACKET_SIZE = 0x4000  # what qSupported advertises: the largest packet we accept (and send)
MAX_MEMORY_READ = (PACKET_SIZE - 16) // 2
_POLL = 0.05  # seconds between looks at the target while it runs (no timing depends on it)
E_FAULT = b"E0e"  # EFAULT-like: unmapped memory
E_INVAL = b"E16"  # EINVAL-like: a malformed packet or argument


class Disconnected(Exception):
    pass


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT`, `tcp::PORT` or `tcp:HOST:PORT` (QEMU's -gdb spelling) -> (host, port).
    An empty host means localhost: a debug stub lets anyone who can reach it rewrite guest memory."""
    spec = text[4:] if text.startswith("tcp:") else text
    host, sep, port = spec.rpartition(":")
    if not sep:
        raise ValueError(f"bad --gdb address {text!r}: expected HOST:PORT or :PORT")
    try:
        n = int(port, 10)
    except ValueError:
        raise ValueError(f"bad --gdb port {port!r}") from None
    if not 0 <= n <= 65535:
        raise ValueError(f"bad --gdb port {n}: must be 0-65535")
    return host.strip("[]") or "127.0.0.1", n


class Session:
    """One connected gdb."""

    def __init__(self, conn: socket.socket, target: DebugTarget, log: TextIO | None = None) -> None:
        self.conn = conn
        self.t = target
        self.log = log
        self.decoder = Decoder()
        self.events: deque[Event | None] = deque()
        self.ack_mode = True
        self.running = False
        self.exited: StopEvent | None = None
        self.last_stop: StopEvent | None = None
        self.g_thread = 0  # Hg: thread for registers and memory (0 = any)
        self.c_thread = -1  # Hc: thread for legacy c/s (-1 = all)
        self.gdb_features: set[str] = set()
        self.closing = False
        self.exit_sent = threading.Event()
        self._handlers: dict[str, Callable[[bytes], bytes | None]] = {
            "?": self._stop_status, "g": self._read_all, "G": self._write_all, "p": self._read_one,
            "P": self._write_one, "m": self._read_mem, "M": self._write_mem, "X": self._write_bin,
            "c": self._continue, "s": self._step, "Z": self._insert, "z": self._remove,
            "H": self._set_thread, "T": self._thread_alive, "D": self._detach, "k": self._kill,
        }  # fmt: skip

    # ---- I/O ----
    def _recv(self, timeout: float | None) -> bool:
        r, _, _ = select.select([self.conn], [], [], timeout)
        if not r:
            return False
        try:
            chunk = self.conn.recv(65536)
        except (ConnectionError, OSError):
            chunk = b""
        if not chunk:
            raise Disconnected
        self.events.extend(self.decoder.feed(chunk))
        return True

    def _next(self, timeout: float | None) -> Event | None | bool:
        """The next event; False when `timeout` passed without one."""
        if not self.events and not self._recv(timeout):
            return False
        while not self.events:
            self._recv(None)
        return self.events.popleft()

    def send(self, data: bytes) -> None:
        if self.log:
            self.log.write(f"gdb <- {data[:200]!r}\n")
        pkt = frame(data)
        for _ in range(8):
            self.conn.sendall(pkt)
            if not self.ack_mode:
                return
            # Wait for the ack; a packet or interrupt arriving meanwhile is kept for later.
            while True:
                ev = self._next(None)
                if isinstance(ev, Ack):
                    break
                if ev is not False:
                    self.events.appendleft(ev)  # type: ignore[arg-type]
                    return  # gdb moved on: treat as acknowledged
            if ev.ok:
                return
        raise Disconnected  # eight naks in a row: the link is broken

    # ---- main loop ----
    def run(self) -> None:
        try:
            self._loop()
        except Disconnected:
            pass
        finally:
            if not self.closing and self.exited is None:
                # The connection went away without D or k: let the guest go on (QEMU does the same).
                self.t.detach()
            self.conn.close()

    def _loop(self) -> None:
        while not self.closing:
            if self.running:
                stop = self.t.wait(_POLL)
                if stop is not None:
                    self.running = False
                    self._report(stop)
                    continue
                ev = self._next(0)
                if ev is False:
                    continue
            else:
                ev = self._next(None)
            if ev is None:  # bad checksum: ask for it again
                if self.ack_mode:
                    self.conn.sendall(b"-")
                continue
            if isinstance(ev, Interrupt):
                if self.running:
                    self.t.interrupt()
                continue
            if isinstance(ev, Ack):
                continue
            assert isinstance(ev, Packet)
            if self.ack_mode:
                self.conn.sendall(b"+")
            if self.log:
                self.log.write(f"gdb -> {ev.data[:200]!r}\n")
            if self.running:
                continue  # all-stop: gdb sends nothing but ^C while the target runs
            reply = self.handle(ev.data)
            if reply is not None:
                self.send(reply)
                if ev.data == b"QStartNoAckMode":
                    self.ack_mode = False

    def attach(self) -> None:
        """A new gdb: the guest stops (QEMU stops the VM when gdb connects)."""
        self.last_stop = self.t.stop_all()
        if self.last_stop.kind is StopKind.EXITED:
            self.exited = self.last_stop

    def _report(self, stop: StopEvent) -> None:
        self.last_stop = stop
        if stop.kind is StopKind.EXITED:
            self.exited = stop
        self.send(self.stop_reply(stop))
        if stop.kind is StopKind.EXITED:
            self.exit_sent.set()

    def stop_reply(self, stop: StopEvent) -> bytes:
        if stop.kind is StopKind.EXITED:
            return b"W%02x" % (stop.exit_status & 0xFF)
        out = b"T%02xthread:%x;" % (stop.signal, stop.vp + 1)
        if stop.kind is StopKind.SWBREAK and "swbreak" in self.gdb_features:
            out += b"swbreak:;"
        elif stop.kind is StopKind.HWBREAK and "hwbreak" in self.gdb_features:
            out += b"hwbreak:;"
        elif stop.kind in (StopKind.WATCH, StopKind.RWATCH, StopKind.AWATCH) and stop.addr is not None:
            out += stop.kind.value.encode() + b":%x;" % stop.addr
        return out

    # ---- dispatch ----
    def handle(self, data: bytes) -> bytes | None:
        """The reply to one packet (None: no reply, as for `k`)."""
        try:
            if data.startswith(b"q") or data.startswith(b"Q"):
                return self._query(data)
            if data.startswith(b"v"):
                return self._v_packet(data)
            h = self._handlers.get(chr(data[0])) if data else None
            if h is None:
                return b""
            if self.exited is not None and data[:1] not in (b"?", b"D", b"k", b"H", b"T"):
                return b"E01"  # the partition is gone: nothing to read, write or run
            return h(data[1:])
        except (ValueError, IndexError, KeyError, UnicodeDecodeError):
            return E_INVAL
        except Exception as e:  # a target failure must not end the session (or the VMM)
            if self.log:
                self.log.write(f"gdb stub: {data[:40]!r} failed: {type(e).__name__}: {e}\n")
            return b"E01"

    def _vp_of(self, tid: int) -> int:
        vps = self.t.vp_indexes()
        if tid <= 0:
            if self.last_stop is not None and self.last_stop.vp in vps:
                return self.last_stop.vp
            return vps[0]
        if tid - 1 not in vps:
            raise KeyError(tid)
        return tid - 1

    @property
    def cur_vp(self) -> int:
        return self._vp_of(self.g_thread)

    def _stop_status(self, _: bytes) -> bytes:
        if self.last_stop is None:
            self.attach()
        assert self.last_stop is not None
        return self.stop_reply(self.last_stop)

    # ---- registers ----
    def _read_all(self, _: bytes) -> bytes:
        values = self.t.read_registers(self.cur_vp)
        return b"".join(regs.encode(values, r) for r in regs.X86_64)

    def _write_all(self, arg: bytes) -> bytes:
        values: dict[str, int] = {}
        pos = 0
        for r in regs.X86_64:
            n = r.bits // 4
            if pos + n > len(arg):
                break  # gdb may send a shorter G: the rest keep their values
            v = regs.decode(arg[pos : pos + n], r)
            if v is not None:
                values[r.name] = v
            pos += n
        return b"OK" if self.t.write_registers(self.cur_vp, values) else b"E01"

    def _read_one(self, arg: bytes) -> bytes:
        n = parse_hex(arg)
        if n >= len(regs.X86_64):
            return b"E00"
        return regs.encode(self.t.read_registers(self.cur_vp), regs.X86_64[n])

    def _write_one(self, arg: bytes) -> bytes:
        num, _, val = arg.partition(b"=")
        n = parse_hex(num)
        if n >= len(regs.X86_64) or len(val) != regs.X86_64[n].bits // 4:
            return b"E00"
        r = regs.X86_64[n]
        v = regs.decode(val, r)
        if v is None:
            return b"E00"
        return b"OK" if self.t.write_registers(self.cur_vp, {r.name: v}) else b"E01"

    # ---- memory ----
    @staticmethod
    def _addr_len(text: bytes) -> tuple[int, int]:
        a, _, n = text.partition(b",")
        addr, length = parse_hex(a), parse_hex(n)
        if addr >= 1 << 64:
            raise ValueError("address beyond 64 bits")
        return addr, length

    def _read_mem(self, arg: bytes) -> bytes:
        addr, length = self._addr_len(arg)
        data = self.t.read_virtual(self.cur_vp, addr, min(length, MAX_MEMORY_READ))
        if not data and length:
            return E_FAULT
        return data.hex().encode()

    def _write_mem(self, arg: bytes) -> bytes:
        head, _, hexdata = arg.partition(b":")
        addr, length = self._addr_len(head)
        data = bytes.fromhex(hexdata.decode())
        if len(data) != length:
            return E_INVAL
        return b"OK" if self.t.write_virtual(self.cur_vp, addr, data) else E_FAULT

    def _write_bin(self, arg: bytes) -> bytes:
        head, _, raw = arg.partition(b":")
        addr, length = self._addr_len(head)
        data = unescape(raw)
        if len(data) != length:
            return E_INVAL
        if not length:
            return b"OK"  # gdb's probe for X support
        return b"OK" if self.t.write_virtual(self.cur_vp, addr, data) else E_FAULT

    # ---- execution ----
    def _resume(self, step: int | None, run: frozenset[int]) -> None:
        # Running before the guest is let go: a guest that exits at once makes the main thread call
        # finish(), which waits for the W report only for a session it sees running (else gdb got
        # "Remote connection closed" instead of the exit code).
        self.running = True
        try:
            self.t.resume(step, run)
        except BaseException:
            self.running = False
            raise

    def _set_pc(self, vp: int, arg: bytes) -> None:
        if arg:
            self.t.write_registers(vp, {regs.PC: parse_hex(arg)})

    def _continue(self, arg: bytes) -> None:
        vp = self._vp_of(self.c_thread)
        self._set_pc(vp, arg)
        self._resume(None, frozenset(self.t.vp_indexes()))

    def _step(self, arg: bytes) -> None:
        vp = self._vp_of(self.c_thread)
        self._set_pc(vp, arg)
        self._resume(vp, frozenset())

    def _vcont(self, actions: bytes) -> bytes | None:
        """`vCont;ACTION[:TID];...`: each VP takes the leftmost action naming it or the first
        action without a thread; a VP no action covers stays stopped (GDB manual, "vCont")."""
        chosen: dict[int, str] = {}
        vps = self.t.vp_indexes()
        for item in actions.split(b";"):
            if not item:
                continue
            act, _, tid = item.partition(b":")
            kind = chr(act[0])
            if kind not in "cCsSt":
                return E_INVAL
            targets = vps if not tid or tid == b"-1" else [self._vp_of(parse_hex(tid.split(b".")[-1]))]
            for vp in targets:
                chosen.setdefault(vp, kind.lower())
        steps = [vp for vp, a in chosen.items() if a == "s"]
        if len(steps) > 1:
            return E_INVAL  # one stepping VP at a time (gdb steps one thread in all-stop)
        run = frozenset(vp for vp, a in chosen.items() if a == "c")
        self._resume(steps[0] if steps else None, run)
        return None

    def _kill(self, _: bytes) -> None:
        self.closing = True
        self.t.kill()

    def _detach(self, _: bytes) -> bytes:
        self.closing = True
        if self.exited is None:
            self.t.detach()
        return b"OK"

    # ---- breakpoints ----
    def _z_args(self, arg: bytes) -> tuple[BreakpointType, int, int]:
        fields = arg.split(b";")[0].split(b",")
        return BreakpointType(int(fields[0])), parse_hex(fields[1]), parse_hex(fields[2])

    def _insert(self, arg: bytes) -> bytes:
        typ, addr, kind = self._z_args(arg)
        if typ is BreakpointType.READ_WATCH:
            return b""
        return b"OK" if self.t.insert_breakpoint(self.cur_vp, typ, addr, kind) else b"E01"

    def _remove(self, arg: bytes) -> bytes:
        typ, addr, kind = self._z_args(arg)
        if typ is BreakpointType.READ_WATCH:
            return b""
        return b"OK" if self.t.remove_breakpoint(self.cur_vp, typ, addr, kind) else b"E01"

    # ---- threads ----
    def _set_thread(self, arg: bytes) -> bytes:
        op, tid_text = chr(arg[0]), arg[1:]
        tid = -1 if tid_text == b"-1" else parse_hex(tid_text.split(b".")[-1])
        if tid > 0 and tid - 1 not in self.t.vp_indexes():
            return b"E01"
        if op == "g":
            self.g_thread = tid
        elif op == "c":
            self.c_thread = tid
        else:
            return E_INVAL
        return b"OK"

    def _thread_alive(self, arg: bytes) -> bytes:
        tid = parse_hex(arg.split(b".")[-1])
        return b"OK" if tid - 1 in self.t.vp_indexes() else b"E01"

    # ---- q / Q / v packets ----
    def _query(self, data: bytes) -> bytes:
        name, _, arg = data.partition(b":")
        if data.startswith(b"qRcmd,"):
            return self._monitor(bytes.fromhex(data[6:].decode()).decode("utf-8", "replace"))
        if data.startswith(b"qThreadExtraInfo,"):
            vp = self._vp_of(parse_hex(data[17:].split(b".")[-1]))
            return self.t.describe_vp(vp).encode().hex().encode()
        if name == b"qSupported":
            self.gdb_features = {f[:-1].decode() for f in arg.split(b";") if f.endswith(b"+")}
            return (b"PacketSize=%x;qXfer:features:read+;QStartNoAckMode+;swbreak+;hwbreak+;"
                    b"vContSupported+" % PACKET_SIZE)  # fmt: skip
        if name == b"qXfer" and arg.startswith(b"features:read:"):
            annex, _, span = arg[len(b"features:read:") :].partition(b":")
            if annex != b"target.xml":
                return b"E00"
            off, length = self._addr_len(span)
            doc = regs.target_xml()
            chunk = doc[off : off + min(length, MAX_MEMORY_READ)]
            return (b"l" if off + len(chunk) >= len(doc) else b"m") + escape(chunk)
        if name == b"QStartNoAckMode":
            return b"OK"
        if name == b"qAttached":
            return b"1"  # attached to a running guest: gdb's `quit` detaches rather than kills
        if name == b"qC":
            return b"QC%x" % (self.cur_vp + 1)
        if name == b"qfThreadInfo":
            return b"m" + b",".join(b"%x" % (vp + 1) for vp in self.t.vp_indexes())
        if name == b"qsThreadInfo":
            return b"l"
        if name == b"qSymbol":
            return b"OK"
        return b""

    def _v_packet(self, data: bytes) -> bytes | None:
        if data == b"vCont?":
            return b"vCont;c;C;s;S;t"
        if data.startswith(b"vCont;"):
            if self.exited is not None:
                return b"E01"
            return self._vcont(data[6:])
        if data.startswith(b"vKill"):
            self.closing = True
            self.t.kill()
            return b"OK"
        return b""

    def _monitor(self, command: str) -> bytes:
        words = command.split()
        if not words or words[0] == "help":
            text = (
                "hv1 monitor commands:\n"
                "  phys ADDR [LEN]   hex dump of guest physical memory (default 64 bytes)\n"
            ) + (self.t.monitor("help") or "")
        elif words[0] == "phys":
            text = self._phys(words[1:])
        else:
            out = self.t.monitor(command)
            text = out if out is not None else f"unknown monitor command {command!r} (try `monitor help`)\n"
        return text.encode().hex().encode()

    def _phys(self, args: list[str]) -> str:
        try:
            addr = int(args[0], 0)
            length = int(args[1], 0) if len(args) > 1 else 64
        except (IndexError, ValueError):
            return "usage: monitor phys ADDR [LEN]\n"
        if addr < 0 or not 0 < length <= 4096:
            return "monitor phys: ADDR must be >= 0 and LEN 1..4096\n"
        data = self.t.read_physical(addr, length)
        lines = [hexdump_line(addr + i, data[i : i + 16]) for i in range(0, len(data), 16)]
        if len(data) < length:
            lines.append(f"{addr + len(data):#010x}: (not RAM)")
        return "\n".join(lines) + "\n"


def hexdump_line(addr: int, chunk: bytes) -> str:
    text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
    return f"{addr:#010x}: {chunk.hex(' '):<47}  |{text}|"


class GdbServer:
    """Listens on (host, port) and serves one gdb at a time on its own thread."""

    def __init__(self, target: DebugTarget, host: str, port: int, log: TextIO | None = None) -> None:
        self.target = target
        self.log = log
        self.sock = socket.create_server((host, port), family=_family(host), reuse_port=False)
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self.connected = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.session: Session | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="hv1-gdbstub", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s = Session(conn, self.target, self.log)
            self.session = s
            try:
                s.attach()
                self.connected.set()
                s.run()
            except OSError:
                conn.close()
            finally:
                self.session = None

    def finish(self, timeout: float) -> None:
        """Give a gdb that is waiting for the running guest the exit report (W) before closing."""
        s = self.session
        if s is not None and s.running:
            s.exit_sent.wait(timeout)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        s = self.session
        if s is not None:
            with contextlib.suppress(OSError):
                s.conn.shutdown(socket.SHUT_RDWR)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
