"""A simulated Wiegand-to-serial / ASCII badge reader on a pty, speaking the real wire format.

The reader is the *peer* of ``drivers.serial_reader``: it encodes with the same codec and writes
to the master side of a raw pty; the daemon opens the slave side (or a symlink to it at a
configured device path) exactly as it opens ``/dev/ttyUSB0``. ``unplug()`` closes the pty, which
fails the daemon's open port like a pulled USB adapter; ``replug()`` makes a new pty and points
the symlink at it. Nothing here needs an event loop.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self

from controller.access.formats import CardFormat, CardNumber, encode_wiegand, parse_card
from drivers.serial_reader.codec import (
    Em4100Frame,
    Frame,
    Framing,
    KeypadFrame,
    NumberFrame,
    UidFrame,
    WiegandFrame,
    encode,
)
from simulators.ptyline import PtyPair, plug, unlink_device

__all__ = ["GARBAGE", "KeyStyle", "SimSerialReader"]

log = logging.getLogger(__name__)

GARBAGE: Final = b"\x00\xfe#garbage?\x7f\r\n"
"""What ``garbage()`` sends: one line no framing accepts (noise, a wrong baud rate...)."""

KeyStyle = Literal["line", "wiegand4", "wiegand8"]


class SimSerialReader:
    """A serial converter reader: cards, keypad entries and garbage onto a pty.

    ``framing`` is how this converter prints a card when ``present_card`` is not told
    otherwise. ``device`` (optional) gets a symlink to the pty slave (parents created; an
    existing non-symlink is never replaced); it is removed on ``unplug()`` and ``stop()``.
    """

    def __init__(
        self,
        device: str | Path | None = None,
        *,
        framing: Framing | str = Framing.AUTO,
        line_end: bytes = b"\r\n",
    ) -> None:
        self.device = Path(device) if device is not None else None
        self.framing = Framing(framing)
        self.line_end = line_end
        self._pty: PtyPair | None = None
        self._running = False
        self.sent = 0
        """Bytes written onto the line since start."""
        self.overruns = 0
        """Writes (partly) lost because nobody read the line (a UART overrun)."""

    def __repr__(self) -> str:
        return f"SimSerialReader({str(self.device) if self.device else None!r}, {self.framing})"

    # -- life cycle -----------------------------------------------------------------------

    @property
    def path(self) -> str:
        """Where the daemon opens the line: the symlink if configured, else the pty slave."""
        return str(self.device) if self.device is not None else self.pty_name

    @property
    def pty_name(self) -> str:
        """The pty slave (``/dev/pts/N``); empty while unplugged or stopped."""
        return self._pty.name if self._pty is not None else ""

    @property
    def plugged(self) -> bool:
        """True while the line exists."""
        return self._pty is not None

    def start(self) -> None:
        """Create the pty (and the symlink); idempotent."""
        if self._running:
            return
        self._running = True
        try:
            self.replug()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Close the pty and remove the symlink; idempotent."""
        self._running = False
        self.unplug()

    def unplug(self) -> None:
        """Close the line: the daemon's open port fails like a pulled USB adapter."""
        side, self._pty = self._pty, None
        if side is None:
            return
        side.close()
        self._remove_link(side.name)

    def replug(self) -> None:
        """Plug a new line in (a new pty) and point the symlink at it."""
        if not self._running:
            raise RuntimeError("simulated reader is not running")
        if self._pty is not None:
            return
        side = plug(self.device)
        self._pty = side

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    # -- what a person (or a fault) does --------------------------------------------------

    def present_card(self, card: str | bytes, framing: Framing | str | None = None) -> bytes:
        """Present a card; return the bytes sent.

        ``card`` is a raw UID (bytes) or card text as ``wardctl`` takes it
        (``h10301:12:345``, ``uid:04A1B2C3``, ``number:9334109``). It is printed per
        ``framing`` (default: this reader's): a Wiegand card as ``wiegand-hex``; a UID as
        ``uid-hex``, as the 10-digit decimal of its last 4 bytes (``decimal``, what EM4100 USB
        readers print) or, for 5 bytes, as an RDM6300 frame (``em4100-stx``); a number as
        digits (10 wide, zero-padded) or as an ``em4100-stx`` frame. ``auto`` picks the first.
        ValueError if the card cannot be printed in that framing.
        """
        fmt = Framing(framing) if framing is not None else self.framing
        if isinstance(card, bytes):
            number = CardNumber(CardFormat.UID, uid=bytes(card))
        else:
            number = parse_card(card)
        return self.send_frame(_frame_for(number, fmt))

    def present_wiegand(self, bits: int, data: bytes) -> bytes:
        """Send raw Wiegand bits (MSB first, left-aligned), e.g. a format nobody decodes."""
        return self.send_frame(WiegandFrame(bits, data))

    def type_keys(self, keys: str, *, style: KeyStyle = "line") -> bytes:
        """Type keys: one ``K:`` line, or one 4-bit / 8-bit Wiegand keypad burst per key."""
        if style == "line":
            return self.send_frame(KeypadFrame(keys))
        out = b""
        for key in keys:
            code = "0123456789*#".find(key)
            if code < 0:
                raise ValueError("keypad keys are 0-9, * and #")
            if style == "wiegand4":
                frame = WiegandFrame(4, bytes([code << 4]))
            else:
                frame = WiegandFrame(8, bytes([(code ^ 0x0F) << 4 | code]))
            out += self.send_frame(frame)
        return out

    def send_frame(self, frame: Frame) -> bytes:
        """Encode ``frame`` with the shared codec and send it; return the bytes sent."""
        data = encode(frame, line_end=self.line_end)
        self.send_raw(data)
        return data

    def garbage(self) -> bytes:
        """Send one malformed line (``GARBAGE``); return it."""
        self.send_raw(GARBAGE)
        return GARBAGE

    def send_raw(self, data: bytes) -> int:
        """Write raw bytes onto the line; RuntimeError while unplugged. Returns bytes written."""
        side = self._pty
        if side is None:
            raise RuntimeError("simulated reader is unplugged")
        view = memoryview(data)
        written = 0
        while written < len(view):
            try:
                written += os.write(side.master, view[written:])
            except BlockingIOError:
                self.overruns += 1
                log.warning("pty buffer full: %d bytes lost", len(view) - written)
                break
        self.sent += written
        return written

    def _remove_link(self, target: str) -> None:
        """Remove the symlink if it still points at ``target`` (not someone else's line)."""
        unlink_device(self.device, target)


