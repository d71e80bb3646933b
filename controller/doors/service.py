"""DoorService: feeds driver events and commands through each door's machine and drives relays.

The service is the only writer of relay commands. After every step it compares the machine's
``desired_relay`` with what it last sent and, if different, commands the board; commands
issued in the same event-loop turn reach a board as one FC15. Journal records are handed to a
non-blocking recorder, so the command path never waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import structlog

from controller.doors.machine import (
    COMMANDS,
    Command,
    ContactChanged,
    DoorEvent,
    DoorSpec,
    DoorState,
    Hold,
    InputsLinkChanged,
    LinkChanged,
    Phase,
    Record,
    RelayRead,
    RexChanged,
    TamperChanged,
    Tick,
    desired_relay,
    lock_state,
    next_deadline,
    observe_relay,
    phase_record,
    transition,
)
from controller.errors import CommandError
from controller.journal import format_ts
from controller.settings import DoorSettings, InputRef, Settings
from drivers.base import (
    CoilsRead,
    DeviceFault,
    DriverEvent,
    InputsRead,
    LinkState,
    RelayBoard,
    WriteOutcome,
)
from drivers.base import LinkChanged as BoardLinkChanged

log = structlog.get_logger(__name__)


class Recorder(Protocol):
    """Where journal records go (controller.journal.JournalWriter); must not block."""

    def record(
        self, kind: str, *, door: str | None = None, device: str | None = None, **data: Any
    ) -> None:
        """Enqueue one record."""
        ...

    def record_many(
        self,
        events: Iterable[tuple[str, str | None, str | None, Mapping[str, Any]]],
        *,
        ts: str | None = None,
    ) -> None:
        """Enqueue ``(kind, door, device, data)`` records in order, stamped ``ts`` (or now)."""
        ...


class CommandResult(NamedTuple):
    """Outcome of a door command once the board has read the relay back (or not)."""

    door: str
    action: str
    confirmed: bool
    phase: str
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON form for the control API."""
        return {
            "door": self.door,
            "action": self.action,
            "confirmed": self.confirmed,
            "phase": self.phase,
            "error": self.error,
        }


@dataclass(slots=True)
class _Door:
    settings: DoorSettings
    spec: DoorSpec
    state: DoorState = field(default_factory=DoorState)
    commanded: bool | None = None
    outcome: asyncio.Future[WriteOutcome] | None = None
    # plain copies of spec.name and settings.relay, read on every step
    name: str = field(init=False)
    board: str = field(init=False)
    coil: int = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.spec.name
        self.board = self.settings.relay.board
        self.coil = self.settings.relay.coil


_PHASE = {p: p.value for p in Phase}
SETTLE_WITHIN_S = 0.02
"""A batch's records wait for its readbacks at most this long before being journaled."""
_Row = tuple[str, str | None, str | None, Mapping[str, Any]]  # (kind, door, device, data)


class _Step(NamedTuple):
    """A door's step in a batch, kept until its records are journaled (``settle``)."""

    door: _Door
    before: DoorState
    after: DoorState
    effects: list[Record]


def _verdict(fut: asyncio.Future[WriteOutcome]) -> tuple[bool, str, frozenset[int]]:
    """(confirmed, error, mismatched coils) of a relay command's future after the wait."""
    if not fut.done():
        return False, "board did not confirm in time; the command stays queued", frozenset()
    if fut.cancelled():
        return False, "command cancelled", frozenset()
    outcome = fut.result()
    return outcome.ok, outcome.error, outcome.mismatched


def spec_from_settings(d: DoorSettings) -> DoorSpec:
    """Machine spec of a configured door."""
    return DoorSpec(
        name=d.name,
        lock=d.lock.value,
        pulse_s=d.pulse_s,
        held_open_s=d.held_open_s,
        rex_unlocks=d.rex_unlocks,
        rex_pulse_s=d.rex_pulse_s,
        egress=d.egress,
    )


