"""The pure lockdown machine: every (mode, event) pair of its table, the site-wide events, and
the invariants stated in the header of ``controller/lockdown/machine.py`` on random sequences.

Also the durable form: ``SiteState.to_json``/``from_json`` round-trip every reachable state, and
``from_json`` refuses a damaged document with ValueError, KeyError or TypeError only (what the
runner catches on start-up), never with anything else and never by returning junk that makes the
machine raise later.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from controller.lockdown.machine import TABLE, door_mode_for_level, step
from controller.lockdown.model import (
    HELD,
    SITE,
    AllClear,
    ApplyDoors,
    Effect,
    EndEvacuation,
    FireAlarm,
    FireReset,
    LockdownEvent,
    Mode,
    Record,
    Refused,
    ScopeState,
    SetThreatLevel,
    SiteState,
    StartEvacuation,
    StartLockdown,
    Tick,
    Trigger,
)

WINDOW = 120.0
PANIC = Trigger("panic", "panic-1", "lobby", "button pressed")
OPERATOR = Trigger("operator", "olga", "console", "second report")
SCOPE_EVENTS: tuple[type, ...] = (StartLockdown, StartEvacuation, AllClear, EndEvacuation)
SCOPES = [SITE, "north"]

# --------------------------------------------------------------------------- helpers


def kinds(effects: Iterable[Effect]) -> list[str]:
    """Effects as short names: a Record's kind, 'apply' for ApplyDoors, 'refused' for Refused."""
    out: list[str] = []
    for effect in effects:
        match effect:
            case Record(kind=kind):
                out.append(kind)
            case ApplyDoors():
                out.append("apply")
            case Refused():
                out.append("refused")
    return out


def records(effects: Iterable[Effect], kind: str | None = None) -> list[dict[str, Any]]:
    """The data of the Record effects (of ``kind`` if given)."""
    return [e.data for e in effects if isinstance(e, Record) and kind in (None, e.kind)]


def run(
    state: SiteState, *events: LockdownEvent, window: float = WINDOW
) -> tuple[SiteState, list[Effect]]:
    """Step several events; return the last state and all effects."""
    effects: list[Effect] = []
    for event in events:
        state, more = step(state, event, all_clear_window_s=window)
        effects += more
    return state, effects


def in_mode(mode: Mode, scope: str, *, drill: bool = False, now: float = 10.0) -> SiteState:
    """A state whose ``scope`` is in ``mode``, reached by real events (incident 1 if any)."""
    state = SiteState()
    if mode is Mode.EVACUATION:
        state, _ = run(state, StartEvacuation(scope, PANIC, now, drill=drill))
    elif mode in HELD:
        state, _ = run(state, StartLockdown(scope, PANIC, now, drill=drill))
        if mode is Mode.ALL_CLEAR_PENDING:
            state, _ = run(state, AllClear(scope, "ann", True, "card", now + 10.0))
    assert state.scope(scope).mode is mode
    return state


def scope_event(kind: type, scope: str, now: float) -> LockdownEvent:
    """One event of ``kind`` for the table tests (an authorised all-clear by a second person)."""
    if kind is StartLockdown:
        return StartLockdown(scope, OPERATOR, now)
    if kind is StartEvacuation:
        return StartEvacuation(scope, OPERATOR, now)
    if kind is AllClear:
        return AllClear(scope, "bob", True, "operator", now)
    assert kind is EndEvacuation
    return EndEvacuation(scope, "bob", now)


# --------------------------------------------------------------------------- the table


NEW = "new incident"
SAME = "same incident"
NONE = "no incident"

# (mode, event type) -> (resulting mode, effects, incident afterwards)
EXPECTED: dict[tuple[Mode, type], tuple[Mode, list[str], str]] = {
    (Mode.NORMAL, StartLockdown): (
        Mode.LOCKDOWN,
        ["lockdown.trigger", "lockdown.state", "apply"],
        NEW,
    ),
    (Mode.NORMAL, StartEvacuation): (
        Mode.EVACUATION,
        ["lockdown.trigger", "lockdown.state", "apply"],
        NEW,
    ),
    (Mode.NORMAL, AllClear): (Mode.NORMAL, ["lockdown.refused", "refused"], NONE),
    (Mode.NORMAL, EndEvacuation): (Mode.NORMAL, ["lockdown.refused", "refused"], NONE),
    (Mode.LOCKDOWN, StartLockdown): (Mode.LOCKDOWN, ["lockdown.trigger"], SAME),
    (Mode.LOCKDOWN, StartEvacuation): (Mode.LOCKDOWN, ["lockdown.refused", "refused"], SAME),
    (Mode.LOCKDOWN, AllClear): (
        Mode.ALL_CLEAR_PENDING,
        ["lockdown.allclear", "lockdown.state", "apply"],
        SAME,
    ),
    (Mode.LOCKDOWN, EndEvacuation): (Mode.LOCKDOWN, ["lockdown.refused", "refused"], SAME),
    (Mode.ALL_CLEAR_PENDING, StartLockdown): (
        Mode.LOCKDOWN,
        ["lockdown.trigger", "lockdown.state", "apply"],
        SAME,
    ),
    (Mode.ALL_CLEAR_PENDING, StartEvacuation): (
        Mode.ALL_CLEAR_PENDING,
        ["lockdown.refused", "refused"],
        SAME,
    ),
    (Mode.ALL_CLEAR_PENDING, AllClear): (
        Mode.NORMAL,
        ["lockdown.allclear", "lockdown.end", "lockdown.state", "apply"],
        NONE,
    ),
    (Mode.ALL_CLEAR_PENDING, EndEvacuation): (
        Mode.ALL_CLEAR_PENDING,
        ["lockdown.refused", "refused"],
        SAME,
    ),
    (Mode.EVACUATION, StartLockdown): (
        Mode.LOCKDOWN,
        ["lockdown.end", "lockdown.trigger", "lockdown.state", "apply"],
        NEW,
    ),
    (Mode.EVACUATION, StartEvacuation): (Mode.EVACUATION, ["lockdown.trigger"], SAME),
    (Mode.EVACUATION, AllClear): (Mode.EVACUATION, ["lockdown.refused", "refused"], SAME),
    (Mode.EVACUATION, EndEvacuation): (
        Mode.NORMAL,
        ["lockdown.end", "lockdown.state", "apply"],
        NONE,
    ),
}


