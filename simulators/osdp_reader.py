"""Simulated OSDP readers: libosdp in the peripheral-device (PD) role on a pty line.

Each ``SimOsdpPd`` is a real libosdp PD context (its own Secure Channel state, SCBK, install
mode, event queue); a ``SimOsdpReader`` is the RS-485 line they share: a raw pty whose slave
side (or a symlink to it at a configured device path) the daemon opens like ``/dev/ttyUSB0``.
One thread pumps the line: it reads the master side, splits the bytes into OSDP packets
(``drivers.osdp.wire``) and hands each PD the packets addressed to it, then refreshes every PD
context (2 ms period, as the control panel does). A PD's replies go straight back onto the line.

Faults are simulator features, applied on the wire:
- ``go_offline()``: the PD stops answering (its packets are dropped before libosdp sees them);
- ``refuse_secure_channel``: the PD reports no Secure Channel capability and NAKs any
  challenge - a clear-text-only reader (a libosdp PD cannot be told this itself);
- ``wrong_key()`` / ``set_key()``: the PD restarts (power cycle) with another SCBK, or with
  none (install mode: it accepts the default key SCBK-D once, then keeps the key the control
  panel sets with KEYSET - written to ``key_file`` if one is configured);
- ``unplug()`` / ``replug()``: the line disappears like a pulled USB adapter, and comes back.

What the control panel asked for is recorded in ``indications`` (LED and buzzer commands),
so tests can assert the grant/deny feedback a person at the door would see and hear.

libosdp surprise worked around here: the binding's command callback must return an ``(int,
object)`` tuple, and it DECREFs the object once too often. Returning a constant ``(0, None)``
(as the stock ``osdp.PeripheralDevice`` does) drops None's reference count by one per command
on Python 3.11 until the interpreter aborts; we build a fresh tuple every time.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Final, Self

from controller.access.formats import CardFormat, encode_wiegand, parse_card
from drivers.osdp import wire
from drivers.osdp.keys import write_scbk
from simulators.ptyline import PtyPair, plug, unlink_device

__all__ = ["SimIndication", "SimOsdpPd", "SimOsdpReader", "load_pds"]

log = logging.getLogger(__name__)

_osdp: ModuleType = importlib.import_module("osdp_sys")

_COLORS: Final = {
    _osdp.LED_COLOR_NONE: "off",
    _osdp.LED_COLOR_RED: "red",
    _osdp.LED_COLOR_GREEN: "green",
    _osdp.LED_COLOR_AMBER: "amber",
    _osdp.LED_COLOR_BLUE: "blue",
    _osdp.LED_COLOR_MAGENTA: "magenta",
    _osdp.LED_COLOR_CYAN: "cyan",
    _osdp.LED_COLOR_WHITE: "white",
}
_COMMANDS: Final = {
    _osdp.CMD_LED: "led",
    _osdp.CMD_BUZZER: "buzzer",
    _osdp.CMD_TEXT: "text",
    _osdp.CMD_OUTPUT: "output",
    _osdp.CMD_KEYSET: "keyset",
    _osdp.CMD_COMSET: "comset",
    _osdp.CMD_MFG: "mfg",
}
_KEYPAD: Final = {"*": 0x7F, "#": 0x0D, **{str(d): 0x30 + d for d in range(10)}}
_CAPABILITIES: Final = [
    {"function_code": _osdp.CAP_CARD_DATA_FORMAT, "compliance_level": 1, "num_items": 1},
    {"function_code": _osdp.CAP_READER_LED_CONTROL, "compliance_level": 1, "num_items": 1},
    {"function_code": _osdp.CAP_READER_AUDIBLE_OUTPUT, "compliance_level": 1, "num_items": 1},
    {"function_code": _osdp.CAP_READER_TEXT_OUTPUT, "compliance_level": 1, "num_items": 1},
    {"function_code": _osdp.CAP_READERS, "compliance_level": 0, "num_items": 1},
]
_MAX_INDICATIONS: Final = 10_000


@dataclass(frozen=True, slots=True)
class SimIndication:
    """A command the control panel sent a PD (LED, buzzer, ...), as the PD received it."""

    command: str  # "led" | "buzzer" | "text" | "output" | "keyset" | ...
    at: float  # time.monotonic() when the PD handled it
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def color(self) -> str | None:
        """The LED's on colour ("green", "red", "amber", "off"...), None for other commands."""
        if self.command != "led":
            return None
        return _COLORS.get(self.raw.get("on_color", -1), "unknown")

    @property
    def temporary(self) -> bool:
        """True for a temporary LED state (it reverts after ``timer_count`` x 100 ms)."""
        return bool(self.raw.get("temporary", False))

    @property
    def steady(self) -> bool:
        """True for a steady LED (on time, no off time)."""
        return bool(self.raw.get("on_count", 0) > 0 and self.raw.get("off_count", 0) == 0)

    @property
    def beeps(self) -> int:
        """Number of beeps of a buzzer command (0 for anything else, or a buzzer off)."""
        if self.command != "buzzer" or self.raw.get("control_code") != 2:
            return 0
        return int(self.raw.get("rep_count", 0))

    def __str__(self) -> str:
        if self.command == "led":
            kind = "temporary" if self.temporary else "permanent"
            if self.raw.get("control_code") == 1 and self.temporary:
                return "led cancel-temporary"
            blink = "" if self.steady or self.raw.get("on_count", 0) == 0 else " blinking"
            timer = f" {self.raw.get('timer_count', 0) / 10:g}s" if self.temporary else ""
            return f"led {kind} {self.color}{blink}{timer}"
        if self.command == "buzzer":
            return f"buzzer {self.beeps} beep(s)" if self.beeps else "buzzer off"
        return self.command


