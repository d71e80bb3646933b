"""The pure per-door state machine: examples for each behaviour, and a stateful property test.

The stateful test drives random sequences of every event type over a monotonic clock, for both
lock types, and checks the invariants stated in the header of ``controller/doors/machine.py``
against a small reference model of the intent, pulse, shunt and alarm logic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from controller.doors.machine import (
    COMMANDS,
    FAIL_SAFE,
    FAIL_SECURE,
    Command,
    Contact,
    ContactChanged,
    DoorEvent,
    DoorSpec,
    DoorState,
    Fault,
    Hold,
    InputsLinkChanged,
    Intent,
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
    step,
)

LOCKS = [FAIL_SECURE, FAIL_SAFE]

# --------------------------------------------------------------------------- helpers


def make_spec(lock: str, **overrides: Any) -> DoorSpec:
    """A door with round, distinct timings so that expected times are easy to read."""
    values: dict[str, Any] = {
        "pulse_s": 5.0,
        "held_open_s": 30.0,
        "rex_unlocks": True,
        "rex_pulse_s": 4.0,
        "fault_retry_s": 10.0,
        "relock_grace_s": 1.0,
    }
    values.update(overrides)
    return DoorSpec("front", lock, **values)


def released(spec: DoorSpec, state: DoorState) -> bool:
    """Whether the relay value the machine asks for releases the lock."""
    return spec.released_by(desired_relay(spec, state))


def alarms(effects: list[Record]) -> list[dict[str, Any]]:
    return [r.data for r in effects if r.kind == "door.alarm"]


def transitions(effects: list[Record]) -> list[tuple[str, str]]:
    return [(r.data["from"], r.data["to"]) for r in effects if r.kind == "door.state"]


class Door:
    """A spec and its state, stepped event by event; keeps every record for inspection."""

    def __init__(self, spec: DoorSpec, state: DoorState | None = None) -> None:
        self.spec = spec
        self.state = DoorState() if state is None else state
        self.log: list[Record] = []

    def feed(self, event: DoorEvent) -> list[Record]:
        self.state, effects = step(self.spec, self.state, event)
        self.log.extend(effects)
        return effects

    # methods, not properties: mypy would keep a narrowed enum across ``feed`` calls
    def phase(self) -> Phase:
        return self.state.phase

    def intent(self) -> Intent:
        return self.state.intent

    @property
    def desired(self) -> bool:
        return desired_relay(self.spec, self.state)

    @property
    def released(self) -> bool:
        return released(self.spec, self.state)

    @property
    def deadline(self) -> float | None:
        return next_deadline(self.spec, self.state)


def online(spec: DoorSpec, now: float = 0.0) -> Door:
    """A door whose board link is up and whose contact reads closed: phase LOCKED."""
    door = Door(spec)
    door.feed(LinkChanged(True, now))
    door.feed(ContactChanged(False, now))
    assert door.phase() is Phase.LOCKED
    door.log.clear()
    return door


# --------------------------------------------------------------------------- start-up and links


@pytest.mark.parametrize("lock", LOCKS)
def test_initial_state_is_fault_not_yet_connected(lock: str) -> None:
    spec = make_spec(lock)
    state = DoorState()
    assert state.phase is Phase.FAULT
    assert state.faults == {Fault.LINK}
    assert state.fault_detail == "not yet connected"
    assert state.intent is Intent.LOCKED
    assert state.contact is Contact.UNKNOWN
    assert not released(spec, state)
    assert desired_relay(spec, state) is (lock == FAIL_SAFE)
    assert lock_state(spec, state) == "unknown"
    assert next_deadline(spec, state) is None


@pytest.mark.parametrize("lock", LOCKS)
def test_first_link_up_records_no_fault_cleared(lock: str) -> None:
    door = Door(make_spec(lock))
    effects = door.feed(LinkChanged(True, 0.0))
    assert effects == [Record("door.state", {"from": "fault", "to": "locked", "intent": "locked"})]
    assert door.state.faults == frozenset()
    assert door.state.fault_detail == ""
    assert door.state.seen_up


def test_link_down_before_first_up_only_updates_the_detail() -> None:
    door = Door(make_spec(FAIL_SECURE))
    assert door.feed(LinkChanged(False, 1.0, "connection refused")) == []
    assert door.state.fault_detail == "connection refused"
    assert door.phase() is Phase.FAULT
    assert door.feed(LinkChanged(False, 2.0)) == []
    assert door.state.fault_detail == "connection refused"  # an empty reason keeps the old one


@pytest.mark.parametrize("lock", LOCKS)
@pytest.mark.parametrize("action", [None, "pulse", "unlock"])
def test_link_down_is_a_fault_and_never_changes_the_relay_command(
    lock: str, action: str | None
) -> None:
    door = online(make_spec(lock))
    if action is not None:
        door.feed(Command(action, 0.0))
    door.feed(ContactChanged(True, 0.5))
    before_relay = door.desired
    before_phase = door.phase()

    effects = door.feed(LinkChanged(False, 1.0, "timeout"))
    assert alarms(effects) == [
        {"alarm": "fault", "active": True, "fault": "link", "detail": "timeout"}
    ]
    assert transitions(effects) == [(before_phase.value, "fault")]
    assert door.phase() is Phase.FAULT
    assert door.state.faults == {Fault.LINK}
    assert door.state.fault_detail == "timeout"
    assert door.state.contact is Contact.UNKNOWN
    assert door.state.opened_at is None
    assert door.desired is before_relay
    assert lock_state(door.spec, door.state) == "unknown"

    assert door.feed(LinkChanged(False, 1.5, "timeout")) == []  # no second edge

    effects = door.feed(LinkChanged(True, 2.0))
    assert alarms(effects) == [{"alarm": "fault", "active": False, "fault": "link"}]
    assert door.state.faults == frozenset()
    assert door.desired is before_relay
    assert door.phase() is not Phase.FAULT
    assert door.feed(LinkChanged(True, 2.5)) == []


@pytest.mark.parametrize("lock", LOCKS)
def test_link_loss_and_return_never_release_a_locked_door(lock: str) -> None:
    door = online(make_spec(lock))
    for t in range(1, 20):
        door.feed(LinkChanged(t % 2 == 0, float(t), "flap"))
        assert not door.released
        assert door.intent() is Intent.LOCKED


def test_door_found_open_after_link_return_while_locked_is_forced() -> None:
    door = online(make_spec(FAIL_SECURE))
    door.feed(LinkChanged(False, 1.0, "timeout"))
    door.feed(LinkChanged(True, 2.0))
    effects = door.feed(ContactChanged(True, 3.0))
    assert alarms(effects) == [{"alarm": "forced-open", "active": True, "detail": "found open"}]
    assert door.phase() is Phase.FORCED_OPEN


def test_door_found_open_after_link_return_during_pulse_is_authorised() -> None:
    door = online(make_spec(FAIL_SECURE))
    door.feed(Command("pulse", 0.0))
    door.feed(LinkChanged(False, 1.0, "timeout"))
    door.feed(LinkChanged(True, 2.0))
    effects = door.feed(ContactChanged(True, 3.0))
    assert alarms(effects) == []
    assert door.phase() is Phase.OPEN
    assert door.state.authorised_open


def test_contact_unknown_then_closed_does_not_relock_a_pulse() -> None:
    door = online(make_spec(FAIL_SECURE))
    door.feed(Command("pulse", 0.0))
    door.feed(LinkChanged(False, 1.0, "timeout"))
    door.feed(LinkChanged(True, 2.0))
    door.feed(ContactChanged(False, 2.5))  # unknown -> closed is not a "close after opening"
    assert door.intent() is Intent.PULSE


def test_forced_alarm_is_not_raised_twice_across_a_link_loss() -> None:
    """Regression: a latched forced-open alarm, link lost and back, door still open."""
    door = online(make_spec(FAIL_SECURE))
    door.feed(ContactChanged(True, 1.0))
    assert door.state.forced
    door.feed(LinkChanged(False, 2.0, "timeout"))
    assert door.state.forced  # the alarm stays latched while the door cannot be seen
    door.feed(LinkChanged(True, 3.0))
    assert door.phase() is Phase.FORCED_OPEN
    assert alarms(door.feed(ContactChanged(True, 4.0))) == []
    assert door.phase() is Phase.FORCED_OPEN
    assert alarms(door.feed(ContactChanged(False, 5.0))) == [
        {"alarm": "forced-open", "active": False}
    ]
    assert door.phase() is Phase.LOCKED


def test_held_open_alarm_latched_across_a_link_loss_is_cleared_once() -> None:
    door = online(make_spec(FAIL_SECURE))
    door.feed(Command("pulse", 0.0))
    door.feed(ContactChanged(True, 1.0))
    door.feed(Tick(31.0))
    assert door.state.held
    door.feed(LinkChanged(False, 32.0, "timeout"))
    door.feed(LinkChanged(True, 33.0))
    effects = door.feed(ContactChanged(False, 34.0))
    assert alarms(effects) == [{"alarm": "held-open", "active": False}]
    assert door.phase() is Phase.LOCKED


def test_forced_open_outranks_held_open() -> None:
    door = online(make_spec(FAIL_SECURE))
    door.feed(Command("pulse", 0.0))
    door.feed(ContactChanged(True, 1.0))
    door.feed(Tick(31.0))
    door.feed(LinkChanged(False, 32.0, "timeout"))
    door.feed(LinkChanged(True, 33.0))
    assert door.phase() is Phase.HELD_OPEN
    effects = door.feed(ContactChanged(True, 34.0))  # pulse long over: nobody let it open
    assert alarms(effects) == [{"alarm": "forced-open", "active": True, "detail": "found open"}]
    assert transitions(effects) == [("held-open", "forced-open")]
    effects = door.feed(ContactChanged(False, 35.0))
    assert [a["alarm"] for a in alarms(effects)] == ["held-open", "forced-open"]
    assert transitions(effects) == [("forced-open", "locked")]


# --------------------------------------------------------------------------- pulses


@pytest.mark.parametrize(("lock", "relay_released"), [(FAIL_SECURE, True), (FAIL_SAFE, False)])
def test_pulse_open_close_relocks_on_close(lock: str, relay_released: bool) -> None:
    door = online(make_spec(lock))
    assert door.desired is (not relay_released)  # locked

    effects = door.feed(Command("pulse", 10.0))
    assert door.intent() is Intent.PULSE
    assert door.state.pulse_until == 15.0
    assert door.desired is relay_released
    assert door.released
    assert door.phase() is Phase.UNLOCKED
    assert effects == [
        Record("door.state", {"from": "locked", "to": "unlocked", "intent": "pulse"})
    ]
    assert door.deadline == 15.0

    effects = door.feed(ContactChanged(True, 11.0))
    assert alarms(effects) == []
    assert transitions(effects) == [("unlocked", "open")]
    assert door.phase() is Phase.OPEN
    assert door.state.authorised_open
    assert door.state.opened_at == 11.0
    assert door.deadline == 15.0  # pulse expiry comes before held-open (41.0)

    effects = door.feed(ContactChanged(False, 12.0))
    assert alarms(effects) == []
    assert transitions(effects) == [("open", "locked")]
    assert door.intent() is Intent.LOCKED
    assert door.state.pulse_until is None
    assert door.desired is (not relay_released)
    assert not door.released
    assert door.deadline is None

    # the pulse was used: opening again is forced, even though 15.0 has not come yet
    effects = door.feed(ContactChanged(True, 13.0))
    assert alarms(effects) == [
        {"alarm": "forced-open", "active": True, "detail": "opened while locked"}
    ]


@pytest.mark.parametrize("lock", LOCKS)
def test_pulse_expires_by_tick_without_opening(lock: str) -> None:
    door = online(make_spec(lock))
    door.feed(Command("pulse", 0.0))
    assert door.feed(Tick(4.999)) == []
    assert door.intent() is Intent.PULSE
    assert door.released
    effects = door.feed(Tick(5.0))
    assert effects == [
        Record("door.state", {"from": "unlocked", "to": "locked", "intent": "locked"})
    ]
    assert door.intent() is Intent.LOCKED
    assert door.state.pulse_until is None
    assert not door.released
    assert door.deadline is None


def test_pulse_duration_overrides_the_spec() -> None:
    door = online(make_spec(FAIL_SECURE))
    door.feed(Command("pulse", 1.0, duration_s=2.5))
    assert door.state.pulse_until == 3.5
    assert door.state.shunt_until == 4.5
    assert door.deadline == 3.5


def test_a_pulse_never_shortens_a_pulse_or_a_held_unlock() -> None:
    door = online(make_spec(FAIL_SECURE))
    door.feed(Command("pulse", 0.0, duration_s=10.0))
    door.feed(Command("pulse", 1.0, duration_s=1.0))
    assert door.state.pulse_until == 10.0
    door.feed(Command("pulse", 8.0))
    assert door.state.pulse_until == 13.0  # but it may extend it

    door.feed(Command("unlock", 9.0))
    held = door.state
    assert door.feed(Command("pulse", 9.5)) == []
    assert door.state == held


def test_opening_just_after_a_pulse_expires_within_relock_grace_is_not_forced() -> None:
    door = online(make_spec(FAIL_SECURE))  # pulse_s 5, relock_grace_s 1
    door.feed(Command("pulse", 0.0))
    door.feed(Tick(5.0))
    assert door.intent() is Intent.LOCKED
    assert door.state.shunt_until == 6.0
    effects = door.feed(ContactChanged(True, 6.0))
    assert alarms(effects) == []
    assert door.phase() is Phase.OPEN
    assert door.state.authorised_open


def test_opening_after_the_relock_grace_is_forced() -> None:
    door = online(make_spec(FAIL_SECURE))
    door.feed(Command("pulse", 0.0))
    door.feed(Tick(5.0))
    effects = door.feed(ContactChanged(True, 6.01))
    assert alarms(effects) == [
        {"alarm": "forced-open", "active": True, "detail": "opened while locked"}
    ]


# --------------------------------------------------------------------------- unlock and lock


@pytest.mark.parametrize("lock", LOCKS)
def test_held_unlock_never_raises_held_open(lock: str) -> None:
    door = online(make_spec(lock))
    effects = door.feed(Command("unlock", 0.0))
    assert transitions(effects) == [("locked", "unlocked")]
    assert door.intent() is Intent.UNLOCKED
    assert door.released
    door.feed(ContactChanged(True, 1.0))
    assert door.deadline is None
    for t in (31.0, 100.0, 10_000.0):
        assert door.feed(Tick(t)) == []
    assert door.phase() is Phase.OPEN
    assert not door.state.held
    door.feed(ContactChanged(False, 10_001.0))
    assert door.intent() is Intent.UNLOCKED  # a held unlock survives a close
    assert door.phase() is Phase.UNLOCKED
    assert door.released


@pytest.mark.parametrize("lock", LOCKS)
@pytest.mark.parametrize("first", ["pulse", "unlock"])
def test_lock_command_locks_and_cancels_the_shunt(lock: str, first: str) -> None:
    door = online(make_spec(lock))
    door.feed(Command(first, 0.0))
    effects = door.feed(Command("lock", 1.0))
    assert transitions(effects) == [("unlocked", "locked")]
    assert door.intent() is Intent.LOCKED
    assert door.state.pulse_until is None
    assert door.state.shunt_until == 1.0
    assert not door.released
    assert door.deadline is None
    effects = door.feed(ContactChanged(True, 1.5))  # inside what would have been the grace
    assert [a["alarm"] for a in alarms(effects)] == ["forced-open"]


def test_lock_while_open_starts_held_open_from_the_opening() -> None:
    door = online(make_spec(FAIL_SECURE))
    door.feed(Command("unlock", 0.0))
    door.feed(ContactChanged(True, 1.0))
    door.feed(Command("lock", 5.0))
    assert door.phase() is Phase.OPEN  # an authorised opening: not forced
    assert door.deadline == 31.0
    effects = door.feed(Tick(31.0))
    assert alarms(effects) == [{"alarm": "held-open", "active": True, "open_s": 30.0}]


def test_unknown_command_action_raises_value_error() -> None:
    door = online(make_spec(FAIL_SECURE))
    with pytest.raises(ValueError, match="unknown door command 'open'"):
        door.feed(Command("open", 0.0))
    assert {"pulse", "unlock", "lock"} == COMMANDS


# --------------------------------------------------------------------------- supervision alarms


@pytest.mark.parametrize("lock", LOCKS)
def test_opening_while_locked_is_forced_and_clears_on_close(lock: str) -> None:
    door = online(make_spec(lock))
    effects = door.feed(ContactChanged(True, 1.0))
    assert effects == [
        Record(
            "door.alarm",
            {"alarm": "forced-open", "active": True, "detail": "opened while locked"},
        ),
        Record("door.state", {"from": "locked", "to": "forced-open", "intent": "locked"}),
    ]
    assert door.state.forced
    assert not door.state.authorised_open
    assert not door.released  # an alarm does not change the lock
    assert door.deadline is None  # forced doors do not also go held-open
    assert door.feed(ContactChanged(True, 1.5)) == []  # repeated input: no new edge
    assert door.feed(Tick(100.0)) == []

    effects = door.feed(ContactChanged(False, 101.0))
    assert effects == [
        Record("door.alarm", {"alarm": "forced-open", "active": False}),
        Record("door.state", {"from": "forced-open", "to": "locked", "intent": "locked"}),
    ]
    assert not door.state.forced
    assert door.feed(ContactChanged(False, 102.0)) == []


@pytest.mark.parametrize("lock", LOCKS)
def test_authorised_open_beyond_held_open_s_raises_held_open(lock: str) -> None:
    door = online(make_spec(lock))  # pulse_s 5, held_open_s 30
    door.feed(Command("pulse", 0.0))
    door.feed(ContactChanged(True, 2.0))
    assert door.deadline == 5.0
    door.feed(Tick(5.0))  # pulse expires while the door is open: still authorised
    assert door.intent() is Intent.LOCKED
    assert door.phase() is Phase.OPEN
    assert door.deadline == 32.0
    assert door.feed(Tick(31.99)) == []

    effects = door.feed(Tick(32.5))
    assert effects == [
        Record("door.alarm", {"alarm": "held-open", "active": True, "open_s": 30.5}),
        Record("door.state", {"from": "open", "to": "held-open", "intent": "locked"}),
    ]
    assert door.state.held
    assert door.deadline is None
    assert door.feed(Tick(100.0)) == []  # raised once

    effects = door.feed(ContactChanged(False, 101.0))
    assert effects == [
        Record("door.alarm", {"alarm": "held-open", "active": False}),
        Record("door.state", {"from": "held-open", "to": "locked", "intent": "locked"}),
    ]


@pytest.mark.parametrize("lock", LOCKS)
def test_rex_that_unlocks_pulses_and_shunts(lock: str) -> None:
    door = online(make_spec(lock, rex_unlocks=True, rex_pulse_s=4.0))
    effects = door.feed(RexChanged(True, 10.0))
    assert effects[0] == Record("door.rex", {"unlocks": True})
    assert transitions(effects) == [("locked", "unlocked")]
    assert door.intent() is Intent.PULSE
    assert door.state.pulse_until == 14.0
    assert door.state.shunt_until == 15.0  # rex_pulse_s + relock grace
    assert door.released
    assert door.feed(RexChanged(True, 10.5)) == []  # no edge, no second pulse
    assert door.feed(RexChanged(False, 11.0)) == []
    assert door.released

    assert alarms(door.feed(ContactChanged(True, 12.0))) == []
    assert door.phase() is Phase.OPEN
    door.feed(ContactChanged(False, 13.0))
    assert door.intent() is Intent.LOCKED  # relock on close
    assert not door.released


def test_rex_during_a_held_unlock_keeps_it_held() -> None:
    door = online(make_spec(FAIL_SECURE, rex_unlocks=True))
    door.feed(Command("unlock", 0.0))
    door.feed(RexChanged(True, 1.0))
    assert door.intent() is Intent.UNLOCKED
    assert door.state.pulse_until is None


@pytest.mark.parametrize("lock", LOCKS)
def test_rex_without_unlock_only_shunts(lock: str) -> None:
    door = online(make_spec(lock, rex_unlocks=False, rex_pulse_s=4.0))
    effects = door.feed(RexChanged(True, 10.0))
    assert effects == [Record("door.rex", {"unlocks": False})]
    assert door.intent() is Intent.LOCKED
    assert door.state.shunt_until == 15.0  # rex_pulse_s + relock grace
    assert not door.released
    door.feed(RexChanged(False, 11.0))
    assert not door.released

    effects = door.feed(ContactChanged(True, 13.9))  # mechanical egress inside the window
    assert alarms(effects) == []
    assert door.phase() is Phase.OPEN
    assert not door.released  # the relay never moved
    assert door.deadline == 43.9  # an authorised opening is still timed for held-open
    door.feed(ContactChanged(False, 15.0))
    assert door.intent() is Intent.LOCKED

    effects = door.feed(ContactChanged(True, 16.0))  # outside the window
    assert [a["alarm"] for a in alarms(effects)] == ["forced-open"]


def test_opening_while_rex_is_held_is_not_forced_after_the_window() -> None:
    door = online(make_spec(FAIL_SECURE, rex_unlocks=False, rex_pulse_s=1.0))
    door.feed(RexChanged(True, 0.0))
    effects = door.feed(ContactChanged(True, 50.0))  # REX still pressed
    assert alarms(effects) == []
    assert door.phase() is Phase.OPEN


@pytest.mark.parametrize("lock", LOCKS)
def test_tamper_alarm_edges(lock: str) -> None:
    door = online(make_spec(lock))
    assert door.feed(TamperChanged(True, 1.0)) == [
        Record("door.alarm", {"alarm": "tamper", "active": True})
    ]
    assert door.state.tamper
    assert door.phase() is Phase.LOCKED  # tamper is an alarm, not a phase
    assert door.feed(TamperChanged(True, 2.0)) == []
    assert door.feed(TamperChanged(False, 3.0)) == [
        Record("door.alarm", {"alarm": "tamper", "active": False})
    ]
    assert door.feed(TamperChanged(False, 4.0)) == []
    assert not door.released


# --------------------------------------------------------------------------- relay supervision

# (lock, intent) pairs where the intent's relay value differs from the de-energised fail state
STUCK_LOW = [(FAIL_SECURE, "unlock"), (FAIL_SAFE, "lock")]


@pytest.mark.parametrize(("lock", "action"), STUCK_LOW)
def test_relay_mismatch_fault_probe_cycle(lock: str, action: str) -> None:
    door = online(make_spec(lock, fault_retry_s=10.0))
    door.feed(Command(action, 0.0))
    assert door.desired is True
    intent_phase = door.phase()

    # the relay is stuck de-energised
    effects = door.feed(RelayRead(False, True, 1.0))
    assert effects == [
        Record(
            "door.alarm",
            {
                "alarm": "fault",
                "active": True,
                "fault": "relay",
                "detail": "relay readback mismatch",
            },
        ),
        Record("door.state", {"from": intent_phase.value, "to": "fault", "intent": action + "ed"}),
    ]
    assert door.state.faults == {Fault.RELAY}
    assert door.state.fault_detail == "relay readback mismatch"
    assert door.desired is False  # fail state
    assert door.released is (lock == FAIL_SAFE)
    assert door.deadline == 11.0

    assert door.feed(RelayRead(False, False, 2.0)) == []  # agrees with the fail state only
    assert door.feed(RelayRead(False, True, 3.0)) == []  # one edge per fault
    assert door.feed(Tick(10.99)) == []
    assert not door.state.probing

    # probe: the intent is commanded again
    assert door.feed(Tick(11.0)) == []
    assert door.state.probing
    assert door.state.retry_at is None
    assert door.desired is True
    assert door.deadline is None
    assert door.phase() is Phase.FAULT

    # still stuck: back to the fail state, retry later
    assert door.feed(RelayRead(False, True, 11.5)) == []
    assert not door.state.probing
    assert door.desired is False
    assert door.state.retry_at == 21.5
    assert door.deadline == 21.5
    assert door.state.faults == {Fault.RELAY}

    # second probe, the relay follows now
    door.feed(Tick(21.5))
    assert door.desired is True
    effects = door.feed(RelayRead(True, False, 22.0))
    assert effects == [
        Record("door.alarm", {"alarm": "fault", "active": False, "fault": "relay"}),
        Record("door.state", {"from": "fault", "to": intent_phase.value, "intent": action + "ed"}),
    ]
    assert door.state.faults == frozenset()
    assert not door.state.probing
    assert door.state.retry_at is None
    assert door.desired is True
    assert door.deadline is None


def test_relay_fault_clears_when_the_fail_state_is_the_intent() -> None:
    door = online(make_spec(FAIL_SECURE))  # locked: intent relay == fail state == False
    door.feed(RelayRead(True, True, 1.0))  # stuck energised: released!
    assert door.state.faults == {Fault.RELAY}
    assert door.desired is False
    effects = door.feed(RelayRead(False, False, 2.0))
    assert alarms(effects) == [{"alarm": "fault", "active": False, "fault": "relay"}]
    assert door.phase() is Phase.LOCKED


def test_retry_clears_without_a_probe_when_the_relay_already_shows_the_intent() -> None:
    door = online(make_spec(FAIL_SECURE, fault_retry_s=10.0))
    door.feed(RelayRead(True, True, 1.0))  # locked, but the strike is stuck energised
    door.feed(Command("unlock", 2.0))  # now the intent is what the relay already does
    assert not door.released
    effects = door.feed(Tick(11.0))
    assert alarms(effects) == [{"alarm": "fault", "active": False, "fault": "relay"}]
    assert not door.state.probing
    assert door.state.retry_at is None
    assert door.released


def test_relay_fault_blocks_a_fail_secure_release_until_the_retry() -> None:
    door = online(make_spec(FAIL_SECURE))
    door.feed(RelayRead(True, True, 1.0))
    door.feed(Command("unlock", 2.0))
    assert not door.released  # commands cannot override the fail state of a faulted relay
    door.feed(Tick(11.0))
    assert door.released  # only the retry tries the intent again


def test_relay_readback_is_ignored_while_the_link_is_down() -> None:
    door = online(make_spec(FAIL_SECURE))
    door.feed(LinkChanged(False, 1.0, "timeout"))
    assert door.feed(RelayRead(True, True, 2.0)) == []
    assert door.state.relay is True
    assert Fault.RELAY not in door.state.faults
    assert lock_state(door.spec, door.state) == "unknown"


@pytest.mark.parametrize(("lock", "action"), STUCK_LOW)
def test_link_loss_during_a_probe_keeps_the_probe(lock: str, action: str) -> None:
    """Regression: losing the link mid-probe must neither change the relay nor latch the fault."""
    door = online(make_spec(lock, fault_retry_s=10.0))
    door.feed(Command(action, 0.0))
    door.feed(RelayRead(False, True, 1.0))
    door.feed(Tick(11.0))
    assert door.state.probing
    probe_relay = door.desired

    door.feed(LinkChanged(False, 12.0, "timeout"))
    assert door.desired is probe_relay  # a link fault never changes the relay command
    door.feed(LinkChanged(True, 13.0))
    assert door.desired is probe_relay

    effects = door.feed(RelayRead(True, False, 14.0))  # the relay follows again
    assert alarms(effects) == [{"alarm": "fault", "active": False, "fault": "relay"}]
    assert door.state.faults == frozenset()


def test_retry_deadline_is_not_offered_while_the_link_is_down() -> None:
    """Regression: a deadline a Tick cannot act on made the service's tick loop spin."""
    door = online(make_spec(FAIL_SAFE, fault_retry_s=10.0))
    door.feed(RelayRead(False, True, 1.0))
    assert door.deadline == 11.0
    door.feed(LinkChanged(False, 2.0, "timeout"))
    assert door.deadline is None
    assert door.feed(Tick(20.0)) == []
    assert not door.state.probing
    door.feed(LinkChanged(True, 30.0))
    assert door.deadline == 11.0  # overdue: the service ticks at once
    door.feed(Tick(30.0))
    assert door.state.probing
    assert door.deadline is None


