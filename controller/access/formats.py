"""Card formats: decode what readers deliver into one canonical card number (sans-I/O).

Every presented card becomes a :class:`CardNumber` whose ``key`` is THE credential key the
store hashes and looks up: one key per physical credential, whatever the reader's byte order
or the decimal/hex display. Wiegand frames are checked bit for bit (length, padding, every
parity bit); anything malformed raises :class:`CodecError`, never anything else.

Bit positions below count from 0 = the first bit transmitted (the MSB of the frame).

========  ====  =================  ====================  =====================================
format    bits  facility           number                parity
========  ====  =================  ====================  =====================================
h10301    26    1..8   (8 bits)    9..24   (16 bits)     0 even over 1..12; 25 odd over 13..24
w34       34    1..16  (16 bits)   17..32  (16 bits)     0 even over 1..16; 33 odd over 17..32
c1000     35    2..13  (12 bits)   14..33  (20 bits)     1 even over 2..33 where p%3 != 1;
                                                         34 odd over 1..33 where p%3 != 0;
                                                         0 odd over 1..34
h10304    37    1..16  (16 bits)   17..35  (19 bits)     0 even over 1..18; 36 odd over 18..35
========  ====  =================  ====================  =====================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeGuard

from drivers.base import CardFraming, CardRead
from drivers.errors import CodecError

UID_MAX_BYTES = 10  # ISO 14443 triple-size UID
NUMBER_MAX_DIGITS = 20
_DECIMAL = re.compile(rf"[0-9]{{1,{NUMBER_MAX_DIGITS}}}")
_HEX_PAIR = re.compile(r"[0-9A-Fa-f]{2}")
_HEX_RUN = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_UID_SEPARATORS = re.compile(r"[: ]+")


class CardNumberError(CodecError):
    """A card number is out of range for its format, or a card text cannot be parsed."""


class CardFormat(StrEnum):
    """The card formats warding decodes; the value is the prefix of the canonical key."""

    UID = "uid"  # raw card UID / serial number bytes
    H10301 = "h10301"  # HID 26-bit, 8-bit facility, 16-bit number
    W34 = "w34"  # generic 34-bit, 16-bit facility, 16-bit number
    C1000 = "c1000"  # HID Corporate 1000 35-bit, 12-bit company id, 20-bit number
    H10304 = "h10304"  # HID 37-bit, 16-bit facility, 19-bit number
    NUMBER = "number"  # a bare decimal number from an ASCII reader


@dataclass(frozen=True, slots=True)
class _Parity:
    position: int
    odd: bool
    mask: int  # the covered bits of the frame, excluding the parity bit itself


@dataclass(frozen=True, slots=True)
class _Layout:
    format: CardFormat
    bits: int
    facility: tuple[int, int]  # (first position, width)
    number: tuple[int, int]
    parity: tuple[_Parity, ...]  # in encoding order: a later bit may cover an earlier one

    def field(self, frame: int, where: tuple[int, int]) -> int:
        """The unsigned field at ``where`` of ``frame``."""
        start, width = where
        return (frame >> (self.bits - start - width)) & ((1 << width) - 1)

    def place(self, value: int, where: tuple[int, int]) -> int:
        """``value`` shifted into the field at ``where``."""
        start, width = where
        return value << (self.bits - start - width)


def _parity(bits: int, position: int, *, odd: bool, covers: range | list[int]) -> _Parity:
    mask = 0
    for p in covers:
        mask |= 1 << (bits - 1 - p)
    return _Parity(position, odd, mask)


_LAYOUTS: dict[CardFormat, _Layout] = {
    CardFormat.H10301: _Layout(
        CardFormat.H10301,
        26,
        (1, 8),
        (9, 16),
        (
            _parity(26, 0, odd=False, covers=range(1, 13)),
            _parity(26, 25, odd=True, covers=range(13, 25)),
        ),
    ),
    CardFormat.W34: _Layout(
        CardFormat.W34,
        34,
        (1, 16),
        (17, 16),
        (
            _parity(34, 0, odd=False, covers=range(1, 17)),
            _parity(34, 33, odd=True, covers=range(17, 33)),
        ),
    ),
    CardFormat.C1000: _Layout(
        CardFormat.C1000,
        35,
        (2, 12),
        (14, 20),
        (
            _parity(35, 1, odd=False, covers=[p for p in range(2, 34) if p % 3 != 1]),
            _parity(35, 34, odd=True, covers=[p for p in range(1, 34) if p % 3 != 0]),
            _parity(35, 0, odd=True, covers=range(1, 35)),
        ),
    ),
    CardFormat.H10304: _Layout(
        CardFormat.H10304,
        37,
        (1, 16),
        (17, 19),
        (
            _parity(37, 0, odd=False, covers=range(1, 19)),
            _parity(37, 36, odd=True, covers=range(18, 36)),
        ),
    ),
}
_BY_BITS: dict[int, _Layout] = {layout.bits: layout for layout in _LAYOUTS.values()}
WIEGAND_FORMATS: frozenset[CardFormat] = frozenset(_LAYOUTS)
WIEGAND_BITS: frozenset[int] = frozenset(_BY_BITS)
_ALIASES: dict[str, CardFormat] = {
    **{f.value: f for f in WIEGAND_FORMATS},
    **{str(layout.bits): layout.format for layout in _LAYOUTS.values()},
}


def _mask_digits(number: int) -> str:
    """``***`` plus the last two digits, shown only when at least two more stay hidden."""
    text = str(number)
    return "***" + (text[-2:] if len(text) >= 4 else "")


@dataclass(frozen=True, slots=True)
class CardNumber:
    """A decoded card: a Wiegand (facility, number), a raw UID, or a bare decimal number."""

    format: CardFormat
    facility: int | None = None
    number: int | None = None
    uid: bytes | None = None

    def __post_init__(self) -> None:
        """Reject fields that the format does not have or that do not fit its bit widths."""
        try:
            fmt = CardFormat(self.format)
        except ValueError:
            raise CardNumberError("unknown card format") from None
        object.__setattr__(self, "format", fmt)
        if fmt is CardFormat.UID:
            if self.facility is not None or self.number is not None:
                raise CardNumberError("a uid card has no facility or number")
            if not isinstance(self.uid, bytes) or not 1 <= len(self.uid) <= UID_MAX_BYTES:
                raise CardNumberError(f"a uid must be 1..{UID_MAX_BYTES} bytes")
            return
        if self.uid is not None:
            raise CardNumberError(f"a {fmt.value} card has no uid")
        if fmt is CardFormat.NUMBER:
            if self.facility is not None:
                raise CardNumberError("a number card has no facility")
            if not _is_int(self.number) or not 0 <= self.number < 10**NUMBER_MAX_DIGITS:
                raise CardNumberError(f"a card number must have 1..{NUMBER_MAX_DIGITS} digits")
            return
        layout = _LAYOUTS[fmt]
        fc_max = (1 << layout.facility[1]) - 1
        cn_max = (1 << layout.number[1]) - 1
        if not _is_int(self.facility) or not 0 <= self.facility <= fc_max:
            raise CardNumberError(f"{fmt.value} facility code must be 0..{fc_max}")
        if not _is_int(self.number) or not 0 <= self.number <= cn_max:
            raise CardNumberError(f"{fmt.value} card number must be 0..{cn_max}")

    @property
    def key(self) -> str:
        """The canonical credential key: ``h10301:12:34567``, ``uid:04A1B2C3``, ``number:42``."""
        if self.format is CardFormat.UID:
            assert self.uid is not None
            return f"uid:{self.uid.hex().upper()}"
        if self.format is CardFormat.NUMBER:
            return f"number:{self.number}"
        return f"{self.format.value}:{self.facility}:{self.number}"

    def masked(self) -> str:
        """A display form that never shows the full number: ``h10301:12:***67``, ``uid:04…F6``."""
        if self.format is CardFormat.UID:
            assert self.uid is not None
            if len(self.uid) < 4:
                return "uid:…"
            return f"uid:{self.uid[:1].hex().upper()}…{self.uid[-1:].hex().upper()}"
        assert self.number is not None
        if self.format is CardFormat.NUMBER:
            return f"number:{_mask_digits(self.number)}"
        return f"{self.format.value}:{self.facility}:{_mask_digits(self.number)}"

    def __repr__(self) -> str:
        """Masked, so that a logged or printed card never shows its number."""
        return f"CardNumber({self.masked()})"

    __str__ = __repr__


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


# -- Wiegand -------------------------------------------------------------------------------------


def decode_wiegand(bits: int, data: bytes) -> CardNumber:
    """Decode a Wiegand frame of ``bits`` bits, MSB first, left-aligned in ``data``."""
    layout = _BY_BITS.get(bits) if _is_int(bits) else None
    if layout is None:
        supported = ", ".join(str(b) for b in sorted(_BY_BITS))
        raise CodecError(f"unsupported Wiegand bit count {bits!r} (supported: {supported})")
    size = (bits + 7) // 8
    if len(data) != size:
        raise CodecError(f"a {bits}-bit frame needs {size} bytes (got {len(data)})")
    padding = size * 8 - bits
    value = int.from_bytes(data, "big")
    if value & ((1 << padding) - 1):
        raise CodecError(f"the {padding} padding bits after a {bits}-bit frame must be zero")
    frame = value >> padding
    for check in layout.parity:
        ones = (frame & check.mask).bit_count() + ((frame >> (bits - 1 - check.position)) & 1)
        if ones % 2 != int(check.odd):
            kind = "odd" if check.odd else "even"
            raise CodecError(f"bad {kind} parity at bit {check.position} of a {bits}-bit frame")
    return CardNumber(
        layout.format,
        facility=layout.field(frame, layout.facility),
        number=layout.field(frame, layout.number),
    )


def encode_wiegand(card: CardNumber) -> tuple[int, bytes]:
    """Encode a Wiegand card into ``(bits, data)``: MSB first, left-aligned, parity set."""
    layout = _LAYOUTS.get(card.format)
    if layout is None:
        raise CodecError(f"{card.format.value} is not a Wiegand format")
    assert card.facility is not None
    assert card.number is not None
    frame = layout.place(card.facility, layout.facility) | layout.place(card.number, layout.number)
    for check in layout.parity:
        ones = (frame & check.mask).bit_count()
        if ones % 2 != int(check.odd):
            frame |= 1 << (layout.bits - 1 - check.position)
    size = (layout.bits + 7) // 8
    return layout.bits, (frame << (size * 8 - layout.bits)).to_bytes(size, "big")


# -- UIDs, reader events, text -------------------------------------------------------------------


def from_uid(uid: bytes, *, reverse: bool = False) -> CardNumber:
    """A UID card; ``reverse`` undoes a reader that sends the UID byte-reversed."""
    raw = bytes(uid)
    if not 1 <= len(raw) <= UID_MAX_BYTES:
        raise CodecError(f"a card UID must be 1..{UID_MAX_BYTES} bytes (got {len(raw)})")
    return CardNumber(CardFormat.UID, uid=raw[::-1] if reverse else raw)


def _decimal(text: str, what: str) -> int:
    """An ASCII decimal of 1..NUMBER_MAX_DIGITS digits (the input is never echoed)."""
    if _DECIMAL.fullmatch(text) is None:
        raise CardNumberError(f"{what} must be a decimal number of 1..{NUMBER_MAX_DIGITS} digits")
    return int(text)


def decode_card_read(read: CardRead, *, uid_reversed: bool = False) -> CardNumber:
    """Decode a reader's CardRead into a CardNumber; CodecError on anything malformed."""
    if read.framing == CardFraming.WIEGAND:
        return decode_wiegand(read.bits, read.data)
    if read.framing == CardFraming.UID:
        return from_uid(read.data, reverse=uid_reversed)
    if read.framing == CardFraming.NUMBER:
        if not isinstance(read.text, str):
            raise CodecError("a number read needs text")
        return CardNumber(CardFormat.NUMBER, number=_decimal(read.text.strip(), "a card number"))
    raise CodecError(f"unknown card framing {read.framing!r}")


