"""OsdpReaderBus: the OSDP v2.2 control panel (CP) for one RS-485 line, on libosdp.

Theory of operation
-------------------
libosdp is a C state machine that must be *pumped*: its ``refresh()`` sends polls, reads
replies and calls back into Python for every event, all on the calling thread (it never
releases the GIL). The stock ``osdp.ControlPanel`` pumps it from a thread that sleeps 20 ms per
turn (and keeps every event in an unbounded queue nobody drains here); we use the extension's
context directly and pump it from ONE dedicated thread every ``refresh_period_s`` (2 ms), under
``self._lock``. Everything that touches the context runs on that thread: the event loop only
puts requests (indications, install windows) on a queue and receives events through
``loop.call_soon_threadsafe``, so it never waits on libosdp.

Each tick: reseed libc ``rand()`` (see below); (re)open the line if it is down; run queued
requests; ``refresh()``; notice a failed line; supervise every reader.

Secure Channel policy (docs/osdp.md). A reader with ``secure_channel = true`` is set up with
its SCBK and libosdp's ENFORCE_SECURE flag: no SCBK-D fallback, no clear-text session, no
silent re-key. libosdp only says "offline" when a handshake fails, so the driver watches its
own line (``drivers.osdp.wire``): a challenge answered with a cryptogram that libosdp then
rejects is a key mismatch (``ReaderAlarm("sc-failure")``); a reader that reports no Secure
Channel capability or NAKs the challenge is a clear-text reader (``"no-secure-channel"``).
Card and keypad events are delivered only if libosdp has Secure Channel up for that reader AND
the very reply that carried them was MAC-protected; anything else is dropped and alarmed.

Offline and retries. libosdp waits 300 s before retrying a reader it marked offline and needs
~8 s of silence to mark it offline at all. The driver reports a reader offline as soon as it has
not answered for ``offline_after_s``, and restarts libosdp's attempt for an offline reader
(disable + enable) after a full-jitter ``Backoff`` delay (at the cap after a Secure Channel
failure, so a wrong key is retried slowly and alarmed once per episode).

Install mode (``begin_install``) is the only way a reader joins with SCBK-D: ENFORCE_SECURE is
cleared for that one reader for at most ``window_s``. libosdp then falls back to SCBK-D and
sends the reader its configured key with KEYSET; a reader whose key file was empty got a fresh
``secrets.token_bytes(16)`` key that way, which is written to its key file; a reader that was
provisioned already is then given a NEW random key with an explicit KEYSET (written to
``<key_file>.new`` first and renamed over the key file when the reader acknowledges). A reader
that comes up in clear text during the window is disabled at once. The window closes on success
or at its deadline, ENFORCE_SECURE is restored, and both edges raise
``ReaderAlarm("install-mode")``.

libosdp surprise handled here: the wheel's ``osdp_fill_random`` uses libc ``rand()`` and
nothing seeds it, so every process sends the same Secure Channel challenges. We call
``srand()`` with 32 bits from ``secrets`` before every tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import os
import queue
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import Any, Final, Protocol, cast

import structlog

from drivers.base import (
    CardFraming,
    CardRead,
    DriverEvent,
    EventSink,
    Indication,
    KeypadRead,
    LinkChanged,
    LinkState,
    ReaderAlarm,
    ReaderStatus,
)
from drivers.errors import DeviceConnectionError, DeviceError
from drivers.osdp import wire
from drivers.osdp.channel import SerialChannel
from drivers.osdp.keys import KeyFileError, load_scbk, write_scbk
from drivers.transport.backoff import Backoff

__all__ = [
    "INDICATION_COMMANDS",
    "MAX_READERS",
    "KeyLoader",
    "OsdpBusConfig",
    "OsdpBusSpec",
    "OsdpReaderBus",
    "OsdpReaderConfig",
    "OsdpReaderSpec",
    "card_event",
    "keypad_text",
]

log = structlog.get_logger(__name__)

_osdp: ModuleType = importlib.import_module("osdp_sys")  # libosdp's C extension (untyped)

FLAG_ENFORCE_SECURE: Final[int] = _osdp.FLAG_ENFORCE_SECURE
EVENT_CARDREAD: Final[int] = _osdp.EVENT_CARDREAD
EVENT_KEYPRESS: Final[int] = _osdp.EVENT_KEYPRESS
EVENT_STATUS: Final[int] = _osdp.EVENT_STATUS
CMD_LED: Final[int] = _osdp.CMD_LED
CMD_BUZZER: Final[int] = _osdp.CMD_BUZZER
CMD_KEYSET: Final[int] = _osdp.CMD_KEYSET
CARD_FMT_RAW_UNSPECIFIED: Final[int] = _osdp.CARD_FMT_RAW_UNSPECIFIED
CARD_FMT_RAW_WIEGAND: Final[int] = _osdp.CARD_FMT_RAW_WIEGAND
CARD_FMT_ASCII: Final[int] = _osdp.CARD_FMT_ASCII
STATUS_REPORT_LOCAL: Final[int] = _osdp.STATUS_REPORT_LOCAL
STATUS_REPORT_REMOTE: Final[int] = _osdp.STATUS_REPORT_REMOTE
COMPLETION_OK: Final[int] = getattr(_osdp, "COMPLETION_OK", 0)
LED_NONE: Final[int] = _osdp.LED_COLOR_NONE
LED_RED: Final[int] = _osdp.LED_COLOR_RED
LED_GREEN: Final[int] = _osdp.LED_COLOR_GREEN
LED_AMBER: Final[int] = _osdp.LED_COLOR_AMBER
LOG_CRIT: Final[int] = _osdp.LOG_CRIT

MAX_READERS: Final = 32
"""libosdp's Python binding reads the online/Secure Channel masks into 32-bit integers."""
_MAX_PIN: Final = 16
_IDLE_BEFORE_RETRY_S: Final = 0.3  # libosdp sent nothing to a reader this long: it gave up
_KEYSET_ATTEMPTS: Final = 3

