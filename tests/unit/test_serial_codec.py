"""The serial badge-reader codec: golden vectors, round trips, chunking, garbage, resync."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.errors import CodecError
from drivers.serial_reader.codec import (
    MAX_LINE,
    BadFrame,
    Decoder,
    Em4100Frame,
    Frame,
    Framing,
    KeypadFrame,
    NumberFrame,
    UidFrame,
    WiegandFrame,
    decode_all,
    em4100_checksum,
    encode,
    wiegand_key,
)

CARDS = (WiegandFrame, NumberFrame, UidFrame, Em4100Frame)

# -- strategies ------------------------------------------------------------------------------


@st.composite
def wiegand_frames(draw: st.DrawFn, min_bits: int = 9) -> WiegandFrame:
    bits = draw(st.integers(min_bits, 256))
    value = draw(st.integers(0, (1 << bits) - 1))
    nbytes = (bits + 7) // 8
    return WiegandFrame(bits, (value << (nbytes * 8 - bits)).to_bytes(nbytes, "big"))


number_frames = st.builds(NumberFrame, st.text("0123456789", min_size=1, max_size=20))
uid_frames = st.builds(UidFrame, st.binary(min_size=3, max_size=10))
em_frames = st.builds(Em4100Frame, st.binary(min_size=5, max_size=5))
keypad_frames = st.builds(KeypadFrame, st.text("0123456789*#", min_size=1, max_size=32))


def _unambiguous_in_auto(frame: Frame) -> bool:
    """Under auto an all-digit hex UID reads as a decimal number (documented)."""
    return not (isinstance(frame, UidFrame) and frame.uid.hex().isdigit())


any_frame = st.one_of(wiegand_frames(), number_frames, uid_frames, em_frames, keypad_frames)
auto_frames = any_frame.filter(_unambiguous_in_auto)
line_ends = st.sampled_from([b"\r\n", b"\r", b"\n"])

# a line that no framing accepts: printable, without separators, and with a letter that is in
# no accepted shape (hex digits, W, K, PIN); or with a non-printable byte
_BAD_LETTERS = "GHJLMOQRSTUVXYZghjlmoqrstuvxyz!?@%&"
garbage_lines = st.one_of(
    st.tuples(
        st.text(_BAD_LETTERS + "0123456789ABCDEF", max_size=40),
        st.sampled_from(_BAD_LETTERS),
        st.text(_BAD_LETTERS + "0123456789abcdef:, ", max_size=40),
    ).map(lambda t: (t[0] + t[1] + t[2]).encode("ascii")),
    st.tuples(
        st.binary(max_size=30),
        st.sampled_from([b"\x00", b"\x01", b"\x1b", b"\x7f", b"\x80", b"\xff", b"\x03"]),
        st.binary(max_size=30),
    ).map(lambda t: (t[0] + t[1] + t[2]).translate(None, b"\r\n\x02")),
)


def drain(decoder: Decoder) -> list[Frame | BadFrame]:
    out: list[Frame | BadFrame] = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


# -- golden vectors --------------------------------------------------------------------------


def test_rdm6300_golden_frame_from_the_seeed_datasheet() -> None:
    """Seeed 125 kHz RFID module (RDM630): card 62E3086CED, checksum 62^E3^08^6C^ED = 08."""
    wire = b"\x02" + b"62E3086CED" + b"08" + b"\x03"
    assert em4100_checksum(bytes.fromhex("62E3086CED")) == 0x08
    assert decode_all(wire) == [Em4100Frame(bytes.fromhex("62E3086CED"))]
    assert encode(Em4100Frame(bytes.fromhex("62E3086CED"))) == wire
    assert Em4100Frame(bytes.fromhex("62E3086CED")).number == "3808980205"  # 0xE3086CED


def test_em4100_number_is_the_decimal_that_usb_readers_print() -> None:
    """Version byte 06, id 00 8E 6D 5D -> 0009334109 (the number printed on the fob)."""
    frame = Em4100Frame(bytes.fromhex("06008E6D5D"))
    assert frame.number == "0009334109"
    assert encode(frame) == b"\x0206008E6D5DB8\x03"


def test_id12la_style_frame_with_crlf_before_etx() -> None:
    assert decode_all(b"\x0206008E6D5DB8\r\n\x03") == [Em4100Frame(bytes.fromhex("06008E6D5D"))]


def test_rdm6300_bad_checksum_is_a_bad_frame() -> None:
    out = decode_all(b"\x0262E3086CED09\x03")
    assert out == [BadFrame("binary frame checksum mismatch", 14)]


@pytest.mark.parametrize(
    "wire",
    [
        b"W26:0x2020002\r\n",
        b"w26:2020002\n",
        b"26,2020002\r",
        b"26:02020002\n",
        b"W26 : 0X2020002\n",
    ],
)
def test_h10301_facility_1_card_1_in_every_wiegand_hex_spelling(wire: bytes) -> None:
    """H10301 FC 1 / CN 1: bits 1 00000001 0000000000000001 0 = 0x2020002, left-aligned."""
    expected = [WiegandFrame(26, bytes.fromhex("80800080"))]
    assert decode_all(wire) == expected
    assert decode_all(wire, Framing.WIEGAND_HEX) == expected


def test_canonical_encodings() -> None:
    assert encode(WiegandFrame(26, bytes.fromhex("80800080"))) == b"W26:0x2020002\r\n"
    assert encode(NumberFrame("0009334109"), line_end=b"\r") == b"0009334109\r"
    assert encode(UidFrame(bytes.fromhex("04a1b2c3d4e5f6"))) == b"04A1B2C3D4E5F6\r\n"
    assert encode(KeypadFrame("1234#"), line_end=b"\n") == b"K:1234#\n"


@pytest.mark.parametrize(
    ("wire", "frame"),
    [
        (b"0009334109\r\n", NumberFrame("0009334109")),
        (b"04A1B2C3D4E5F6\r\n", UidFrame(bytes.fromhex("04A1B2C3D4E5F6"))),
        (b"04:a1:b2:c3\n", UidFrame(bytes.fromhex("04A1B2C3"))),
        (b"04 A1 B2 C3\n", UidFrame(bytes.fromhex("04A1B2C3"))),
        (b"04-A1-B2-C3\n", UidFrame(bytes.fromhex("04A1B2C3"))),
        (b"  0x04A1B2C3 \r\n", UidFrame(bytes.fromhex("04A1B2C3"))),
        (b"K:1234#\r\n", KeypadFrame("1234#")),
        (b"PIN:1234\r\n", KeypadFrame("1234")),
        (b"pin: 0*9#\n", KeypadFrame("0*9#")),
    ],
)
def test_golden_lines(wire: bytes, frame: Frame) -> None:
    assert decode_all(wire) == [frame]


def test_blank_lines_and_crlf_pairs_are_not_frames() -> None:
    assert decode_all(b"\r\n\n\r \t \r\n") == []


@pytest.mark.parametrize(
    ("wire", "framing"),
    [
        (b"142,28765\r\n", Framing.AUTO),  # a facility,card display, not Wiegand bits
        (b"W26:0x4000000\r\n", Framing.AUTO),  # 27 bits of value in a 26-bit frame
        (b"W0:0x0\r\n", Framing.AUTO),
        (b"W300:0x1\r\n", Framing.AUTO),
        (b"W26:0x002020002\r\n", Framing.AUTO),  # more digits than 26 bits can use
        (b"04A1B\r\n", Framing.AUTO),  # odd number of hex digits
        (b"04A1\r\n", Framing.UID_HEX),  # a 2-byte UID is no card
        (b"04A1B2C3D4E5F60718293A\r\n", Framing.UID_HEX),  # 11 bytes: longer than any UID
        (b"04:A1 B2:C3\r\n", Framing.UID_HEX),  # mixed separators
        (b"0009334109\r\n", Framing.WIEGAND_HEX),
        (b"04A1B2C3\r\n", Framing.DECIMAL),
        (b"123456789012345678901\r\n", Framing.DECIMAL),  # 21 digits
        (b"K:12a4\r\n", Framing.AUTO),
        (b"K:\r\n", Framing.AUTO),
        (b"0009334109\r\n", Framing.EM4100_STX),
        (b"\x0262E3086CED08\x03", Framing.UID_HEX),
        (b"\x0262E3086CED08\x03", Framing.WIEGAND_HEX),
        (b"\x0262E3086CED\x03", Framing.AUTO),  # no checksum
        (b"\x02\x03", Framing.AUTO),
        (b"caf\xc3\xa9\r\n", Framing.AUTO),
    ],
)
def test_malformed_records_are_bad_frames(wire: bytes, framing: Framing) -> None:
    out = decode_all(wire, framing)
    assert len(out) == 1
    assert isinstance(out[0], BadFrame), out


def test_rdm6300_frame_is_accepted_under_decimal_framing() -> None:
    wire = b"\x0206008E6D5DB8\x03"
    assert decode_all(wire, Framing.DECIMAL) == [Em4100Frame(bytes.fromhex("06008E6D5D"))]
    assert decode_all(wire, Framing.EM4100_STX) == [Em4100Frame(bytes.fromhex("06008E6D5D"))]


def test_wiegand_keypad_codes() -> None:
    assert wiegand_key(WiegandFrame(4, b"\x50")) == "5"
    assert wiegand_key(WiegandFrame(4, b"\xa0")) == "*"
    assert wiegand_key(WiegandFrame(4, b"\xb0")) == "#"
    assert wiegand_key(WiegandFrame(4, b"\xc0")) is None
    assert wiegand_key(WiegandFrame(8, b"\xe1")) == "1"  # inverted nibble + key
    assert wiegand_key(WiegandFrame(8, b"\x4b")) == "#"
    assert wiegand_key(WiegandFrame(8, b"\x11")) is None  # inverted nibble wrong
    assert wiegand_key(WiegandFrame(26, bytes(4))) is None


# -- encode errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        WiegandFrame(0, b""),
        WiegandFrame(257, bytes(33)),
        WiegandFrame(26, bytes(3)),
        WiegandFrame(26, b"\x00\x00\x00\x01"),  # a pad bit set
        NumberFrame(""),
        NumberFrame("12a"),
        NumberFrame("١٢٣"),  # non-ASCII digits
        NumberFrame("1" * 21),
        UidFrame(b"\x01\x02"),
        UidFrame(bytes(11)),
        Em4100Frame(bytes(4)),
        KeypadFrame(""),
        KeypadFrame("12a"),
        KeypadFrame("1" * 33),
        BadFrame("x", 1),
    ],
)
def test_encode_rejects_what_it_cannot_represent(frame: Frame) -> None:
    with pytest.raises(CodecError):
        encode(frame)


def test_encode_rejects_bad_line_end_and_decoder_bad_framing() -> None:
    with pytest.raises(CodecError):
        encode(NumberFrame("1"), line_end=b"\r\r")
    with pytest.raises(CodecError):
        Decoder("rot13")


# -- properties ------------------------------------------------------------------------------


@given(st.data())
def test_round_trip_under_the_frames_own_framing(data: st.DataObject) -> None:
    cases: list[tuple[st.SearchStrategy[Frame], Framing]] = [
        (wiegand_frames(min_bits=1), Framing.WIEGAND_HEX),
        (number_frames, Framing.DECIMAL),
        (em_frames, Framing.DECIMAL),
        (uid_frames, Framing.UID_HEX),
        (em_frames, Framing.EM4100_STX),
        (keypad_frames, data.draw(st.sampled_from(list(Framing)))),
    ]
    strategy, framing = data.draw(st.sampled_from(cases))
    frame = data.draw(strategy)
    wire = encode(frame, line_end=data.draw(line_ends))
    assert decode_all(wire, framing) == [frame]


@given(auto_frames, line_ends)
def test_round_trip_under_auto(frame: Frame, line_end: bytes) -> None:
    assert decode_all(encode(frame, line_end=line_end)) == [frame]


@given(st.lists(auto_frames, max_size=12), line_ends, st.data())
def test_random_chunking_gives_the_same_frames(
    frames: list[Frame], line_end: bytes, data: st.DataObject
) -> None:
    wire = b"".join(encode(f, line_end=line_end) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=20)))
    decoder = Decoder()
    out: list[Frame | BadFrame] = []
    start = 0
    for cut in [*cuts, len(wire)]:
        decoder.feed(wire[start:cut])
        out += drain(decoder)
        start = cut
    assert out == frames
    assert decoder.eof() is None


@given(st.lists(auto_frames, min_size=1, max_size=6), garbage_lines, garbage_lines, line_ends)
def test_garbage_prefix_and_suffix(
    frames: list[Frame], prefix: bytes, suffix: bytes, line_end: bytes
) -> None:
    wire = prefix + line_end + b"".join(encode(f, line_end=line_end) for f in frames) + suffix
    out = decode_all(wire)
    goods = [f for f in out if not isinstance(f, BadFrame)]
    assert goods == frames
    bads = [f for f in out if isinstance(f, BadFrame)]
    assert len(bads) >= 2  # the prefix line and the unterminated suffix are reported
    assert sum(b.raw_prefix_len for b in bads) >= len(prefix.strip(b" \t")) + len(
        suffix.strip(b" \t")
    )


@given(st.lists(st.one_of(auto_frames, garbage_lines), max_size=12), line_ends)
def test_interleaved_garbage_lines_never_become_cards(
    items: list[Frame | bytes], line_end: bytes
) -> None:
    wire = b""
    expected: list[Frame] = []
    garbage = 0
    for item in items:
        if isinstance(item, bytes):
            wire += item + line_end
            garbage += bool(item.strip(b" \t"))
        else:
            wire += encode(item, line_end=line_end)
            expected.append(item)
    out = decode_all(wire)
    assert [f for f in out if not isinstance(f, BadFrame)] == expected
    assert sum(isinstance(f, BadFrame) for f in out) == garbage


@given(st.binary(max_size=600), st.sampled_from(list(Framing)), st.data())
def test_arbitrary_bytes_never_raise(data: bytes, framing: Framing, draw: st.DataObject) -> None:
    decoder = Decoder(framing, max_line=draw.draw(st.integers(16, 200)))
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=8)))
    start = 0
    for cut in [*cuts, len(data)]:
        decoder.feed(data[start:cut])
        start = cut
        for frame in drain(decoder):
            assert isinstance(frame, (*CARDS, KeypadFrame, BadFrame))
            if isinstance(frame, BadFrame):
                assert frame.raw_prefix_len > 0
    tail = decoder.eof()
    assert tail is None or tail.raw_prefix_len > 0
    assert decoder.pending == 0


@given(st.binary(max_size=300))
def test_a_checksummed_frame_after_any_noise_is_recovered(noise: bytes) -> None:
    """STX always resynchronises: whatever came before, a whole binary frame decodes."""
    frame = Em4100Frame(bytes.fromhex("06008E6D5D"))
    out = decode_all(noise + encode(frame))
    assert out[-1] == frame


# -- long lines ------------------------------------------------------------------------------


@pytest.mark.parametrize("filler", [b"A", b"1", b"0"])
def test_long_line_is_reported_and_resynchronised(filler: bytes) -> None:
    """The tail of an over-long line is never parsed: 300 digits are not a card."""
    wire = filler * 300 + b"\r\n" + b"0012345678\r\n"
    out = decode_all(wire)
    assert out[-1] == NumberFrame("0012345678")
    bads = out[:-1]
    assert bads
    assert all(isinstance(b, BadFrame) and b.reason == "line too long" for b in bads)
    assert sum(b.raw_prefix_len for b in bads if isinstance(b, BadFrame)) == 300


def test_long_line_is_reported_before_its_end_arrives() -> None:
    decoder = Decoder()
    decoder.feed(b"9" * (MAX_LINE + 1))
    assert decoder.next_frame() == BadFrame("line too long", MAX_LINE + 1)
    decoder.feed(b"9" * 10)
    assert decoder.next_frame() is None
    decoder.feed(b"\n0009334109\n")
    assert drain(decoder) == [BadFrame("line too long", 10), NumberFrame("0009334109")]


def test_a_line_of_exactly_max_line_bytes_is_parsed() -> None:
    decoder = Decoder(Framing.AUTO, max_line=20)
    decoder.feed(b"   12345678901234   \n")  # 20 bytes
    assert drain(decoder) == [NumberFrame("12345678901234")]


def test_binary_frame_without_etx_is_bounded() -> None:
    out = decode_all(b"\x02" + b"A" * 40 + b"\r\n0009334109\r\n")
    assert out[-1] == NumberFrame("0009334109")
    assert all(isinstance(b, BadFrame) for b in out[:-1])


def test_stx_cuts_a_line_short_and_starts_a_frame() -> None:
    out = decode_all(b"0009\x0206008E6D5DB8\x03")
    assert out == [
        BadFrame("line cut short by STX", 4),
        Em4100Frame(bytes.fromhex("06008E6D5D")),
    ]


def test_second_stx_restarts_the_binary_frame() -> None:
    out = decode_all(b"\x0206008E\x0206008E6D5DB8\x03")
    assert out == [
        BadFrame("binary frame cut short by STX", 7),
        Em4100Frame(bytes.fromhex("06008E6D5D")),
    ]


def test_unfinished_record_is_reported_at_eof() -> None:
    decoder = Decoder()
    decoder.feed(b"00093")
    assert decoder.next_frame() is None
    assert decoder.pending == 5
    assert decoder.eof() == BadFrame("record cut short by end of stream", 5)
    assert decoder.eof() is None


def test_auto_reads_an_all_digit_line_as_decimal() -> None:
    """Documented ambiguity: configure uid-hex for a reader that prints hex UIDs."""
    assert decode_all(b"04123456\r\n") == [NumberFrame("04123456")]
    assert decode_all(b"04123456\r\n", Framing.UID_HEX) == [UidFrame(bytes.fromhex("04123456"))]


def test_stx_right_after_an_overflow_reports_nothing_empty() -> None:
    """Found by hypothesis: the rest of a long line may be empty when STX arrives."""
    decoder = Decoder(Framing.AUTO, max_line=16)
    decoder.feed(b"Z" * 17)
    decoder.feed(b"\x0206008E6D5DB8\x03")
    assert drain(decoder) == [
        BadFrame("line too long", 17),
        Em4100Frame(bytes.fromhex("06008E6D5D")),
    ]