# --------------------------------------------------------------------------- queries


@pytest.mark.parametrize(
    ("lock", "energised", "expected"),
    [
        (FAIL_SECURE, True, "released"),
        (FAIL_SECURE, False, "locked"),
        (FAIL_SAFE, True, "locked"),
        (FAIL_SAFE, False, "released"),
    ],
)
def test_lock_state_follows_the_readback(lock: str, energised: bool, expected: str) -> None:
    spec = make_spec(lock)
    door = online(spec)
    assert lock_state(spec, door.state) == "unknown"  # no readback yet
    door.feed(RelayRead(energised, False, 1.0))
    assert lock_state(spec, door.state) == expected
    door.feed(LinkChanged(False, 2.0, "timeout"))
    assert lock_state(spec, door.state) == "unknown"


@pytest.mark.parametrize("lock", LOCKS)
@pytest.mark.parametrize("intent", list(Intent))
@pytest.mark.parametrize(("relay_fault", "probing"), [(False, False), (True, False), (True, True)])
def test_desired_relay_table(lock: str, intent: Intent, relay_fault: bool, probing: bool) -> None:
    spec = make_spec(lock)
    state = DoorState(
        intent=intent,
        pulse_until=5.0 if intent is Intent.PULSE else None,
        link_up=True,
        seen_up=True,
        faults=frozenset({Fault.RELAY}) if relay_fault else frozenset(),
        probing=probing,
    )
    want_released = intent is not Intent.LOCKED
    if relay_fault and not probing:
        expected = False
    else:
        expected = want_released if lock == FAIL_SECURE else not want_released
    assert desired_relay(spec, state) is expected