KeyLoader = Callable[[Path], bytes | None]
"""Reads a reader's key file: the SCBK, or None when not provisioned (KeyFileError if unsafe)."""

Command = dict[str, int | bool | bytes]


# -- configuration ---------------------------------------------------------------------------


class OsdpBusConfig(Protocol):
    """What the driver needs of a bus's site settings (``OsdpBusSettings`` fits)."""

    @property
    def name(self) -> str:
        """Bus name."""
        ...

    @property
    def device(self) -> str:
        """Serial device path."""
        ...

    @property
    def baudrate(self) -> int:
        """Line speed."""
        ...


class OsdpReaderConfig(Protocol):
    """What the driver needs of a reader's site settings (``ReaderSettings`` fits)."""

    @property
    def name(self) -> str:
        """Reader name."""
        ...

    @property
    def address(self) -> int:
        """OSDP PD address, 0..126."""
        ...

    @property
    def key_file(self) -> Path | None:
        """SCBK file; required when ``secure_channel``."""
        ...

    @property
    def secure_channel(self) -> bool:
        """Require Secure Channel."""
        ...


@dataclass(frozen=True, slots=True)
class OsdpBusSpec:
    """A plain OsdpBusConfig for tests and tools."""

    name: str
    device: str
    baudrate: int = 115200


@dataclass(frozen=True, slots=True)
class OsdpReaderSpec:
    """A plain OsdpReaderConfig for tests and tools."""

    name: str
    address: int
    key_file: Path | None = None
    secure_channel: bool = True


# -- typed surface of the untyped binding ------------------------------------------------------


class _CpContext(Protocol):
    """The methods of ``osdp_sys.ControlPanel`` we use (pd = index in the PD list)."""

    def refresh(self) -> None: ...
    def status(self) -> int: ...
    def sc_status(self) -> int: ...
    def submit_command(self, pd: int, command: Command) -> bool: ...
    def flush_commands(self, pd: int) -> int: ...
    def set_flag(self, pd: int, flag: int) -> bool: ...
    def clear_flag(self, pd: int, flag: int) -> bool: ...
    def disable_pd(self, pd: int) -> bool: ...
    def enable_pd(self, pd: int) -> bool: ...
    def is_pd_enabled(self, pd: int) -> bool: ...
    def set_event_callback(self, callback: Callable[[int, dict[str, Any]], int]) -> None: ...
    def set_command_completion_callback(
        self, callback: Callable[[int, dict[str, Any], int], None]
    ) -> None: ...


def _libc_srand() -> Callable[[int], None] | None:
    """libc's ``srand`` (shared with libosdp's ``rand()``), or None if unavailable."""
    try:
        fn = ctypes.CDLL(None).srand
    except (OSError, AttributeError):  # pragma: no cover - not glibc/musl
        return None
    fn.argtypes = [ctypes.c_uint]
    fn.restype = None
    return cast(Callable[[int], None], fn)


# -- pure mapping helpers ----------------------------------------------------------------------


def card_event(reader: str, event: Mapping[str, Any]) -> CardRead | None:
    """Map a libosdp card-read event to a CardRead; None if it is malformed.

    Raw Wiegand (format 1) -> WIEGAND with ``bits`` and the data MSB-first, left-aligned (pad
    bits cleared). Raw unspecified (format 0) -> UID when the bit count is a whole number of
    bytes, else WIEGAND. ASCII (format 2; libosdp 3.2 CPs drop these) -> NUMBER when all
    digits, else UID with the bytes.
    """
    fmt = event.get("format")
    data = event.get("data")
    if not isinstance(data, bytes) or not isinstance(fmt, int):
        return None
    if fmt in (CARD_FMT_RAW_WIEGAND, CARD_FMT_RAW_UNSPECIFIED):
        bits = event.get("length")
        if not isinstance(bits, int) or bits <= 0 or len(data) != (bits + 7) // 8:
            return None
        if fmt == CARD_FMT_RAW_UNSPECIFIED and bits % 8 == 0:
            return CardRead(reader, CardFraming.UID, data=data, bits=bits)
        pad = len(data) * 8 - bits
        value = int.from_bytes(data, "big") & ~((1 << pad) - 1)
        return CardRead(
            reader, CardFraming.WIEGAND, data=value.to_bytes(len(data), "big"), bits=bits
        )
    if fmt == CARD_FMT_ASCII and data:
        text = data.decode("ascii", "replace").strip()
        if text.isdigit():
            return CardRead(reader, CardFraming.NUMBER, text=text)
        return CardRead(reader, CardFraming.UID, data=data, bits=8 * len(data))
    return None


def keypad_text(data: bytes) -> str:
    """Decode OSDP keypad bytes: digits as ASCII, ``*`` as 0x7F (or '*'), ``#`` as 0x0D (or '#')."""
    out = []
    for byte in data:
        if 0x30 <= byte <= 0x39:
            out.append(chr(byte))
        elif byte in (0x7F, 0x2A):
            out.append("*")
        elif byte in (0x0D, 0x23):
            out.append("#")
    return "".join(out)


