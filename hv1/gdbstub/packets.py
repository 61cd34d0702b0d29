"""RSP framing: `$data#cs` packets, the modulo-256 checksum, `+`/`-` acks, binary escapes.

GDB manual, "Overview" of the Remote Serial Protocol: a packet is `$`, the data, `#` and two hex
digits of the sum of the data bytes modulo 256. In binary data (the X packet, qXfer replies) the
bytes `#`, `$`, `}` and `*` are sent as `}` followed by the byte XOR 0x20. Outside a packet, 0x03 is
an interrupt request (Ctrl-C) and `+`/`-` acknowledge the last packet.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

INTERRUPT = 0x03
_ESCAPED = frozenset(b"#$}*")


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def frame(data: bytes) -> bytes:
    """The packet carrying `data` (already escaped if it is binary)."""
    return b"$" + data + b"#" + b"%02x" % checksum(data)


def escape(data: bytes) -> bytes:
    out = bytearray()
    for b in data:
        if b in _ESCAPED:
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """Undo `escape` (the X packet's payload). A trailing lone `}` is dropped: it escapes nothing."""
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == 0x7D:
            nxt = next(it, None)
            if nxt is None:
                break
            out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


def hex_bytes(data: bytes) -> bytes:
    return data.hex().encode()


def parse_hex(text: bytes) -> int:
    """A big-endian hex number as gdb writes addresses and lengths; ValueError if malformed."""
    if not text or len(text) > 32:
        raise ValueError(f"bad hex number {text!r}")
    return int(text, 16)


@dataclass(frozen=True)
class Packet:
    data: bytes


@dataclass(frozen=True)
class Ack:
    ok: bool  # `+` or `-`


@dataclass(frozen=True)
class Interrupt:
    pass


Event = Packet | Ack | Interrupt


class Decoder:
    """Turns the byte stream from gdb into packets, acks and interrupts. A packet whose checksum
    does not match comes out as None: the server answers it with `-` so gdb sends it again."""

    MAX_PACKET = 1 << 20  # far above our PacketSize; anything longer is garbage and is dropped

    def __init__(self) -> None:
        self._buf = bytearray()
        self._in_packet = False
        self._sum_digits = bytearray()
        self._after_hash = False
        self.bad_packets = 0

    def feed(self, chunk: bytes) -> Iterator[Event | None]:
        """Events in `chunk`; None stands for a packet whose checksum did not match."""
        for b in chunk:
            if not self._in_packet:
                if b == 0x24:  # '$'
                    self._in_packet = True
                    self._after_hash = False
                    self._buf.clear()
                    self._sum_digits.clear()
                elif b == 0x2B:
                    yield Ack(True)
                elif b == 0x2D:
                    yield Ack(False)
                elif b == INTERRUPT:
                    yield Interrupt()
                continue  # anything else between packets is noise
            if self._after_hash:
                self._sum_digits.append(b)
                if len(self._sum_digits) == 2:
                    self._in_packet = False
                    data = bytes(self._buf)
                    try:
                        good = int(self._sum_digits, 16) == checksum(data)
                    except ValueError:
                        good = False
                    if good:
                        yield Packet(data)
                    else:
                        self.bad_packets += 1
                        yield None
            elif b == 0x23:  # '#'
                self._after_hash = True
            elif b == 0x24:  # a '$' inside a packet: the previous one was cut short; start over
                self._buf.clear()
            else:
                self._buf.append(b)
                if len(self._buf) > self.MAX_PACKET:
                    self._in_packet = False
                    self._buf.clear()