class DoorService:
    """Every door of the site: state machines, relay reconciliation, status."""

    def __init__(
        self,
        settings: Settings,
        boards: Mapping[str, RelayBoard],
        recorder: Recorder,
        *,
        clock: Callable[[], float] = time.monotonic,
        command_timeout_s: float = 2.0,
    ) -> None:
        self._settings = settings
        self._boards = dict(boards)
        self._recorder = recorder
        self._clock = clock
        self._timeout = command_timeout_s
        self._doors: dict[str, _Door] = {}
        self._by_coil: dict[tuple[str, int], _Door] = {}
        self._coils_of: dict[str, list[tuple[int, _Door]]] = {}
        self._by_input: dict[tuple[str, int], tuple[_Door, str, InputRef]] = {}
        self._board_links: dict[str, LinkState] = dict.fromkeys(boards, LinkState.DISCONNECTED)
        self._board_faults: dict[str, str] = {}
        self._deadlines: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self._frozen = False  # set at shutdown: relays stay in their fail state
        self._batch: list[_Door] | None = None
        self._batch_steps: list[_Step] = []
        self._unsettled: list[tuple[str, list[_Step]]] = []  # (batch time, steps) to journal
        self._in_flight = 0  # group commands waiting for their readbacks
        self._settle_timer: asyncio.TimerHandle | None = None
        self._input_listeners: dict[tuple[str, int], Callable[[bool, float], None]] = {}
        self._readback_at: dict[str, float] = {}  # door -> when a readback last arrived
        # doors with inputs on a board that does not carry their relay: that board's link
        # supervises those inputs (InputsLinkChanged: door, contact there?, REX there?)
        self._inputs_only_on: dict[str, list[tuple[_Door, bool, bool]]] = {}
        self._input_boards_down: dict[str, set[str]] = {}  # door -> its input boards away
        for d in settings.doors:
            door = _Door(d, spec_from_settings(d))
            self._doors[d.name] = door
            self._by_coil[(d.relay.board, d.relay.coil)] = door
            self._coils_of.setdefault(d.relay.board, []).append((d.relay.coil, door))
            input_boards: set[str] = set()
            for role in ("contact", "rex", "tamper"):
                ref: InputRef | None = getattr(d, role)
                if ref is not None:
                    self._by_input[(ref.board, ref.input)] = (door, role, ref)
                    if ref.board != d.relay.board:
                        input_boards.add(ref.board)
            for board in sorted(input_boards):
                contact_here = d.contact is not None and d.contact.board == board
                rex_here = d.rex is not None and d.rex.board == board
                self._inputs_only_on.setdefault(board, []).append((door, contact_here, rex_here))

    # -- queries ---------------------------------------------------------------------------

    @property
    def door_names(self) -> list[str]:
        """Configured doors, in file order."""
        return list(self._doors)

    def state(self, name: str) -> DoorState:
        """Current machine state of a door (KeyError if unknown)."""
        return self._doors[name].state

    def board_link(self, board: str) -> LinkState:
        """Last reported link state of a board."""
        return self._board_links[board]

    def status(self) -> list[dict[str, Any]]:
        """One JSON-able row per door for wardctl status."""
        now = self._clock()
        rows = []
        for door in self._doors.values():
            s = door.state
            alarms = [
                a
                for a, on in (
                    ("forced-open", s.forced),
                    ("held-open", s.held),
                    ("tamper", s.tamper),
                )
                if on
            ]
            rows.append(
                {
                    "door": door.name,
                    "zone": door.settings.zone,
                    "state": s.phase.value,
                    "intent": s.intent.value,
                    "lock": lock_state(door.spec, s),
                    "lock_type": door.spec.lock,
                    "contact": s.contact.value,
                    "rex": s.rex,
                    "alarms": alarms,
                    "faults": sorted(f.value for f in s.faults),
                    "fault_detail": s.fault_detail if s.faults else "",
                    "board": door.board,
                    "link": self._board_links[door.board].value,
                    "pulse_remaining_s": (
                        round(max(0.0, s.pulse_until - now), 1) if s.pulse_until else None
                    ),
                }
            )
        return rows

    def watch_input(self, board: str, index: int, listener: Callable[[bool, float], None]) -> None:
        """Call ``listener(raw_value, now)`` whenever a non-door input changes (panic, fire)."""
        self._input_listeners[(board, index)] = listener

    def add_listener(self, listener: Callable[[str, dict[str, Any]], None]) -> None:
        """Call ``listener(kind, data)`` on every record (live views, MQTT later)."""
        self._listeners.append(listener)

    # -- inputs from drivers ---------------------------------------------------------------

    def on_driver_event(self, event: DriverEvent) -> None:
        """Dispatch one driver event to the doors it concerns."""
        now = self._clock()
        match event:
            case InputsRead(device=board, values=values, changed=changed):
                for index in sorted(changed):
                    watcher = self._input_listeners.get((board, index))
                    if watcher is not None:
                        watcher(values[index], now)
                    hit = self._by_input.get((board, index))
                    if hit is None:
                        continue
                    door, role, ref = hit
                    active = values[index] != ref.invert
                    if role == "contact":
                        self._apply(door, ContactChanged(active, now))
                    elif role == "rex":
                        self._apply(door, RexChanged(active, now))
                    else:
                        self._apply(door, TamperChanged(active, now))
            case CoilsRead(device=board, values=values, mismatched=mismatched, pending=pending):
                readback_at = self._readback_at
                for coil, door in self._coils_of.get(board, ()):
                    if coil in pending:
                        # read before the command queued for it: the command's own readback
                        # answers (a poll must not, say, end a relay-fault probe)
                        continue
                    if coil < len(values):
                        energised, bad = values[coil], coil in mismatched
                        s = door.state
                        if s.relay is energised and not bad and not s.faults:
                            # nothing new; and a value this report may have merged from an
                            # older read must not count as a fresh readback (lockdown checks)
                            continue
                        readback_at[door.name] = now
                        seen = observe_relay(s, energised, bad)
                        if seen is None:
                            self._apply(door, RelayRead(energised, bad, now))
                        else:
                            door.state = seen  # a plain observation: nothing else to do
            case BoardLinkChanged(device=board, state=state, reason=reason):
                previous = self._board_links.get(board)
                self._board_links[board] = state
                if state is LinkState.CONNECTING:
                    return
                up = state is LinkState.UP
                was_up = previous is LinkState.UP
                if up != was_up or previous is LinkState.DISCONNECTED:
                    self._record("board.link", device=board, state=state.value, reason=reason)
                if self._frozen:
                    return  # shutting down: drivers closing is not a door fault
                for _, door in self._coils_of.get(board, ()):
                    self._apply(door, LinkChanged(up, now, reason))
                for door, contact, rex in self._inputs_only_on.get(board, ()):
                    down = self._input_boards_down.setdefault(door.name, set())
                    if up:
                        down.discard(board)
                        if down:
                            continue  # another of its input boards is still away
                    else:
                        down.add(board)
                    detail = f"input board {board}: {reason}" if reason else f"input board {board}"
                    self._apply(door, InputsLinkChanged(up, now, detail, contact, rex))
            case DeviceFault(device=board, kind=kind, detail=detail):
                self._board_faults[board] = detail
                self._record("board.fault", device=board, fault=kind, detail=detail)

    # -- commands --------------------------------------------------------------------------

    def door(self, name: str) -> DoorSettings:
        """Settings of a door; CommandError if there is no such door."""
        try:
            return self._doors[name].settings
        except KeyError:
            raise CommandError(f"unknown door {name!r}") from None

    async def command(
        self,
        name: str,
        action: str,
        *,
        duration_s: float | None = None,
        source: str = "api",
        override: bool = False,
    ) -> CommandResult:
        """Command one door and wait (bounded) for the relay readback."""
        results = await self.command_many(
            [name], action, duration_s=duration_s, source=source, override=override
        )
        return results[0]

    def hold(self, holds: Mapping[str, tuple[bool, bool, bool]]) -> None:
        """Apply the lockdown layer's (secured, fire, evacuate) to the named doors at once."""
        now = self._clock()
        with self._batched():
            for name, (secured, fire, evacuate) in holds.items():
                door = self._doors.get(name)
                if door is not None:
                    self._apply(door, Hold(secured, fire, evacuate, now))

    def reassert(self, names: Iterable[str]) -> None:
        """Write the named doors' relays again even if nothing changed (drift correction)."""
        with self._batched():
            for name in names:
                door = self._doors[name]
                door.commanded = None
                self._sync_relay(door)

    def spec(self, name: str) -> DoorSpec:
        """The machine spec of a door."""
        return self._doors[name].spec

    def outcome(self, name: str) -> asyncio.Future[WriteOutcome] | None:
        """The latest relay command's pending outcome for a door, if any."""
        return self._doors[name].outcome

    async def command_many(
        self,
        names: Iterable[str],
        action: str,
        *,
        duration_s: float | None = None,
        source: str = "api",
        override: bool = False,
    ) -> list[CommandResult]:
        """Command several doors at once (one FC15 per board) and wait for the readbacks."""
        if action not in COMMANDS:
            raise CommandError(f"unknown action {action!r}; expected one of {sorted(COMMANDS)}")
        if duration_s is not None and not 0 < duration_s <= 3600:
            raise CommandError("duration must be between 0 and 3600 seconds")
        doors = []
        for name in names:
            self.door(name)
            doors.append(self._doors[name])
        now = self._clock()
        extra: dict[str, Any] = {"override": True} if override else {}
        if len(doors) == 1:
            self._record(
                "door.command",
                door=doors[0].name,
                action=action,
                duration_s=duration_s,
                source=source,
                **extra,
            )
        else:  # one record for a group command (a lock-all): the fan-out stays light
            self._record(
                "door.command",
                doors=[d.name for d in doors],
                action=action,
                duration_s=duration_s,
                source=source,
                **extra,
            )
        group = len(doors) > 1  # a fan-out: its records wait for its readbacks (see _batched)
        earlier = [d.outcome for d in doors]
        self._in_flight += group
        try:
            refused = self._step_all(doors, Command(action, now, duration_s, override))
            results = await self._confirm_all(doors, action, earlier)
        finally:
            self._in_flight -= group
            if self._unsettled and not self._in_flight:
                self._loop_settle(soon=True)
        if not refused:
            return results
        return [
            CommandResult(
                r.door, r.action, False, r.phase, "held by a lockdown (an override is needed)"
            )
            if r.door in refused
            else r
            for r in results
        ]

    def _step_all(self, doors: list[_Door], command: Command) -> set[str]:
        """Apply ``command`` to every door in one batch; return the doors a lockdown refused.

        Synchronous on purpose: every relay change goes out at once (one FC15 per board).
        Yielding between boards to send each board's write earlier was measured slower: the
        extra loop turns cost more than the overlap gained.
        """
        refusing = command.action != "lock" and not command.override
        refused: set[str] = set()
        with self._batched():
            for door in doors:
                if refusing and door.state.secured:
                    refused.add(door.name)
                self._apply(door, command)
        return refused

    async def _confirm_all(
        self,
        doors: list[_Door],
        action: str,
        earlier: list[asyncio.Future[WriteOutcome] | None],
    ) -> list[CommandResult]:
        """Wait (bounded) for every door's readback with one wait, then report each.

        ``earlier``: each door's outcome before this command. A door whose relay needed no new
        write is judged by its state now (its last readback), not by an old write's answer -
        unless that write is still on its way, which then answers this command too.
        """
        pending = {d.outcome for d in doors if d.outcome is not None and not d.outcome.done()}
        if pending:
            await asyncio.wait(pending, timeout=self._timeout)
        # a group shares one future per board: judge each future once, then each door
        verdicts: dict[int, tuple[bool, str, frozenset[int]]] = {}
        results = []
        for door, before in zip(doors, earlier, strict=True):
            s = door.state
            fut = door.outcome
            if fut is before and fut not in pending:
                fut = None  # no write for this command and none in flight: judge the door
            if fut is None:
                confirmed = s.link_up and s.relay == desired_relay(door.spec, s)
                error = "" if confirmed else s.fault_detail or "not confirmed"
            else:
                verdict = verdicts.get(id(fut))
                if verdict is None:
                    verdict = verdicts[id(fut)] = _verdict(fut)
                confirmed, error, mismatched = verdict
                if mismatched:  # judged per door: only its own coil counts
                    confirmed = door.coil not in mismatched and not error
                    if not confirmed and not error:
                        error = "relay readback mismatch"
            results.append(CommandResult(door.name, action, confirmed, _PHASE[s.phase], error))
        return results

    async def apply_fail_state(
        self, timeout_s: float, *, keep_locked: frozenset[str] = frozenset()
    ) -> dict[str, bool]:
        """De-energise every door relay (each lock's power-loss state); wait for readback.

        Doors in ``keep_locked`` (held by a lockdown) are left locked instead, so a restart
        never releases a fail-safe door that a lockdown holds. A door released for life
        safety (fire, evacuation) stays released whatever else holds it: a stop or restart
        during a fire must not lock the way out.
        """
        self.settle()
        self._frozen = True
        futures: dict[str, asyncio.Future[WriteOutcome]] = {}
        released: set[str] = set()
        for door in self._doors.values():
            board = self._boards[door.board]
            if door.state.released:
                released.add(door.name)
                value = door.spec.relay_for(True)
            elif door.name in keep_locked:
                value = door.spec.relay_for(False)
            else:
                value = False
            door.commanded = value
            futures[door.name] = board.command({door.coil: value})
        done: dict[str, bool] = {}
        if futures:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*futures.values(), return_exceptions=True), timeout_s
                )
        for name, fut in futures.items():
            ok = fut.done() and not fut.cancelled() and fut.result().ok
            done[name] = ok
            self._record(
                "door.safe",
                door=name,
                confirmed=ok,
                held_locked=name in keep_locked and name not in released,
                released=name in released,
            )
        return done

    def assert_all(self) -> list[asyncio.Future[WriteOutcome]]:
        """Command every door's desired relay now (start-up); return the pending outcomes."""
        self.reassert(self._doors)  # one command per board
        futures = {id(d.outcome): d.outcome for d in self._doors.values() if d.outcome}
        return list(futures.values())

    # -- the tick loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver Ticks at each door's next deadline, until cancelled."""
        while True:
            now = self._clock()
            due = [n for n, t in self._deadlines.items() if t <= now]
            for name in due:
                self._apply(self._doors[name], Tick(now))
            nxt = min(self._deadlines.values(), default=None)
            timeout = None if nxt is None else max(0.0, nxt - self._clock())
            self._wake.clear()
            if timeout is None:
                await self._wake.wait()
            elif timeout > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
            else:
                await asyncio.sleep(0)  # never spin without yielding, whatever the deadlines

    # -- internals -------------------------------------------------------------------------

    def _record(self, kind: str, *, door: str | None = None, **data: Any) -> None:
        device = data.pop("device", None)
        if self._unsettled:
            self.settle()  # keep the journal in order
        self._recorder.record(kind, door=door, device=device, **data)
        self._notify(kind, door, device, data)

    def _notify(
        self, kind: str, door: str | None, device: str | None, data: Mapping[str, Any]
    ) -> None:
        """Tell the listeners; one that fails is logged, never allowed to break a door."""
        if not self._listeners:
            return
        full = dict(data)
        if door is not None:
            full["door"] = door
        if device is not None:
            full["device"] = device
        for listener in self._listeners:
            try:
                listener(kind, full)
            except Exception:  # a live view or a schedule must never stop the doors
                log.exception("door record listener failed", kind=kind, door=door)

    def readback_at(self, name: str) -> float:
        """When the door's relay was last read back (monotonic; -inf if never)."""
        return self._readback_at.get(name, float("-inf"))

    def _apply(self, door: _Door, event: DoorEvent) -> None:
        before = door.state
        effects: list[Record] = []
        state = transition(door.spec, before, event, effects)
        if state.probing and not before.probing:
            door.commanded = None  # a probe always writes, so its readback answers it
        door.state = state
        deadline = next_deadline(door.spec, state)
        if deadline != self._deadlines.get(door.name):
            if deadline is None:
                del self._deadlines[door.name]
            else:
                self._deadlines[door.name] = deadline
            self._wake.set()
        if self._batch is not None:
            # in a batch the relays are sent first; the records follow (see _batched)
            self._batch.append(door)
            self._batch_steps.append(_Step(door, before, state, effects))
            return
        for kind, data in self._step_records(door, before, state, effects):
            self._record(kind, door=door.name, **data)  # (settles an earlier batch first)
        self._sync_relay(door)

    @staticmethod
    def _step_records(
        door: _Door, before: DoorState, after: DoorState, effects: list[Record]
    ) -> list[Record]:
        """A step's records, its ``door.state`` included; active alarms are also logged."""
        record = phase_record(before, after)
        if record is not None:
            effects.append(record)
        for kind, data in effects:
            if kind == "door.alarm" and data.get("active"):
                log.warning("door alarm", door=door.name, **data)
        return effects

    def settle(self) -> None:
        """Journal every batch step still waiting, stamped with its batch's time (idempotent)."""
        if self._settle_timer is not None:
            self._settle_timer.cancel()
            self._settle_timer = None
        batches, self._unsettled = self._unsettled, []
        journaled: list[_Row] = []
        for ts, steps in batches:
            rows: list[_Row] = [
                (kind, door.name, None, data)
                for door, before, after, effects in steps
                for kind, data in self._step_records(door, before, after, effects)
            ]
            if rows:
                self._recorder.record_many(rows, ts=ts)
                journaled += rows
        for kind, door_name, device, data in journaled:  # listeners only once all are journaled
            self._notify(kind, door_name, device, data)

    def _loop_settle(self, *, soon: bool) -> None:
        """Have ``settle`` run on the next loop turn (``soon``) or within SETTLE_WITHIN_S."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a synchronous caller): settle now
            self.settle()
            return
        if soon:
            loop.call_soon(self.settle)
        elif self._settle_timer is None:
            self._settle_timer = loop.call_later(SETTLE_WITHIN_S, self.settle)

    def _sync_relay(self, door: _Door) -> None:
        if self._frozen:
            return
        if self._batch is not None:
            self._batch.append(door)  # sent together by _flush_batch
            return
        self._flush_batch([door])

    @contextlib.contextmanager
    def _batched(self) -> Iterator[None]:
        """Within the block, relay changes are collected and sent as one command per board.

        The journal stays off the command path: the batch's records, stamped with the time
        of the batch, are journaled (``settle``) after the boards' tasks, woken by the
        batch, have sent their writes - while a group command waits for its readbacks, once
        they are in, and at most SETTLE_WITHIN_S later. Whatever records or steps a door
        outside a batch settles the waiting records first, and so does a journal flush: the
        door service's records keep their order and a reader never misses one. Components
        that journal directly (lockdown runner, access service) may land a record before a
        group's records; the timestamps tell the true order.
        """
        if self._batch is not None:
            yield
            return
        self._batch = []
        ts = format_ts()  # the moment of the batch: its records carry it, whenever written
        try:
            yield
        finally:
            doors, self._batch = self._batch, None
            steps, self._batch_steps = self._batch_steps, []
            try:
                self._flush_batch(doors)
            finally:
                if steps:
                    self._unsettled.append((ts, steps))
                    # a group command journals its steps once its readbacks are in (or by
                    # the deadline); anything else on the next loop turn, after the writes
                    self._loop_settle(soon=not self._in_flight)

    def _flush_batch(self, doors: list[_Door]) -> None:
        if self._frozen:
            return
        per_board: dict[str, list[tuple[_Door, bool, int]]] = {}
        for door in doors:
            want = desired_relay(door.spec, door.state)
            if want is door.commanded:
                continue  # unchanged, or a door listed twice (its first entry sent it)
            door.commanded = want
            members = per_board.get(door.board)
            if members is None:
                members = per_board[door.board] = []
            members.append((door, want, door.coil))
        for board, members in per_board.items():
            fut = self._boards[board].command({coil: want for _, want, coil in members})
            for door, _, _ in members:
                door.outcome = fut
            fut.add_done_callback(functools.partial(self._on_outcomes, members))

    def _on_outcomes(
        self, members: list[tuple[_Door, bool, int]], fut: asyncio.Future[WriteOutcome]
    ) -> None:
        """A board answered a batched command: apply its readback to each door it carried."""
        if fut.cancelled():
            return
        outcome = fut.result()
        if outcome.error:
            return  # link trouble is reported through LinkChanged
        bad = outcome.mismatched
        now = self._clock()
        readback_at = self._readback_at
        for door, want, coil in members:
            if door.outcome is not fut:
                continue  # a newer command for this door is on its way
            mismatched = coil in bad
            energised = want is not mismatched
            readback_at[door.name] = now
            seen = observe_relay(door.state, energised, mismatched)
            if seen is None:
                self._apply(door, RelayRead(energised, mismatched, now))
            else:
                door.state = seen  # confirmed; nothing else changes