@given(
    lock=st.sampled_from(LOCKS),
    intent=st.sampled_from([Intent.PULSE, Intent.UNLOCKED]),
    faults=st.sets(st.sampled_from(list(Fault))),
    probing=st.booleans(),
    secured=st.booleans(),
)
def test_an_egress_door_meant_open_is_released_whatever_its_faults_or_hold(
    lock: str, intent: Intent, faults: set[Fault], probing: bool, secured: bool
) -> None:
    spec = make_spec(lock, egress=True)
    state = DoorState(
        intent=intent,
        pulse_until=5.0 if intent is Intent.PULSE else None,
        link_up=Fault.LINK not in faults,
        seen_up=True,
        faults=frozenset(faults),
        probing=probing,
        secured=secured,
    )
    assert desired_relay(spec, state) is spec.relay_for(True)


@pytest.mark.parametrize("lock", LOCKS)
def test_rex_releases_a_held_egress_door_despite_a_relay_fault(lock: str) -> None:
    spec = make_spec(lock, egress=True, rex_unlocks=False)
    door = online(spec)
    door.feed(Hold(True, False, False, 1.0))  # a lockdown holds it
    door.feed(RelayRead(door.desired, True, 2.0))  # a readback mismatch: relay fault
    assert Fault.RELAY in door.state.faults
    assert door.desired is spec.relay_for(False)  # held: commanded locked meanwhile
    door.feed(RexChanged(True, 3.0))  # someone inside needs out
    assert door.desired is spec.relay_for(True)
    door.feed(RexChanged(False, 3.2))
    door.feed(Tick(3.0 + spec.rex_pulse_s + 0.1))  # the REX pulse is over
    assert door.desired is spec.relay_for(False)


