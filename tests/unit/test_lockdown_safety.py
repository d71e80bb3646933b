"""Life safety of the composed pure parts, on random sequences (DESIGN.md section 5).

A hypothesis state machine composes what the daemon composes: the lockdown ``SiteState``
stepped by ``controller.lockdown.machine.step``; a small site of doors (both lock types, some on
egress routes, on two boards) stepped by ``controller.doors.machine.step``, with every door fed
``Hold(held(zone), fire, evacuating(zone), now)`` whenever the lockdown machine asks for it
(``ApplyDoors``), as the runner does; and access decisions by ``controller.access.policy.decide``
with ``lockdown=held(zone)``, a grant becoming a door pulse (an override pulse for
granted-override). A restart serialises the lockdown state through JSON and rebuilds every door
from a fresh ``DoorState`` (link up, relay read back) before re-applying the hold.

Checked after every step: no grant but granted-override at a held door; a latched fire alarm
releases every fail-safe egress door, whatever else is going on; a held door is released only by
an override pulse, an egress REX, fire on a fail-safe egress door or (fail-safe) its relay
fault's power-loss state; a scope leaves lockdown only after two distinct authorised persons
within the window (or by auto-revert when enabled); a restart preserves the lockdown state
exactly; every change of a mode, the threat level or the fire flag is recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from controller.access.model import (
    AccessLevel,
    Cardholder,
    Credential,
    Privilege,
    Reason,
)
from controller.access.policy import AccessRequest, AccessState, DoorPolicy, decide
from controller.doors.machine import (
    FAIL_SAFE,
    FAIL_SECURE,
    Command,
    ContactChanged,
    DoorEvent,
    DoorSpec,
    DoorState,
    Fault,
    Hold,
    Intent,
    LinkChanged,
    RelayRead,
    RexChanged,
    desired_relay,
)
from controller.doors.machine import Record as DoorRecord
from controller.doors.machine import Tick as DoorTick
from controller.doors.machine import next_deadline as door_deadline
from controller.doors.machine import step as door_step
from controller.lockdown.machine import step as lockdown_step
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
    SetThreatLevel,
    SiteState,
    StartEvacuation,
    StartLockdown,
    Tick,
    Trigger,
)

# --------------------------------------------------------------------------- the site


@dataclass(frozen=True, slots=True)
class Door:
    """A door of the test site: its machine spec, zone and board."""

    spec: DoorSpec
    zone: str
    board: str


def _door(name: str, lock: str, zone: str, board: str, *, egress: bool) -> Door:
    spec = DoorSpec(name, lock, pulse_s=5.0, rex_pulse_s=3.0, fault_retry_s=5.0, egress=egress)
    return Door(spec, zone, board)


DOORS: dict[str, Door] = {
    d.spec.name: d
    for d in (
        _door("n-main", FAIL_SECURE, "north", "b1", egress=False),
        _door("n-exit", FAIL_SAFE, "north", "b1", egress=True),
        _door("n-stair", FAIL_SECURE, "north", "b2", egress=True),
        _door("s-lobby", FAIL_SAFE, "south", "b2", egress=False),
        _door("s-exit", FAIL_SAFE, "south", "b2", egress=True),
        _door("s-dock", FAIL_SECURE, "south", "b1", egress=False),
    )
}
BOARDS = ("b1", "b2")
ZONES = ("north", "south")
SCOPES = (SITE, *ZONES)

EVERYWHERE = AccessLevel("everywhere", frozenset(DOORS))
NORTH = AccessLevel("north", frozenset(n for n, d in DOORS.items() if d.zone == "north"))

PEOPLE: dict[str, Cardholder] = {
    h.name: h
    for h in (
        Cardholder(1, "olive", levels=(EVERYWHERE,)),  # ordinary
        Cardholder(2, "nora", levels=(NORTH,)),  # ordinary, north only
        Cardholder(3, "rita", privileges=frozenset({Privilege.OVERRIDE}), levels=(NORTH,)),
        Cardholder(4, "ann", privileges=frozenset({Privilege.ALL_CLEAR}), levels=(EVERYWHERE,)),
        Cardholder(5, "bob", privileges=frozenset({Privilege.ALL_CLEAR}), levels=(NORTH,)),
        Cardholder(
            6,
            "vic",  # a responder who may also give the all-clear
            privileges=frozenset({Privilege.OVERRIDE, Privilege.ALL_CLEAR}),
            levels=(EVERYWHERE,),
        ),
        Cardholder(7, "lena", privileges=frozenset({Privilege.LOCKDOWN})),  # no door access
    )
}
CREDENTIALS = {name: Credential(100 + h.id, h) for name, h in PEOPLE.items()}
OPERATORS = {"op-ops": True, "op-guest": False}  # operator -> holds the all-clear privilege
AUTHORISED = {n for n, h in PEOPLE.items() if Privilege.ALL_CLEAR in h.privileges} | {
    n for n, ok in OPERATORS.items() if ok
}
LOCAL = datetime(2025, 3, 3, 10, 30, tzinfo=UTC)
START = 1_000.0
RELEASE_CAUSES = frozenset({"override", "egress-rex"})


def released(door: Door, state: DoorState) -> bool:
    """Whether the door's lock is released by the relay value the machine wants now."""
    return door.spec.released_by(desired_relay(door.spec, state))


