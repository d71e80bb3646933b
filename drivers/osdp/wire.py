"""OSDP packet framing (sans-I/O): enough of the wire to watch a line and to forge a reply.

libosdp does the real protocol work on both ends. This codec exists for two narrower jobs:
the control panel driver *watches* its own line (which command a reader last answered, whether
a reply was MAC-protected) to tell a Secure Channel key mismatch from a reader that is merely
silent, and the simulator *forges* the few clear-text replies a libosdp PD cannot be told to
send (a NAK to a Secure Channel challenge, a capability report without Secure Channel).

Packet layout (OSDP v2.2, IEC 60839-11-5), all multi-byte fields little-endian::

    [0xFF mark] 0x53 ADDR LEN_LO LEN_HI CTRL [SCB_LEN SCB_TYPE SCB_DATA..] CODE DATA.. [MAC*4] CHECK

``LEN`` counts from the 0x53 start byte through the check field. ``ADDR`` has bit 7 set on
replies (PD to CP). ``CTRL``: bits 0-1 sequence number, bit 2 CRC-16 (else an 8-bit checksum),
bit 3 a security control block follows. Secure messages of types 0x15..0x18 end in a 4-byte MAC;
the command/reply code is never encrypted, only ``DATA``.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Final

from drivers.errors import CodecError

__all__ = [
    "BROADCAST",
    "CMD_BUZ",
    "CMD_CAP",
    "CMD_CHLNG",
    "CMD_ID",
    "CMD_KEYSET",
    "CMD_LED",
    "CMD_POLL",
    "CMD_SCRYPT",
    "NAK_SC_COND",
    "NAK_SC_UNSUPPORTED",
    "REPLY_ACK",
    "REPLY_CCRYPT",
    "REPLY_KEYPAD",
    "REPLY_NAK",
    "REPLY_PDCAP",
    "REPLY_PDID",
    "REPLY_RAW",
    "REPLY_RMAC_I",
    "Decoder",
    "Frame",
    "checksum",
    "crc16",
    "encode",
    "pdcap_entries",
]

MARK: Final = 0xFF
SOM: Final = 0x53
BROADCAST: Final = 0x7F
MIN_PACKET: Final = 7  # SOM ADDR LEN*2 CTRL CODE CKSUM
MAX_PACKET: Final = 1536

CTRL_SQN: Final = 0x03
CTRL_CRC: Final = 0x04
CTRL_SCB: Final = 0x08

CMD_POLL: Final = 0x60
CMD_ID: Final = 0x61
CMD_CAP: Final = 0x62
CMD_LED: Final = 0x69
CMD_BUZ: Final = 0x6A
CMD_KEYSET: Final = 0x75
CMD_CHLNG: Final = 0x76
CMD_SCRYPT: Final = 0x77

REPLY_ACK: Final = 0x40
REPLY_NAK: Final = 0x41
REPLY_PDID: Final = 0x45
REPLY_PDCAP: Final = 0x46
REPLY_RAW: Final = 0x50
REPLY_KEYPAD: Final = 0x53
REPLY_CCRYPT: Final = 0x76
REPLY_RMAC_I: Final = 0x78

NAK_SC_UNSUPPORTED: Final = 0x05
NAK_SC_COND: Final = 0x06

CAP_COMMUNICATION_SECURITY: Final = 9

_SCS_WITH_MAC: Final = frozenset({0x15, 0x16, 0x17, 0x18})


def crc16(data: bytes) -> int:
    """OSDP's CRC-16 (CCITT polynomial 0x1021, initial value 0x1D0F, not reflected).

    ``binascii.crc_hqx`` is that CRC in C: a false start byte on the line costs a CRC over up
    to ``MAX_PACKET`` bytes, which in pure Python cost more CPU than the line delivers.
    """
    return binascii.crc_hqx(data, 0x1D0F)


def checksum(data: bytes) -> int:
    """OSDP's 8-bit checksum: the two's complement of the byte sum."""
    return (-sum(data)) & 0xFF


@dataclass(frozen=True, slots=True)
class Frame:
    """One OSDP packet; ``payload`` is DATA as sent (ciphertext inside a Secure Channel)."""

    address: int
    reply: bool
    code: int
    payload: bytes = b""
    sequence: int = 0
    use_crc: bool = True
    scb: bytes = b""  # the whole security control block (length, type, data), or b""
    mac: bytes = b""
    mark: bool = False  # a 0xFF mark byte preceded the packet

    @property
    def scb_type(self) -> int | None:
        """The security block type (0x11..0x18), or None for a plain packet."""
        return self.scb[1] if len(self.scb) >= 2 else None

    @property
    def secure(self) -> bool:
        """True for a Secure Channel message that carries a MAC (types 0x15..0x18)."""
        return self.scb_type in _SCS_WITH_MAC


def encode(frame: Frame) -> bytes:
    """Serialise ``frame`` (with a fresh length and check field)."""
    if not 0 <= frame.address <= BROADCAST:
        raise CodecError(f"OSDP address {frame.address} out of range 0..127")
    if not 0 <= frame.code <= 0xFF or not 0 <= frame.sequence <= 3:
        raise CodecError("OSDP code or sequence number out of range")
    if frame.scb and (len(frame.scb) < 2 or frame.scb[0] != len(frame.scb)):
        raise CodecError("a security control block starts with its own length")
    if frame.mac and len(frame.mac) != 4:
        raise CodecError("an OSDP MAC is 4 bytes")
    ctrl = frame.sequence | (CTRL_CRC if frame.use_crc else 0) | (CTRL_SCB if frame.scb else 0)
    body = bytes([ctrl]) + frame.scb + bytes([frame.code]) + frame.payload + frame.mac
    length = 4 + len(body) + (2 if frame.use_crc else 1)
    if length > MAX_PACKET:
        raise CodecError(f"OSDP packet of {length} bytes is too long")
    address = frame.address | (0x80 if frame.reply else 0)
    packet = bytes([SOM, address]) + length.to_bytes(2, "little") + body
    if frame.use_crc:
        packet += crc16(packet).to_bytes(2, "little")
    else:
        packet += bytes([checksum(packet)])
    return (bytes([MARK]) if frame.mark else b"") + packet


def _parse(packet: bytes, mark: bool) -> Frame | None:
    """Decode one packet whose length and check field are already verified."""
    ctrl = packet[4]
    end = len(packet) - (2 if ctrl & CTRL_CRC else 1)
    pos = 5
    scb = b""
    if ctrl & CTRL_SCB:
        if pos >= end or packet[pos] < 2 or pos + packet[pos] > end:
            return None
        scb = packet[pos : pos + packet[pos]]
        pos += len(scb)
    if pos >= end:
        return None
    code = packet[pos]
    mac = b""
    if scb and scb[1] in _SCS_WITH_MAC:
        if end - 4 <= pos:
            return None
        mac = packet[end - 4 : end]
        end -= 4
    return Frame(
        address=packet[1] & 0x7F,
        reply=bool(packet[1] & 0x80),
        code=code,
        payload=packet[pos + 1 : end],
        sequence=ctrl & CTRL_SQN,
        use_crc=bool(ctrl & CTRL_CRC),
        scb=scb,
        mac=mac,
        mark=mark,
    )


class Decoder:
    """Split a byte stream into Frames; garbage and bad packets are skipped (``dropped``)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buf += data
        if len(self._buf) > 4 * MAX_PACKET:  # never buffer without bound
            excess = len(self._buf) - 2 * MAX_PACKET
            del self._buf[:excess]
            self.dropped += excess

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, or None until more bytes arrive."""
        while True:
            start = self._buf.find(SOM)
            if start < 0:
                keep = 1 if self._buf.endswith(bytes([MARK])) else 0  # a mark split off
                self.dropped += len(self._buf) - keep
                del self._buf[: len(self._buf) - keep]
                return None
            mark = start > 0 and self._buf[start - 1] == MARK
            if start:
                self.dropped += start - (1 if mark else 0)
                del self._buf[:start]
            if len(self._buf) < 5:
                return None
            length = int.from_bytes(self._buf[2:4], "little")
            if not MIN_PACKET <= length <= MAX_PACKET:
                self._skip()
                continue
            if len(self._buf) < length:
                return None
            packet = bytes(self._buf[:length])
            if packet[4] & CTRL_CRC:
                ok = crc16(packet[:-2]) == int.from_bytes(packet[-2:], "little")
            else:
                ok = checksum(packet[:-1]) == packet[-1]
            frame = _parse(packet, mark) if ok else None
            if frame is None:
                self._skip()
                continue
            del self._buf[:length]
            return frame

    def frames(self) -> list[Frame]:
        """Return every complete frame buffered so far."""
        out: list[Frame] = []
        while (frame := self.next_frame()) is not None:
            out.append(frame)
        return out

    def _skip(self) -> None:
        """Drop a false start byte and resynchronise on the next one."""
        del self._buf[:1]
        self.dropped += 1


def pdcap_entries(payload: bytes) -> dict[int, tuple[int, int]]:
    """Decode an osdp_PDCAP payload: function code -> (compliance level, number of items)."""
    return {payload[i]: (payload[i + 1], payload[i + 2]) for i in range(0, len(payload) - 2, 3)}