@pytest.mark.parametrize("lock", LOCKS)
def test_losing_the_input_board_faults_the_door_and_forgets_its_contact(lock: str) -> None:
    spec = make_spec(lock)
    door = online(spec)
    door.feed(ContactChanged(True, 1.0))  # forced open, seen by the input board
    assert door.phase() is Phase.FORCED_OPEN
    relay = door.desired
    effects = door.feed(InputsLinkChanged(False, 2.0, "input board io2: timeout"))
    assert alarms(effects) == [
        {"alarm": "fault", "active": True, "fault": "input", "detail": "input board io2: timeout"}
    ]
    assert door.phase() is Phase.FAULT
    assert door.state.contact.value == "unknown"  # (by value: mypy keeps the narrowed enum)
    assert door.desired is relay  # the relay command does not change
    assert door.feed(InputsLinkChanged(False, 2.5, "again")) == []  # one edge only
    # back: read afresh (the door was closed meanwhile), then the link reports up
    door.feed(ContactChanged(False, 3.0))
    effects = door.feed(InputsLinkChanged(True, 3.0))
    assert alarms(effects)[0] == {"alarm": "fault", "active": False, "fault": "input"}
    assert door.phase() is Phase.LOCKED
    assert door.state.contact is Contact.CLOSED


def test_losing_only_the_rex_board_keeps_the_contact_read_elsewhere() -> None:
    door = online(make_spec(FAIL_SECURE))
    door.feed(ContactChanged(True, 1.0))  # forced open, read on the relay's board
    door.feed(InputsLinkChanged(False, 2.0, "input board io2", contact=False, rex=True))
    assert Fault.INPUT in door.state.faults
    assert door.state.contact.value == "open"  # still known: it is not on the lost board
    assert door.state.forced


