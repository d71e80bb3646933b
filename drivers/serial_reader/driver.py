"""SerialReaderBus: one Wiegand-to-serial / ASCII badge reader on a serial line.

Theory of operation
-------------------
``run`` owns the line. It opens the device (or ``socket://`` URL), reports the reader online,
and feeds everything it reads into a fresh ``Decoder``; each frame becomes one event:
Wiegand / number / UID / EM4100 frames a ``CardRead``, keypad lines and 4/8-bit Wiegand keypad
bursts a ``KeypadRead``, and a ``BadFrame`` a ``ReaderAlarm("malformed")`` - never a card.
Malformed-frame alarms are rate-limited: the first one goes out at once, the next ones within
``alarm_interval_s`` are counted and reported together when the interval ends (or at stop),
so a noisy line cannot flood the journal and nothing is dropped without a trace.

When the line fails (a USB adapter pulled: the port read fails; a TCP peer closes), the
unfinished record is reported, the reader goes offline, and the driver reopens the line after a
full-jitter, capped ``Backoff`` delay. The backoff restarts from the base only after the line
stayed open for at least the cap, so a line that opens and drops at once (a device server that
accepts and hangs up) backs off instead of flapping online/offline several times a second.
Errors retrying cannot fix (permission denied, not a tty) raise a ``ReaderAlarm("config")``
once per distinct error and are retried at the cap; a bad URL fails at construction.

These converters have no LED or buzzer control, so ``indicate`` is a no-op (docs/readers.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from drivers.base import (
    CardFraming,
    CardRead,
    DriverEvent,
    EventSink,
    Indication,
    KeypadRead,
    ReaderAlarm,
    ReaderStatus,
)
from drivers.errors import DeviceConnectionError, DeviceError
from drivers.serial_reader.codec import (
    BadFrame,
    Decoder,
    Em4100Frame,
    Frame,
    Framing,
    NumberFrame,
    UidFrame,
    WiegandFrame,
    wiegand_key,
)
from drivers.transport.backoff import Backoff
from drivers.transport.serial_url import SerialUrl, open_serial_url, parse_serial_url

__all__ = ["SerialReaderBus", "SerialReaderBusConfig", "SerialReaderConfig", "frame_events"]

log = structlog.get_logger(__name__)

_READ_SIZE = 1024


class SerialReaderConfig(Protocol):
    """What the driver needs of its site settings (``SerialReaderBusSettings`` fits)."""

    @property
    def name(self) -> str:
        """Bus name."""
        ...

    @property
    def device(self) -> str:
        """Device path or ``socket://host:port``."""
        ...

    @property
    def baudrate(self) -> int:
        """Line speed (ignored for ``socket://``)."""
        ...

    @property
    def framing(self) -> str:
        """A ``Framing`` value."""
        ...


@dataclass(frozen=True, slots=True)
class SerialReaderBusConfig:
    """A plain SerialReaderConfig for tests and tools."""

    name: str
    device: str
    baudrate: int = 9600
    framing: str = "auto"


def frame_events(reader: str, frame: Frame) -> CardRead | KeypadRead | None:
    """The event a decoded frame stands for; None for a Wiegand keypad code that is invalid."""
    if isinstance(frame, WiegandFrame):
        if frame.bits in (4, 8):
            key = wiegand_key(frame)
            return KeypadRead(reader, key) if key is not None else None
        return CardRead(reader, CardFraming.WIEGAND, data=frame.data, bits=frame.bits)
    if isinstance(frame, NumberFrame):
        return CardRead(reader, CardFraming.NUMBER, text=frame.digits)
    if isinstance(frame, Em4100Frame):
        return CardRead(reader, CardFraming.NUMBER, text=frame.number)
    if isinstance(frame, UidFrame):
        return CardRead(reader, CardFraming.UID, data=frame.uid)
    return KeypadRead(reader, frame.keys)


class _AlarmLimiter:
    """At most one malformed-frame alarm per interval; the rest are counted and summarised."""

    def __init__(self, interval_s: float, clock: Callable[[], float]) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last = -float("inf")
        self.suppressed = 0
        self._last_reason = ""

    def hit(self, reason: str) -> bool:
        """Count a bad frame; True if it should be alarmed now."""
        now = self._clock()
        if now - self._last >= self.interval_s and not self.suppressed:
            self._last = now
            return True
        self.suppressed += 1
        self._last_reason = reason
        return False

    def due_in(self) -> float:
        """Seconds until the suppressed count may be reported."""
        return max(0.0, self._last + self.interval_s - self._clock())

    def take(self) -> tuple[int, str]:
        """Return and reset the suppressed count and the last suppressed reason."""
        count, reason = self.suppressed, self._last_reason
        self.suppressed = 0
        self._last = self._clock()
        return count, reason