def _led(
    color: int,
    *,
    temporary: bool,
    on: int,
    off: int = 0,
    off_color: int = LED_NONE,
    timer: int = 0,
    control: int | None = None,
) -> Command:
    cmd: Command = {
        "command": CMD_LED,
        "reader": 0,
        "led_number": 0,
        "control_code": (2 if temporary else 1) if control is None else control,
        "on_color": color,
        "off_color": off_color,
        "on_count": on,
        "off_count": off,
        "temporary": temporary,
    }
    if temporary:
        cmd["timer_count"] = timer
    return cmd


def _buzzer(on: int, off: int, repeat: int, *, tone: int = 2) -> Command:
    return {
        "command": CMD_BUZZER,
        "reader": 0,
        "control_code": tone,
        "on_count": on,
        "off_count": off,
        "rep_count": repeat,
    }


_CANCEL_TEMPORARY: Final = _led(LED_NONE, temporary=True, on=0, control=1)

INDICATION_COMMANDS: Final[Mapping[Indication, tuple[Command, ...]]] = {
    # times in 100 ms units (OSDP): green 3 s + one 200 ms beep
    Indication.GRANTED: (
        _led(LED_GREEN, temporary=True, on=30, off_color=LED_GREEN, timer=30),
        _buzzer(2, 0, 1),
    ),
    # red 3 s + two 200 ms beeps
    Indication.DENIED: (
        _led(LED_RED, temporary=True, on=30, off_color=LED_RED, timer=30),
        _buzzer(2, 2, 2),
    ),
    # amber blinking (0.5 s on / 0.5 s off) for 10 s + one short chirp
    Indication.PIN_NEEDED: (
        _led(LED_AMBER, temporary=True, on=5, off=5, timer=100),
        _buzzer(1, 0, 1),
    ),
    # red steady until told otherwise
    Indication.LOCKDOWN: (_CANCEL_TEMPORARY, _led(LED_RED, temporary=False, on=1)),
    # LED off, buzzer off
    Indication.IDLE: (
        _CANCEL_TEMPORARY,
        _led(LED_NONE, temporary=False, on=0),
        _buzzer(0, 0, 0, tone=1),
    ),
}
"""The LED/buzzer commands each Indication sends (see docs/osdp.md)."""


# -- per-reader state --------------------------------------------------------------------------


@dataclass(slots=True)
class _Trace:
    """What the line showed about one address since libosdp's last connect attempt."""

    last_tx_at: float = 0.0
    last_rx_at: float = -1e9
    last_cmd: int = -1
    last_reply_secure: bool = False
    replies: int = 0
    pdcap_sc: bool | None = None
    got_ccrypt: bool = False
    got_rmac: bool = False
    sent_scrypt: bool = False
    chlng_nak: int | None = None

    def new_attempt(self) -> None:
        """libosdp started over (osdp_ID): forget the previous attempt's handshake."""
        self.replies = 0
        self.pdcap_sc = None
        self.got_ccrypt = self.got_rmac = self.sent_scrypt = False
        self.chlng_nak = None

    def command(self, frame: wire.Frame, now: float) -> None:
        """The CP sent ``frame`` to this address."""
        if frame.code == wire.CMD_ID:
            self.new_attempt()
        elif frame.code == wire.CMD_SCRYPT:
            self.sent_scrypt = True
        self.last_cmd = frame.code
        self.last_tx_at = now

    def reply(self, frame: wire.Frame, now: float) -> None:
        """This address answered with ``frame``."""
        self.last_rx_at = now
        self.replies += 1
        self.last_reply_secure = frame.secure
        if frame.code == wire.REPLY_PDCAP and not frame.scb:
            level = wire.pdcap_entries(frame.payload).get(wire.CAP_COMMUNICATION_SECURITY)
            self.pdcap_sc = bool(level and level[0] & 1)
        elif frame.code == wire.REPLY_CCRYPT and self.last_cmd == wire.CMD_CHLNG:
            self.got_ccrypt = True
        elif frame.code == wire.REPLY_RMAC_I:
            self.got_rmac = True
        elif frame.code == wire.REPLY_NAK and self.last_cmd == wire.CMD_CHLNG:
            self.chlng_nak = frame.payload[0] if frame.payload else 0

    def verdict(self) -> tuple[str, str] | None:
        """Why a Secure Channel reader failed to come up, as (alarm kind, detail), if known."""
        if self.pdcap_sc is False:
            return (
                "no-secure-channel",
                "the reader reports no Secure Channel support (clear text only); refused",
            )
        if self.chlng_nak is not None:
            return (
                "no-secure-channel",
                f"the reader refused the Secure Channel challenge (NAK {self.chlng_nak}); refused",
            )
        if self.got_ccrypt and not self.got_rmac:
            return (
                "sc-failure",
                "Secure Channel handshake failed: the reader's cryptogram does not match its "
                "SCBK (wrong key, or a reader still in install mode); refused",
            )
        if self.sent_scrypt and not self.got_rmac:
            return (
                "sc-failure",
                "the reader rejected our Secure Channel cryptogram (key mismatch)",
            )
        return None


class _Kick(Enum):
    NONE = 0
    DISABLING = 1


@dataclass(slots=True)
class _Install:
    deadline: float
    rotated: bool = False
    attempts: int = 0


