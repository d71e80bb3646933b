"""ModbusRelayBoard: one relay/IO board supervised over a ModbusLink.

Theory of operation
-------------------
The board keeps ``desired``: the value the controller last commanded for every coil it owns.
One task (``run``) owns all traffic to the board, so writes and polls never interleave:

* connect (with full-jitter backoff, capped), then *sync*: read coils and inputs, and
  re-assert every owned coil whose readback differs from ``desired`` (a board that
  rebooted or was power-cycled gets its relays back), then report the link UP;
* then loop: pending commands are written first - all changes queued in the same event-loop
  turn go out in one FC15 covering their span, immediately read back (FC1) and each
  command's future resolves with what the readback confirmed or contradicted; otherwise, at
  every poll interval, read inputs (FC2) and coils (FC1), report input changes and coils
  that disagree with ``desired`` (a stuck relay, or someone else writing the board).
* a failed transaction is retried at once up to ``max_failures`` times in a row (one lost
  reply must not fault every door on the board); after that, or on a connection error, the
  link is reported down, waiters are told, and we back off. ``desired`` survives, so the
  relays are re-asserted on the next connect. Losing or regaining the link never changes
  what is commanded.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import structlog

from drivers.base import (
    CoilsRead,
    DeviceFault,
    EventSink,
    InputsRead,
    LinkChanged,
    LinkState,
    WriteOutcome,
)
from drivers.errors import (
    DeviceConnectionError,
    DeviceError,
    DeviceProtocolError,
    DeviceTimeoutError,
)
from drivers.modbus.link import ModbusEndpoint, ModbusLink
from drivers.transport.backoff import Backoff

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class BoardConfig:
    """Driver-level settings of one board (the controller converts its site settings)."""

    name: str
    endpoint: ModbusEndpoint
    unit_id: int = 1
    coils: int = 16
    inputs: int = 16
    timeout_s: float = 0.5
    poll_interval_s: float = 0.05
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0
    max_failures: int = 3


@dataclass(slots=True)
class _Waiter:
    coils: frozenset[int]
    future: asyncio.Future[WriteOutcome]


class ModbusRelayBoard:
    """A Modbus relay/IO board: batched coil commands with readback, input polling."""

    def __init__(
        self,
        config: BoardConfig,
        link: ModbusLink,
        sink: EventSink,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self._link = link
        self._sink = sink
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not crypto
        self._backoff = Backoff(config.backoff_initial_s, config.backoff_max_s, self._rng)
        self._state = LinkState.DISCONNECTED
        self._desired: dict[int, bool] = {}
        self._pending: dict[int, bool] = {}
        self._waiters: list[_Waiter] = []
        self._wake = asyncio.Event()
        self._coils: tuple[bool, ...] | None = None
        self._inputs: tuple[bool, ...] | None = None
        self._mismatched: frozenset[int] = frozenset()
        self._reported: tuple[bool, ...] | None = None
        self._failures = 0
        self._cut_last = False  # the last poll skipped its coil read for a write
        self._closed = False
        self.last_error = ""
        self.stats = {"fc15": 0, "fc5": 0, "polls": 0, "polls_cut": 0, "reconnects": 0}

    # -- public API ----------------------------------------------------------------------

    @property
    def link(self) -> LinkState:
        """Current link state."""
        return self._state

    @property
    def desired(self) -> Mapping[int, bool]:
        """What every owned coil is commanded to be."""
        return dict(self._desired)

    @property
    def coils(self) -> tuple[bool, ...] | None:
        """Last coil readback, or None before the first successful read."""
        return self._coils

    @property
    def inputs(self) -> tuple[bool, ...] | None:
        """Last input read, or None before the first successful read."""
        return self._inputs

    def command(self, coils: Mapping[int, bool]) -> asyncio.Future[WriteOutcome]:
        """Queue coil values; all commands of one loop turn share one FC15; resolves on readback."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[WriteOutcome] = loop.create_future()
        if coils and (min(coils) < 0 or max(coils) >= self.config.coils):
            bad = next(c for c in coils if not 0 <= c < self.config.coils)
            fut.set_result(WriteOutcome(frozenset(), frozenset(coils), f"coil {bad} out of range"))
            return fut
        if self._closed:
            fut.set_result(WriteOutcome(frozenset(), frozenset(coils), "board closed"))
            return fut
        self._pending.update(coils)
        self._desired.update(coils)
        self._waiters.append(_Waiter(frozenset(coils), fut))
        self._wake.set()
        return fut

    async def run(self) -> None:
        """Supervise the link until cancelled."""
        try:
            while not self._closed:
                try:
                    await self._connect_and_sync()
                    await self._serve()
                except DeviceError as exc:
                    await self._link_down(exc)
        finally:
            self._set_state(LinkState.CLOSED, "stopped")
            self._fail_waiters("board stopped")

    async def close(self) -> None:
        """Stop using the link; idempotent (the owner cancels ``run``)."""
        self._closed = True
        self._wake.set()
        self._link.reset()

    # -- internals -----------------------------------------------------------------------

    def _set_state(self, state: LinkState, reason: str = "") -> None:
        if state is self._state:
            return
        self._state = state
        self._sink(LinkChanged(self.name, state, reason))

    async def _connect_and_sync(self) -> None:
        self._set_state(LinkState.CONNECTING)
        await self._link.connect()
        unit = self.config.unit_id
        coils = await self._link.read_coils(unit, 0, self.config.coils)
        self._store_coils(coils, report=False)
        await self._read_inputs()
        stale = {c: v for c, v in self._desired.items() if coils[c] != v}
        stale.update(self._pending)
        self._pending.clear()
        if stale:
            log.info("reasserting relays", board=self.name, coils=sorted(stale))
            await self._write(stale)
        self._failures = 0
        self._backoff.reset()
        self.last_error = ""
        self._set_state(LinkState.UP)
        # after UP: the doors judge this readback over a live link, so a relay that stuck
        # while the board was away (a mismatch even after re-asserting) faults its door now
        self._report_coils(force=True)

    async def _serve(self) -> None:
        interval = self.config.poll_interval_s
        # a random phase: boards that connected together do not all poll at the same instant
        next_poll = time.monotonic() + interval * self._rng.random()
        while not self._closed:
            if not self._pending:
                timeout = next_poll - time.monotonic()
                if timeout > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout):
                            await self._wake.wait()
            self._wake.clear()
            try:
                if self._pending:
                    batch, self._pending = self._pending, {}
                    try:
                        await self._write(batch)
                    except DeviceError:
                        for coil, value in batch.items():
                            self._pending.setdefault(coil, value)
                        raise
                    self._report_coils(answered=batch.keys())
                if time.monotonic() >= next_poll:
                    await self._poll()
                    # fixed rate: an input change waits at most one interval for its poll
                    next_poll += interval
                    now = time.monotonic()
                    if next_poll <= now:
                        next_poll = now + interval  # fell behind (slow board): no burst
                self._failures = 0
            except (DeviceTimeoutError, DeviceProtocolError) as exc:
                self._failures += 1
                self.last_error = str(exc)
                kind = "timeout" if isinstance(exc, DeviceTimeoutError) else "protocol"
                if isinstance(exc, DeviceProtocolError) and exc.code is not None:
                    kind = "exception"
                self._sink(DeviceFault(self.name, kind, str(exc)))
                if self._failures >= self.config.max_failures:
                    raise
                if isinstance(exc, DeviceTimeoutError) and self.config.endpoint.kind == "tcp":
                    # a reply that arrives late would be matched by transaction id, but a
                    # half-dead TCP connection is better replaced
                    self._link.reset()
                    await self._link.connect()

    async def _poll(self) -> None:
        self.stats["polls"] += 1
        await self._read_inputs()
        if self._pending and not self._cut_last:
            # a write arrived meanwhile: it goes first, and its readback reads the coils it
            # writes; the others are read at the next poll (never two polls cut in a row, so
            # drift on any coil is seen within two intervals whatever the write rate)
            self.stats["polls_cut"] += 1
            self._cut_last = True
            return
        self._cut_last = False
        coils = await self._link.read_coils(self.config.unit_id, 0, self.config.coils)
        self._store_coils(coils, report=True)

    async def _read_inputs(self) -> None:
        values = await self._link.read_inputs(self.config.unit_id, 0, self.config.inputs)
        previous = self._inputs
        self._inputs = values
        if previous is None:
            self._sink(InputsRead(self.name, values, frozenset(range(len(values)))))
        elif values != previous:
            changed = frozenset(
                i for i, (a, b) in enumerate(zip(values, previous, strict=True)) if a != b
            )
            self._sink(InputsRead(self.name, values, changed))

    async def _write(self, batch: Mapping[int, bool]) -> None:
        lo, hi = min(batch), max(batch)
        current = self._coils or (False,) * self.config.coils
        desired = self._desired
        # the batch's values; between them, what we command, else what the board has
        span = [batch[c] if c in batch else desired.get(c, current[c]) for c in range(lo, hi + 1)]
        self.stats["fc15" if len(span) > 1 else "fc5"] += 1
        readback = await self._link.write_and_read_coils(self.config.unit_id, lo, span)
        merged = list(current)
        merged[lo : hi + 1] = readback
        self._coils = tuple(merged)
        self._resolve_waiters()

    def _resolve_waiters(self) -> None:
        coils = self._coils or ()
        n = len(coils)
        pending = self._pending
        # coils whose readback disagrees with what we command (once, for every waiter)
        wrong = {c for c, v in self._desired.items() if c >= n or coils[c] != v}
        still: list[_Waiter] = []
        for w in self._waiters:
            if pending and not w.coils.isdisjoint(pending):
                still.append(w)  # a newer value for one of its coils is queued
                continue
            if w.future.done():
                continue
            bad = w.coils & wrong
            w.future.set_result(WriteOutcome(w.coils - bad, bad))
        self._waiters = still

    def _fail_waiters(self, reason: str) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.future.done():
                w.future.set_result(WriteOutcome(frozenset(), w.coils, reason))

    def _store_coils(self, coils: tuple[bool, ...], *, report: bool) -> None:
        self._coils = coils
        if report:
            self._report_coils()

    def _report_coils(
        self, *, force: bool = False, answered: AbstractSet[int] = frozenset()
    ) -> None:
        """Emit CoilsRead when the coils or the mismatches changed.

        ``answered``: coils whose readback the write's futures just delivered; a change in
        those alone is not reported again (a lock-all would otherwise be handled twice) -
        unless some coil disagrees with its command: then every change is reported.
        """
        coils = self._coils
        if coils is None:
            return
        mismatched = frozenset(
            c for c, v in self._desired.items() if c not in self._pending and coils[c] != v
        )
        if not force and mismatched == self._mismatched and not mismatched:
            before = self._reported
            if coils == before:
                return
            if before is not None and all(
                c in answered for c, (a, b) in enumerate(zip(coils, before, strict=True)) if a != b
            ):
                self._reported = coils
                return
        self._mismatched = mismatched
        self._reported = coils
        self._sink(CoilsRead(self.name, coils, mismatched, frozenset(self._pending)))

    def _must_reset(self, exc: DeviceError) -> bool:
        """Whether losing this board calls for reopening its link.

        A TCP link is this board's alone. An RTU line may carry other units: one silent unit
        must not take the line from its healthy neighbours, so a timeout reopens the port
        only when no unit on it has answered for a while (a wedged adapter, a cut line).
        """
        if isinstance(exc, DeviceConnectionError):
            return True
        if not isinstance(exc, DeviceTimeoutError):
            return False
        if self.config.endpoint.kind == "tcp":
            return True
        quiet_s = self.config.max_failures * self.config.timeout_s + self.config.poll_interval_s
        return self._link.silent_for_s() > quiet_s

    async def _link_down(self, exc: DeviceError) -> None:
        self.last_error = str(exc)
        if self._must_reset(exc):
            self._link.reset()
        self._fail_waiters(str(exc))
        # unknown until read again: the first read after reconnecting then reports every
        # input, so a door that opened or closed while the link was away is seen (its
        # contact went unknown with the link) and a held-open timer or a relock on close
        # still works
        self._inputs = None
        self.stats["reconnects"] += 1
        self._set_state(LinkState.BACKOFF, str(exc))
        delay = self._backoff.next_delay()
        log.warning("board link down", board=self.name, error=str(exc), retry_in_s=round(delay, 3))
        await asyncio.sleep(delay)