def test_next_deadline_is_the_earliest_of_pulse_held_open_and_retry() -> None:
    spec = make_spec(FAIL_SECURE, pulse_s=50.0, held_open_s=30.0, fault_retry_s=10.0)
    door = online(spec)
    assert door.deadline is None
    door.feed(Command("pulse", 0.0))
    assert door.deadline == 50.0
    door.feed(ContactChanged(True, 5.0))
    assert door.deadline == 35.0
    door.feed(RelayRead(False, True, 6.0))
    assert door.deadline == 16.0
    door.feed(Tick(16.0))  # probe
    assert door.deadline == 35.0
    door.feed(Tick(35.0))  # held-open
    assert door.deadline == 50.0
    door.feed(Tick(50.0))  # pulse over
    assert door.deadline is None


# --------------------------------------------------------------------------- no-command sequences

_NOW = st.just(0.0)
INPUT_EVENTS: st.SearchStrategy[DoorEvent] = st.one_of(
    st.builds(ContactChanged, st.booleans(), _NOW),
    st.builds(TamperChanged, st.booleans(), _NOW),
    st.builds(RelayRead, st.booleans(), st.booleans(), _NOW),
    st.builds(LinkChanged, st.booleans(), _NOW, st.sampled_from(["", "timeout"])),
    st.builds(Tick, _NOW),
)
TIME_STEPS = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 5.0, 10.0]), st.floats(0.0, 20.0))


