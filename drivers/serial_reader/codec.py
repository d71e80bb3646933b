"""Sans-I/O codec for Wiegand-to-serial / ASCII badge readers: one frame per card or PIN.

Theory of operation
-------------------
The byte stream is cut into *records* before anything is parsed:

* a **line** ends at CR, LF or CRLF (an empty or blank line is ignored);
* a **binary frame** starts at STX (0x02) and ends at ETX (0x03) - the RDM6300 / ID-12LA /
  Seeed 125 kHz module frame ``STX, 10 hex digits, 2 hex digits of XOR checksum, [CR LF], ETX``.

STX always starts a new record: a line it interrupts is reported bad. A record longer than
``max_line`` bytes is reported bad at once and the rest of it, up to the next line end or STX,
is dropped and reported too (each further ``max_line`` bytes, and the tail, as their own
``BadFrame``) - never parsed, so the tail of a long garbage line cannot pass for a card.

Each record is then parsed under the configured ``Framing``; anything that is not exactly one of
the documented shapes becomes a ``BadFrame`` (reason + byte count, never the bytes themselves:
they may hold a card number). The decoder never raises; ``encode`` raises ``CodecError`` only
for a frame it cannot represent. The formats are documented in docs/readers.md.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from drivers.errors import CodecError

__all__ = [
    "ETX",
    "MAX_DECIMAL_DIGITS",
    "MAX_KEYS",
    "MAX_LINE",
    "MAX_UID_BYTES",
    "MAX_WIEGAND_BITS",
    "MIN_UID_BYTES",
    "STX",
    "BadFrame",
    "Decoder",
    "Em4100Frame",
    "Frame",
    "Framing",
    "KeypadFrame",
    "NumberFrame",
    "UidFrame",
    "WiegandFrame",
    "decode_all",
    "em4100_checksum",
    "encode",
    "wiegand_key",
]

STX: Final = 0x02
ETX: Final = 0x03
MAX_LINE: Final = 128
"""Longest record accepted (bytes, without its terminator)."""
MAX_WIEGAND_BITS: Final = 256
MAX_DECIMAL_DIGITS: Final = 20
MIN_UID_BYTES: Final = 3
MAX_UID_BYTES: Final = 10  # ISO 14443 triple size; matches controller.access.formats
MAX_KEYS: Final = 32
_MAX_BINARY: Final = 32  # STX frame content: 12 hex digits (+ CR LF) fits easily
_KEY_CHARS: Final = "0123456789*#"
_WIEGAND_KEYS: Final = "0123456789*#"  # 4-bit keypad codes 0..11 (10 = '*', 11 = '#')


class Framing(StrEnum):
    """Which record shapes a reader line may carry (keypad lines are accepted under all)."""

    AUTO = "auto"  # any of the below, recognised per record
    WIEGAND_HEX = "wiegand-hex"  # ``W26:0x2020002`` / ``26,2020002``
    DECIMAL = "decimal"  # ``0009334109``; also the checksummed STX frame (same number)
    UID_HEX = "uid-hex"  # ``04A1B2C3D4E5F6`` / ``04:A1:B2:C3``
    EM4100_STX = "em4100-stx"  # ``STX 06008E6D5D B8 ETX`` only (RDM6300 and kin)


@dataclass(frozen=True, slots=True)
class WiegandFrame:
    """Raw Wiegand bits as a converter saw them: ``bits`` bits in ``data``, MSB first, left-aligned.

    Parity bits are included; pad bits (the low bits of the last byte) are zero.
    """

    bits: int
    data: bytes


@dataclass(frozen=True, slots=True)
class NumberFrame:
    """A decimal card number the reader already decoded (ASCII digits, leading zeros kept)."""

    digits: str


@dataclass(frozen=True, slots=True)
class UidFrame:
    """A card UID / serial number, byte order as the reader printed it."""

    uid: bytes


@dataclass(frozen=True, slots=True)
class Em4100Frame:
    """A checksummed STX frame: 5 EM4100 bytes (version/customer byte + 32-bit id)."""

    data: bytes

    @property
    def number(self) -> str:
        """The 10-digit decimal of the 32-bit id: what USB readers type and cards print."""
        return f"{int.from_bytes(self.data[1:5], 'big'):010d}"


@dataclass(frozen=True, slots=True)
class KeypadFrame:
    """Keys pressed on a keypad attached to the converter (``0-9``, ``*``, ``#``)."""

    keys: str


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A record that was dropped: why, and how many bytes of the stream it covered."""

    reason: str
    raw_prefix_len: int


Frame = WiegandFrame | NumberFrame | UidFrame | Em4100Frame | KeypadFrame

_LINE_BREAK = re.compile(rb"[\r\n\x02]")
_BINARY_BREAK = re.compile(rb"[\x02\x03]")
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")
_I: Final = re.IGNORECASE | re.ASCII
_KEYPAD_RE = re.compile(rf"(?:K|PIN)\s*:\s*([0-9*#]{{1,{MAX_KEYS}}})", _I)
_WIEGAND_RE = re.compile(r"(W\s*)?([0-9]{1,3})\s*[:,]\s*(0X)?([0-9A-F]{1,64})", _I)
_DECIMAL_RE = re.compile(rf"[0-9]{{1,{MAX_DECIMAL_DIGITS}}}")
_UID_PLAIN_RE = re.compile(r"(?:0X)?((?:[0-9A-F]{2})+)", _I)
_UID_SEPARATED_RE = re.compile(r"[0-9A-F]{2}(?:([:\- ])[0-9A-F]{2})(?:\1[0-9A-F]{2})*", _I)
_BINARY_RE = re.compile(rb"([0-9A-Fa-f]{10})([0-9A-Fa-f]{2})(?:\r?\n|\r)?")


def em4100_checksum(data: bytes) -> int:
    """XOR of the 5 data bytes (the checksum an RDM6300 sends as two hex digits)."""
    value = 0
    for byte in data:
        value ^= byte
    return value


def wiegand_key(frame: WiegandFrame) -> str | None:
    """The key of a 4-bit or 8-bit (nibble + inverted nibble) Wiegand keypad burst, else None."""
    if frame.bits == 4:
        code = frame.data[0] >> 4
    elif frame.bits == 8:
        code, inverted = frame.data[0] & 0x0F, frame.data[0] >> 4
        if inverted != code ^ 0x0F:
            return None
    else:
        return None
    return _WIEGAND_KEYS[code] if code < len(_WIEGAND_KEYS) else None


# -- encode ----------------------------------------------------------------------------------


def encode(frame: Frame, *, line_end: bytes = b"\r\n") -> bytes:
    """Bytes a converter sends for ``frame`` (canonical form); CodecError if not representable."""
    if line_end not in (b"\r\n", b"\r", b"\n"):
        raise CodecError("line_end must be CR, LF or CRLF")
    if isinstance(frame, WiegandFrame):
        return _encode_wiegand(frame).encode("ascii") + line_end
    if isinstance(frame, NumberFrame):
        if not (
            isinstance(frame.digits, str)
            and frame.digits.isascii()
            and _DECIMAL_RE.fullmatch(frame.digits)
        ):
            raise CodecError(f"a card number is 1..{MAX_DECIMAL_DIGITS} decimal digits")
        return frame.digits.encode("ascii") + line_end
    if isinstance(frame, UidFrame):
        if not isinstance(frame.uid, bytes) or not (
            MIN_UID_BYTES <= len(frame.uid) <= MAX_UID_BYTES
        ):
            raise CodecError(f"a UID is {MIN_UID_BYTES}..{MAX_UID_BYTES} bytes")
        return frame.uid.hex().upper().encode("ascii") + line_end
    if isinstance(frame, Em4100Frame):
        if not isinstance(frame.data, bytes) or len(frame.data) != 5:
            raise CodecError("an EM4100 frame carries exactly 5 bytes")
        body = f"{frame.data.hex().upper()}{em4100_checksum(frame.data):02X}"
        return bytes([STX]) + body.encode("ascii") + bytes([ETX])
    if isinstance(frame, KeypadFrame):
        keys = frame.keys
        if not isinstance(keys, str) or not 1 <= len(keys) <= MAX_KEYS:
            raise CodecError(f"a keypad entry is 1..{MAX_KEYS} keys")
        if any(k not in _KEY_CHARS for k in keys):
            raise CodecError("keypad keys are 0-9, * and #")
        return b"K:" + keys.encode("ascii") + line_end
    raise CodecError(f"cannot encode {type(frame).__name__}")


def _encode_wiegand(frame: WiegandFrame) -> str:
    bits, data = frame.bits, frame.data
    if not isinstance(bits, int) or not 1 <= bits <= MAX_WIEGAND_BITS:
        raise CodecError(f"a Wiegand frame has 1..{MAX_WIEGAND_BITS} bits")
    if not isinstance(data, bytes) or len(data) != (bits + 7) // 8:
        raise CodecError(f"{bits} Wiegand bits need exactly {(bits + 7) // 8} data bytes")
    pad = len(data) * 8 - bits
    value = int.from_bytes(data, "big")
    if value & ((1 << pad) - 1):
        raise CodecError("Wiegand pad bits (after the last bit) must be zero")
    return f"W{bits}:0x{value >> pad:0{(bits + 3) // 4}X}"


# -- decode ----------------------------------------------------------------------------------


class Decoder:
    """Incremental decoder: ``feed`` bytes in any chunking, then drain ``next_frame``."""

    def __init__(self, framing: Framing | str = Framing.AUTO, *, max_line: int = MAX_LINE) -> None:
        try:
            self.framing = Framing(framing)
        except ValueError:
            raise CodecError(f"unknown framing {framing!r}") from None
        if max_line < 16:
            raise CodecError("max_line must be at least 16 bytes")
        self.max_line = max_line
        self._buf = bytearray()
        self._binary = False  # inside an STX frame
        self._skipping = False  # dropping the rest of an over-long record
        self._out: deque[Frame | BadFrame] = deque()

    @property
    def pending(self) -> int:
        """Bytes held for an unfinished record."""
        return len(self._buf) + (1 if self._binary else 0)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes from the line; complete records become available from ``next_frame``."""
        view = bytes(data)
        i, n = 0, len(view)
        while i < n:
            i = self._feed_binary(view, i) if self._binary else self._feed_line(view, i)

    def next_frame(self) -> Frame | BadFrame | None:
        """The next decoded frame or BadFrame, or None until more bytes arrive."""
        return self._out.popleft() if self._out else None

    def eof(self) -> BadFrame | None:
        """The stream ended: report (and forget) an unfinished record, if any."""
        n = self.pending
        skipping = self._skipping
        self._buf.clear()
        self._binary = self._skipping = False
        if n == 0:
            return None
        reason = "line too long" if skipping else "record cut short by end of stream"
        return BadFrame(reason, n)

    # -- records ---------------------------------------------------------------------------

    def _feed_line(self, view: bytes, i: int) -> int:
        m = _LINE_BREAK.search(view, i)
        end = m.start() if m is not None else len(view)
        room = self.max_line - len(self._buf)
        if end - i > room:
            self._buf += view[i : i + room + 1]
            self._overflow("line too long")
            return i + room + 1
        self._buf += view[i:end]
        if m is None:
            return end
        if view[end] == STX:
            if self._skipping:
                if self._buf:
                    self._out.append(BadFrame("line too long", len(self._buf)))
            elif self._buf.strip(b" \t"):
                self._out.append(BadFrame("line cut short by STX", len(self._buf)))
            self._buf.clear()
            self._skipping = False
            self._binary = True
            return end + 1
        record = bytes(self._buf)
        self._buf.clear()
        if self._skipping:
            self._skipping = False
            if record:
                self._out.append(BadFrame("line too long", len(record)))
        else:
            frame = self._parse_line(record)
            if frame is not None:
                self._out.append(frame)
        return end + 1

    def _feed_binary(self, view: bytes, i: int) -> int:
        m = _BINARY_BREAK.search(view, i)
        end = m.start() if m is not None else len(view)
        room = _MAX_BINARY - len(self._buf)
        if end - i > room:
            self._buf += view[i : i + room + 1]
            self._binary = False
            self._buf.insert(0, STX)  # count the STX in the report
            self._overflow("binary frame too long")
            return i + room + 1
        self._buf += view[i:end]
        if m is None:
            return end
        record = bytes(self._buf)
        self._buf.clear()
        if view[end] == STX:
            self._out.append(BadFrame("binary frame cut short by STX", len(record) + 1))
            return end + 1  # still binary: a new frame starts
        self._binary = False
        self._out.append(self._parse_binary(record))
        return end + 1

    def _overflow(self, reason: str) -> None:
        """Report the over-long record so far and drop the rest of it up to a line end/STX."""
        self._out.append(BadFrame(reason, len(self._buf)))
        self._buf.clear()
        self._skipping = True

    # -- parsing ---------------------------------------------------------------------------

    def _parse_line(self, raw: bytes) -> Frame | BadFrame | None:
        size = len(raw)  # the terminator is not counted
        stripped = raw.strip(b" \t")
        if not stripped:
            return None  # CR of a CRLF pair, or a blank line
        if not _PRINTABLE.fullmatch(stripped):
            return BadFrame("non-printable byte in line", size)
        text = stripped.decode("ascii")
        m = _KEYPAD_RE.fullmatch(text)
        if m is not None:
            return KeypadFrame(m.group(1))
        framing = self.framing
        if framing in (Framing.AUTO, Framing.WIEGAND_HEX):
            frame = _parse_wiegand(text, size)
            if frame is not None or framing is Framing.WIEGAND_HEX:
                return frame or BadFrame("not a wiegand-hex line", size)
        if framing in (Framing.AUTO, Framing.DECIMAL) and _DECIMAL_RE.fullmatch(text):
            return NumberFrame(text)
        if framing in (Framing.AUTO, Framing.UID_HEX):
            uid = _parse_uid(text)
            if uid is not None:
                return UidFrame(uid)
        if framing is Framing.EM4100_STX:
            return BadFrame("text line under em4100-stx framing", size)
        return BadFrame(f"unrecognised line for framing {framing.value}", size)

    def _parse_binary(self, record: bytes) -> Frame | BadFrame:
        size = len(record) + 2  # STX and ETX
        if self.framing not in (Framing.AUTO, Framing.EM4100_STX, Framing.DECIMAL):
            return BadFrame(f"binary frame under framing {self.framing.value}", size)
        m = _BINARY_RE.fullmatch(record)
        if m is None:
            return BadFrame("malformed binary frame", size)
        data = bytes.fromhex(m.group(1).decode("ascii"))
        if int(m.group(2), 16) != em4100_checksum(data):
            return BadFrame("binary frame checksum mismatch", size)
        return Em4100Frame(data)


def _parse_wiegand(text: str, size: int) -> WiegandFrame | BadFrame | None:
    """A ``W26:0x...`` / ``26,...`` line; None if the line does not have that shape."""
    m = _WIEGAND_RE.fullmatch(text)
    if m is None:
        return None
    explicit = bool(m.group(1) or m.group(3))
    bits = int(m.group(2))
    digits = m.group(4)
    if not 1 <= bits <= MAX_WIEGAND_BITS:
        return BadFrame("wiegand bit count out of range", size) if explicit else None
    nbytes = (bits + 7) // 8
    if explicit:
        if len(digits) > 2 * nbytes:
            return BadFrame("wiegand value longer than its bit count", size)
    elif len(digits) not in ((bits + 3) // 4, 2 * nbytes):
        # ``142,28765`` is a facility,card display, not bits: only exact widths are bits
        return None
    value = int(digits, 16)
    if value >> bits:
        return BadFrame("wiegand value longer than its bit count", size)
    return WiegandFrame(bits, (value << (nbytes * 8 - bits)).to_bytes(nbytes, "big"))


def _parse_uid(text: str) -> bytes | None:
    m = _UID_PLAIN_RE.fullmatch(text)
    if m is not None:
        hexdigits = m.group(1)
    elif _UID_SEPARATED_RE.fullmatch(text):
        hexdigits = re.sub(r"[:\- ]", "", text)
    else:
        return None
    uid = bytes.fromhex(hexdigits)
    return uid if MIN_UID_BYTES <= len(uid) <= MAX_UID_BYTES else None


def decode_all(data: bytes, framing: Framing | str = Framing.AUTO) -> list[Frame | BadFrame]:
    """Decode a complete byte string (tests, tools): every record, and an unfinished tail."""
    decoder = Decoder(framing)
    decoder.feed(data)
    out: list[Frame | BadFrame] = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    tail = decoder.eof()
    if tail is not None:
        out.append(tail)
    return out