def test_table_is_complete() -> None:
    assert set(TABLE) == {(mode, kind) for mode in Mode for kind in SCOPE_EVENTS}
    assert set(EXPECTED) == set(TABLE)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("kind", SCOPE_EVENTS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("mode", list(Mode), ids=str)
def test_table_pair(mode: Mode, kind: type, scope: str) -> None:
    before = in_mode(mode, scope, drill=True)
    other = "south" if scope != "south" else "north"
    before = replace(before, threat_level=3)
    old = before.scope(scope)
    after, effects = step(before, scope_event(kind, scope, 40.0), all_clear_window_s=WINDOW)

    want_mode, want_effects, incident = EXPECTED[(mode, kind)]
    assert after.scope(scope).mode is want_mode
    assert kinds(effects) == want_effects
    assert after.threat_level == 3
    assert after.fire is False
    assert after.scope(other) == ScopeState()
    new = after.scope(scope)
    if incident == NEW:
        assert new.incident == before.next_incident
        assert after.next_incident == before.next_incident + 1
        assert new.trigger == OPERATOR
        assert new.since == 40.0
        assert new.drill is False  # the new incident's own flag, not the old one's
    else:
        assert after.next_incident == before.next_incident
    if incident == SAME:
        assert new.incident == old.incident == 1
        assert new.trigger == PANIC  # a second trigger is recorded but does not replace the first
        # a real (non-drill) trigger makes a drill incident real; nothing else changes the flag
        retrigger = kind in (StartLockdown, StartEvacuation) and "refused" not in want_effects
        assert new.drill is not retrigger
    if incident == NONE:
        assert new in (ScopeState(), ScopeState(mode=Mode.NORMAL, since=40.0))
        if scope != SITE:
            assert new == ScopeState()
    if scope != SITE and want_mode is Mode.NORMAL:
        assert all(name != scope for name, _ in after.scopes)  # NORMAL zones are dropped
    # every record names the scope; a mode change has exactly one lockdown.state record
    for data in records(effects):
        assert data["scope"] == scope
    transitions = records(effects, "lockdown.state")
    if want_mode is mode:
        assert transitions == []
    else:
        assert [t["to"] for t in transitions] == [want_mode.value]
    if "refused" in want_effects:
        assert after == before
        (refusal,) = records(effects, "lockdown.refused")
        assert refusal["event"] == kind.__name__
        assert refusal["incident"] == old.incident


def test_state_records_say_from_and_to() -> None:
    state, effects = run(SiteState(), StartLockdown("north", PANIC, 5.0, drill=True))
    (rec,) = records(effects, "lockdown.state")
    assert rec == {
        "scope": "north",
        "incident": 1,
        "drill": True,
        "from": "normal",
        "to": "lockdown",
    }
    (trig,) = records(effects, "lockdown.trigger")
    assert trig == {
        "scope": "north",
        "incident": 1,
        "drill": True,
        "source": "panic",
        "who": "panic-1",
        "where": "lobby",
        "reason": "button pressed",
        "level": None,
        "again": False,
    }
    assert state.scope("north") == ScopeState(
        mode=Mode.LOCKDOWN, incident=1, drill=True, trigger=PANIC, since=5.0
    )


def test_all_clear_records_and_end() -> None:
    state = in_mode(Mode.LOCKDOWN, SITE, now=100.0)
    state, first = run(state, AllClear(SITE, "ann", True, "card", 130.0))
    assert state.scope(SITE).first_clear == "ann"
    assert state.scope(SITE).clear_deadline == 130.0 + WINDOW
    assert records(first, "lockdown.allclear") == [
        {"scope": SITE, "incident": 1, "drill": False, "person": "ann", "via": "card", "n": 1}
    ]
    state, second = run(state, AllClear(SITE, "bob", True, "operator", 140.0))
    assert state.scope(SITE) == ScopeState(mode=Mode.NORMAL, since=140.0)
    assert records(second, "lockdown.allclear")[0]["n"] == 2
    (end,) = records(second, "lockdown.end")
    assert end == {
        "scope": SITE,
        "incident": 1,
        "drill": False,
        "duration_s": 40.0,
        "by": ["ann", "bob"],
        "how": "all-clear",
    }
    (rec,) = records(second, "lockdown.state")
    assert (rec["from"], rec["to"], rec["incident"]) == ("all-clear-pending", "normal", 1)


def test_evacuation_superseded_by_lockdown() -> None:
    state = in_mode(Mode.EVACUATION, "north", drill=True, now=10.0)
    state, effects = run(state, StartLockdown("north", OPERATOR, 25.0))
    (end,) = records(effects, "lockdown.end")
    assert (end["incident"], end["drill"], end["how"], end["by"]) == (
        1,
        True,
        "superseded",
        ["olga"],
    )
    assert end["duration_s"] == 15.0
    new = state.scope("north")
    assert (new.mode, new.incident, new.drill, new.trigger) == (Mode.LOCKDOWN, 2, False, OPERATOR)
    assert state.held("north")
    assert not state.evacuating("north")


# --------------------------------------------------------------------------- all-clear


@pytest.mark.parametrize("scope", SCOPES)
def test_one_person_never_clears(scope: str) -> None:
    state = in_mode(Mode.LOCKDOWN, scope)
    refusals = 0
    for t in range(20, 400, 10):
        state, effects = run(state, AllClear(scope, "ann", True, "card", float(t)))
        assert state.held(scope)
        assert "lockdown.end" not in kinds(effects)
        if "refused" in kinds(effects):
            refusals += 1
            assert "different person" in records(effects)[0]["reason"]
    assert refusals > 20


@pytest.mark.parametrize("mode", [Mode.LOCKDOWN, Mode.ALL_CLEAR_PENDING])
def test_unauthorised_all_clear_refused(mode: Mode) -> None:
    before = in_mode(mode, SITE)
    after, effects = run(before, AllClear(SITE, "eve", False, "card", 25.0))
    assert after == before
    assert kinds(effects) == ["lockdown.refused", "refused"]
    assert "eve may not" in records(effects)[0]["reason"]


def test_second_all_clear_after_window_starts_again() -> None:
    state = in_mode(Mode.LOCKDOWN, SITE, now=0.0)
    state, _ = run(state, AllClear(SITE, "ann", True, "card", 10.0))
    # no Tick noticed the expiry: bob's all-clear is the first of a new window
    state, effects = run(state, AllClear(SITE, "bob", True, "card", 10.0 + WINDOW + 0.5))
    assert kinds(effects) == [
        "lockdown.state",
        "apply",
        "lockdown.allclear",
        "lockdown.state",
        "apply",
    ]
    assert records(effects, "lockdown.state")[0]["reason"] == "all-clear window expired"
    sc = state.scope(SITE)
    assert (sc.mode, sc.first_clear, sc.clear_deadline) == (
        Mode.ALL_CLEAR_PENDING,
        "bob",
        10.5 + 2 * WINDOW,
    )
    state, _ = run(state, AllClear(SITE, "ann", True, "operator", 200.0))
    assert state.scope(SITE).mode is Mode.NORMAL


def test_second_all_clear_at_the_deadline_counts() -> None:
    state = in_mode(Mode.ALL_CLEAR_PENDING, SITE, now=0.0)  # ann at 10.0
    state, _ = run(state, AllClear(SITE, "bob", True, "card", 10.0 + WINDOW))
    assert state.scope(SITE).mode is Mode.NORMAL


def test_retrigger_cancels_pending_all_clear() -> None:
    state = in_mode(Mode.ALL_CLEAR_PENDING, "north", now=0.0)
    state, effects = run(state, StartLockdown("north", OPERATOR, 15.0))
    sc = state.scope("north")
    assert (sc.mode, sc.first_clear, sc.clear_deadline, sc.incident) == (
        Mode.LOCKDOWN,
        None,
        None,
        1,
    )
    assert records(effects, "lockdown.trigger")[0]["again"] is True
    assert records(effects, "lockdown.state")[0]["reason"] == "new trigger"
    # bob alone is now only the first person again
    state, _ = run(state, AllClear("north", "bob", True, "card", 16.0))
    assert state.scope("north").mode is Mode.ALL_CLEAR_PENDING
    assert state.scope("north").first_clear == "bob"


# --------------------------------------------------------------------------- scopes


def test_site_lockdown_holds_every_zone() -> None:
    state, _ = run(SiteState(), StartLockdown(SITE, PANIC, 1.0))
    assert all(state.held(z) for z in ("north", "south", "anything"))
    assert not any(state.evacuating(z) for z in ("north", "south"))


def test_zone_lockdown_holds_only_its_zone() -> None:
    state, _ = run(SiteState(), StartLockdown("north", PANIC, 1.0))
    assert state.held("north")
    assert not state.held("south")
    assert state.scope(SITE).mode is Mode.NORMAL
    state, _ = run(state, StartEvacuation("south", OPERATOR, 2.0))
    assert state.evacuating("south")
    assert not state.evacuating("north")
    assert [n for n, _ in state.scopes] == ["north", "south"]
    assert (state.scope("north").incident, state.scope("south").incident) == (1, 2)


def test_site_evacuation_releases_every_zone() -> None:
    state, _ = run(SiteState(), StartEvacuation(SITE, PANIC, 1.0))
    assert state.evacuating("north")
    assert state.evacuating("south")
    assert not state.held("north")


def test_zone_clear_leaves_site_lockdown() -> None:
    state, _ = run(
        SiteState(),
        StartLockdown(SITE, PANIC, 1.0),
        StartLockdown("north", OPERATOR, 2.0),
        AllClear("north", "ann", True, "card", 3.0),
        AllClear("north", "bob", True, "card", 4.0),
    )
    assert state.scope("north").mode is Mode.NORMAL
    assert state.held("north")  # still held by the site lockdown
    state, _ = run(
        state,
        AllClear(SITE, "ann", True, "card", 5.0),
        AllClear(SITE, "bob", True, "card", 6.0),
    )
    assert not state.held("north")


# --------------------------------------------------------------------------- numbering, drills


def test_incident_numbering() -> None:
    state, _ = run(
        SiteState(),
        StartLockdown(SITE, PANIC, 1.0),  # 1
        StartLockdown(SITE, OPERATOR, 2.0),  # same incident
        StartEvacuation("south", PANIC, 3.0),  # 2
        StartEvacuation("south", PANIC, 4.0),  # same
        StartLockdown("south", PANIC, 5.0),  # 3, supersedes 2
        AllClear(SITE, "ann", True, "card", 6.0),
        AllClear(SITE, "bob", True, "card", 7.0),
        StartLockdown(SITE, PANIC, 8.0),  # 4
    )
    assert state.scope(SITE).incident == 4
    assert state.scope("south").incident == 3
    assert state.next_incident == 5
    state, _ = run(state, AllClear("west", "ann", True, "card", 9.0))  # refused: no number used
    assert state.next_incident == 5


def test_drill_flag_in_every_record_of_the_incident() -> None:
    state, effects = run(
        SiteState(),
        StartLockdown(SITE, PANIC, 1.0, level=5, drill=True),
        StartLockdown(SITE, OPERATOR, 2.0, drill=True),
        StartEvacuation(SITE, OPERATOR, 3.0),  # refused
        AllClear(SITE, "eve", False, "card", 4.0),  # refused
        AllClear(SITE, "ann", True, "card", 5.0),
        AllClear(SITE, "ann", True, "operator", 6.0),  # refused: same person
        StartLockdown(SITE, OPERATOR, 7.0, drill=True),  # cancels the pending all-clear
        EndEvacuation(SITE, "bob", 7.5),  # refused
        AllClear(SITE, "ann", True, "card", 8.0),
        AllClear(SITE, "bob", True, "card", 9.0),
    )
    assert state.scope(SITE).mode is Mode.NORMAL
    incident_records = [
        (e.kind, e.data) for e in effects if isinstance(e, Record) and e.kind != "threat.level"
    ]
    assert len(incident_records) >= 14
    for kind, data in incident_records:
        assert (data["incident"], data["drill"]) == (1, True), kind
    # the threat level the drill set is attributed to the drill too
    (level,) = records(effects, "threat.level")
    assert (level["from"], level["to"], level["incident"], level["drill"]) == (0, 5, 1, True)


def test_real_trigger_during_a_drill_makes_the_incident_real() -> None:
    state, _ = run(SiteState(), StartLockdown(SITE, PANIC, 1.0, drill=True))
    state, effects = run(state, StartLockdown(SITE, OPERATOR, 2.0))
    assert state.scope(SITE).drill is False
    assert records(effects, "lockdown.trigger")[0]["drill"] is False
    # but a drill trigger during a real incident does not make it a drill
    state, _ = run(state, StartLockdown(SITE, PANIC, 3.0, drill=True))
    assert state.scope(SITE).drill is False
    state, _ = run(SiteState(), StartEvacuation("north", PANIC, 1.0, drill=True))
    state, _ = run(state, StartEvacuation("north", OPERATOR, 2.0))
    assert state.scope("north").drill is False


# --------------------------------------------------------------------------- site-wide events


def test_fire_alarm_latches() -> None:
    state = in_mode(Mode.LOCKDOWN, SITE)
    state, effects = run(state, FireAlarm("stair-2", 20.0))
    assert state.fire is True
    assert kinds(effects) == ["fire.alarm", "apply"]
    assert records(effects) == [{"where": "stair-2", "latched": False}]
    assert state.scope(SITE).mode is Mode.LOCKDOWN  # lockdown persists under fire
    again, effects = run(state, FireAlarm("stair-3", 21.0))
    assert again == state
    assert kinds(effects) == ["fire.alarm"]
    assert records(effects) == [{"where": "stair-3", "latched": True}]


def test_fire_reset() -> None:
    state, effects = run(SiteState(), FireReset("olga", False, 1.0))
    assert state == SiteState()
    assert kinds(effects) == ["fire.reset", "refused"]
    assert records(effects)[0]["refused"] == "no fire alarm"

    burning, _ = run(SiteState(), FireAlarm("stair-2", 1.0))
    state, effects = run(burning, FireReset("olga", True, 2.0))
    assert state == burning
    assert kinds(effects) == ["fire.reset", "refused"]
    assert records(effects)[0]["refused"] == "a fire input is still active"

    state, effects = run(burning, FireReset("olga", False, 3.0))
    assert state.fire is False
    assert state == SiteState()
    assert kinds(effects) == ["fire.reset", "apply"]
    assert records(effects) == [{"who": "olga"}]


def test_fire_reset_refused_while_a_fire_input_cannot_be_read() -> None:
    burning, _ = run(SiteState(), FireAlarm("stair-2", 1.0))
    state, effects = run(burning, FireReset("olga", False, 2.0, inputs_unknown=("fire-panel",)))
    assert state == burning  # still latched: the doors stay released
    assert kinds(effects) == ["fire.reset", "refused"]
    (refused,) = [e.reason for e in effects if isinstance(e, Refused)]
    assert "fire-panel" in refused
    assert records(effects)[0]["refused"] == refused
    state, _ = run(burning, FireReset("olga", False, 3.0, inputs_unknown=()))
    assert not state.fire


def test_unauthorised_end_of_evacuation_is_refused_and_journaled() -> None:
    state, _ = run(SiteState(), StartEvacuation("north", OPERATOR, 1.0))
    after, effects = run(state, EndEvacuation("north", "#9 cy", 2.0, authorised=False))
    assert after == state
    assert kinds(effects) == ["lockdown.refused", "refused"]
    refused = records(effects, "lockdown.refused")[0]
    assert (refused["event"], refused["incident"]) == ("EndEvacuation", 1)
    assert refused["reason"] == "#9 cy may not end the evacuation"


def test_fire_does_not_touch_scopes() -> None:
    state = in_mode(Mode.ALL_CLEAR_PENDING, "north")
    after, _ = run(state, FireAlarm("x", 30.0), FireReset("olga", False, 31.0))
    assert after == state


def test_threat_level() -> None:
    state, effects = run(SiteState(), SetThreatLevel(4, "olga", 1.0))
    assert state.threat_level == 4
    assert kinds(effects) == ["threat.level", "apply"]
    assert records(effects) == [{"from": 0, "to": 4, "who": "olga"}]
    same, effects = run(state, SetThreatLevel(4, "olga", 2.0))
    assert same == state
    assert effects == []
    for bad in (-1, 8, 100):
        after, effects = run(state, SetThreatLevel(bad, "olga", 3.0))
        assert after == state
        assert kinds(effects) == ["lockdown.refused", "refused"]
        assert "0..7" in records(effects)[0]["reason"]
    state, _ = run(state, SetThreatLevel(0, "olga", 4.0), SetThreatLevel(7, "olga", 5.0))
    assert state.threat_level == 7


def test_start_lockdown_with_level() -> None:
    state, effects = run(SiteState(), StartLockdown("north", PANIC, 1.0, level=5))
    assert state.threat_level == 5
    assert kinds(effects) == [
        "lockdown.trigger",
        "lockdown.state",
        "apply",
        "threat.level",
        "apply",
    ]
    # the same level again: no change, no record
    state, effects = run(state, StartLockdown("north", PANIC, 2.0, level=5))
    assert kinds(effects) == ["lockdown.trigger"]


@pytest.mark.parametrize("level", [-1, 8, 99])
def test_start_lockdown_with_a_bad_level_still_locks_down(level: int) -> None:
    before = replace(SiteState(), threat_level=2)
    state, effects = run(before, StartLockdown(SITE, PANIC, 1.0, level=level))
    assert state.held("north")
    assert state.threat_level == 2  # the bad level is not applied ...
    assert kinds(effects) == ["lockdown.trigger", "lockdown.state", "apply", "lockdown.refused"]
    assert "0..7" in records(effects, "lockdown.refused")[0]["reason"]
    assert SiteState.from_json(state.to_json()) == state  # ... so a restart can load it


# --------------------------------------------------------------------------- Tick


def test_tick_expires_the_all_clear_window() -> None:
    state = in_mode(Mode.ALL_CLEAR_PENDING, "north", now=0.0)  # ann at 10.0
    deadline = 10.0 + WINDOW
    same, effects = run(state, Tick(deadline))
    assert same == state
    assert effects == []
    state, effects = run(state, Tick(deadline + 0.001))
    sc = state.scope("north")
    assert (sc.mode, sc.first_clear, sc.clear_deadline, sc.incident) == (
        Mode.LOCKDOWN,
        None,
        None,
        1,
    )
    assert kinds(effects) == ["lockdown.state", "apply"]
    assert records(effects)[0]["reason"] == "all-clear window expired"
    # now bob is only a first person again
    state, _ = run(state, AllClear("north", "bob", True, "card", deadline + 1.0))
    assert state.scope("north").mode is Mode.ALL_CLEAR_PENDING


def test_tick_without_auto_revert_never_ends_a_lockdown() -> None:
    state = in_mode(Mode.LOCKDOWN, SITE, now=0.0)
    for now in (1.0, 3600.0, 1e9):
        after, effects = run(state, Tick(now))
        assert after == state
        assert effects == []
        after, effects = run(state, Tick(now, auto_revert_s=0.0))
        assert after == state


def test_auto_revert_when_configured() -> None:
    state = in_mode(Mode.LOCKDOWN, "north", now=100.0, drill=True)
    same, effects = run(state, Tick(699.9, auto_revert_s=600.0))
    assert same == state
    assert effects == []
    after, effects = run(state, Tick(700.0, auto_revert_s=600.0))
    assert after.scope("north").mode is Mode.NORMAL
    assert not after.held("north")
    assert kinds(effects) == ["lockdown.end", "lockdown.state", "apply"]
    (end,) = records(effects, "lockdown.end")
    assert (end["how"], end["by"], end["drill"], end["incident"]) == ("auto-revert", [], True, 1)


@pytest.mark.parametrize("mode", [Mode.ALL_CLEAR_PENDING, Mode.EVACUATION, Mode.NORMAL])
def test_auto_revert_only_ends_lockdown(mode: Mode) -> None:
    state = in_mode(mode, SITE, now=0.0)
    if mode is Mode.ALL_CLEAR_PENDING:  # keep the window open: only auto-revert could act
        state = replace(
            state, scopes=((SITE, replace(state.scope(SITE), clear_deadline=math.inf)),)
        )
    after, effects = run(state, Tick(10_000.0, auto_revert_s=60.0))
    assert after == state
    assert effects == []


def test_tick_handles_every_scope() -> None:
    state, _ = run(
        SiteState(),
        StartLockdown("north", PANIC, 0.0),
        StartLockdown("south", PANIC, 0.0),
        AllClear("south", "ann", True, "card", 1.0),
    )
    state, effects = run(state, Tick(500.0, auto_revert_s=300.0))
    assert state.scope("north").mode is Mode.NORMAL  # auto-reverted
    assert state.scope("south").mode is Mode.LOCKDOWN  # window expired
    assert sorted(r["scope"] for r in records(effects, "lockdown.state")) == ["north", "south"]
    # the expiry renewed the lockdown: auto-revert counts again from it, not from the trigger
    state, _ = run(state, Tick(799.0, auto_revert_s=300.0))
    assert state.scope("south").mode is Mode.LOCKDOWN
    state, _ = run(state, Tick(800.0, auto_revert_s=300.0))
    assert state.scope("south").mode is Mode.NORMAL


def test_auto_revert_counts_from_the_latest_trigger() -> None:
    state, _ = run(SiteState(), StartLockdown(SITE, PANIC, 0.0))
    state, effects = run(state, StartLockdown(SITE, OPERATOR, 299.0))  # a fresh trigger
    assert state.scope(SITE).since == 0.0  # the incident still began at the first one
    state, effects = run(state, Tick(300.0, auto_revert_s=300.0))
    assert state.scope(SITE).mode is Mode.LOCKDOWN
    assert effects == []
    state, effects = run(state, Tick(598.9, auto_revert_s=300.0))
    assert state.scope(SITE).mode is Mode.LOCKDOWN
    state, effects = run(state, Tick(599.0, auto_revert_s=300.0))
    assert state.scope(SITE).mode is Mode.NORMAL
    (end,) = records(effects, "lockdown.end")
    assert (end["how"], end["duration_s"]) == ("auto-revert", 599.0)


def test_auto_revert_counts_from_an_expired_all_clear_window() -> None:
    state, _ = run(
        SiteState(),
        StartLockdown(SITE, PANIC, 0.0),
        AllClear(SITE, "ann", True, "card", 250.0),  # pending: never auto-reverted
    )
    state, _ = run(state, Tick(250.0 + WINDOW + 1.0, auto_revert_s=300.0))  # window expired
    expired_at = 250.0 + WINDOW + 1.0
    assert state.scope(SITE).mode is Mode.LOCKDOWN
    state, effects = run(state, Tick(expired_at + 1.0, auto_revert_s=300.0))
    assert state.scope(SITE).mode is Mode.LOCKDOWN  # not at once, with its old ``since``
    assert effects == []
    state, _ = run(state, Tick(expired_at + 299.9, auto_revert_s=300.0))
    assert state.scope(SITE).mode is Mode.LOCKDOWN
    state, _ = run(state, Tick(expired_at + 300.0, auto_revert_s=300.0))
    assert state.scope(SITE).mode is Mode.NORMAL


def test_a_late_second_all_clear_renews_the_lockdown() -> None:
    state, _ = run(
        SiteState(),
        StartLockdown(SITE, PANIC, 0.0),
        AllClear(SITE, "ann", True, "card", 10.0),
        AllClear(SITE, "bob", True, "card", 10.0 + WINDOW + 5.0),  # too late: a new first
    )
    sc = state.scope(SITE)
    assert (sc.mode, sc.first_clear, sc.renewed_at) == (
        Mode.ALL_CLEAR_PENDING,
        "bob",
        10.0 + WINDOW + 5.0,
    )


def test_renewed_at_is_persisted_and_an_old_file_counts_from_since() -> None:
    state, _ = run(
        SiteState(), StartLockdown(SITE, PANIC, 5.0), StartLockdown(SITE, OPERATOR, 50.0)
    )
    doc = state.to_json()
    assert doc["scopes"]["site"]["renewed_at"] == 50.0
    assert SiteState.from_json(json.loads(json.dumps(doc))) == state
    del doc["scopes"]["site"]["renewed_at"]  # a state file written before renewed_at existed
    old = SiteState.from_json(doc)
    assert old.scope(SITE).quiet_since == 5.0
    after, _ = run(old, Tick(305.0, auto_revert_s=300.0))
    assert after.scope(SITE).mode is Mode.NORMAL


# --------------------------------------------------------------------------- holes in the table


@pytest.mark.parametrize("kind", SCOPE_EVENTS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("mode", list(Mode), ids=str)
def test_missing_pair_goes_to_lockdown(
    monkeypatch: pytest.MonkeyPatch, mode: Mode, kind: type
) -> None:
    before = in_mode(mode, "north")
    monkeypatch.delitem(TABLE, (mode, kind))
    after, effects = step(before, scope_event(kind, "north", 50.0))
    sc = after.scope("north")
    assert sc.mode is Mode.LOCKDOWN
    assert after.held("north")
    assert kinds(effects) == ["lockdown.unknown", "apply"]
    # the record names the incident the scope is now in, so its number is never reused
    assert records(effects) == [
        {
            "scope": "north",
            "mode": mode.value,
            "event": kind.__name__,
            "incident": sc.incident,
            "drill": sc.drill,
        }
    ]
    if mode is Mode.NORMAL:
        assert sc.incident == before.next_incident
        assert after.next_incident == before.next_incident + 1
        assert sc.since == 50.0
    else:
        assert sc.incident == 1
        assert after.next_incident == before.next_incident


def test_missing_pair_then_one_person_still_cannot_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    state = in_mode(Mode.ALL_CLEAR_PENDING, SITE)  # ann is the first person
    with monkeypatch.context() as m:
        m.delitem(TABLE, (Mode.ALL_CLEAR_PENDING, AllClear))
        state, _ = step(state, AllClear(SITE, "bob", True, "card", 25.0))
    assert state.scope(SITE).mode is Mode.LOCKDOWN
    state, _ = run(state, AllClear(SITE, "ann", True, "card", 26.0))
    state, _ = run(state, AllClear(SITE, "ann", True, "card", 27.0))
    assert state.held(SITE)


# --------------------------------------------------------------------------- threat level policy


def test_door_mode_for_level() -> None:
    levels = [(5, "locked"), (2, "card+pin")]
    assert door_mode_for_level(levels, 0) is None
    assert door_mode_for_level(levels, 1) is None
    assert door_mode_for_level(levels, 2) == "card+pin"
    assert door_mode_for_level(levels, 4) == "card+pin"
    assert door_mode_for_level(levels, 5) == "locked"
    assert door_mode_for_level(levels, 7) == "locked"
    assert door_mode_for_level([], 7) is None


# --------------------------------------------------------------------------- random sequences

ZONES = [SITE, "north", "south"]
PEOPLE = ["ann", "bob", "cy"]
AUTHORISED = {"ann", "bob"}
TRIGGERS = [PANIC, OPERATOR, Trigger("credential", "cardholder 7", "door east", "")]


@dataclass(frozen=True)
class Step:
    """One random event, with the time it takes after the previous one."""

    dt: float
    make: Callable[[float], LockdownEvent]


def _step(dt: float, make: Callable[[float], LockdownEvent]) -> Step:
    return Step(dt, make)


DTS = st.one_of(st.sampled_from([0.0, 1.0, 60.0, 121.0]), st.floats(0.0, 400.0))
SCOPE = st.sampled_from(ZONES)
PERSON = st.sampled_from(PEOPLE)


@st.composite
def steps(draw: st.DrawFn) -> Step:
    dt = draw(DTS)
    kind = draw(st.integers(0, 8))
    scope = draw(SCOPE)
    person = draw(PERSON)
    flag = draw(st.booleans())
    trigger = draw(st.sampled_from(TRIGGERS))
    level = draw(st.one_of(st.none(), st.integers(-1, 8)))
    auto = draw(st.sampled_from([0.0, 0.0, 300.0]))
    if kind == 0:
        return _step(dt, lambda t: StartLockdown(scope, trigger, t, level=level, drill=flag))
    if kind == 1:
        return _step(dt, lambda t: StartEvacuation(scope, trigger, t, drill=flag))
    if kind in (2, 3):
        via = "card" if flag else "operator"
        return _step(dt, lambda t: AllClear(scope, person, person in AUTHORISED, via, t))
    if kind == 4:
        return _step(dt, lambda t: EndEvacuation(scope, person, t, person in AUTHORISED))
    if kind == 5:
        return _step(dt, lambda t: FireAlarm(scope, t))
    if kind == 6:
        unknown = draw(st.sampled_from([(), (), ("fire-2",)]))
        return _step(dt, lambda t: FireReset(person, flag, t, inputs_unknown=unknown))
    if kind == 7:
        return _step(dt, lambda t: SetThreatLevel(0 if level is None else level, person, t))
    return _step(dt, lambda t: Tick(t, auto))


def states_after(sequence: list[Step]) -> list[tuple[SiteState, LockdownEvent, SiteState]]:
    """(before, event, after) for each step of a random sequence from the initial state."""
    out = []
    state, now = SiteState(), 1_700_000_000.0
    for s in sequence:
        now += s.dt
        event = s.make(now)
        after, _ = step(state, event, all_clear_window_s=WINDOW)
        out.append((state, event, after))
        state = after
    return out


SEQUENCES = st.lists(steps(), max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=SEQUENCES)
def test_invariants_on_random_sequences(sequence: list[Step]) -> None:
    state, now = SiteState(), 1_700_000_000.0
    # per scope: the authorised all-clear persons (person, time) since the scope was last triggered
    clears: dict[str, list[tuple[str, float]]] = {}
    # per scope: its latest trigger or expired all-clear window (auto-revert counts from it)
    renewed: dict[str, float] = {}
    for s in sequence:
        now += s.dt
        event = s.make(now)
        before = state
        state, effects = step(before, event, all_clear_window_s=WINDOW)
        recs = [e for e in effects if isinstance(e, Record)]
        assert sum(isinstance(e, Refused) for e in effects) <= 1
        if any(isinstance(e, Refused) for e in effects):
            assert state == before  # a refusal changes nothing ...
            assert recs  # ... and is journaled

        # invariant 1: a lockdown ends only by two distinct authorised persons in the window,
        # or by auto-revert when enabled
        for name in ZONES:
            was, now_mode = before.scope(name).mode, state.scope(name).mode
            if was in HELD and now_mode not in HELD:
                if isinstance(event, Tick):
                    assert event.auto_revert_s > 0
                    assert event.now - renewed[name] >= event.auto_revert_s
                else:
                    assert isinstance(event, AllClear)
                    assert event.authorised
                    assert event.scope == name
                    assert any(
                        p != event.person and event.now - t <= WINDOW
                        for p, t in clears.get(name, [])
                    )
                    ends = [r.data for r in recs if r.kind == "lockdown.end"]
                    assert len(ends) == 1
                    first, second = ends[0]["by"]
                    assert first != second
                    assert {first, second} <= AUTHORISED
        # invariant 2: a trigger during ALL_CLEAR_PENDING cancels it
        if isinstance(event, StartLockdown):
            assert state.scope(event.scope).mode is Mode.LOCKDOWN
            assert state.scope(event.scope).first_clear is None
            clears[event.scope] = []
        if isinstance(event, AllClear) and event.authorised:
            clears.setdefault(event.scope, []).append((event.person, event.now))
        for name in ZONES:
            was, mode = before.scope(name).mode, state.scope(name).mode
            if mode is Mode.LOCKDOWN and (
                was is not Mode.LOCKDOWN
                or (isinstance(event, StartLockdown) and event.scope == name)
            ):
                renewed[name] = event.now
            # an evacuation ends only by an authorised person, or a lockdown superseding it
            if was is Mode.EVACUATION and mode is not Mode.EVACUATION:
                assert isinstance(event, StartLockdown) or (
                    isinstance(event, EndEvacuation) and event.authorised
                )
        # invariant 3: fire is set by any alarm and cleared only by a reset with no input active
        if isinstance(event, FireAlarm):
            assert state.fire
        if before.fire and not state.fire:
            assert isinstance(event, FireReset)
            assert not event.inputs_active
            assert not event.inputs_unknown  # an input we cannot read may be active
        if isinstance(event, FireAlarm | FireReset):
            assert state.scopes == before.scopes
        # invariant 4: every change is recorded (and the doors re-derived)
        assert_changes_recorded(before, state, effects)
        # invariant 5: plain data, round-trips exactly
        assert SiteState.from_json(json.loads(json.dumps(state.to_json()))) == state
        assert 0 <= state.threat_level <= 7
        for _, sc in state.scopes:
            assert (sc.mode is Mode.ALL_CLEAR_PENDING) == (sc.first_clear is not None)
            assert (sc.mode is Mode.ALL_CLEAR_PENDING) == (sc.clear_deadline is not None)
            assert (sc.mode is Mode.NORMAL) == (sc.incident is None)
            assert sc.incident is None or sc.incident < state.next_incident


def assert_changes_recorded(before: SiteState, after: SiteState, effects: list[Effect]) -> None:
    """Each change of a mode, the threat level or the fire flag has its Record (and ApplyDoors)."""
    recs = [e for e in effects if isinstance(e, Record)]
    names = {n for n, _ in before.scopes} | {n for n, _ in after.scopes}
    changed = False
    for name in names:
        old, new = before.scope(name).mode, after.scope(name).mode
        if old is not new:
            changed = True
            assert any(
                (r.kind == "lockdown.state" and r.data["scope"] == name and r.data["to"] == new)
                or (r.kind == "lockdown.unknown" and r.data["scope"] == name)
                for r in recs
            ), (name, old, new, kinds(effects))
    if before.threat_level != after.threat_level:
        changed = True
        assert any(r.kind == "threat.level" and r.data["to"] == after.threat_level for r in recs)
    if before.fire != after.fire:
        changed = True
        kind = "fire.alarm" if after.fire else "fire.reset"
        assert any(r.kind == kind and "refused" not in r.data for r in recs)
    if changed:
        assert any(isinstance(e, ApplyDoors) for e in effects)


# --------------------------------------------------------------------------- persistence


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=SEQUENCES)
def test_json_round_trip_of_reachable_states(sequence: list[Step]) -> None:
    for _, _, state in states_after(sequence):
        doc = state.to_json()
        text = json.dumps(doc, allow_nan=False)
        back = SiteState.from_json(json.loads(text))
        assert back == state
        assert back.to_json() == doc


def test_json_round_trip_example() -> None:
    state, _ = run(
        SiteState(),
        StartLockdown(SITE, PANIC, 1.5, level=6, drill=True),
        StartEvacuation("south", OPERATOR, 2.0),
        AllClear(SITE, "ann", True, "card", 3.25),
        FireAlarm("stair", 4.0),
    )
    doc = state.to_json()
    assert doc["scopes"]["site"] == {
        "mode": "all-clear-pending",
        "incident": 1,
        "drill": True,
        "since": 1.5,
        "first_clear": "ann",
        "clear_deadline": 3.25 + WINDOW,
        "renewed_at": None,
        "trigger": {
            "source": "panic",
            "who": "panic-1",
            "where": "lobby",
            "reason": "button pressed",
        },
    }
    assert (doc["threat_level"], doc["fire"], doc["next_incident"]) == (6, True, 3)
    assert SiteState.from_json(json.loads(json.dumps(doc))) == state
    assert SiteState.from_json({}) == SiteState()


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats()
    | st.text(max_size=5)
    | st.sampled_from(["lockdown", "normal", "all-clear-pending", "evacuation", "site"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    return out


def _damage(doc: Any, path: tuple[Any, ...], how: str, value: Any) -> Any:
    if not path:
        return value
    copy = dict(doc)
    head, rest = path[0], path[1:]
    if rest:
        copy[head] = _damage(doc[head], rest, how, value)
    elif how == "delete":
        del copy[head]
    else:
        copy[head] = value
    return copy


FULL_DOC = run(
    SiteState(),
    StartLockdown(SITE, PANIC, 1.5, level=6, drill=True),
    StartEvacuation("south", OPERATOR, 2.0),
    AllClear(SITE, "ann", True, "card", 3.25),
    FireAlarm("stair", 4.0),
)[0].to_json()


def _load_and_use(doc: Any) -> None:
    """from_json; if it accepts the document, the state must work like any other."""
    try:
        state = SiteState.from_json(doc)
    except (ValueError, KeyError, TypeError):
        return
    assert isinstance(state, SiteState)
    assert 0 <= state.threat_level <= 7
    for name, sc in state.scopes:
        assert isinstance(name, str)
        assert isinstance(sc.mode, Mode)
        assert sc.first_clear is None or isinstance(sc.first_clear, str)
        assert sc.clear_deadline is None or isinstance(sc.clear_deadline, float)
        assert isinstance(sc.since, float)
    json.dumps(state.to_json())
    # the machine must not trip over what from_json let through
    for event in (
        Tick(1e10, auto_revert_s=60.0),
        AllClear(SITE, "zed", True, "card", 5.0),
        StartLockdown(SITE, PANIC, 6.0),
        FireAlarm("x", 7.0),
        SetThreatLevel(3, "olga", 8.0),
    ):
        step(state, event)


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_from_json_damaged_documents(data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(_paths(FULL_DOC)))
    how = data.draw(st.sampled_from(["replace", "delete"] if path else ["replace"]))
    value = data.draw(JSON)
    _load_and_use(_damage(FULL_DOC, path, how, value))


@pytest.mark.parametrize(
    "doc",
    [
        None,
        [],
        "lockdown",
        7,
        {"scopes": [1]},
        {"scopes": None},
        {"scopes": {"site": "lockdown"}},
        {"scopes": {"site": None}},
        {"scopes": {"site": {}}},
        {"scopes": {"site": {"mode": "panic"}}},
        {"scopes": {"site": {"mode": ["lockdown"]}}},
        {"scopes": {"site": {"mode": "lockdown", "trigger": "panic"}}},
        {"scopes": {"site": {"mode": "lockdown", "trigger": {"source": "panic"}}}},
        {"scopes": {"site": {"mode": "lockdown", "trigger": []}}},
        {"scopes": {"site": {"mode": "lockdown", "incident": "one"}}},
        {"scopes": {"site": {"mode": "lockdown", "incident": 1e999}}},
        {"scopes": {"site": {"mode": "lockdown", "since": "noon"}}},
        {"scopes": {"site": {"mode": "lockdown", "since": 10**400}}},
        {"scopes": {"site": {"mode": "all-clear-pending", "clear_deadline": "soon"}}},
        {"scopes": {"site": {"mode": "all-clear-pending", "clear_deadline": [1]}}},
        {"scopes": {"site": {"mode": "all-clear-pending", "first_clear": {"a": 1}}}},
        {"threat_level": 8},
        {"threat_level": -1},
        {"threat_level": "high"},
        {"threat_level": float("nan")},
        {"threat_level": float("inf")},
        {"next_incident": float("inf")},
        {"next_incident": None},
        {"next_incident": "x"},
    ],
)
def test_from_json_rejects_damage(doc: Any) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        SiteState.from_json(doc)


def test_from_json_infinity_from_the_text() -> None:
    for text in ('{"next_incident": Infinity}', '{"threat_level": -Infinity}'):
        with pytest.raises((ValueError, KeyError, TypeError)):
            SiteState.from_json(json.loads(text))


@example(doc={"scopes": {"site": {"mode": "lockdown"}}})
@settings(max_examples=200, deadline=None)
@given(doc=JSON)
def test_from_json_any_json(doc: Any) -> None:
    _load_and_use(doc)
