"""Pure per-door state machine: ``step(spec, state, event) -> (state, effects)``; no I/O.

Theory of operation
-------------------
A door is described by what the controller *intends* (locked, unlocked, or a timed pulse) and
what it *observes* (contact, REX, tamper, relay readback, board link). The phase shown to
people - locked, unlocked, open, held-open, forced-open, fault - is derived from both.

Invariants (tests in tests/unit/test_door_machine.py check them on random event sequences):

* The relay value comes from ``desired_relay`` alone: the intent, or - while the relay itself
  is faulted - the de-energised *fail state* (a fail-secure lock locks, a fail-safe lock
  releases, exactly as on power loss). A link fault never changes the relay command, so loss
  or return of a link never releases a fail-secure door.
* A pulse always ends: by its deadline, or as soon as the door closes after opening.
* An opening that is not covered by an unlocked intent, a pulse, or a REX shunt window is a
  forced-open alarm; an authorised opening that outlasts ``held_open_s`` is a held-open alarm.
  Doors left unlocked on purpose never raise held-open.
* A relay fault clears only when a readback agrees with the intended value: after
  ``fault_retry_s`` the intent is tried again (a probe); if the readback disagrees the door
  returns to its fail state and waits again. No flapping, one journal entry per transition.
* Every phase change and every alarm edge is an effect (``Record``), so nothing changes silently.
* Lockdown (``Hold.secured``) relocks the door and refuses every command but ``lock`` unless it
  carries ``override``; REX still releases doors on an egress route, relay fault or not. A
  life-safety release (fire on a fail-safe egress door, or evacuation outside lockdown)
  outranks everything, relay faults and lockdown included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple


class Intent(StrEnum):
    """What the controller wants the lock to be."""

    LOCKED = "locked"
    UNLOCKED = "unlocked"  # held unlocked until told otherwise
    PULSE = "pulse"  # unlocked until ``pulse_until`` or until the door closes again


class Contact(StrEnum):
    """Door position as last read."""

    CLOSED = "closed"
    OPEN = "open"
    UNKNOWN = "unknown"


class Phase(StrEnum):
    """The one-word summary of a door."""

    LOCKED = "locked"
    UNLOCKED = "unlocked"
    OPEN = "open"
    HELD_OPEN = "held-open"
    FORCED_OPEN = "forced-open"
    FAULT = "fault"


class Fault(StrEnum):
    """Why a door is in fault."""

    LINK = "link"  # board offline, timeouts, exception responses
    RELAY = "relay"  # readback disagrees with the command (stuck or overridden relay)
    INPUT = "input"  # the board with the door's contact/REX/tamper (not its relay) is offline


FAIL_SECURE = "fail-secure"
FAIL_SAFE = "fail-safe"


@dataclass(frozen=True, slots=True)
class DoorSpec:
    """Static facts about one door, taken from the site settings."""

    name: str
    lock: str  # "fail-safe" | "fail-secure"
    pulse_s: float = 5.0
    held_open_s: float = 30.0
    rex_unlocks: bool = True
    rex_pulse_s: float = 5.0
    fault_retry_s: float = 5.0
    relock_grace_s: float = 1.0
    egress: bool = False  # on an egress route: REX always releases; fire/evacuation release

    def relay_for(self, released: bool) -> bool:
        """Relay value (energised?) that puts the lock released or locked."""
        return released if self.lock == FAIL_SECURE else not released

    def released_by(self, energised: bool) -> bool:
        """Whether the lock is released when the relay is ``energised``."""
        return energised if self.lock == FAIL_SECURE else not energised


class DoorState(NamedTuple):
    """Everything the machine knows about one door.

    A NamedTuple rather than a frozen dataclass: copying it with changes (``_evolve``) is
    ~10x cheaper than ``dataclasses.replace``, and a lock-all steps hundreds of doors at once.
    """

    intent: Intent = Intent.LOCKED
    pulse_until: float | None = None
    contact: Contact = Contact.UNKNOWN
    rex: bool = False
    tamper: bool = False
    relay: bool | None = None  # last readback: energised?
    link_up: bool = False
    seen_up: bool = False
    faults: frozenset[Fault] = frozenset({Fault.LINK})
    fault_detail: str = "not yet connected"
    opened_at: float | None = None
    authorised_open: bool = False
    shunt_until: float = -math.inf
    held: bool = False
    forced: bool = False
    retry_at: float | None = None
    probing: bool = False
    secured: bool = False  # held secure by a lockdown: only override commands act
    released: bool = False  # released for life safety (fire on fail-safe egress, evacuation)

    @property
    def phase(self) -> Phase:
        """Derived summary phase."""
        if self.faults:
            return Phase.FAULT
        if self.forced:
            return Phase.FORCED_OPEN
        if self.held:
            return Phase.HELD_OPEN
        if self.contact is Contact.OPEN:
            return Phase.OPEN
        if self.intent is not Intent.LOCKED or self.released:
            return Phase.UNLOCKED
        return Phase.LOCKED


_FIELD_INDEX = {name: i for i, name in enumerate(DoorState._fields)}
_new_tuple = tuple.__new__


def _evolve(state: DoorState, **changes: Any) -> DoorState:
    """``state._replace(**changes)`` at a third of the cost (a lock-all makes hundreds)."""
    values = list(state)
    for name, value in changes.items():
        values[_FIELD_INDEX[name]] = value
    return _new_tuple(DoorState, values)


# -- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """An operator or policy command: pulse, unlock (hold) or lock; ``override`` in lockdown."""

    action: str  # "pulse" | "unlock" | "lock"
    now: float
    duration_s: float | None = None
    override: bool = False


@dataclass(frozen=True, slots=True)
class Hold:
    """The lockdown layer's view of this door: held secure, fire alarm, evacuation."""

    secured: bool
    fire: bool
    evacuate: bool
    now: float