@settings(max_examples=200, deadline=None)
@given(data=st.data(), rex_unlocks=st.booleans())
def test_no_input_link_or_relay_sequence_releases_a_fail_secure_door(
    data: st.DataObject, rex_unlocks: bool
) -> None:
    """Only commands, and REX on a door configured to release on REX, may energise a strike."""
    events = INPUT_EVENTS
    if not rex_unlocks:
        events |= st.builds(RexChanged, st.booleans(), _NOW)  # shunts only: allowed here
    spec = make_spec(FAIL_SECURE, rex_unlocks=rex_unlocks, pulse_s=1.0, fault_retry_s=1.0)
    state = DoorState()
    now = 0.0
    for dt, template in data.draw(st.lists(st.tuples(TIME_STEPS, events), max_size=60)):
        now += dt
        state, _ = step(spec, state, replace(template, now=now))
        assert desired_relay(spec, state) is False
        assert state.intent is Intent.LOCKED


# --------------------------------------------------------------------------- stateful model


ALARM_KEYS = ("tamper", "forced-open", "held-open", "fault:link", "fault:relay", "fault:input")


@dataclass
class Model:
    """Reference model of intent, pulse, shunt, contact and the active alarms."""

    intent: Intent = Intent.LOCKED
    pulse_until: float | None = None
    shunt_until: float = -math.inf
    rex: bool = False
    contact: Contact = Contact.UNKNOWN
    link_up: bool = False
    inputs_down: bool = False
    active: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(ALARM_KEYS, False))

    def start_pulse(self, until: float) -> None:
        if self.pulse_until is not None:
            until = max(until, self.pulse_until)
        self.intent = Intent.PULSE
        self.pulse_until = until

    def end_pulse(self) -> None:
        self.intent = Intent.LOCKED
        self.pulse_until = None

    def would_force(self, now: float) -> bool:
        """Whether opening now is an opening nobody authorised."""
        return self.intent is Intent.LOCKED and now > self.shunt_until and not self.rex

    def apply(self, spec: DoorSpec, event: DoorEvent) -> None:
        match event:
            case Command(action="pulse", now=now, duration_s=duration):
                if self.intent is not Intent.UNLOCKED:
                    self.start_pulse(now + (spec.pulse_s if duration is None else duration))
                    assert self.pulse_until is not None
                    self.shunt_until = max(self.shunt_until, self.pulse_until + spec.relock_grace_s)
            case Command(action="unlock"):
                self.intent, self.pulse_until = Intent.UNLOCKED, None
            case Command(action="lock", now=now):
                self.end_pulse()
                self.shunt_until = now
            case ContactChanged(open=is_open, now=now):
                if not is_open and self.contact is Contact.OPEN and self.intent is Intent.PULSE:
                    self.end_pulse()
                    self.shunt_until = now
                self.contact = Contact.OPEN if is_open else Contact.CLOSED
            case RexChanged(pressed=pressed, now=now):
                if pressed and not self.rex:
                    self.shunt_until = max(
                        self.shunt_until, now + spec.rex_pulse_s + spec.relock_grace_s
                    )
                    if spec.rex_unlocks and self.intent is not Intent.UNLOCKED:
                        self.start_pulse(now + spec.rex_pulse_s)
                self.rex = pressed
            case LinkChanged(up=up):
                if self.link_up and not up:
                    self.contact = Contact.UNKNOWN
                self.link_up = up
            case InputsLinkChanged(up=up, contact=contact, rex=rex):
                if not up and not self.inputs_down:
                    if contact:
                        self.contact = Contact.UNKNOWN
                    if rex:
                        self.rex = False
                self.inputs_down = not up
            case Tick(now=now):
                if self.pulse_until is not None and now >= self.pulse_until:
                    self.end_pulse()
            case _:
                pass


def alarm_key(data: dict[str, Any]) -> str:
    name = str(data["alarm"])
    return f"fault:{data['fault']}" if name == "fault" else name


DT = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0]), st.floats(0.0, 12.0))