def _frame_for(card: CardNumber, framing: Framing) -> Frame:
    """How a converter printing ``framing`` sends ``card`` (ValueError if it cannot)."""
    if card.format not in (CardFormat.UID, CardFormat.NUMBER):
        if framing in (Framing.AUTO, Framing.WIEGAND_HEX):
            bits, data = encode_wiegand(card)
            return WiegandFrame(bits, data)
        raise ValueError(f"a Wiegand card is printed as wiegand-hex, not {framing.value}")
    if card.format is CardFormat.UID:
        assert card.uid is not None
        uid = card.uid
        if framing in (Framing.AUTO, Framing.UID_HEX):
            return UidFrame(uid)
        if framing is Framing.DECIMAL:
            return NumberFrame(f"{int.from_bytes(uid[-4:], 'big'):010d}")
        if framing is Framing.EM4100_STX and len(uid) == 5:
            return Em4100Frame(uid)
        raise ValueError(f"a {len(uid)}-byte UID cannot be printed as {framing.value}")
    assert card.number is not None
    if framing in (Framing.AUTO, Framing.DECIMAL):
        return NumberFrame(f"{card.number:010d}")
    if framing is Framing.EM4100_STX and card.number < 1 << 32:
        return Em4100Frame(b"\x00" + card.number.to_bytes(4, "big"))
    raise ValueError(f"a card number cannot be printed as {framing.value}")