@dataclass(frozen=True, slots=True)
class ContactChanged:
    """The door position input changed (``open`` after applying invert)."""

    open: bool
    now: float


@dataclass(frozen=True, slots=True)
class RexChanged:
    """The request-to-exit input changed."""

    pressed: bool
    now: float


@dataclass(frozen=True, slots=True)
class TamperChanged:
    """The tamper input changed."""

    active: bool
    now: float


@dataclass(frozen=True, slots=True)
class RelayRead:
    """A readback of the door's relay; ``mismatched`` when it disagrees with the command."""

    energised: bool
    mismatched: bool
    now: float


@dataclass(frozen=True, slots=True)
class LinkChanged:
    """The door's board link went up or down."""

    up: bool
    now: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class InputsLinkChanged:
    """The link of the board with some of the door's inputs, not its relay, went up or down.

    ``contact`` / ``rex``: whether the door's contact / REX input is on that board (what is
    on it is no longer known while it is down).
    """

    up: bool
    now: float
    reason: str = ""
    contact: bool = True
    rex: bool = True


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passes (pulse expiry, held-open timer, relay-fault probe)."""

    now: float


DoorEvent = (
    Command
    | ContactChanged
    | RexChanged
    | TamperChanged
    | RelayRead
    | LinkChanged
    | InputsLinkChanged
    | Tick
    | Hold
)


class Record(NamedTuple):
    """Effect: append this to the journal (and publish it)."""

    kind: str
    data: dict[str, Any]


COMMANDS = frozenset({"pulse", "unlock", "lock"})


def desired_relay(spec: DoorSpec, state: DoorState) -> bool:
    """The relay value the door must have now."""
    if state.released:
        return spec.relay_for(True)  # life safety first: fire / evacuation release
    if spec.egress and state.intent is not Intent.LOCKED:
        # a way out (REX on an egress route, in every state): released even with a relay
        # fault, whose fail state would otherwise keep a held door locked
        return spec.relay_for(True)
    if Fault.RELAY in state.faults and not state.probing:
        # fail state: de-energised, the lock's own power-loss behaviour - except that a door
        # held by a lockdown keeps being commanded locked (a fail-safe lock must not release)
        return spec.relay_for(False) if state.secured else False
    return spec.relay_for(state.intent is not Intent.LOCKED)


def lock_state(spec: DoorSpec, state: DoorState) -> str:
    """'locked', 'released' or 'unknown', from the relay readback."""
    if state.relay is None or not state.link_up:
        return "unknown"
    return "released" if spec.released_by(state.relay) else "locked"


def next_deadline(spec: DoorSpec, state: DoorState) -> float | None:
    """The earliest time at which a Tick can change this door, if any."""
    times: list[float] = []
    if state.intent is Intent.PULSE and state.pulse_until is not None:
        times.append(state.pulse_until)
    if (
        state.contact is Contact.OPEN
        and state.opened_at is not None
        and state.authorised_open
        and not state.held
        and state.intent is not Intent.UNLOCKED
        and not state.released
    ):
        times.append(state.opened_at + spec.held_open_s)
    if (
        Fault.RELAY in state.faults
        and not state.probing
        and state.link_up  # a Tick cannot probe while the link is down (see _tick)
        and state.retry_at is not None
    ):
        times.append(state.retry_at)
    return min(times) if times else None


def observe_relay(state: DoorState, energised: bool, mismatched: bool) -> DoorState | None:
    """``step`` for a RelayRead that only updates ``relay`` (None when it does more).

    A readback that agrees with the command while no relay fault is latched (or any readback
    while the link is down) changes nothing but ``relay``: no record, no phase, deadline or
    relay-command change. The fan-out applies hundreds of these per command, so the service
    takes this path and skips the rest of its bookkeeping.
    """
    if state.link_up and (mismatched or Fault.RELAY in state.faults):
        return None
    return state if state.relay is energised else _evolve(state, relay=energised)


def step(spec: DoorSpec, state: DoorState, event: DoorEvent) -> tuple[DoorState, list[Record]]:
    """Apply one event; return the new state and the records to journal."""
    effects: list[Record] = []
    after = transition(spec, state, event, effects)
    record = phase_record(state, after)
    if record is not None:
        effects.append(record)
    return after, effects


def transition(
    spec: DoorSpec, state: DoorState, event: DoorEvent, effects: list[Record]
) -> DoorState:
    """``step`` without its ``door.state`` record: the new state; other records to ``effects``.

    A group command applies this to every door before the relay writes leave and calls
    ``phase_record`` afterwards, so the writes do not wait for the bookkeeping.
    """
    match event:
        case Command():
            return _command(spec, state, event, effects)
        case Hold():
            return _hold(spec, state, event, effects)
        case ContactChanged():
            return _contact(spec, state, event, effects)
        case RexChanged():
            return _rex(spec, state, event, effects)
        case TamperChanged():
            if event.active != state.tamper:
                effects.append(_alarm("tamper", event.active))
                return _evolve(state, tamper=event.active)
            return state
        case RelayRead():
            return _relay(spec, state, event, effects)
        case LinkChanged():
            return _link(state, event, effects)
        case InputsLinkChanged():
            return _inputs_link(state, event, effects)
        case Tick():
            return _tick(spec, state, event, effects)
    raise TypeError(f"not a door event: {event!r}")


def phase_record(before: DoorState, after: DoorState) -> Record | None:
    """The ``door.state`` record of going from ``before`` to ``after``, if the phase moved."""
    if after is before:  # (an unchanged state cannot change phase)
        return None
    was, phase = before.phase, after.phase
    if phase is was:
        return None
    return Record(
        "door.state", {"from": _NAME[was], "to": _NAME[phase], "intent": _NAME[after.intent]}
    )


# enum member -> its value, by dict: ``.value`` goes through a descriptor, and a lock-all
# formats hundreds of these in one turn
_NAME: dict[StrEnum, str] = {m: m.value for e in (Phase, Intent) for m in e}


def _alarm(alarm: str, active: bool, **detail: Any) -> Record:
    return Record("door.alarm", {"alarm": alarm, "active": active, **detail})


def _hold(spec: DoorSpec, state: DoorState, event: Hold, effects: list[Record]) -> DoorState:
    released = spec.egress and (
        (event.fire and spec.lock == FAIL_SAFE) or (event.evacuate and not event.secured)
    )
    securing = event.secured and not state.secured
    if securing:
        effects.append(Record("door.secure", {"secured": True}))
    elif state.secured and not event.secured:
        effects.append(Record("door.secure", {"secured": False}))
    if released != state.released:
        why = "fire" if event.fire and spec.lock == FAIL_SAFE else "evacuation"
        effects.append(Record("door.release", {"released": released, "why": why}))
    if securing:
        # one replace, not two: a lockdown applies this to hundreds of doors in one turn
        return _evolve(
            state,
            intent=Intent.LOCKED,
            pulse_until=None,
            shunt_until=event.now,
            secured=True,
            released=released,
        )
    if event.secured == state.secured and released == state.released:
        return state  # nothing changes (the hold is re-applied to every door)
    return _evolve(state, secured=event.secured, released=released)


def _command(spec: DoorSpec, state: DoorState, event: Command, effects: list[Record]) -> DoorState:
    if state.secured and not event.override and event.action != "lock":
        effects.append(Record("door.refused", {"action": event.action, "reason": "lockdown"}))
        return state
    if event.action == "pulse":
        duration = spec.pulse_s if event.duration_s is None else event.duration_s
        until = event.now + duration
        if state.intent is Intent.UNLOCKED:
            return state  # already held unlocked; a pulse does not shorten it
        until = max(until, state.pulse_until or until)
        return _evolve(
            state,
            intent=Intent.PULSE,
            pulse_until=until,
            shunt_until=max(state.shunt_until, until + spec.relock_grace_s),
        )
    if event.action == "unlock":
        return _evolve(state, intent=Intent.UNLOCKED, pulse_until=None)
    if event.action == "lock":
        return _evolve(state, intent=Intent.LOCKED, pulse_until=None, shunt_until=event.now)
    raise ValueError(f"unknown door command {event.action!r}")


def _contact(
    spec: DoorSpec, state: DoorState, event: ContactChanged, effects: list[Record]
) -> DoorState:
    del spec
    if event.open:
        if state.contact is Contact.OPEN:
            return state
        authorised = (
            state.intent is not Intent.LOCKED
            or event.now <= state.shunt_until
            or state.rex
            or state.released
        )
        detail = "found open" if state.contact is Contact.UNKNOWN else "opened while locked"
        state = _evolve(state, contact=Contact.OPEN, opened_at=event.now)
        if authorised:
            return _evolve(state, authorised_open=True)
        if not state.forced:  # still latched from before a link loss: no second edge
            effects.append(_alarm("forced-open", True, detail=detail))
        return _evolve(state, authorised_open=False, forced=True)
    if state.contact is Contact.CLOSED:
        return state
    if state.held:
        effects.append(_alarm("held-open", False))
    if state.forced:
        effects.append(_alarm("forced-open", False))
    was_open = state.contact is Contact.OPEN
    state = _evolve(
        state,
        contact=Contact.CLOSED,
        opened_at=None,
        authorised_open=False,
        held=False,
        forced=False,
    )
    if was_open and state.intent is Intent.PULSE:
        # relock on close: the pulse was used
        state = _evolve(state, intent=Intent.LOCKED, pulse_until=None, shunt_until=event.now)
    return state


def _rex(spec: DoorSpec, state: DoorState, event: RexChanged, effects: list[Record]) -> DoorState:
    if event.pressed == state.rex:
        return state
    state = _evolve(state, rex=event.pressed)
    if not event.pressed:
        return state
    effects.append(
        Record("door.rex", {"unlocks": spec.egress or (spec.rex_unlocks and not state.secured)})
    )
    shunt = event.now + spec.rex_pulse_s
    state = _evolve(state, shunt_until=max(state.shunt_until, shunt + spec.relock_grace_s))
    # free egress: in lockdown only doors on an egress route release on REX
    unlocks = spec.egress or (spec.rex_unlocks and not state.secured)
    if unlocks and state.intent is not Intent.UNLOCKED:
        state = _evolve(
            state, intent=Intent.PULSE, pulse_until=max(shunt, state.pulse_until or shunt)
        )
    return state


def _relay(spec: DoorSpec, state: DoorState, event: RelayRead, effects: list[Record]) -> DoorState:
    state = _evolve(state, relay=event.energised)
    if not state.link_up:
        return state
    if event.mismatched:
        if Fault.RELAY not in state.faults:
            effects.append(
                _alarm("fault", True, fault=Fault.RELAY.value, detail="relay readback mismatch")
            )
            return _evolve(
                state,
                faults=state.faults | {Fault.RELAY},
                fault_detail="relay readback mismatch",
                retry_at=event.now + spec.fault_retry_s,
                probing=False,
            )
        if state.probing:
            return _evolve(state, probing=False, retry_at=event.now + spec.fault_retry_s)
        return state
    if Fault.RELAY in state.faults and (
        state.probing or event.energised == spec.relay_for(state.intent is not Intent.LOCKED)
    ):
        effects.append(_alarm("fault", False, fault=Fault.RELAY.value))
        return _evolve(state, **_cleared(state, Fault.RELAY), probing=False, retry_at=None)
    return state


_DETAIL = {Fault.LINK: "board offline", Fault.RELAY: "relay readback mismatch"}


def _cleared(state: DoorState, fault: Fault) -> dict[str, Any]:
    """``faults`` and ``fault_detail`` once ``fault`` clears (no detail outlives its fault)."""
    faults = state.faults - {fault}
    if not faults:
        return {"faults": faults, "fault_detail": ""}
    left = next(f for f in (Fault.LINK, Fault.RELAY, Fault.INPUT) if f in faults)
    return {"faults": faults, "fault_detail": _DETAIL.get(left, "input board offline")}


def _link(state: DoorState, event: LinkChanged, effects: list[Record]) -> DoorState:
    if event.up:
        if state.link_up:
            return state
        if state.seen_up and Fault.LINK in state.faults:
            effects.append(_alarm("fault", False, fault=Fault.LINK.value))
        return _evolve(state, link_up=True, seen_up=True, **_cleared(state, Fault.LINK))
    if not state.link_up:
        return _evolve(state, fault_detail=event.reason or state.fault_detail)
    effects.append(_alarm("fault", True, fault=Fault.LINK.value, detail=event.reason))
    return _evolve(
        state,
        link_up=False,
        faults=state.faults | {Fault.LINK},
        fault_detail=event.reason,
        contact=Contact.UNKNOWN,
        opened_at=None,
    )


def _inputs_link(state: DoorState, event: InputsLinkChanged, effects: list[Record]) -> DoorState:
    if event.up:
        if Fault.INPUT not in state.faults:
            return state
        effects.append(_alarm("fault", False, fault=Fault.INPUT.value))
        return _evolve(state, **_cleared(state, Fault.INPUT))
    if Fault.INPUT in state.faults:
        return state
    # the door cannot be supervised: a contact on that board is unknown (never trusted
    # stale: a door propped open meanwhile must not count as closed) and a REX press there
    # is not assumed held; inputs on other boards stay as they are read
    effects.append(_alarm("fault", True, fault=Fault.INPUT.value, detail=event.reason))
    state = _evolve(
        state,
        faults=state.faults | {Fault.INPUT},
        fault_detail=event.reason or "input board offline",
    )
    if event.contact:
        state = _evolve(state, contact=Contact.UNKNOWN, opened_at=None)
    if event.rex:
        state = _evolve(state, rex=False)
    return state


def _tick(spec: DoorSpec, state: DoorState, event: Tick, effects: list[Record]) -> DoorState:
    now = event.now
    if state.intent is Intent.PULSE and state.pulse_until is not None and now >= state.pulse_until:
        state = _evolve(state, intent=Intent.LOCKED, pulse_until=None)
    if (
        state.contact is Contact.OPEN
        and state.opened_at is not None
        and state.authorised_open
        and not state.held
        and state.intent is not Intent.UNLOCKED
        and not state.released
        and now >= state.opened_at + spec.held_open_s
    ):
        effects.append(_alarm("held-open", True, open_s=round(now - state.opened_at, 3)))
        state = _evolve(state, held=True)
    if (
        Fault.RELAY in state.faults
        and not state.probing
        and state.link_up
        and state.retry_at is not None
        and now >= state.retry_at
    ):
        if state.relay is not None and state.relay == spec.relay_for(
            state.intent is not Intent.LOCKED
        ):
            # the relay already sits where the intent wants it: nothing left to prove
            effects.append(_alarm("fault", False, fault=Fault.RELAY.value))
            state = _evolve(state, **_cleared(state, Fault.RELAY), retry_at=None)
        else:
            state = _evolve(state, probing=True, retry_at=None)
    return state