class DoorMachineTest(RuleBasedStateMachine):
    """Random event sequences against one door; ``LOCK`` is set by the subclasses below."""

    LOCK: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.spec = make_spec(self.LOCK)
        self.state = DoorState()
        self.model = Model()
        self.now = 0.0

    @initialize(
        pulse_s=st.sampled_from([0.5, 2.0, 5.0]),
        held_open_s=st.sampled_from([1.0, 3.0, 30.0]),
        rex_unlocks=st.booleans(),
        rex_pulse_s=st.sampled_from([0.5, 2.0, 5.0]),
        fault_retry_s=st.sampled_from([1.0, 5.0]),
        relock_grace_s=st.sampled_from([0.0, 1.0]),
    )
    def configure(
        self,
        pulse_s: float,
        held_open_s: float,
        rex_unlocks: bool,
        rex_pulse_s: float,
        fault_retry_s: float,
        relock_grace_s: float,
    ) -> None:
        self.spec = DoorSpec(
            "door",
            self.LOCK,
            pulse_s=pulse_s,
            held_open_s=held_open_s,
            rex_unlocks=rex_unlocks,
            rex_pulse_s=rex_pulse_s,
            fault_retry_s=fault_retry_s,
            relock_grace_s=relock_grace_s,
        )

    # -- stepping, with the per-transition checks ------------------------------------------

    def apply(self, event: DoorEvent) -> None:
        spec, before, model = self.spec, self.state, self.model
        would_force = model.would_force(event.now)
        intent_before = model.intent
        after, effects = step(spec, before, event)  # (g) never raises
        self.state = after
        model.apply(spec, event)

        # (e) every phase change, and only a phase change, comes with one door.state record
        state_records = [r for r in effects if r.kind == "door.state"]
        if after.phase is before.phase:
            assert state_records == []
        else:
            assert [r.data for r in state_records] == [
                {"from": before.phase.value, "to": after.phase.value, "intent": after.intent.value}
            ]
        assert all(r.kind in {"door.state", "door.alarm", "door.rex"} for r in effects)

        # (f) alarm edges alternate per alarm; the model's view matches the state
        for record in effects:
            if record.kind != "door.alarm":
                continue
            key = alarm_key(record.data)
            active = record.data["active"]
            assert isinstance(active, bool)
            assert model.active[key] is not active, f"{key} edge active={active} repeated"
            model.active[key] = active
        assert model.active["tamper"] is after.tamper
        assert model.active["forced-open"] is after.forced
        assert model.active["held-open"] is after.held
        assert model.active["fault:relay"] is (Fault.RELAY in after.faults)
        assert model.active["fault:link"] is (Fault.LINK in after.faults and after.seen_up)
        assert model.active["fault:input"] is (Fault.INPUT in after.faults) is model.inputs_down

        # (d) forced-open is raised exactly for an unauthorised opening
        raised = [r for r in effects if r.kind == "door.alarm" and r.data["active"] is True]
        forced_raised = [r for r in raised if r.data["alarm"] == "forced-open"]
        opening = (
            isinstance(event, ContactChanged) and event.open and before.contact is not Contact.OPEN
        )
        if forced_raised:
            assert opening
            assert intent_before is Intent.LOCKED
            assert would_force
        if opening and would_force and not before.forced:
            assert len(forced_raised) == 1
        # held-open is raised only by time, for an authorised opening of a door not held unlocked
        if any(r.data["alarm"] == "held-open" for r in raised):
            assert isinstance(event, Tick)
            assert before.authorised_open
            assert after.intent is not Intent.UNLOCKED
            assert before.opened_at is not None
            assert event.now >= before.opened_at + spec.held_open_s

        # (a) only a command or a REX press turns a locked intent into a release
        if before.intent is Intent.LOCKED and after.intent is not Intent.LOCKED:
            assert isinstance(event, Command | RexChanged)
            if isinstance(event, RexChanged):
                assert event.pressed
                assert spec.rex_unlocks
        if isinstance(event, LinkChanged):
            assert desired_relay(spec, after) is desired_relay(spec, before)
        # a relay fault is raised only by a mismatching readback over a working link ...
        if Fault.RELAY in after.faults and Fault.RELAY not in before.faults:
            assert isinstance(event, RelayRead)
            assert event.mismatched
            assert before.link_up
        # ... and clears only on a readback that agrees with the intent: a fresh one, or at the
        # retry time the last one, when it already shows the intent's value
        if Fault.RELAY in before.faults and Fault.RELAY not in after.faults:
            # (the intent after the event: a Tick may end a pulse before it looks at the relay)
            intent_relay = spec.relay_for(after.intent is not Intent.LOCKED)
            if isinstance(event, RelayRead):
                assert not event.mismatched
                assert before.probing or event.energised == intent_relay
            else:
                assert isinstance(event, Tick)
                assert not before.probing
                assert before.retry_at is not None
                assert event.now >= before.retry_at
                assert before.relay == intent_relay

        # (b) a pulse always ends, and a Tick consumes every deadline up to its time
        if isinstance(event, Tick):
            if before.intent is Intent.PULSE:
                assert before.pulse_until is not None
                if event.now >= before.pulse_until:
                    assert after.intent is not Intent.PULSE
            deadline = next_deadline(spec, after)
            assert deadline is None or deadline > event.now

        # reference model of intent, pulse, shunt window and contact
        assert after.intent is model.intent
        assert after.pulse_until == model.pulse_until
        assert after.shunt_until == model.shunt_until
        assert after.rex is model.rex
        assert after.contact is model.contact
        assert after.link_up is model.link_up

    # -- rules -----------------------------------------------------------------------------

    @rule(dt=DT)
    def wait(self, dt: float) -> None:
        self.now += dt

    @rule(dt=DT)
    def tick(self, dt: float) -> None:
        self.now += dt
        self.apply(Tick(self.now))

    @precondition(lambda self: next_deadline(self.spec, self.state) is not None)
    @rule()
    def tick_at_deadline(self) -> None:
        deadline = next_deadline(self.spec, self.state)
        assert deadline is not None
        self.now = max(self.now, deadline)
        self.apply(Tick(self.now))

    @rule(
        dt=DT,
        action=st.sampled_from(sorted(COMMANDS)),
        duration=st.none() | st.sampled_from([0.5, 1.0, 10.0]),
    )
    def command(self, dt: float, action: str, duration: float | None) -> None:
        self.now += dt
        self.apply(Command(action, self.now, duration))

    @rule(dt=DT, is_open=st.booleans())
    def contact(self, dt: float, is_open: bool) -> None:
        self.now += dt
        self.apply(ContactChanged(is_open, self.now))

    @rule(dt=DT, pressed=st.booleans())
    def rex(self, dt: float, pressed: bool) -> None:
        self.now += dt
        self.apply(RexChanged(pressed, self.now))

    @rule(dt=DT, active=st.booleans())
    def tamper(self, dt: float, active: bool) -> None:
        self.now += dt
        self.apply(TamperChanged(active, self.now))

    @rule(dt=DT, up=st.booleans(), reason=st.sampled_from(["", "timeout", "refused"]))
    def link(self, dt: float, up: bool, reason: str) -> None:
        self.now += dt
        self.apply(LinkChanged(up, self.now, reason))

    @rule(
        dt=DT,
        up=st.booleans(),
        reason=st.sampled_from(["", "input board io2: timeout"]),
        contact=st.booleans(),
        rex=st.booleans(),
    )
    def inputs_link(self, dt: float, up: bool, reason: str, contact: bool, rex: bool) -> None:
        self.now += dt
        self.apply(InputsLinkChanged(up, self.now, reason, contact, rex))

    @rule(dt=DT, energised=st.booleans(), mismatched=st.booleans())
    def relay_read_any(self, dt: float, energised: bool, mismatched: bool) -> None:
        self.now += dt
        self.apply(RelayRead(energised, mismatched, self.now))

    @rule(dt=DT, stuck=st.none() | st.booleans())
    def relay_read(self, dt: float, stuck: bool | None) -> None:
        """A readback as the service makes it: the relay follows the command unless stuck."""
        self.now += dt
        want = desired_relay(self.spec, self.state)
        energised = want if stuck is None else stuck
        self.apply(RelayRead(energised, energised != want, self.now))

    @invariant()
    def readback_fast_path_is_step(self) -> None:
        """observe_relay, where it applies, is exactly step's RelayRead without its effects."""
        for energised in (False, True):
            for mismatched in (False, True):
                event = RelayRead(energised, mismatched, self.now)
                fast = observe_relay(self.state, energised, mismatched)
                full, effects = step(self.spec, self.state, event)
                if fast is None:
                    assert self.state.link_up
                    assert mismatched or Fault.RELAY in self.state.faults
                    continue
                assert fast == full
                assert effects == []
                assert desired_relay(self.spec, fast) is desired_relay(self.spec, self.state)
                assert next_deadline(self.spec, fast) == next_deadline(self.spec, self.state)

    # -- invariants on every state ---------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        spec, s = self.spec, self.state
        # (c) phase is FAULT iff there is a fault; then forced > held > open > unlocked > locked
        assert (s.phase is Phase.FAULT) is bool(s.faults)
        expected = (
            Phase.FAULT
            if s.faults
            else Phase.FORCED_OPEN
            if s.forced
            else Phase.HELD_OPEN
            if s.held
            else Phase.OPEN
            if s.contact is Contact.OPEN
            else Phase.LOCKED
            if s.intent is Intent.LOCKED
            else Phase.UNLOCKED
        )
        assert s.phase is expected
        assert (Fault.LINK in s.faults) is not s.link_up
        assert (s.pulse_until is not None) is (s.intent is Intent.PULSE)
        # (a) the relay value comes from the intent, or from the fail state of a faulted relay
        if Fault.RELAY in s.faults and not s.probing:
            assert desired_relay(spec, s) is False
        else:
            assert desired_relay(spec, s) is spec.relay_for(s.intent is not Intent.LOCKED)
        if released(spec, s):
            assert s.intent is not Intent.LOCKED or (
                spec.lock == FAIL_SAFE and Fault.RELAY in s.faults
            )
        # the lock state shown to people comes from a readback over a working link only
        shown = lock_state(spec, s)
        if s.relay is None or not s.link_up:
            assert shown == "unknown"
        else:
            assert shown == ("released" if spec.released_by(s.relay) else "locked")
        # a relay fault always has a way out: a probe running or one scheduled
        if Fault.RELAY in s.faults:
            assert s.probing or s.retry_at is not None
        else:
            assert not s.probing
            assert s.retry_at is None

    @invariant()
    def deadline_is_exact(self) -> None:
        """A Tick before the deadline changes nothing; at or after it, it changes the door."""
        spec, s = self.spec, self.state
        deadline = next_deadline(spec, s)
        after, effects = step(spec, s, Tick(self.now))
        if deadline is None or deadline > self.now:
            assert after == s
            assert effects == []
        else:
            assert after != s