_GRAMMAR = "expected '<format>:<facility>:<number>', 'uid:<hex>' or 'number:<decimal>'"


def parse_card(text: str) -> CardNumber:
    """Parse a human/CSV card text (grammar in docs/access.md); CardNumberError if invalid."""
    head, sep, rest = text.strip().partition(":")
    name = head.strip().lower()
    if not sep:
        raise CardNumberError(_GRAMMAR)
    if name == CardFormat.UID:
        return CardNumber(CardFormat.UID, uid=_parse_hex(rest.strip()))
    if name == CardFormat.NUMBER:
        return CardNumber(CardFormat.NUMBER, number=_decimal(rest.strip(), "a card number"))
    fmt = _ALIASES.get(name)
    if fmt is None:
        known = ", ".join(sorted(_ALIASES))
        raise CardNumberError(f"unknown card format; use uid, number or one of: {known}")
    parts = rest.split(":")
    if len(parts) != 2:
        raise CardNumberError(f"{_GRAMMAR}; a {fmt.value} card has a facility and a number")
    facility = _decimal(parts[0].strip(), "the facility code")
    number = _decimal(parts[1].strip(), "the card number")
    return CardNumber(fmt, facility=facility, number=number)


def _parse_hex(text: str) -> bytes:
    """Hex bytes, either one run (``04A1B2``) or pairs separated by ':' or spaces."""
    if _UID_SEPARATORS.search(text):
        groups = _UID_SEPARATORS.split(text)
        ok = all(_HEX_PAIR.fullmatch(g) for g in groups)
    else:
        groups = [text]
        ok = _HEX_RUN.fullmatch(text) is not None
    if not ok:
        raise CardNumberError(
            "a uid must be hex bytes, e.g. 'uid:04A1B2C3' or 'uid:04:a1:b2:c3' (two digits each)"
        )
    raw = bytes.fromhex("".join(groups))
    if not 1 <= len(raw) <= UID_MAX_BYTES:
        raise CardNumberError(f"a uid must be 1..{UID_MAX_BYTES} bytes (got {len(raw)})")
    return raw
