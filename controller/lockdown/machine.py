"""The lockdown state machine: ``step(state, event) -> (state, effects)``; pure, table-driven.

Theory of operation
-------------------
The site and each zone are *scopes*, each in one Mode: NORMAL, LOCKDOWN, ALL_CLEAR_PENDING
(still locked down, one all-clear person so far) or EVACUATION. Doors of a zone are held
secure while the site or their zone is in LOCKDOWN / ALL_CLEAR_PENDING. Besides the scopes the
site has a threat level (0..7, a door policy per level from the site file) and a latched fire
flag. Scope events are dispatched through ``TABLE[(mode, event type)]``; site-wide events
(fire, threat level, time) have their own handlers. Every change produces ``Record`` effects
(journaled with the incident number and the drill flag) and ``ApplyDoors`` (the runner then
re-derives every door's hold, fire release and evacuation from the new state). A request
that does not apply (an all-clear with no lockdown, one person twice...) produces ``Refused``
and a ``lockdown.refused`` record: nothing is ever silently ignored. A (mode, event) pair
missing from the table is a bug; it sends the scope to LOCKDOWN, the safe state, and is
journaled as ``lockdown.unknown``.

Invariants (tests/unit/test_lockdown_machine.py checks them on random event sequences):

1. Only an all-clear by two *distinct authorised* persons within ``all_clear_window_s`` ends a
   lockdown (or auto-revert, off by default, when the site plan enables it); one person, an
   unauthorised person, or the same person twice never does.
2. A new trigger during ALL_CLEAR_PENDING cancels the pending all-clear. Auto-revert counts
   from the latest trigger or expired all-clear window (``ScopeState.quiet_since``), never
   from the first trigger alone.
3. The fire flag is set by any fire alarm in any state and cleared only by a manual reset while
   no fire input is active and every fire input can be read; it does not change any scope
   (lockdown persists under fire), but the door layer gives fire release precedence over
   lockdown for fail-safe egress doors.
4. Every change of any scope's mode, of the threat level and of the fire flag is recorded.
5. The state is plain data (``SiteState.to_json``) so that a restart re-enters it exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

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
)

ScopeEvent = StartLockdown | StartEvacuation | AllClear | EndEvacuation
Handler = Callable[[SiteState, ScopeState, Any, float], tuple[SiteState, list[Effect]]]


def _scope_name(event: ScopeEvent) -> str:
    return event.scope


def _data(st: ScopeState, scope: str, **extra: Any) -> dict[str, Any]:
    return {"scope": scope, "incident": st.incident, "drill": st.drill, **extra}


def _enter(
    state: SiteState, scope: str, old: ScopeState, new: ScopeState, **extra: Any
) -> tuple[SiteState, list[Effect]]:
    state = state.with_scope(scope, new)
    rec = Record(
        "lockdown.state",
        _data(
            new if new.incident is not None else old,
            scope,
            **{"from": old.mode.value},
            to=new.mode.value,
            **extra,
        ),
    )
    return state, [rec, ApplyDoors()]


def _refuse(event: Any, scope: str, st: ScopeState, reason: str) -> tuple[None, list[Effect]]:
    return None, [
        Record(
            "lockdown.refused",
            _data(st, scope, event=type(event).__name__, reason=reason),
        ),
        Refused(reason),
    ]


# -- scope handlers --------------------------------------------------------------------------


def _start(
    state: SiteState, st: ScopeState, ev: StartLockdown, window: float
) -> tuple[SiteState, list[Effect]]:
    del window
    effects: list[Effect] = []
    if st.mode in HELD:
        # already locked down: record the additional trigger; it cancels a pending all-clear;
        # a real trigger during a drill makes the incident real
        new = replace(
            st,
            mode=Mode.LOCKDOWN,
            first_clear=None,
            clear_deadline=None,
            drill=st.drill and ev.drill,
            renewed_at=ev.now,  # a fresh trigger restarts the auto-revert time
        )
        effects.append(Record("lockdown.trigger", _trigger_data(new, ev, again=True)))
        if st.mode is Mode.ALL_CLEAR_PENDING:
            state, more = _enter(state, ev.scope, st, new, reason="new trigger")
            effects += more
        else:
            state = state.with_scope(ev.scope, new)
    else:
        new = ScopeState(
            mode=Mode.LOCKDOWN,
            incident=state.next_incident,
            drill=ev.drill,
            trigger=ev.trigger,
            since=ev.now,
        )
        state = replace(state, next_incident=state.next_incident + 1)
        effects.append(Record("lockdown.trigger", _trigger_data(new, ev)))
        state, more = _enter(state, ev.scope, st, new)
        effects += more
    if ev.level is not None and not 0 <= ev.level <= 7:
        # never refuse a lockdown over a bad level: lock down, keep the level, journal why
        reason = f"threat level must be 0..7 (got {ev.level})"
        effects.append(
            Record("lockdown.refused", _data(new, ev.scope, event="StartLockdown", reason=reason))
        )
    elif ev.level is not None and ev.level != state.threat_level:
        effects.append(
            Record(
                "threat.level",
                {
                    **_data(new, ev.scope),
                    "from": state.threat_level,
                    "to": ev.level,
                    "who": ev.trigger.who,
                },
            )
        )
        state = replace(state, threat_level=ev.level)
        effects.append(ApplyDoors())
    return state, effects


def _trigger_data(st: ScopeState, ev: StartLockdown, *, again: bool = False) -> dict[str, Any]:
    t = ev.trigger
    return {
        "scope": ev.scope,
        "incident": st.incident,
        "drill": st.drill,
        "source": t.source,
        "who": t.who,
        "where": t.where,
        "reason": t.reason,
        "level": ev.level,
        "again": again,
    }


def _evacuate(
    state: SiteState, st: ScopeState, ev: StartEvacuation, window: float
) -> tuple[SiteState, list[Effect]]:
    del window
    if st.mode is Mode.EVACUATION:
        if st.drill and not ev.drill:  # a real trigger during a drill makes the incident real
            st = replace(st, drill=False)
            state = state.with_scope(ev.scope, st)
        return state, [
            Record(
                "lockdown.trigger",
                {
                    **_data(st, ev.scope),
                    "again": True,
                    "source": ev.trigger.source,
                    "who": ev.trigger.who,
                    "where": ev.trigger.where,
                    "reason": ev.trigger.reason,
                    "evacuation": True,
                },
            )
        ]
    new = ScopeState(
        mode=Mode.EVACUATION,
        incident=state.next_incident,
        drill=ev.drill,
        trigger=ev.trigger,
        since=ev.now,
    )
    state = replace(state, next_incident=state.next_incident + 1)
    rec = Record(
        "lockdown.trigger",
        {
            **_data(new, ev.scope),
            "source": ev.trigger.source,
            "who": ev.trigger.who,
            "where": ev.trigger.where,
            "reason": ev.trigger.reason,
            "evacuation": True,
        },
    )
    state, more = _enter(state, ev.scope, st, new)
    return state, [rec, *more]


def _first_clear(
    state: SiteState, st: ScopeState, ev: AllClear, window: float
) -> tuple[SiteState, list[Effect]]:
    if not ev.authorised:
        _, eff = _refuse(ev, ev.scope, st, f"{ev.person} may not give the all-clear")
        return state, eff
    new = replace(
        st, mode=Mode.ALL_CLEAR_PENDING, first_clear=ev.person, clear_deadline=ev.now + window
    )
    rec = Record("lockdown.allclear", _data(st, ev.scope, person=ev.person, via=ev.via, n=1))
    state, more = _enter(state, ev.scope, st, new)
    return state, [rec, *more]


def _window_expired(
    state: SiteState, scope: str, st: ScopeState, now: float
) -> tuple[SiteState, list[Effect], ScopeState]:
    """The all-clear window ran out: back to lockdown, the auto-revert time from ``now``."""
    back = replace(st, mode=Mode.LOCKDOWN, first_clear=None, clear_deadline=None, renewed_at=now)
    state, effects = _enter(state, scope, st, back, reason="all-clear window expired")
    return state, effects, back


def _second_clear(
    state: SiteState, st: ScopeState, ev: AllClear, window: float
) -> tuple[SiteState, list[Effect]]:
    if not ev.authorised:
        _, eff = _refuse(ev, ev.scope, st, f"{ev.person} may not give the all-clear")
        return state, eff
    if st.clear_deadline is not None and ev.now > st.clear_deadline:
        # the window ran out before a Tick noticed: this person starts a new window
        state, eff, expired = _window_expired(state, ev.scope, st, ev.now)
        state, more = _first_clear(state, expired, ev, window)
        return state, [*eff, *more]
    if ev.person == st.first_clear:
        _, eff = _refuse(ev, ev.scope, st, "the all-clear needs a second, different person")
        return state, eff
    rec = Record("lockdown.allclear", _data(st, ev.scope, person=ev.person, via=ev.via, n=2))
    end = Record(
        "lockdown.end",
        _data(
            st,
            ev.scope,
            duration_s=round(ev.now - st.since, 3),
            by=[st.first_clear, ev.person],
            how="all-clear",
        ),
    )
    state, more = _enter(state, ev.scope, st, ScopeState(mode=Mode.NORMAL, since=ev.now))
    return state, [rec, end, *more]


def _end_evacuation(
    state: SiteState, st: ScopeState, ev: EndEvacuation, window: float
) -> tuple[SiteState, list[Effect]]:
    del window
    if not ev.authorised:
        _, eff = _refuse(ev, ev.scope, st, f"{ev.person} may not end the evacuation")
        return state, eff
    end = Record(
        "lockdown.end",
        _data(
            st,
            ev.scope,
            duration_s=round(ev.now - st.since, 3),
            by=[ev.person],
            how="evacuation-end",
        ),
    )
    state, more = _enter(state, ev.scope, st, ScopeState(mode=Mode.NORMAL, since=ev.now))
    return state, [end, *more]


def _refuser(reason: str) -> Handler:
    def handler(
        state: SiteState, st: ScopeState, ev: Any, window: float
    ) -> tuple[SiteState, list[Effect]]:
        del window
        _, eff = _refuse(ev, _scope_name(ev), st, reason)
        return state, eff

    return handler


def _lockdown_over_evacuation(
    state: SiteState, st: ScopeState, ev: StartLockdown, window: float
) -> tuple[SiteState, list[Effect]]:
    # a threat during an evacuation: the evacuation ends, a lockdown incident begins
    end = Record(
        "lockdown.end",
        _data(
            st,
            ev.scope,
            duration_s=round(ev.now - st.since, 3),
            by=[ev.trigger.who],
            how="superseded",
        ),
    )
    normal = ScopeState(mode=Mode.NORMAL, since=ev.now)
    state = state.with_scope(ev.scope, normal)
    state, eff = _start(state, normal, ev, window)
    return state, [end, *eff]


TABLE: dict[tuple[Mode, type], Handler] = {
    (Mode.NORMAL, StartLockdown): _start,
    (Mode.NORMAL, StartEvacuation): _evacuate,
    (Mode.NORMAL, AllClear): _refuser("no lockdown to clear"),
    (Mode.NORMAL, EndEvacuation): _refuser("no evacuation to end"),
    (Mode.LOCKDOWN, StartLockdown): _start,
    (Mode.LOCKDOWN, StartEvacuation): _refuser("end the lockdown before an evacuation"),
    (Mode.LOCKDOWN, AllClear): _first_clear,
    (Mode.LOCKDOWN, EndEvacuation): _refuser("no evacuation to end"),
    (Mode.ALL_CLEAR_PENDING, StartLockdown): _start,
    (Mode.ALL_CLEAR_PENDING, StartEvacuation): _refuser("end the lockdown before an evacuation"),
    (Mode.ALL_CLEAR_PENDING, AllClear): _second_clear,
    (Mode.ALL_CLEAR_PENDING, EndEvacuation): _refuser("no evacuation to end"),
    (Mode.EVACUATION, StartLockdown): _lockdown_over_evacuation,
    (Mode.EVACUATION, StartEvacuation): _evacuate,
    (Mode.EVACUATION, AllClear): _refuser("no lockdown to clear"),
    (Mode.EVACUATION, EndEvacuation): _end_evacuation,
}


def step(
    state: SiteState, event: LockdownEvent, *, all_clear_window_s: float = 120.0
) -> tuple[SiteState, list[Effect]]:
    """Apply one event; return the new state and the effects to carry out."""
    match event:
        case StartLockdown() | StartEvacuation() | AllClear() | EndEvacuation():
            st = state.scope(event.scope)
            handler = TABLE.get((st.mode, type(event)))
            if handler is None:  # a hole in the table is a bug: fail secure, loudly
                return _unknown(state, event, st)
            return handler(state, st, event, all_clear_window_s)
        case FireAlarm():
            if state.fire:
                return state, [Record("fire.alarm", {"where": event.where, "latched": True})]
            state = replace(state, fire=True)
            return state, [
                Record("fire.alarm", {"where": event.where, "latched": False}),
                ApplyDoors(),
            ]
        case FireReset():
            if not state.fire:
                return state, [
                    Record("fire.reset", {"who": event.who, "refused": "no fire alarm"}),
                    Refused("no fire alarm to reset"),
                ]
            if event.inputs_active:
                reason = "a fire input is still active"
                return state, [
                    Record("fire.reset", {"who": event.who, "refused": reason}),
                    Refused(reason),
                ]
            if event.inputs_unknown:
                # an input we cannot read may be active: never reset the latch on a guess
                names = ", ".join(event.inputs_unknown)
                reason = f"fire input {names} cannot be read (board offline or not read yet)"
                return state, [
                    Record("fire.reset", {"who": event.who, "refused": reason}),
                    Refused(reason),
                ]
            state = replace(state, fire=False)
            return state, [Record("fire.reset", {"who": event.who}), ApplyDoors()]
        case SetThreatLevel():
            if not 0 <= event.level <= 7:
                reason = f"threat level must be 0..7 (got {event.level})"
                return state, [
                    Record("lockdown.refused", {"event": "SetThreatLevel", "reason": reason}),
                    Refused(reason),
                ]
            if event.level == state.threat_level:
                return state, []
            rec = Record(
                "threat.level", {"from": state.threat_level, "to": event.level, "who": event.who}
            )
            return replace(state, threat_level=event.level), [rec, ApplyDoors()]
        case Tick():
            return _tick(state, event)
    return _unknown(state, event, state.scope(SITE))  # pragma: no cover - exhaustive


def _tick(state: SiteState, event: Tick) -> tuple[SiteState, list[Effect]]:
    effects: list[Effect] = []
    for name, st in state.scopes:
        if (
            st.mode is Mode.ALL_CLEAR_PENDING
            and st.clear_deadline is not None
            and event.now > st.clear_deadline
        ):
            state, more, _ = _window_expired(state, name, st, event.now)
            effects += more
        elif (
            st.mode is Mode.LOCKDOWN
            and event.auto_revert_s > 0
            and event.now - st.quiet_since >= event.auto_revert_s
        ):
            end = Record(
                "lockdown.end",
                _data(
                    st, name, duration_s=round(event.now - st.since, 3), by=[], how="auto-revert"
                ),
            )
            state, more = _enter(state, name, st, ScopeState(mode=Mode.NORMAL, since=event.now))
            effects += [end, *more]
    return state, effects


def _unknown(state: SiteState, event: object, st: ScopeState) -> tuple[SiteState, list[Effect]]:
    scope = getattr(event, "scope", SITE)
    now = getattr(event, "now", 0.0)
    safe = (
        replace(st, mode=Mode.LOCKDOWN, renewed_at=now)
        if st.incident is not None
        else ScopeState(mode=Mode.LOCKDOWN, incident=state.next_incident, since=now)
    )
    if st.incident is None:
        state = replace(state, next_incident=state.next_incident + 1)
    state = state.with_scope(scope, safe)
    return state, [
        Record(
            "lockdown.unknown",
            {
                "scope": scope,
                "mode": st.mode.value,
                "event": type(event).__name__,
                "incident": safe.incident,
                "drill": safe.drill,
            },
        ),
        ApplyDoors(),
    ]


def door_mode_for_level(levels: list[tuple[int, str]], level: int) -> str | None:
    """The door mode of the highest configured level <= ``level`` (None below all of them)."""
    best: tuple[int, str] | None = None
    for lv, mode in levels:
        if lv <= level and (best is None or lv > best[0]):
            best = (lv, mode)
    return None if best is None else best[1]