class FailSecureDoor(DoorMachineTest):
    LOCK = FAIL_SECURE


class FailSafeDoor(DoorMachineTest):
    LOCK = FAIL_SAFE


STATEFUL = settings(max_examples=150, stateful_step_count=50, deadline=None)


@pytest.mark.parametrize("machine", [FailSecureDoor, FailSafeDoor], ids=LOCKS)
def test_door_machine_invariants(machine: type[DoorMachineTest]) -> None:
    run_state_machine_as_test(machine, settings=STATEFUL)


@given(
    faults=st.sets(st.sampled_from(list(Fault)), min_size=1),
    clear=st.sampled_from(list(Fault)),
    lock=st.sampled_from(LOCKS),
)
def test_a_fault_detail_never_outlives_its_fault(
    faults: set[Fault], clear: Fault, lock: str
) -> None:
    spec = make_spec(lock)
    state = DoorState(
        link_up=Fault.LINK not in faults,
        seen_up=True,
        faults=frozenset(faults),
        fault_detail="timeout" if Fault.LINK in faults else "something",
        retry_at=1.0 if Fault.RELAY in faults else None,
        relay=spec.relay_for(False),
        contact=Contact.CLOSED,
    )
    events: dict[Fault, DoorEvent] = {
        Fault.LINK: LinkChanged(True, 2.0),
        Fault.INPUT: InputsLinkChanged(True, 2.0),
        Fault.RELAY: Tick(2.0),  # the relay already shows the intent: cleared at the retry
    }
    event = events[clear]
    after, _ = step(spec, state, event)
    if clear not in faults or clear in after.faults:  # (a relay retry needs the link up)
        assert after.fault_detail == state.fault_detail  # nothing cleared: nothing changes
    elif not after.faults:
        assert after.fault_detail == ""
    elif Fault.LINK in after.faults:
        assert after.fault_detail == "board offline"
    elif Fault.RELAY in after.faults:
        assert after.fault_detail == "relay readback mismatch"
    else:
        assert after.fault_detail == "input board offline"