class SerialReaderBus:
    """A serial converter reader line serving exactly one reader (CredentialReaderBus)."""

    def __init__(
        self,
        config: SerialReaderConfig,
        reader: str,
        sink: EventSink,
        *,
        backoff_initial_s: float = 0.25,
        backoff_max_s: float = 5.0,
        alarm_interval_s: float = 1.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = config.name
        self.readers: tuple[str, ...] = (reader,)
        self.reader = reader
        self.url: SerialUrl = parse_serial_url(config.device)  # ValueError: a config error
        self.baudrate = config.baudrate
        self.framing = Framing(config.framing)  # ValueError: a config error
        self._sink = sink
        self._backoff = Backoff(
            backoff_initial_s,
            backoff_max_s,
            rng or random.Random(),  # noqa: S311 - jitter, not crypto
        )
        self._clock = clock
        self._alarms = _AlarmLimiter(alarm_interval_s, clock)
        self._opened_at: float | None = None
        self._alarm_timer: asyncio.TimerHandle | None = None
        self._online: bool | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._config_error = ""
        self._closed = False
        self._log = log.bind(device=self.name, reader=reader)
        self.last_error = ""
        self.stats = {"bytes": 0, "cards": 0, "keys": 0, "malformed": 0, "opens": 0, "failures": 0}

    # -- public API ----------------------------------------------------------------------

    @property
    def online(self) -> bool:
        """True while the line is open."""
        return bool(self._online)

    async def run(self) -> None:
        """Serve the line until cancelled or closed, reopening it with backoff."""
        try:
            while not self._closed:
                try:
                    await self._session()
                    reason = "stopped"
                except DeviceConnectionError as exc:
                    reason = str(exc)
                    self._config_error = ""
                except DeviceError as exc:
                    reason = str(exc)
                    self._config_alarm(reason)
                    self._backoff.saturate()
                if self._closed:
                    break
                opened_at, self._opened_at = self._opened_at, None
                if opened_at is not None and self._clock() - opened_at >= self._backoff.cap_s:
                    self._backoff.reset()  # it was up for a while: not a flapping line
                self.last_error = reason
                self.stats["failures"] += 1
                self._set_online(False, reason)
                delay = self._backoff.next_delay()
                self._log.warning("reader line down", error=reason, retry_in_s=round(delay, 3))
                await asyncio.sleep(delay)
        finally:
            await self._drop_line()
            if self._alarm_timer is not None:
                self._alarm_timer.cancel()
            self._flush_alarms()
            self._set_online(False, "stopped")

    def indicate(self, reader: str, indication: Indication) -> None:
        """No-op: serial converter readers have no host-controlled LED or buzzer."""
        self._log.debug("indication not supported by serial readers", indication=indication.value)

    async def close(self) -> None:
        """Stop serving and release the line; idempotent (the owner also cancels ``run``)."""
        self._closed = True
        await self._drop_line()

    # -- internals -----------------------------------------------------------------------

    async def _session(self) -> None:
        reader, writer = await open_serial_url(self.url, baudrate=self.baudrate)
        self._writer = writer
        if self._closed:
            return
        decoder = Decoder(self.framing)
        self.stats["opens"] += 1
        self._opened_at = self._clock()
        self._config_error = ""
        self.last_error = ""
        self._set_online(True, str(self.url))
        self._log.info("reader line open", url=str(self.url), framing=self.framing.value)
        try:
            while not self._closed:
                try:
                    data = await reader.read(_READ_SIZE)
                except OSError as exc:  # SerialException (EIO on unplug), ECONNRESET
                    raise DeviceConnectionError(f"{self.url}: {exc}") from exc
                if not data:
                    raise DeviceConnectionError(f"{self.url}: line closed by the peer")
                self.stats["bytes"] += len(data)
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not None:
                    self._handle(frame)
        finally:
            tail = decoder.eof()
            if tail is not None and not self._closed:
                self._handle(tail)
            await self._drop_line()

    def _handle(self, frame: Frame | BadFrame) -> None:
        if isinstance(frame, BadFrame):
            self._malformed(frame.reason, frame.raw_prefix_len)
            return
        event = frame_events(self.reader, frame)
        if event is None:
            self._malformed("invalid wiegand keypad code", 0)
            return
        self.stats["cards" if isinstance(event, CardRead) else "keys"] += 1
        self._emit(event)

    def _malformed(self, reason: str, size: int) -> None:
        self.stats["malformed"] += 1
        if self._alarms.hit(reason):
            self._log.warning("malformed frame", reason=reason, bytes=size)
            detail = f"{reason} ({size} bytes)" if size else reason
            self._emit(ReaderAlarm(self.reader, "malformed", detail))
        elif self._alarm_timer is None:
            loop = asyncio.get_running_loop()
            self._alarm_timer = loop.call_later(self._alarms.due_in(), self._flush_alarms)

    def _flush_alarms(self) -> None:
        self._alarm_timer = None
        count, reason = self._alarms.take()
        if count:
            interval = self._alarms.interval_s
            self._log.warning("malformed frames", count=count, last_reason=reason)
            detail = f"{count} more malformed frame(s) within {interval:g} s (last: {reason})"
            self._emit(ReaderAlarm(self.reader, "malformed", detail))

    def _config_alarm(self, reason: str) -> None:
        if reason != self._config_error:
            self._config_error = reason
            self._log.error("reader line unusable", error=reason)
            self._emit(ReaderAlarm(self.reader, "config", reason))

    def _set_online(self, online: bool, detail: str) -> None:
        if online is self._online or (not online and self._online is None and self._closed):
            return
        self._online = online
        self._emit(ReaderStatus(self.reader, online=online, secure=None, detail=detail))

    def _emit(self, event: DriverEvent) -> None:
        self._sink(event)

    async def _drop_line(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(2.0):
                await writer.wait_closed()