def hold_for(door: Door, site: SiteState, now: float) -> Hold:
    """What the runner feeds a door on ApplyDoors."""
    return Hold(
        secured=site.held(door.zone), fire=site.fire, evacuate=site.evacuating(door.zone), now=now
    )


# --------------------------------------------------------------------------- the model


class LockdownSite(RuleBasedStateMachine):
    """The daemon's pure parts, driven by random triggers, people, inputs, faults and restarts."""

    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.window = 120.0
        self.auto_revert = 0.0
        self.site = SiteState()
        self.access = AccessState()
        self.doors: dict[str, DoorState] = {}
        self.link = dict.fromkeys(BOARDS, True)
        self.relay: dict[str, bool] = {}  # what each board's coil holds (survives a restart)
        self.causes: dict[str, set[str]] = {name: set() for name in DOORS}
        # per scope: (person, time) of the authorised all-clears since it was last triggered
        self.clears: dict[str, list[tuple[str, float]]] = {s: [] for s in SCOPES}
        self.grants = 0
        self.ends = 0

    @initialize(
        window=st.sampled_from([30.0, 120.0]), auto_revert=st.sampled_from([0.0, 0.0, 600.0])
    )
    def start(self, window: float, auto_revert: float) -> None:
        self.window = window
        self.auto_revert = auto_revert
        self.boot()

    # -- plumbing ----------------------------------------------------------------------------

    def boot(self) -> None:
        """Fresh door states, link up, relay read back, then the hold (daemon start-up)."""
        self.doors = {name: DoorState() for name in DOORS}
        for name, door in DOORS.items():
            self.causes[name].clear()
            if self.link[door.board]:
                self.feed(name, LinkChanged(True, self.now))
                coil = self.relay.get(name, door.spec.relay_for(False))
                self.feed(name, RelayRead(coil, False, self.now))
        self.apply_doors()
        for name, door in DOORS.items():
            state = self.doors[name]
            if self.site.held(door.zone):
                # a restart never unlocks a door that lockdown holds (life safety aside)
                life_safety = self.site.fire and door.spec.egress and door.spec.lock == FAIL_SAFE
                assert not released(door, state) or life_safety, name
            assert state.intent is Intent.LOCKED

    def feed(self, name: str, event: DoorEvent) -> list[DoorRecord]:
        """Step one door; track its relay (written while the board is up) and release causes."""
        door = DOORS[name]
        before = self.doors[name]
        after, records = door_step(door.spec, before, event)
        self.doors[name] = after
        if self.link[door.board]:
            self.relay[name] = desired_relay(door.spec, after)
        if after.intent is Intent.LOCKED:
            self.causes[name].clear()
        if before.secured != after.secured:
            assert [r.data for r in records if r.kind == "door.secure"] == [
                {"secured": after.secured}
            ]
        return records

    def advance(self, dt: float) -> None:
        """Time passes; doors get their Ticks at their deadlines, as the door service does."""
        self.now += dt
        for name, door in DOORS.items():
            deadline = door_deadline(door.spec, self.doors[name])
            if deadline is not None and deadline <= self.now:
                self.feed(name, DoorTick(self.now))

    def apply_doors(self) -> None:
        """The runner's response to ApplyDoors: every door gets its hold from the new state."""
        for name, door in DOORS.items():
            before = self.doors[name]
            self.feed(name, hold_for(door, self.site, self.now))
            after = self.doors[name]
            if before.secured and after.secured:
                # re-applying a hold does not cut a responder's pulse (or an egress REX) short
                assert (after.intent, after.pulse_until) == (before.intent, before.pulse_until)

    def lockdown(self, event: LockdownEvent) -> list[Effect]:
        """Step the lockdown machine; check the all-clear rule and the records; apply doors."""
        before = self.site
        after, effects = lockdown_step(before, event, all_clear_window_s=self.window)
        self.site = after
        recs = [e for e in effects if isinstance(e, Record)]
        assert effects == [] or recs, "an effect without a record"
        for scope in SCOPES:
            if before.scope(scope).mode in HELD and after.scope(scope).mode not in HELD:
                self.check_lockdown_end(scope, event, before, recs)
        if isinstance(event, StartLockdown):
            self.clears[event.scope] = []
        if isinstance(event, AllClear) and event.authorised:
            self.clears[event.scope].append((event.person, event.now))
        check_changes_recorded(before, after, effects)
        if any(isinstance(e, ApplyDoors) for e in effects):
            self.apply_doors()
        return effects

    def check_lockdown_end(
        self, scope: str, event: LockdownEvent, before: SiteState, recs: list[Record]
    ) -> None:
        self.ends += 1
        if isinstance(event, Tick):
            assert self.auto_revert > 0
            assert event.auto_revert_s == self.auto_revert
            assert event.now - before.scope(scope).since >= self.auto_revert
            return
        assert isinstance(event, AllClear), f"{scope} left lockdown on {event!r}"
        assert event.scope == scope
        assert event.authorised
        assert event.person in AUTHORISED
        assert any(
            person != event.person and event.now - t <= self.window
            for person, t in self.clears[scope]
        ), f"one person ended the lockdown of {scope}: {event.person}"
        (end,) = [r.data for r in recs if r.kind == "lockdown.end"]
        first, second = end["by"]
        assert first != second
        assert {first, second} <= AUTHORISED

    # -- rules: lockdown ---------------------------------------------------------------------

    @rule(
        scope=st.sampled_from(SCOPES),
        source=st.sampled_from(["panic", "operator", "credential", "duress", "remote"]),
        drill=st.booleans(),
        level=st.one_of(st.none(), st.integers(0, 7)),
    )
    def trigger(self, scope: str, source: str, drill: bool, level: int | None) -> None:
        self.advance(0.25)
        self.lockdown(
            StartLockdown(scope, Trigger(source, "lena", "lobby"), self.now, level, drill)
        )
        assert self.site.scope(scope).mode is Mode.LOCKDOWN
        for name, door in DOORS.items():
            if scope in (SITE, door.zone):
                assert self.doors[name].secured

    @rule(scope=st.sampled_from(SCOPES), drill=st.booleans())
    def evacuate(self, scope: str, drill: bool) -> None:
        self.advance(0.25)
        trigger = Trigger("operator", "op-ops", "console")
        self.lockdown(StartEvacuation(scope, trigger, self.now, drill=drill))

    @rule(scope=st.sampled_from(SCOPES), person=st.sampled_from(sorted(OPERATORS)))
    def end_evacuation(self, scope: str, person: str) -> None:
        self.advance(0.25)
        self.lockdown(EndEvacuation(scope, person, self.now))

    @rule(
        scope=st.sampled_from(SCOPES),
        person=st.sampled_from(sorted(PEOPLE) + sorted(OPERATORS)),
        dt=st.sampled_from([0.25, 5.0, 60.0]),
    )
    def all_clear(self, scope: str, person: str, dt: float) -> None:
        self.advance(dt)
        if person in OPERATORS:
            self.lockdown(AllClear(scope, person, OPERATORS[person], "operator", self.now))
        else:
            ok = Privilege.ALL_CLEAR in PEOPLE[person].privileges
            self.lockdown(AllClear(scope, person, ok, "card", self.now))

    @rule(where=st.sampled_from(["stair-1", "kitchen"]))
    def fire_alarm(self, where: str) -> None:
        self.advance(0.25)
        self.lockdown(FireAlarm(where, self.now))
        assert self.site.fire

    @rule(inputs_active=st.booleans())
    def fire_reset(self, inputs_active: bool) -> None:
        self.advance(0.25)
        was = self.site.fire
        self.lockdown(FireReset("op-ops", inputs_active, self.now))
        assert self.site.fire is (was and inputs_active)

    @rule(level=st.integers(-1, 8))
    def threat_level(self, level: int) -> None:
        self.advance(0.25)
        self.lockdown(SetThreatLevel(level, "op-ops", self.now))

    @rule(dt=st.sampled_from([1.0, 5.0, 31.0, 121.0, 601.0]))
    def tick(self, dt: float) -> None:
        self.advance(dt)
        self.lockdown(Tick(self.now, self.auto_revert))

    @rule()
    def restart(self) -> None:
        """The daemon dies and comes back: lockdown state from its file, doors from scratch."""
        self.advance(0.25)
        saved = self.site.to_json()
        text = json.dumps(saved, allow_nan=False)
        self.now += 2.0  # down for a while: no events reach the machines
        site = SiteState.from_json(json.loads(text))
        assert site == self.site
        assert site.to_json() == saved
        self.site = site
        self.access = AccessState()  # the policy's memory (pending PINs, throttles) is volatile
        self.boot()

    @precondition(lambda self: self.held_scopes() or self.site.fire)
    @rule()
    def restart_during_incident(self) -> None:
        """Restarts matter most while something is held or burning: make them likelier then."""
        self.restart()

    # -- rules: people and doors ---------------------------------------------------------------

    @rule(person=st.sampled_from(sorted(PEOPLE)), name=st.sampled_from(sorted(DOORS)))
    def card(self, person: str, name: str) -> None:
        self.advance(0.25)
        door = DOORS[name]
        held = self.site.held(door.zone)
        request = AccessRequest(
            kind="card",
            reader=f"{name}-in",
            door=DoorPolicy(name, zone=door.zone),
            now_s=self.now,
            local=LOCAL,
            credential=CREDENTIALS[person],
            lockdown=held,
        )
        decision, self.access = decide(request, self.access)
        holder = PEOPLE[person]
        if held:
            assert not decision.granted or decision.reason is Reason.GRANTED_OVERRIDE
            if Privilege.OVERRIDE not in holder.privileges:
                assert decision.reason in (Reason.DENIED_LOCKDOWN, Reason.DENIED_THROTTLED)
        else:
            assert decision.reason is not Reason.GRANTED_OVERRIDE
        if not decision.granted:
            return
        self.grants += 1
        override = decision.reason is Reason.GRANTED_OVERRIDE
        records = self.feed(name, Command("pulse", self.now, override=override))
        assert not any(r.kind == "door.refused" for r in records)
        if held:
            assert self.doors[name].intent is Intent.PULSE
            self.causes[name].add("override")

    @rule(name=st.sampled_from(sorted(DOORS)), keep_pressed=st.booleans())
    def rex(self, name: str, keep_pressed: bool) -> None:
        """Someone presses the request-to-exit button (and lets go, or holds it down)."""
        self.advance(0.25)
        before = self.doors[name]
        self.feed(name, RexChanged(True, self.now))
        after = self.doors[name]
        if not before.rex and before.secured and DOORS[name].spec.egress:
            assert after.intent is not Intent.LOCKED  # free egress, lockdown or not
            self.causes[name].add("egress-rex")
        if not keep_pressed:
            self.advance(0.25)
            self.feed(name, RexChanged(False, self.now))

    @rule(
        name=st.sampled_from(sorted(DOORS)),
        action=st.sampled_from(["pulse", "unlock", "lock"]),
    )
    def operator_command(self, name: str, action: str) -> None:
        """``wardctl door ACTION`` without override: refused at a held door, except lock."""
        self.advance(0.25)
        before = self.doors[name]
        records = self.feed(name, Command(action, self.now))
        refused = [r for r in records if r.kind == "door.refused"]
        if before.secured and action != "lock":
            assert refused
            assert self.doors[name] == before
        else:
            assert not refused
        if action == "unlock" and not before.secured:
            self.feed(name, Command("lock", self.now + 0.1))  # keep the site mostly locked

    def held_scopes(self) -> list[str]:
        return [s for s in SCOPES if self.site.scope(s).mode in HELD]

    @precondition(lambda self: self.held_scopes())
    @rule(
        pick=st.integers(0, 2),
        first=st.sampled_from([*sorted(AUTHORISED), "olive"]),
        second=st.sampled_from([*sorted(AUTHORISED), "rita"]),
        gap=st.sampled_from([1.0, 29.0, 31.0, 119.0, 121.0]),
    )
    def two_all_clears(self, pick: int, first: str, second: str, gap: float) -> None:
        """Two all-clears in a row for a scope in lockdown, the way it is usually given."""
        held = self.held_scopes()
        scope = held[pick % len(held)]
        self.all_clear(scope, first, 0.25)
        self.all_clear(scope, second, gap)

    @rule(name=st.sampled_from(sorted(DOORS)), is_open=st.booleans())
    def contact(self, name: str, is_open: bool) -> None:
        self.advance(0.25)
        self.feed(name, ContactChanged(is_open, self.now))

    @rule(board=st.sampled_from(BOARDS), up=st.booleans())
    def board_link(self, board: str, up: bool) -> None:
        self.advance(0.25)
        self.link[board] = up
        wanted = {n: desired_relay(d.spec, self.doors[n]) for n, d in DOORS.items()}
        for name, door in DOORS.items():
            if door.board == board:
                self.feed(name, LinkChanged(up, self.now, "" if up else "timeout"))
                # loss or return of a link never changes what a door wants
                assert desired_relay(door.spec, self.doors[name]) == wanted[name]

    @rule(name=st.sampled_from(sorted(DOORS)), agrees=st.booleans())
    def relay_read(self, name: str, agrees: bool) -> None:
        """A readback: agreeing with the command, or a stuck / overridden relay (mismatch)."""
        self.advance(0.25)
        spec = DOORS[name].spec
        want = desired_relay(spec, self.doors[name])
        self.feed(name, RelayRead(want if agrees else not want, not agrees, self.now))

    @precondition(lambda self: self.site.fire or self.site.scopes)
    @rule()
    def busy_door_traffic(self) -> None:
        """Everyone badges everywhere at once (a crowd at every reader during an incident)."""
        for person in sorted(PEOPLE):
            for name in sorted(DOORS):
                self.card(person, name)

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def doors_follow_the_lockdown(self) -> None:
        for name, door in DOORS.items():
            state = self.doors[name]
            assert state.secured is self.site.held(door.zone), name
            want = hold_for(door, self.site, self.now)
            expected = door.spec.egress and (
                (want.fire and door.spec.lock == FAIL_SAFE) or (want.evacuate and not want.secured)
            )
            assert state.released is expected, name

    @invariant()
    def fire_releases_fail_safe_egress_doors(self) -> None:
        if not self.site.fire:
            return
        for name, door in DOORS.items():
            if door.spec.egress and door.spec.lock == FAIL_SAFE:
                assert desired_relay(door.spec, self.doors[name]) is False, name  # de-energised
                assert released(door, self.doors[name]), name

    @invariant()
    def held_doors_stay_locked(self) -> None:
        for name, door in DOORS.items():
            state = self.doors[name]
            if not self.site.held(door.zone) or not released(door, state):
                continue
            if door.spec.lock == FAIL_SECURE:
                assert self.causes[name] & RELEASE_CAUSES, f"{name} released while held"
                assert state.intent is not Intent.LOCKED
            else:
                life_safety = self.site.fire and door.spec.egress
                power_loss = Fault.RELAY in state.faults and not state.probing
                assert self.causes[name] & RELEASE_CAUSES or life_safety or power_loss, (
                    f"{name} released while held"
                )

    @invariant()
    def state_is_sane(self) -> None:
        assert 0 <= self.site.threat_level <= 7
        for _, sc in self.site.scopes:
            assert (sc.mode is Mode.ALL_CLEAR_PENDING) == (sc.first_clear is not None)
            assert sc.first_clear is None or sc.first_clear in AUTHORISED