class _PdChannel:
    """libosdp's Channel interface for one PD: packets from the line in, replies out."""

    def __init__(self, pd: SimOsdpPd) -> None:
        self.pd = pd
        self.inbox = bytearray()

    def read(self, max_bytes: int) -> bytes:
        """Return up to ``max_bytes`` bytes addressed to this PD."""
        data = bytes(self.inbox[:max_bytes])
        del self.inbox[:max_bytes]
        return data

    def write(self, buf: bytes) -> int:
        """Put a reply on the line."""
        line = self.pd._line
        if line is not None:
            line._from_pd(self.pd, bytes(buf))
        return len(buf)

    def flush(self) -> None:
        """Nothing buffered on our side."""


class SimOsdpPd:
    """One simulated OSDP reader (a libosdp PD) at ``address``.

    ``scbk`` None means install mode: the reader accepts the default key SCBK-D once and keeps
    the key the control panel then sets. ``key_file`` (optional) receives that key.
    """

    def __init__(
        self,
        address: int = 1,
        scbk: bytes | None = None,
        *,
        install_mode: bool | None = None,
        refuse_secure_channel: bool = False,
        key_file: str | Path | None = None,
        name: str = "",
    ) -> None:
        if not 0 <= address <= 126:
            raise ValueError("OSDP address must be 0..126")
        if scbk is not None and len(scbk) != 16:
            raise ValueError("an SCBK is 16 bytes")
        self.address = address
        self.name = name or f"pd{address}"
        self.key_file = Path(key_file) if key_file is not None else None
        self.refuse_secure_channel = refuse_secure_channel
        """Report no Secure Channel capability and NAK challenges (from the next handshake)."""
        self.answering = True
        self.indications: list[SimIndication] = []
        """LED/buzzer/... commands received, oldest first."""
        self.keysets: list[bytes] = []
        """Keys the control panel set with KEYSET, oldest first."""
        self.on_command: Callable[[SimIndication], None] | None = None
        """Called (on the simulator thread) for every command received."""
        self._scbk = scbk
        self._install = scbk is None if install_mode is None else install_mode
        self._channel = _PdChannel(self)
        self._line: SimOsdpReader | None = None
        self._ctx: Any = None
        self._out = wire.Decoder()
        self._serial = secrets.randbits(31)

    def __repr__(self) -> str:
        return f"SimOsdpPd(address={self.address}, install_mode={self._install})"

    # -- state --------------------------------------------------------------------------------

    @property
    def scbk(self) -> bytes | None:
        """The key this reader holds (None: only SCBK-D, install mode)."""
        return self._scbk

    @property
    def install_mode(self) -> bool:
        """True while the reader would accept SCBK-D."""
        return self._install

    @property
    def online(self) -> bool:
        """The PD's own view: the control panel is polling it."""
        with self._locked() as ctx:
            return ctx is not None and bool(ctx.is_online())

    @property
    def secure(self) -> bool:
        """The PD's own view: a Secure Channel session is up."""
        with self._locked() as ctx:
            return ctx is not None and bool(ctx.is_sc_active())

    def leds(self) -> list[SimIndication]:
        """The LED commands received, oldest first."""
        return [i for i in self.indications if i.command == "led"]

    def buzzers(self) -> list[SimIndication]:
        """The buzzer commands received, oldest first."""
        return [i for i in self.indications if i.command == "buzzer"]

    # -- what a person or an installer does at the reader ---------------------------------------

    def present_card(self, bits: int, data: bytes) -> bool:
        """Present a raw Wiegand card: ``bits`` bits, MSB first, left-aligned in ``data``."""
        if bits <= 0 or len(data) != (bits + 7) // 8:
            raise ValueError(f"{bits} bits need {(bits + 7) // 8} data bytes")
        return self._submit(
            {
                "event": _osdp.EVENT_CARDREAD,
                "reader_no": 0,
                "format": _osdp.CARD_FMT_RAW_WIEGAND,
                "direction": 0,
                "length": bits,
                "data": bytes(data),
            }
        )

    def present_uid(self, uid: bytes) -> bool:
        """Present a card by its raw UID (raw, unspecified format, whole bytes)."""
        if not 1 <= len(uid) <= 16:
            raise ValueError("a card UID is 1..16 bytes")
        return self._submit(
            {
                "event": _osdp.EVENT_CARDREAD,
                "reader_no": 0,
                "format": _osdp.CARD_FMT_RAW_UNSPECIFIED,
                "direction": 0,
                "length": 8 * len(uid),
                "data": bytes(uid),
            }
        )

    def present(self, card: str) -> bool:
        """Present a card given as text (``h10301:12:345``, ``uid:04A1B2C3``; docs/access.md)."""
        number = parse_card(card)
        if number.format is CardFormat.UID:
            assert number.uid is not None
            return self.present_uid(number.uid)
        if number.format is CardFormat.NUMBER:
            raise ValueError("OSDP readers send raw bits: use a Wiegand format or a uid")
        bits, data = encode_wiegand(number)
        return self.present_card(bits, data)

    def type_keys(self, keys: str) -> bool:
        """Press keys (digits, ``*``, ``#``), sent as OSDP keypad data (``*`` 0x7F, ``#`` 0x0D)."""
        if not keys or any(k not in _KEYPAD for k in keys):
            raise ValueError("keys are digits, '*' and '#'")
        ok = True
        for start in range(0, len(keys), 16):
            chunk = bytes(_KEYPAD[k] for k in keys[start : start + 16])
            ok = self._submit({"event": _osdp.EVENT_KEYPRESS, "reader_no": 0, "data": chunk}) and ok
        return ok

    def set_tamper(self, tamper: bool) -> bool:
        """Report the reader's tamper switch (a local status report)."""
        return self._submit(
            {
                "event": _osdp.EVENT_STATUS,
                "type": _osdp.STATUS_REPORT_LOCAL,
                "report": bytes([int(tamper), 0]),
            }
        )

    def go_offline(self) -> None:
        """Stop answering the control panel (a dead reader or a cut cable)."""
        self.answering = False

    def go_online(self) -> None:
        """Answer the control panel again."""
        self.answering = True

    def set_key(self, scbk: bytes | None, *, install_mode: bool | None = None) -> None:
        """Restart the reader (a power cycle) holding ``scbk`` (None: install mode)."""
        if scbk is not None and len(scbk) != 16:
            raise ValueError("an SCBK is 16 bytes")
        with self._locked():
            self._scbk = scbk
            self._install = scbk is None if install_mode is None else install_mode
            if self._line is not None and self._line.running:
                self._build()

    def wrong_key(self) -> None:
        """Restart the reader with a random key the control panel does not know."""
        self.set_key(secrets.token_bytes(16), install_mode=False)

    def power_cycle(self) -> None:
        """Restart the reader with the key it holds."""
        self.set_key(self._scbk, install_mode=self._install)

    # -- internals (simulator thread, under the line lock) -------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Any]:
        line = self._line
        if line is None:
            yield None
            return
        with line._lock:
            yield self._ctx

    def _submit(self, event: dict[str, Any]) -> bool:
        with self._locked() as ctx:
            if ctx is None:
                raise RuntimeError("the simulated reader is not running")
            return bool(ctx.submit_event(event))

    def _build(self) -> None:
        info = {
            "name": self.name[:15],
            "address": self.address,
            "flags": _osdp.FLAG_INSTALL_MODE if self._install else 0,
            "scbk": self._scbk,
            "channel": self._channel,
            "version": 1,
            "model": 1,
            "vendor_code": 0x00A1B2,
            "serial_number": self._serial,
            "firmware_version": 0x010000,
        }
        self._ctx = None
        self._channel.inbox.clear()
        ctx = _osdp.PeripheralDevice(info, capabilities=_CAPABILITIES)
        ctx.set_command_callback(self._command)
        self._ctx = ctx

    def _drop(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            ctx.set_command_callback(_refuse_command)

    def _command(self, command: dict[str, Any]) -> tuple[int, None]:
        status = 0
        try:
            name = _COMMANDS.get(command.get("command", -1), "other")
            if name == "keyset":
                key = command.get("data")
                if not isinstance(key, bytes) or len(key) != 16:
                    status = -1
                else:
                    self._keyset(key)
            else:
                entry = SimIndication(name, time.monotonic(), dict(command))
                if len(self.indications) >= _MAX_INDICATIONS:
                    del self.indications[: _MAX_INDICATIONS // 2]
                self.indications.append(entry)
                if self.on_command is not None:
                    self.on_command(entry)
        except Exception:
            log.exception("simulated OSDP reader: command handling failed")
            status = -1
        return (status, None)  # a fresh tuple: see the module docstring

    def _keyset(self, key: bytes) -> None:
        if self.key_file is not None:
            write_scbk(self.key_file, key)
        self._scbk = key
        self._install = False
        self.keysets.append(key)
        if self.on_command is not None:
            self.on_command(SimIndication("keyset", time.monotonic(), {}))

    def _receive(self, frame: wire.Frame) -> bytes | None:
        """Take a packet addressed to us; return a forged reply to send instead, if any."""
        if not self.answering:
            return None
        if self.refuse_secure_channel and frame.code == wire.CMD_CHLNG:
            nak = wire.Frame(
                address=self.address,
                reply=True,
                code=wire.REPLY_NAK,
                payload=bytes([wire.NAK_SC_UNSUPPORTED]),
                sequence=frame.sequence,
                use_crc=frame.use_crc,
            )
            return wire.encode(nak)
        self._channel.inbox += wire.encode(frame)
        return None

    def _outgoing(self, data: bytes) -> bytes:
        """What reaches the line of what this PD sent (capabilities edited when refusing SC)."""
        if not self.refuse_secure_channel:
            return data
        self._out.feed(data)
        out = bytearray()
        for frame in self._out.frames():
            sent = frame
            if frame.code == wire.REPLY_PDCAP and not frame.scb:
                entries = wire.pdcap_entries(frame.payload)
                entries[wire.CAP_COMMUNICATION_SECURITY] = (0, 0)
                payload = b"".join(bytes([fc, *v]) for fc, v in sorted(entries.items()))
                sent = wire.Frame(
                    address=frame.address,
                    reply=True,
                    code=frame.code,
                    payload=payload,
                    sequence=frame.sequence,
                    use_crc=frame.use_crc,
                    mark=frame.mark,
                )
            out += wire.encode(sent)
        return bytes(out)


def _refuse_command(_command: dict[str, Any]) -> tuple[int, None]:
    status = -1
    return (status, None)


class SimOsdpReader:
    """An RS-485 line on a pty with one or more simulated OSDP readers (``SimOsdpPd``).

    ``device`` (optional) gets a symlink to the pty slave (parents created; an existing
    non-symlink is never replaced), re-pointed on ``replug()``, removed on ``stop()``.
    With one PD, the PD methods are available on the line itself.
    """

    def __init__(
        self,
        *pds: SimOsdpPd,
        device: str | Path | None = None,
        refresh_period_s: float = 0.002,
        libosdp_log_level: int | None = _osdp.LOG_CRIT,
    ) -> None:
        if libosdp_log_level is not None:  # libosdp prints its own log lines on stderr
            _osdp.set_loglevel(libosdp_log_level)
        self._pds: tuple[SimOsdpPd, ...] = pds or (SimOsdpPd(),)
        addresses = [pd.address for pd in self._pds]
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"duplicate OSDP addresses: {addresses}")
        self.device = Path(device) if device is not None else None
        self.period_s = refresh_period_s
        self._lock = threading.RLock()
        self._pty: PtyPair | None = None
        self._decoder = wire.Decoder()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.running = False
        self.overruns = 0
        """Bytes lost because nobody read the line (a UART overrun)."""
        for pd in self._pds:
            pd._line = self

    def __repr__(self) -> str:
        return f"SimOsdpReader({[pd.address for pd in self._pds]}, {self.path!r})"

    # -- life cycle -------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """Where the control panel opens the line: the symlink if configured, else the pty."""
        return str(self.device) if self.device is not None else self.pty_name

    @property
    def pty_name(self) -> str:
        """The pty slave (``/dev/pts/N``); empty while unplugged or stopped."""
        return self._pty.name if self._pty is not None else ""

    @property
    def plugged(self) -> bool:
        """True while the line exists."""
        return self._pty is not None

    @property
    def pds(self) -> tuple[SimOsdpPd, ...]:
        """The readers on this line."""
        return self._pds

    def pd(self, address: int) -> SimOsdpPd:
        """The reader at ``address``."""
        for pd in self._pds:
            if pd.address == address:
                return pd
        raise KeyError(f"no simulated OSDP reader at address {address}")

    def start(self) -> None:
        """Create the line and start the readers (a thread); idempotent."""
        if self.running:
            return
        self.running = True
        try:
            with self._lock:
                for pd in self._pds:
                    pd._build()
            self.replug()
        except BaseException:
            self.stop()
            raise
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sim-osdp", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the readers, close the line, remove the symlink; idempotent."""
        self.running = False
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
        with self._lock:
            for pd in self._pds:
                pd._drop()
        self.unplug()

    def unplug(self) -> None:
        """Remove the line: the control panel's open port fails like a pulled USB adapter."""
        with self._lock:
            side, self._pty = self._pty, None
            self._decoder = wire.Decoder()
        if side is None:
            return
        side.close()
        unlink_device(self.device, side.name)

    def replug(self) -> None:
        """Plug a new line in (a new pty) and point the symlink at it."""
        if not self.running:
            raise RuntimeError("the simulated OSDP line is not running")
        if self._pty is not None:
            return
        side = plug(self.device)
        with self._lock:
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

    # -- one-reader conveniences --------------------------------------------------------------

    @property
    def only(self) -> SimOsdpPd:
        """The line's single reader (ValueError if there are several)."""
        if len(self._pds) != 1:
            raise ValueError("several readers on this line: use pd(address)")
        return self._pds[0]

    @property
    def indications(self) -> list[SimIndication]:
        """The single reader's received commands."""
        return self.only.indications

    @property
    def refuse_secure_channel(self) -> bool:
        """Whether the single reader refuses Secure Channel."""
        return self.only.refuse_secure_channel

    @refuse_secure_channel.setter
    def refuse_secure_channel(self, value: bool) -> None:
        self.only.refuse_secure_channel = value

    def present_card(self, bits: int, data: bytes) -> bool:
        """Present a raw Wiegand card at the single reader."""
        return self.only.present_card(bits, data)

    def present(self, card: str) -> bool:
        """Present a card given as text at the single reader."""
        return self.only.present(card)

    def type_keys(self, keys: str) -> bool:
        """Press keys at the single reader."""
        return self.only.type_keys(keys)

    def set_tamper(self, tamper: bool) -> bool:
        """Set the single reader's tamper switch."""
        return self.only.set_tamper(tamper)

    def go_offline(self) -> None:
        """Make the single reader stop answering."""
        self.only.go_offline()

    def go_online(self) -> None:
        """Make the single reader answer again."""
        self.only.go_online()

    def wrong_key(self) -> None:
        """Restart the single reader with a key the control panel does not know."""
        self.only.wrong_key()

    # -- the line ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                try:
                    self._pump()
                    for pd in self._pds:
                        if pd._ctx is not None:
                            pd._ctx.refresh()
                except Exception:
                    log.exception("simulated OSDP line failed")
            self._stop.wait(self.period_s)

    def _pump(self) -> None:
        side = self._pty
        if side is None:
            return
        while True:
            try:
                data = os.read(side.master, 4096)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            self._decoder.feed(data)
        for frame in self._decoder.frames():
            if frame.reply:
                continue
            for pd in self._pds:
                if frame.address in (pd.address, wire.BROADCAST):
                    forged = pd._receive(frame)
                    if forged is not None:
                        self._write(forged)

    def _from_pd(self, pd: SimOsdpPd, data: bytes) -> None:
        if pd.answering:
            self._write(pd._outgoing(data))

    def _write(self, data: bytes) -> None:
        side = self._pty
        if side is None or not data:
            return  # unplugged: replies go nowhere
        try:
            sent = os.write(side.master, data)
        except OSError:
            sent = 0
        self.overruns += len(data) - sent


def load_pds(specs: Sequence[tuple[int, Path | None]]) -> list[SimOsdpPd]:
    """PDs for (address, key file) pairs: the file's key, or install mode if empty/missing."""
    pds = []
    for address, key_file in specs:
        key = None
        if key_file is not None and key_file.exists():
            text = key_file.read_text(encoding="ascii").strip()
            key = bytes.fromhex(text) if text else None
            if key is not None and len(key) != 16:
                raise ValueError(f"{key_file}: expected 32 hex digits")
        pds.append(SimOsdpPd(address, key, key_file=key_file))
    return pds
