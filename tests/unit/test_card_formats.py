"""Card formats: golden vectors, round trips, parity, canonical keys, masking and parsing.

Published vectors used here:
- H10301 FC 90 / card 324 -> 00101101000000001010001000 (README of jessety/wiegand-encoder);
- H10301 FC 10 / card 1093 -> 0x014088B right-aligned (Nedap COMBI-BOOSTER manual, sec. 6.3);
- 37-bit 0x100EB79A2B = HID H10302 card 123456789 (same manual). H10302 and H10304 share the
  37-bit parity layout (even over bits 1..18, odd over 18..35), so the same frame is a valid
  H10304 card: FC 123456789 >> 19 = 235, CN 123456789 & 0x7FFFF = 249109.
Corporate 1000 is cross-checked against an independent formulation of its parity: the frame
split into its top 3 bits and low 32 bits with the masks 0xB6DB6DB6 / 0x6DB6DB6C.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from controller.access.formats import (
    UID_MAX_BYTES,
    WIEGAND_BITS,
    CardFormat,
    CardNumber,
    CardNumberError,
    decode_card_read,
    decode_wiegand,
    encode_wiegand,
    from_uid,
    parse_card,
)
from drivers.base import CardFraming, CardRead
from drivers.errors import CodecError

WIDTHS = {  # format: (bits, facility bits, number bits)
    CardFormat.H10301: (26, 8, 16),
    CardFormat.W34: (34, 16, 16),
    CardFormat.C1000: (35, 12, 20),
    CardFormat.H10304: (37, 16, 19),
}


def frame_of(bits_text: str) -> tuple[int, bytes]:
    """A frame written as a string of 0/1, left-aligned into bytes like a reader sends it."""
    bits = len(bits_text)
    size = (bits + 7) // 8
    return bits, (int(bits_text, 2) << (size * 8 - bits)).to_bytes(size, "big")


def right_aligned(bits: int, value: int) -> tuple[int, bytes]:
    """A frame given as a right-aligned integer (how manuals print it), left-aligned in bytes."""
    return frame_of(format(value, f"0{bits}b"))


def wiegand_cards(fmt: CardFormat) -> st.SearchStrategy[CardNumber]:
    """Every card of a Wiegand format, over the full facility and number ranges."""
    _, fc_bits, cn_bits = WIDTHS[fmt]
    return st.builds(
        CardNumber,
        st.just(fmt),
        facility=st.integers(0, (1 << fc_bits) - 1),
        number=st.integers(0, (1 << cn_bits) - 1),
    )


ANY_WIEGAND = st.sampled_from(list(WIDTHS)).flatmap(wiegand_cards)
UIDS = st.binary(min_size=1, max_size=UID_MAX_BYTES)
ANY_CARD = st.one_of(
    ANY_WIEGAND,
    UIDS.map(from_uid),
    st.integers(0, 10**20 - 1).map(lambda n: CardNumber(CardFormat.NUMBER, number=n)),
)


# --------------------------------------------------------------------------- golden vectors


def test_h10301_by_hand_fc1_card1() -> None:
    # FC 1 = 00000001, card 1 = 0000000000000001.
    # bits 1..12 = 00000001 0000 hold one 1 -> even parity bit 0 = 1;
    # bits 13..24 = 0000 00000001 hold one 1 -> odd parity bit 25 = 0.
    # frame 1 00000001 0000000000000001 0, left-aligned in 4 bytes: 80 80 00 80.
    card = CardNumber(CardFormat.H10301, facility=1, number=1)
    assert encode_wiegand(card) == (26, bytes.fromhex("80800080"))
    assert encode_wiegand(card) == frame_of("10000000100000000000000010")
    assert decode_wiegand(26, bytes.fromhex("80800080")) == card


def test_w34_by_hand_fc1_card1() -> None:
    # bits 1..16 = FC 1 -> one 1 -> even parity bit 0 = 1; bits 17..32 = card 1 -> odd bit 33 = 0
    card = CardNumber(CardFormat.W34, facility=1, number=1)
    assert encode_wiegand(card) == frame_of("1" + "0" * 15 + "1" + "0" * 15 + "1" + "0")


@pytest.mark.parametrize(
    ("frame", "facility", "number"),
    [
        (frame_of("00101101000000001010001000"), 90, 324),
        (right_aligned(26, 0x014088B), 10, 1093),
    ],
)
def test_h10301_published_vectors(frame: tuple[int, bytes], facility: int, number: int) -> None:
    card = CardNumber(CardFormat.H10301, facility=facility, number=number)
    assert decode_wiegand(*frame) == card
    assert encode_wiegand(card) == frame


def test_37_bit_published_vector() -> None:
    frame = right_aligned(37, 0x100EB79A2B)
    card = decode_wiegand(*frame)
    assert card == CardNumber(CardFormat.H10304, facility=235, number=249109)
    assert card.facility is not None
    assert card.number is not None
    assert (card.facility << 19) | card.number == 123456789  # the published H10302 number
    assert encode_wiegand(card) == frame
    assert card.key == "h10304:235:249109"


def _parity32(value: int) -> int:
    return value.bit_count() & 1


def c1000_parity_ok(bits: int, data: bytes) -> bool:
    """Corporate 1000 parity as commonly published: top 3 bits 'mid', low 32 bits 'bot'."""
    frame = int.from_bytes(data, "big") >> (len(data) * 8 - bits)
    mid, bot = frame >> 32, frame & 0xFFFFFFFF
    even = _parity32((mid & 1) ^ (bot & 0xB6DB6DB6)) == (mid >> 1) & 1
    odd = (1 - _parity32((mid & 3) ^ (bot & 0x6DB6DB6C))) == bot & 1
    whole = (1 - _parity32((mid & 3) ^ bot)) == (mid >> 2) & 1
    return even and odd and whole


@given(wiegand_cards(CardFormat.C1000))
def test_c1000_agrees_with_published_parity_masks(card: CardNumber) -> None:
    bits, data = encode_wiegand(card)
    assert bits == 35
    assert c1000_parity_ok(bits, data)
    frame = int.from_bytes(data, "big") >> 5
    assert (frame >> 21) & 0xFFF == card.facility  # bits 2..13
    assert (frame >> 1) & 0xFFFFF == card.number  # bits 14..33


def test_c1000_example() -> None:
    card = CardNumber(CardFormat.C1000, facility=1234, number=567890)
    bits, data = encode_wiegand(card)
    assert c1000_parity_ok(bits, data)
    assert decode_wiegand(bits, data) == card
    assert card.key == "c1000:1234:567890"


# --------------------------------------------------------------------------- properties


@given(ANY_WIEGAND)
@example(CardNumber(CardFormat.H10301, facility=255, number=65535))
@example(CardNumber(CardFormat.H10304, facility=0, number=0))
def test_every_wiegand_format_round_trips(card: CardNumber) -> None:
    bits, data = encode_wiegand(card)
    assert bits == WIDTHS[card.format][0]
    assert len(data) == (bits + 7) // 8
    assert decode_wiegand(bits, data) == card
    assert decode_card_read(CardRead("r", CardFraming.WIEGAND, data=data, bits=bits)) == card


@given(ANY_WIEGAND, st.data())
def test_any_single_bit_flip_is_detected(card: CardNumber, data: st.DataObject) -> None:
    bits, frame = encode_wiegand(card)
    flip = data.draw(st.integers(0, len(frame) * 8 - 1), label="bit")  # padding bits too
    corrupted = (int.from_bytes(frame, "big") ^ (1 << flip)).to_bytes(len(frame), "big")
    try:
        decoded = decode_wiegand(bits, corrupted)
    except CodecError:
        return
    assert decoded != card  # never reachable with these formats, but a different card is ok


@pytest.mark.parametrize("fmt", list(WIDTHS))
def test_every_bit_flip_is_rejected(fmt: CardFormat) -> None:
    """Stronger than 'different card': all four formats detect every single-bit error."""
    _, fc_bits, cn_bits = WIDTHS[fmt]
    card = CardNumber(fmt, facility=(1 << fc_bits) // 3, number=(1 << cn_bits) // 5)
    bits, frame = encode_wiegand(card)
    for flip in range(len(frame) * 8):
        corrupted = (int.from_bytes(frame, "big") ^ (1 << flip)).to_bytes(len(frame), "big")
        with pytest.raises(CodecError):
            decode_wiegand(bits, corrupted)


@given(st.integers(-8, 80), st.binary(max_size=12))
@example(26, b"")
@example(26, b"\x00\x00\x00\x00\x00")
@example(0, b"")
def test_random_frames_raise_only_codec_error(bits: int, data: bytes) -> None:
    try:
        card = decode_wiegand(bits, data)
    except CodecError:
        return
    assert encode_wiegand(card) == (bits, data)


@given(
    st.sampled_from(list(CardFraming)),
    st.binary(max_size=16),
    st.one_of(st.sampled_from(sorted(WIEGAND_BITS)), st.integers(-3, 70)),
    st.text(max_size=30),
    st.booleans(),
)
def test_random_card_reads_raise_only_codec_error(
    framing: CardFraming, data: bytes, bits: int, text: str, reversed_: bool
) -> None:
    read = CardRead("r", framing, data=data, bits=bits, text=text)
    try:
        card = decode_card_read(read, uid_reversed=reversed_)
    except CodecError:
        return
    assert parse_card(card.key) == card


@given(UIDS)
def test_uid_reversal_gives_the_card_order(uid: bytes) -> None:
    read = CardRead("r", CardFraming.UID, data=uid[::-1])
    assert decode_card_read(read, uid_reversed=True) == from_uid(uid)
    assert from_uid(uid[::-1], reverse=True).key == from_uid(uid).key == f"uid:{uid.hex().upper()}"


@given(ANY_CARD)
def test_parse_card_round_trips_the_key(card: CardNumber) -> None:
    assert parse_card(card.key) == card
    assert parse_card(f"  {card.key.upper()}  ") == card


@given(ANY_CARD)
def test_masked_never_shows_the_number(card: CardNumber) -> None:
    masked = card.masked()
    assert masked.startswith(card.format.value + ":")
    assert repr(card) == str(card) == f"CardNumber({masked})"
    if card.uid is not None:
        full = card.uid.hex().upper()
        assert full not in masked.upper()
        assert sum(c in "0123456789ABCDEF" for c in masked.removeprefix("uid:")) <= 4
    else:
        tail = masked.rsplit(":", 1)[1]
        assert str(card.number) not in tail
        assert sum(c.isdigit() for c in tail) <= 2
        assert str(card.number) not in repr(card).rsplit(":", 1)[1]


@given(st.text(max_size=40))
@example("h10301:12:")
@example("uid:")
@example("number:-1")
@example("h10301:1:2:3")
@example("uid:0:1")
def test_parse_card_raises_only_its_value_error(text: str) -> None:
    try:
        card = parse_card(text)
    except CardNumberError as exc:
        error: ValueError = exc  # a ValueError, with a message
        message = str(error)
    else:
        assert parse_card(card.key) == card
        return
    assert message


# --------------------------------------------------------------------------- keys and parsing


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("h10301:12:34567", "h10301:12:34567"),
        ("H10301:012:034567", "h10301:12:34567"),
        ("26:12:34567", "h10301:12:34567"),
        ("34:1:2", "w34:1:2"),
        ("35:4095:1048575", "c1000:4095:1048575"),
        ("37:65535:524287", "h10304:65535:524287"),
        (" w34 : 7 : 8 ", "w34:7:8"),
        ("uid:04a1b2c3d4e5f6", "uid:04A1B2C3D4E5F6"),
        ("UID: 04:A1:B2:C3", "uid:04A1B2C3"),
        ("uid:04 a1  b2", "uid:04A1B2"),
        ("number:000123456", "number:123456"),
        ("number:0", "number:0"),
    ],
)
def test_parse_card_grammar(text: str, key: str) -> None:
    assert parse_card(text).key == key


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("123456", "expected"),
        ("h10301:256:1", "facility code must be 0..255"),
        ("h10301:1:65536", "card number must be 0..65535"),
        ("c1000:4096:1", "0..4095"),
        ("h10304:1:524288", "0..524287"),
        ("h10301:12", "facility and a number"),
        ("h10301:x:1", "decimal"),
        ("h10301:1:\u0661\u0662", "decimal"),
        ("mifare:1:2", "unknown card format"),
        ("uid:4a1", "hex bytes"),
        ("uid:4:a1", "hex bytes"),
        ("uid:zz", "hex bytes"),
        ("uid:" + "00" * 11, "1..10 bytes"),
        ("number:12a", "decimal"),
        ("number:" + "9" * 21, "decimal"),
    ],
)
def test_parse_card_errors_are_clear_and_do_not_echo_numbers(text: str, needle: str) -> None:
    with pytest.raises(CardNumberError, match=needle) as caught:
        parse_card(text)
    assert "65536" not in str(caught.value)
    assert "123456" not in str(caught.value)


@pytest.mark.parametrize(
    "read",
    [
        CardRead("r", CardFraming.UID, data=b""),
        CardRead("r", CardFraming.UID, data=b"\x01" * 11),
        CardRead("r", CardFraming.NUMBER, text=""),
        CardRead("r", CardFraming.NUMBER, text="12a"),
        CardRead("r", CardFraming.NUMBER, text="\u0661\u0662\u0663"),  # Arabic-Indic digits
        CardRead("r", CardFraming.NUMBER, text="9" * 21),
        CardRead("r", CardFraming.WIEGAND, data=b"\x80\x80\x00\x80", bits=27),
        CardRead("r", CardFraming.WIEGAND, data=b"\x80\x80\x00", bits=26),
        CardRead("r", CardFraming.WIEGAND, data=b"\x80\x80\x00\x81", bits=26),  # padding bit
        CardRead("r", CardFraming.WIEGAND, data=b"\x00\x80\x00\x80", bits=26),  # parity
    ],
)
def test_malformed_reads_raise_codec_error(read: CardRead) -> None:
    with pytest.raises(CodecError):
        decode_card_read(read)


def test_number_reads_are_canonical() -> None:
    read = CardRead("r", CardFraming.NUMBER, text=" 0001234567\r\n")
    card = decode_card_read(read)
    assert card.key == "number:1234567"
    assert card.masked() == "number:***67"
    assert CardNumber(CardFormat.NUMBER, number=42).masked() == "number:***"


def test_masked_examples() -> None:
    assert parse_card("h10301:12:34567").masked() == "h10301:12:***67"
    assert parse_card("h10301:12:345").masked() == "h10301:12:***"
    assert parse_card("uid:04A1B2C3D4E5F6").masked() == "uid:04…F6"
    assert parse_card("uid:04A1B2").masked() == "uid:…"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"format": CardFormat.H10301, "facility": 256, "number": 1},
        {"format": CardFormat.H10301, "facility": -1, "number": 1},
        {"format": CardFormat.H10301, "facility": 1, "number": None},
        {"format": CardFormat.H10301, "facility": True, "number": 1},
        {"format": CardFormat.H10301, "facility": 1, "number": 1, "uid": b"\x01"},
        {"format": CardFormat.UID, "uid": b""},
        {"format": CardFormat.UID, "uid": b"\x01", "number": 1},
        {"format": CardFormat.NUMBER, "number": -1},
        {"format": CardFormat.NUMBER, "number": 1, "facility": 2},
        {"format": "bogus", "number": 1},
    ],
)
def test_card_number_rejects_impossible_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(CardNumberError):
        CardNumber(**kwargs)  # type: ignore[arg-type]


def test_format_given_as_text_is_normalised() -> None:
    card = CardNumber("h10301", facility=1, number=2)  # type: ignore[arg-type]
    assert card.format is CardFormat.H10301
    assert card == CardNumber(CardFormat.H10301, facility=1, number=2)


def test_only_wiegand_formats_encode() -> None:
    with pytest.raises(CodecError):
        encode_wiegand(from_uid(b"\x01\x02\x03\x04"))
    with pytest.raises(CodecError):
        encode_wiegand(CardNumber(CardFormat.NUMBER, number=5))