@dataclass(slots=True)
class _Reader:
    name: str
    index: int
    address: int
    secure: bool
    key_file: Path | None
    scbk: bytes | None  # the key libosdp holds for this reader (None: clear text)
    persisted: bool  # ``scbk`` is what the key file holds
    backoff: Backoff
    trace: _Trace = field(default_factory=_Trace)
    kick: _Kick = _Kick.NONE
    kick_at: float | None = None
    kicked_at: float = 0.0
    reported: tuple[bool, bool, bool] | None = None
    alarmed: set[tuple[str, str]] = field(default_factory=set)
    tamper_local: bool = False
    tamper_remote: bool = False
    power_fault: bool = False
    keys: str = ""
    keys_at: float = 0.0
    install: _Install | None = None
    rotating: bytes | None = None  # a new key sent with KEYSET, awaiting the reader's answer
    told_clear_text: bool = False
    persist_failed: bool = False
    failure: str = ""  # the alarm kind of the last failed attempt ("" if none/unknown)

    @property
    def tamper(self) -> bool:
        """Local or remote tamper reported by the reader."""
        return self.tamper_local or self.tamper_remote

    @property
    def pending_key_file(self) -> Path | None:
        """Where a rotated key waits until the reader acknowledges it."""
        return self.key_file.with_name(self.key_file.name + ".new") if self.key_file else None


# -- the driver ----------------------------------------------------------------------------------


