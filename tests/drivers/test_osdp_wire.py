"""OSDP wire codec: the CRC-16 against the bitwise definition, and bounded work on crafted bytes."""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from drivers.osdp import wire


def reference_crc16(data: bytes) -> int:
    """OSDP's CRC-16 as the standard defines it: CCITT 0x1021, init 0x1D0F, MSB first."""
    crc = 0x1D0F
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


@given(st.binary(max_size=2048))
def test_crc16_equals_the_bitwise_definition(data: bytes) -> None:
    assert wire.crc16(data) == reference_crc16(data)


def test_crc16_golden() -> None:
    # the check field of the osdp_PDID golden reply in tests/drivers/test_osdp.py
    packet = bytes.fromhex("538114000445feca0001010100000000000156ae")
    assert wire.crc16(packet[:-2]) == int.from_bytes(packet[-2:], "little")


def _python_lines(fn: Any) -> int:
    """How many Python lines of drivers/osdp/wire.py run while ``fn()`` runs (not a timing)."""
    count = 0
    path = wire.__file__

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        if frame.f_code.co_filename != path:
            return None
        if event == "line":
            count += 1
        return tracer

    before = sys.gettrace()
    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(before)
    return count


def test_false_packet_starts_cost_bounded_work_per_line_byte() -> None:
    """Crafted bytes: every 5th byte a start with the largest length, so each false start
    costs a check over MAX_PACKET bytes. The decoder's Python work per line byte stays small
    (a pure-Python CRC ran about 2,500 lines per byte: more CPU than the line delivers)."""
    line = bytes([wire.SOM, 0x00, 0x00, 0x06, 0x04]) * 600  # 3000 bytes, length 0x600 each
    dec = wire.Decoder()

    def feed() -> None:
        for i in range(0, len(line), 64):  # the line tap sees small reads
            dec.feed(line[i : i + 64])
            assert dec.frames() == []

    lines = _python_lines(feed)
    assert dec.dropped > 0
    assert lines / len(line) < 100, lines / len(line)