def check_changes_recorded(before: SiteState, after: SiteState, effects: list[Effect]) -> None:
    """Each change of a mode, the threat level or the fire flag has its Record and ApplyDoors."""
    recs = [e for e in effects if isinstance(e, Record)]
    changed = False
    for scope in SCOPES:
        old, new = before.scope(scope).mode, after.scope(scope).mode
        if old is not new:
            changed = True
            assert any(
                r.kind == "lockdown.state" and r.data["scope"] == scope and r.data["to"] == new
                for r in recs
            ), (scope, old, new)
    if before.threat_level != after.threat_level:
        changed = True
        assert any(r.kind == "threat.level" and r.data["to"] == after.threat_level for r in recs)
    if before.fire != after.fire:
        changed = True
        kind = "fire.alarm" if after.fire else "fire.reset"
        assert any(r.kind == kind and "refused" not in r.data for r in recs)
    if changed:
        assert any(isinstance(e, ApplyDoors) for e in effects)


STATEFUL = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_lockdown_safety() -> None:
    run_state_machine_as_test(LockdownSite, settings=STATEFUL)


def test_the_model_reaches_the_interesting_states() -> None:
    """Guard against a vacuous run: the rules can grant, end lockdowns, and burn."""
    machine = LockdownSite()
    machine.start(window=120.0, auto_revert=0.0)
    machine.trigger(SITE, "panic", drill=False, level=None)
    machine.card("rita", "n-main")  # responder: override pulse at a held fail-secure door
    assert machine.doors["n-main"].intent is Intent.PULSE
    assert released(DOORS["n-main"], machine.doors["n-main"])
    machine.card("olive", "s-dock")  # ordinary: denied
    assert not released(DOORS["s-dock"], machine.doors["s-dock"])
    machine.rex("n-stair", keep_pressed=True)  # fail-secure egress door: REX releases it
    assert released(DOORS["n-stair"], machine.doors["n-stair"])
    machine.rex("s-dock", keep_pressed=False)  # not on an egress route: stays locked
    assert not released(DOORS["s-dock"], machine.doors["s-dock"])
    machine.fire_alarm("stair-1")
    assert released(DOORS["s-exit"], machine.doors["s-exit"])
    machine.restart()
    assert machine.site.held("north")
    assert machine.site.fire
    assert released(DOORS["n-exit"], machine.doors["n-exit"])
    assert not released(DOORS["n-main"], machine.doors["n-main"])  # the pulse did not survive
    machine.all_clear(SITE, "ann", 5.0)
    machine.all_clear(SITE, "ann", 5.0)
    assert machine.site.held("north")
    machine.all_clear(SITE, "op-ops", 5.0)
    assert not machine.site.held("north")
    assert machine.ends == 1
    assert machine.grants == 1
    machine.doors_follow_the_lockdown()
    machine.fire_releases_fail_safe_egress_doors()
    machine.held_doors_stay_locked()