class OsdpReaderBus:
    """An OSDP RS-485 line with one or more readers (a CredentialReaderBus)."""

    def __init__(
        self,
        bus: OsdpBusConfig,
        readers: Iterable[OsdpReaderConfig],
        sink: EventSink,
        key_loader: KeyLoader = load_scbk,
        *,
        refresh_period_s: float = 0.002,
        offline_after_s: float = 2.0,
        keypad_timeout_s: float = 5.0,
        backoff_initial_s: float = 0.25,
        backoff_max_s: float = 10.0,
        rng: random.Random | None = None,
        libosdp_log_level: int | None = LOG_CRIT,
    ) -> None:
        if libosdp_log_level is not None:  # libosdp prints its own log lines on stderr
            _osdp.set_loglevel(libosdp_log_level)
        self.name = bus.name
        self.device = bus.device
        self.baudrate = bus.baudrate
        self._sink = sink
        self._period = refresh_period_s
        self._offline_after = offline_after_s
        self._keypad_timeout = keypad_timeout_s
        self._rng = rng or random.Random()  # noqa: S311 - retry jitter, not crypto
        self._line_backoff = Backoff(backoff_initial_s, backoff_max_s, self._rng)
        self._readers: list[_Reader] = []
        self._by_address: dict[int, _Reader] = {}
        self._by_name: dict[str, _Reader] = {}
        for i, cfg in enumerate(readers):
            reader = self._make_reader(i, cfg, key_loader, backoff_initial_s, backoff_max_s)
            if reader.address in self._by_address or reader.name in self._by_name:
                raise ValueError(f"bus {self.name}: duplicate reader {cfg.name!r}/{cfg.address}")
            self._readers.append(reader)
            self._by_address[reader.address] = reader
            self._by_name[reader.name] = reader
        if not self._readers:
            raise ValueError(f"bus {self.name}: no readers")
        if len(self._readers) > MAX_READERS:
            raise ValueError(f"bus {self.name}: at most {MAX_READERS} readers per OSDP line")
        self.readers: tuple[str, ...] = tuple(r.name for r in self._readers)
        self._rx = wire.Decoder()
        self._tx = wire.Decoder()
        self._channel = SerialChannel(
            self.device, self.baudrate, on_rx=self._tap_rx, on_tx=self._tap_tx
        )
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[tuple[str, str, Any]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[None] | None = None
        self._cp: _CpContext | None = None
        self._srand = _libc_srand()
        self._link = LinkState.DISCONNECTED
        self._line_reason = ""
        self._line_retry_at = 0.0
        self._line_up_at = 0.0
        self._config_errors: set[str] = set()
        self._started_at = 0.0
        self._closed = False
        self._snapshot: dict[str, ReaderStatus] = {}
        self._log = log.bind(device=self.name)
        self.stats: dict[str, float] = {
            "ticks": 0,
            "max_tick_ms": 0.0,
            "cards": 0,
            "keys": 0,
            "dropped_insecure": 0,
            "kicks": 0,
            "line_failures": 0,
        }

    @staticmethod
    def _make_reader(
        index: int,
        cfg: OsdpReaderConfig,
        key_loader: KeyLoader,
        backoff_initial_s: float,
        backoff_max_s: float,
    ) -> _Reader:
        if not 0 <= cfg.address <= 126:
            raise ValueError(f"reader {cfg.name}: OSDP address must be 0..126")
        scbk: bytes | None = None
        persisted = False
        key_file = Path(cfg.key_file) if cfg.key_file is not None else None
        if cfg.secure_channel:
            if key_file is None:
                raise KeyFileError(f"reader {cfg.name}: secure_channel needs a key_file")
            try:
                loaded = key_loader(key_file)
            except KeyFileError as exc:
                raise KeyFileError(f"reader {cfg.name}: {exc}") from exc
            if loaded is not None and len(loaded) != 16:
                raise KeyFileError(f"reader {cfg.name}: {key_file}: an SCBK is 16 bytes")
            persisted = loaded is not None
            # not provisioned: a random key no reader knows, until install mode hands it out
            scbk = loaded if loaded is not None else secrets.token_bytes(16)
        return _Reader(
            name=cfg.name,
            index=index,
            address=cfg.address,
            secure=cfg.secure_channel,
            key_file=key_file,
            scbk=scbk,
            persisted=persisted,
            backoff=Backoff(backoff_initial_s, backoff_max_s, random.Random()),  # noqa: S311
        )

    # -- public API ----------------------------------------------------------------------

    @property
    def link(self) -> LinkState:
        """State of the serial line."""
        return self._link

    def status(self, reader: str) -> ReaderStatus | None:
        """The last ReaderStatus reported for ``reader`` (None before the first)."""
        return self._snapshot.get(reader)

    def provisioned(self, reader: str) -> bool:
        """True when ``reader``'s key file holds the key in use (False: install mode needed)."""
        return self._by_name[reader].persisted

    async def run(self) -> None:
        """Pump libosdp on a dedicated thread until cancelled or closed."""
        if self._closed:
            return
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"OSDP bus {self.name} is already running")
        self._loop = asyncio.get_running_loop()
        self._done = self._loop.create_future()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._thread_main, name=f"osdp-{self.name}", daemon=True
        )
        self._thread.start()
        try:
            await self._done
        finally:
            await self._stop_thread()
            self._set_link(LinkState.CLOSED, "stopped")

    def indicate(self, reader: str, indication: Indication) -> None:
        """Queue LED/buzzer feedback for ``reader`` (never blocks; dropped if it is offline)."""
        if reader not in self._by_name:
            self._log.warning("indication for an unknown reader", reader=reader)
            return
        self._requests.put(("indicate", reader, Indication(indication)))

    def begin_install(self, reader: str, window_s: float) -> None:
        """Open ``reader``'s install window: it may join once with SCBK-D and get a new key.

        The window starts when the refresh thread takes the request (at once while running).
        """
        target = self._by_name.get(reader)
        if target is None:
            raise KeyError(f"no OSDP reader {reader!r} on bus {self.name}")
        if not target.secure or target.key_file is None:
            raise ValueError(f"reader {reader} is configured without Secure Channel")
        if not 0 < window_s <= 3600:
            raise ValueError("the install window must be 0 < window_s <= 3600 seconds")
        stopped = self._thread is not None and not self._thread.is_alive()
        if self._closed or stopped:
            raise DeviceConnectionError(f"OSDP bus {self.name} is not running")
        self._requests.put(("install", reader, float(window_s)))

    async def close(self) -> None:
        """Stop the thread and close the line; idempotent."""
        self._closed = True
        await self._stop_thread()
        if self._thread is None:
            self._channel.close()

    def tick_stats(self) -> dict[str, float]:
        """Refresh thread figures: ticks, mean period (ms), worst tick duration (ms)."""
        elapsed = time.monotonic() - self._started_at if self._started_at else 0.0
        ticks = self.stats["ticks"]
        return {
            "ticks": ticks,
            "mean_period_ms": 1000.0 * elapsed / ticks if ticks else 0.0,
            "max_tick_ms": self.stats["max_tick_ms"],
        }

    # -- loop side -------------------------------------------------------------------------

    async def _stop_thread(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            await asyncio.to_thread(thread.join, 5.0)
            if thread.is_alive():  # pragma: no cover - libosdp hung
                self._log.error("OSDP refresh thread did not stop")

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the event loop (from the refresh thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(fn, *args)

    def _emit(self, event: DriverEvent) -> None:
        self._post(self._deliver, event)

    def _deliver(self, event: DriverEvent) -> None:
        if isinstance(event, ReaderStatus):
            self._snapshot[event.reader] = event
        try:
            self._sink(event)
        except Exception:
            log.exception("event sink failed", device=self.name, event=type(event).__name__)

    def _finish(self, error: BaseException | None) -> None:
        done = self._done
        if done is None or done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            exc = DeviceError(f"OSDP bus {self.name} failed: {error!r}")
            exc.__cause__ = error
            done.set_exception(exc)

    # -- refresh thread ----------------------------------------------------------------------

    def _thread_main(self) -> None:
        error: BaseException | None = None
        try:
            with self._lock:
                # libosdp keeps a reference to its channel forever: a fresh one per run
                self._channel = SerialChannel(
                    self.device, self.baudrate, on_rx=self._tap_rx, on_tx=self._tap_tx
                )
                self._cp = self._setup()
            self._serve()
        except Exception as exc:  # reported to run(), which raises it
            error = exc
            log.exception("OSDP refresh thread failed", device=self.name)
        finally:
            with self._lock:
                cp, self._cp = self._cp, None
                if cp is not None:  # break the context <-> callback cycle, then tear down
                    cp.set_event_callback(_ignore_event)
                    cp.set_command_completion_callback(_ignore_completion)
                del cp
                self._channel.close()
                self._channel.detach()
            self._post(self._finish, error)

    def _setup(self) -> _CpContext:
        infos = []
        for r in self._readers:
            infos.append(
                {
                    "name": r.name[:15],
                    "address": r.address,
                    "flags": FLAG_ENFORCE_SECURE if r.secure else 0,
                    "scbk": r.scbk,
                    "channel": self._channel,
                    "baud_rate": self.baudrate,
                }
            )
        cp = cast(_CpContext, _osdp.ControlPanel(infos))
        cp.set_event_callback(self._on_event)
        cp.set_command_completion_callback(self._on_completion)
        for r in self._readers:
            if r.secure and not r.persisted:
                self._alarm(
                    r,
                    "unprovisioned",
                    f"key file {r.key_file} is empty: the reader is refused until a technician "
                    "provisions it with install mode",
                    once=True,
                )
            elif not r.secure:
                self._log.warning("reader configured without Secure Channel", reader=r.name)
        return cp

    def _serve(self) -> None:
        self._started_at = time.monotonic()
        next_at = self._started_at
        while not self._stop.is_set():
            start = time.monotonic()
            with self._lock:
                self._tick(start)
            took = time.monotonic() - start
            self.stats["ticks"] += 1
            self.stats["max_tick_ms"] = max(self.stats["max_tick_ms"], 1000.0 * took)
            next_at += self._period
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind: do not burst to catch up
                next_at = time.monotonic()
                delay = 0.0001
            self._stop.wait(delay)

    def _tick(self, now: float) -> None:
        cp = self._cp
        assert cp is not None
        if self._srand is not None:
            self._srand(secrets.randbits(32))
        self._line(cp, now)
        self._drain_requests(cp, now)
        cp.refresh()
        now = time.monotonic()
        if self._channel.is_open and self._channel.failure:
            self._line_down(now, self._channel.failure)
        self._supervise(cp, now)

    # -- the line ---------------------------------------------------------------------------

    def _set_link(self, state: LinkState, reason: str = "") -> None:
        if state is self._link:
            return
        self._link = state
        self._emit(LinkChanged(self.name, state, reason))

    def _line(self, cp: _CpContext, now: float) -> None:
        if self._channel.is_open or now < self._line_retry_at:
            return
        self._set_link(LinkState.CONNECTING)
        try:
            self._channel.open()
        except DeviceError as exc:
            reason = str(exc)
            if type(exc) is DeviceError:  # retrying will not fix it: alarm once, retry slowly
                self._line_backoff.saturate()
                if reason not in self._config_errors:
                    self._config_errors.add(reason)
                    for r in self._readers:
                        self._alarm(r, "config", reason, once=True)
            self._line_retry_at = now + self._line_backoff.next_delay()
            self._line_reason = reason
            self._set_link(LinkState.BACKOFF, reason)
            return
        self._log.info("OSDP line open", path=self.device)
        self._line_backoff.reset()
        self._config_errors.clear()
        self._line_reason = ""
        self._rx = wire.Decoder()
        self._line_up_at = now
        self._set_link(LinkState.UP)
        online = cp.status()
        for r in self._readers:  # do not wait for libosdp's own retry timers
            r.backoff.reset()
            if not online >> r.index & 1:
                r.kick_at = now

    def _line_down(self, now: float, reason: str) -> None:
        self._log.warning("OSDP line failed", reason=reason)
        self.stats["line_failures"] += 1
        self._channel.close()
        self._line_reason = reason
        self._line_retry_at = now + self._line_backoff.next_delay()
        self._set_link(LinkState.BACKOFF, reason)

    def _tap_tx(self, data: bytes) -> None:
        self._tx.feed(data)
        now = time.monotonic()
        for frame in self._tx.frames():
            reader = self._by_address.get(frame.address)
            if reader is not None and not frame.reply:
                reader.trace.command(frame, now)

    def _tap_rx(self, data: bytes) -> None:
        self._rx.feed(data)
        now = time.monotonic()
        for frame in self._rx.frames():
            reader = self._by_address.get(frame.address)
            if reader is not None and frame.reply:
                reader.trace.reply(frame, now)

    # -- requests from the loop ----------------------------------------------------------------

    def _drain_requests(self, cp: _CpContext, now: float) -> None:
        while True:
            try:
                kind, name, arg = self._requests.get_nowait()
            except queue.Empty:
                return
            reader = self._by_name[name]
            if kind == "indicate":
                self._indicate(cp, reader, arg)
            elif kind == "install":
                self._open_install(cp, reader, arg, now)

    def _indicate(self, cp: _CpContext, r: _Reader, indication: Indication) -> None:
        if not cp.status() >> r.index & 1:
            self._log.debug("indication dropped: reader offline", reader=r.name)
            return
        if r.rotating is None:  # never flush a KEYSET in flight
            cp.flush_commands(r.index)  # the newest feedback supersedes what is still queued
        for command in INDICATION_COMMANDS[indication]:
            if not cp.submit_command(r.index, dict(command)):
                self._log.debug("indication command refused", reader=r.name)
                return

    # -- supervision -------------------------------------------------------------------------

    def _supervise(self, cp: _CpContext, now: float) -> None:
        online_mask = cp.status()
        sc_mask = cp.sc_status()
        line_up = self._channel.is_open and not self._channel.failure
        for r in self._readers:
            libosdp_online = bool(online_mask >> r.index & 1)
            sc = bool(sc_mask >> r.index & 1)
            if r.kick is _Kick.DISABLING:
                if not cp.is_pd_enabled(r.index):
                    cp.enable_pd(r.index)
                    r.kick = _Kick.NONE
                    r.trace.new_attempt()
                    r.kicked_at = now
                continue
            if r.secure and libosdp_online and not sc:
                if r.kick_at is None:
                    # a clear-text session with a reader that must use Secure Channel
                    # (possible only while its install window relaxes ENFORCE_SECURE)
                    kind, detail = r.trace.verdict() or (
                        "no-secure-channel",
                        "the reader came up without Secure Channel; disabled",
                    )
                    self._alarm(r, kind, detail)
                    r.failure = kind
                    self._start_kick(cp, r, now + r.backoff.next_delay())  # cut off now
            elif r.secure and libosdp_online and sc:
                self._secure_session(cp, r)
            if r.install is not None and now >= r.install.deadline:
                self._close_install(cp, r, "expired before a reader was provisioned")
            if (
                line_up
                and not libosdp_online
                and r.kick_at is None
                and now - max(r.trace.last_tx_at, r.kicked_at) > _IDLE_BEFORE_RETRY_S
            ):
                self._attempt_failed(r, now)
            if r.kick_at is not None and now >= r.kick_at and line_up:
                self._start_kick(cp, r, None)
            if r.keys and now - r.keys_at > self._keypad_timeout:
                self._log.info("partial keypad entry discarded", reader=r.name)
                r.keys = ""
            heard = (
                r.trace.last_rx_at >= self._line_up_at
                and now - r.trace.last_rx_at < self._offline_after
            )
            online = line_up and libosdp_online and heard and (sc or not r.secure)
            self._report(
                r, online=online, secure=online and sc, now=now, line_up=line_up, heard=heard
            )

    def _attempt_failed(self, r: _Reader, now: float) -> None:
        verdict = r.trace.verdict() if r.secure else None
        r.failure = verdict[0] if verdict is not None else ""
        if verdict is not None:
            self._alarm(r, *verdict)
            r.backoff.saturate()  # a key problem: retry slowly, it will not fix itself
        r.kick_at = now + r.backoff.next_delay()

    def _start_kick(self, cp: _CpContext, r: _Reader, at: float | None) -> None:
        """Restart libosdp's connect attempt for ``r`` now (``at`` None), or cut it off now
        and restart it at ``at``."""
        r.kick_at = at
        if at is not None:
            if r.kick is _Kick.NONE and cp.is_pd_enabled(r.index):
                cp.disable_pd(r.index)
            return
        if r.kick is _Kick.NONE:
            self.stats["kicks"] += 1
            if cp.is_pd_enabled(r.index):
                cp.disable_pd(r.index)
            r.kick = _Kick.DISABLING  # re-enabled once libosdp has processed the disable

    def _report(
        self, r: _Reader, *, online: bool, secure: bool, now: float, line_up: bool, heard: bool
    ) -> None:
        state = (online, r.tamper, secure)
        if state == r.reported:
            return
        if r.reported is None and not online and now - self._started_at < self._offline_after:
            return  # give readers a moment to come up before the first report
        if online:
            r.backoff.reset()
            r.alarmed.clear()
            r.failure = ""
        if online and not r.secure and not r.told_clear_text:
            r.told_clear_text = True
            self._alarm(
                r,
                "no-secure-channel",
                "configured without Secure Channel (secure_channel = false): card data and "
                "PINs cross the line in clear text",
                once=True,
            )
        if online:
            detail = "online with Secure Channel" if secure else "online (clear text)"
        elif not line_up:
            detail = f"line down: {self._line_reason or 'closed'}"
        elif r.failure:
            detail = f"refused: {r.failure}"
        elif not heard:
            detail = f"no reply for {self._offline_after:g} s"
        else:
            detail = "not connected"
        if r.power_fault:
            detail += "; power fault reported"
        r.reported = state
        self._emit(ReaderStatus(r.name, online, tamper=r.tamper, secure=secure, detail=detail))

    def _alarm(self, r: _Reader, kind: str, detail: str, *, once: bool = True) -> None:
        """Raise a ReaderAlarm; with ``once``, at most once per episode (until secure again)."""
        if once:
            if (kind, detail) in r.alarmed:
                return
            r.alarmed.add((kind, detail))
        self._log.warning("OSDP reader alarm", reader=r.name, kind=kind, detail=detail)
        self._emit(ReaderAlarm(r.name, kind, detail))

    # -- libosdp callbacks (inside refresh(); must never raise) -----------------------------

    def _on_event(self, index: int, event: dict[str, Any]) -> int:
        try:
            r = self._readers[index]
            kind = event.get("event")
            if kind == EVENT_CARDREAD:
                self._card(r, event)
            elif kind == EVENT_KEYPRESS:
                self._keypress(r, event)
            elif kind == EVENT_STATUS:
                self._status_report(r, event)
        except Exception:
            log.exception("OSDP event handling failed", device=self.name)
        return 0

    def _insecure(self, r: _Reader, what: str) -> bool:
        """True (and alarmed) if ``what`` from ``r`` did not come over Secure Channel."""
        if not r.secure:
            return False
        cp = self._cp
        sc = cp is not None and bool(cp.sc_status() >> r.index & 1)
        if sc and r.trace.last_reply_secure:
            return False
        self.stats["dropped_insecure"] += 1
        self._alarm(
            r, "no-secure-channel", f"{what} dropped: it did not arrive over Secure Channel"
        )
        return True

    def _card(self, r: _Reader, event: Mapping[str, Any]) -> None:
        if self._insecure(r, "card read"):
            return
        read = card_event(r.name, event)
        if read is None:
            self._alarm(r, "malformed", "malformed card read event", once=False)
            return
        self.stats["cards"] += 1
        self._emit(read)

    def _keypress(self, r: _Reader, event: Mapping[str, Any]) -> None:
        data = event.get("data")
        if not isinstance(data, bytes) or self._insecure(r, "keypad entry"):
            return
        r.keys_at = time.monotonic()
        for key in keypad_text(data):
            if key == "#":
                self.stats["keys"] += 1
                self._emit(KeypadRead(r.name, r.keys + "#"))
                r.keys = ""
            elif key == "*":
                r.keys = ""
                self._emit(KeypadRead(r.name, "*"))
            elif len(r.keys) < _MAX_PIN:
                r.keys += key
            else:
                self._log.info("over-long keypad entry discarded", reader=r.name)
                r.keys = ""

    def _status_report(self, r: _Reader, event: Mapping[str, Any]) -> None:
        report = event.get("report")
        if not isinstance(report, bytes) or not report:
            return
        if r.secure and not r.trace.last_reply_secure:
            return
        tamper = bool(report[0])
        if event.get("type") == STATUS_REPORT_LOCAL:
            r.tamper_local = tamper
            r.power_fault = len(report) > 1 and bool(report[1])
        elif event.get("type") == STATUS_REPORT_REMOTE:
            r.tamper_remote = tamper

    def _on_completion(self, index: int, command: dict[str, Any], status: int) -> None:
        try:
            if command.get("command") == CMD_KEYSET:
                self._keyset_done(self._readers[index], command, status == COMPLETION_OK)
        except Exception:
            log.exception("OSDP completion handling failed", device=self.name)

    # -- Secure Channel sessions and install mode ---------------------------------------------

    def _secure_session(self, cp: _CpContext, r: _Reader) -> None:
        """``r`` is online with Secure Channel under ``r.scbk``: persist or rotate as needed."""
        if not r.persisted and r.scbk is not None:
            # only install mode hands this key out (libosdp's KEYSET after SCBK-D)
            if not r.persist_failed and self._persist(r, r.scbk):
                self._close_install(cp, r, f"provisioned: a new SCBK was written to {r.key_file}")
            return
        install = r.install
        if install is None or r.rotating is not None:
            return
        if install.rotated:
            self._close_install(cp, r, f"provisioned: a new SCBK was written to {r.key_file}")
            return
        new = secrets.token_bytes(16)
        pending = r.pending_key_file
        assert pending is not None
        try:
            write_scbk(pending, new)
        except OSError as exc:
            self._close_install(cp, r, f"cannot write {pending}: {exc.strerror or exc}")
            return
        command: Command = {"command": CMD_KEYSET, "type": 1, "data": new}
        if cp.submit_command(r.index, command):
            r.rotating = new
        else:
            with contextlib.suppress(OSError):
                pending.unlink()

    def _keyset_done(self, r: _Reader, command: Mapping[str, Any], ok: bool) -> None:
        new, r.rotating = r.rotating, None
        pending = r.pending_key_file
        if new is None or command.get("data") != new or pending is None or r.key_file is None:
            return
        if not ok:
            with contextlib.suppress(OSError):
                pending.unlink()
            if r.install is not None:
                r.install.attempts += 1
                if r.install.attempts >= _KEYSET_ATTEMPTS and self._cp is not None:
                    self._close_install(self._cp, r, "the reader refused the new key")
            return
        r.scbk = new  # libosdp adopted it and restarts Secure Channel with it
        try:
            os.replace(pending, r.key_file)
            _fsync_dir(r.key_file.parent)
        except OSError as exc:
            self._alarm(
                r,
                "install-mode",
                f"the reader took a new key but {r.key_file} could not be updated "
                f"({exc.strerror or exc}); the key is in {pending}",
                once=False,
            )
            r.persisted = False
            return
        r.persisted = True
        if r.install is not None:
            r.install.rotated = True

    def _persist(self, r: _Reader, key: bytes) -> bool:
        assert r.key_file is not None
        try:
            write_scbk(r.key_file, key)
        except OSError as exc:
            r.persist_failed = True
            self._alarm(
                r,
                "install-mode",
                f"the reader was provisioned but {r.key_file} could not be written "
                f"({exc.strerror or exc}); it will be lost at the next restart",
                once=False,
            )
            return False
        r.persisted = True
        return True

    def _open_install(self, cp: _CpContext, r: _Reader, window_s: float, now: float) -> None:
        if r.install is not None:
            r.install.deadline = now + window_s
            self._alarm(r, "install-mode", f"install window extended to {window_s:g} s", once=False)
            return
        r.install = _Install(deadline=now + window_s)
        cp.clear_flag(r.index, FLAG_ENFORCE_SECURE)
        self._alarm(
            r,
            "install-mode",
            f"install window open for {window_s:g} s: the reader may join once with the "
            "default key SCBK-D and will be given a new SCBK",
            once=False,
        )
        r.alarmed.clear()
        r.backoff.reset()
        if not (cp.status() & cp.sc_status()) >> r.index & 1:
            self._start_kick(cp, r, None)  # start a handshake now (an online reader is re-keyed)

    def _close_install(self, cp: _CpContext, r: _Reader, outcome: str) -> None:
        if r.install is None:
            return
        r.install = None
        cp.set_flag(r.index, FLAG_ENFORCE_SECURE)
        self._alarm(r, "install-mode", f"install window closed: {outcome}", once=False)
        if cp.status() >> r.index & 1 and not cp.sc_status() >> r.index & 1:
            self._start_kick(cp, r, None)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ignore_event(_index: int, _event: dict[str, Any]) -> int:
    return 0


def _ignore_completion(_index: int, _command: dict[str, Any], _status: int) -> None:
    return None
