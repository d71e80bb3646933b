"""The pure access policy: an example for every reason code, a reference model over random
credentials, times and doors, stateful machines for anti-passback, two-person, card+PIN timing,
throttle and interlock, and safety properties under random sequences of attempts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from controller.access.model import (
    ALWAYS,
    AccessLevel,
    Cardholder,
    CardholderState,
    Credential,
    Decision,
    DoorMode,
    Interval,
    PinCheck,
    Privilege,
    Reason,
    Schedule,
)
from controller.access.policy import (
    COUNTED_DENIALS,
    AccessRequest,
    AccessState,
    AntiPassback,
    Direction,
    DoorPolicy,
    FrozenMap,
    PolicyConfig,
    decide,
    effective_mode,
    schedule_covers,
)
from controller.access.service import stricter
from controller.settings import AccessSettings

TZ = ZoneInfo("Europe/Berlin")
MONDAY = datetime(2026, 6, 1, 0, 0, tzinfo=TZ)  # a week without a DST change
AT_10 = MONDAY.replace(hour=10)
OFFICE = Schedule("office", tuple(Interval(d, 8 * 60, 18 * 60) for d in range(5)))
CONFIG = PolicyConfig(
    pin_timeout_s=10,
    two_person_window_s=10,
    throttle_denials=3,
    throttle_window_s=30,
    throttle_lockout_s=60,
)
QUIET = replace(CONFIG, throttle_denials=1000)  # for tests about something else
Kind = Literal["card", "pin", "malformed"]
T = TypeVar("T")


def holder(ident: int = 1, *, doors: Sequence[str] = ("lobby",), **kw: Any) -> Cardholder:
    """An active cardholder with one always-on level for ``doors``."""
    kw.setdefault("levels", (AccessLevel("staff", frozenset(doors), ALWAYS),))
    kw.setdefault("has_pin", True)
    return Cardholder(ident, f"person {ident}", **kw)


def cred(owner: Cardholder | None = None, *, ident: int | None = None, **kw: Any) -> Credential:
    """An active credential of ``owner`` (same id by default)."""
    owner = owner or holder()
    kw.setdefault("display", "h10301:12:***67")
    return Credential(owner.id if ident is None else ident, owner, **kw)


def door(name: str = "lobby", **kw: Any) -> DoorPolicy:
    """A card-only door."""
    return DoorPolicy(name, **kw)


def request(
    credential: Credential | None = None,
    *,
    kind: Kind = "card",
    at: DoorPolicy | None = None,
    now_s: float = 0.0,
    local: datetime = AT_10,
    reader: str = "r1",
    **kw: Any,
) -> AccessRequest:
    """A card at reader r1 of the lobby, Monday 10:00."""
    kw.setdefault("config", QUIET)
    return AccessRequest(
        kind=kind,
        reader=reader,
        door=at or door(),
        now_s=now_s,
        local=local,
        credential=credential,
        **kw,
    )


def run(*requests: AccessRequest, state: AccessState | None = None) -> list[Decision]:
    """Decide each request in turn; return the decisions."""
    current = state or AccessState()
    out = []
    for r in requests:
        d, current = decide(r, current)
        out.append(d)
    return out


def last(*requests: AccessRequest) -> Decision:
    """The decision on the last of ``requests``."""
    return run(*requests)[-1]


# --------------------------------------------------------------------------- every reason

C = cred()
PIN_DOOR = door(mode=DoorMode.CARD_AND_PIN)
OVERRIDER = cred(holder(9, privileges=frozenset({Privilege.OVERRIDE}), levels=()))

EXAMPLES: dict[str, tuple[Reason, Callable[[], Decision]]] = {
    "granted": (Reason.GRANTED, lambda: last(request(C))),
    "override at a locked door": (
        Reason.GRANTED_OVERRIDE,
        lambda: last(request(OVERRIDER, at=door(mode=DoorMode.LOCKED))),
    ),
    "override in lockdown": (
        Reason.GRANTED_OVERRIDE,
        lambda: last(request(OVERRIDER, lockdown=True)),
    ),
    "duress": (
        Reason.GRANTED_DURESS,
        lambda: last(
            request(C, at=PIN_DOOR),
            request(C, kind="pin", pin=PinCheck.DURESS, at=PIN_DOOR, now_s=3),
        ),
    ),
    "soft apb": (
        Reason.GRANTED_SOFT_APB,
        lambda: last(request(C, at=door(apb="soft")), request(C, at=door(apb="soft"), now_s=5)),
    ),
    "free access": (Reason.GRANTED_FREE_ACCESS, lambda: last(request(C, at=door(mode="free")))),
    "pending pin": (Reason.PENDING_PIN, lambda: last(request(C, at=PIN_DOOR))),
    "pending second person": (
        Reason.PENDING_SECOND_PERSON,
        lambda: last(request(C, at=door(mode=DoorMode.TWO_PERSON))),
    ),
    "unknown": (Reason.DENIED_UNKNOWN, lambda: last(request(None))),
    "disabled": (
        Reason.DENIED_DISABLED,
        lambda: last(request(cred(holder(state=CardholderState.DISABLED)))),
    ),
    "lost": (Reason.DENIED_LOST, lambda: last(request(cred(state=CardholderState.LOST)))),
    "revoked": (Reason.DENIED_REVOKED, lambda: last(request(cred(state=CardholderState.REVOKED)))),
    "not yet valid": (
        Reason.DENIED_NOT_YET_VALID,
        lambda: last(request(cred(valid_from=AT_10 + timedelta(minutes=1)))),
    ),
    "expired": (Reason.DENIED_EXPIRED, lambda: last(request(cred(valid_until=AT_10)))),
    "no access": (Reason.DENIED_NO_ACCESS, lambda: last(request(C, at=door("vault")))),
    "schedule": (
        Reason.DENIED_SCHEDULE,
        lambda: last(
            request(
                cred(holder(levels=(AccessLevel("o", frozenset({"lobby"}), OFFICE),))),
                local=MONDAY.replace(hour=19),
            )
        ),
    ),
    "bad pin": (
        Reason.DENIED_BAD_PIN,
        lambda: last(
            request(C, at=PIN_DOOR),
            request(C, kind="pin", pin=PinCheck.BAD, at=PIN_DOOR, now_s=3),
        ),
    ),
    "pin timeout": (
        Reason.DENIED_PIN_TIMEOUT,
        lambda: last(
            request(C, at=PIN_DOOR),
            request(C, kind="pin", pin=PinCheck.OK, at=PIN_DOOR, now_s=10.5),
        ),
    ),
    "no pin": (
        Reason.DENIED_NO_PIN,
        lambda: last(request(cred(holder(has_pin=False)), at=PIN_DOOR)),
    ),
    "apb": (
        Reason.DENIED_APB,
        lambda: last(request(C, at=door(apb="hard")), request(C, at=door(apb="hard"), now_s=5)),
    ),
    "interlock": (Reason.DENIED_INTERLOCK, lambda: last(request(C, at=door(interlock_busy=True)))),
    "same person": (
        Reason.DENIED_SAME_PERSON,
        lambda: last(
            request(C, at=door(mode=DoorMode.TWO_PERSON)),
            request(C, at=door(mode=DoorMode.TWO_PERSON), now_s=2),
        ),
    ),
    "throttled": (
        Reason.DENIED_THROTTLED,
        lambda: last(*(request(None, config=CONFIG, now_s=t) for t in range(4))),
    ),
    "door locked": (Reason.DENIED_DOOR_LOCKED, lambda: last(request(C, at=door(mode="locked")))),
    "lockdown": (Reason.DENIED_LOCKDOWN, lambda: last(request(C, lockdown=True))),
    "malformed": (Reason.DENIED_MALFORMED, lambda: last(request(None, kind="malformed"))),
    "reader insecure": (
        Reason.DENIED_READER_INSECURE,
        lambda: last(request(C, reader_secure=False)),
    ),
    "card required": (
        Reason.DENIED_CARD_REQUIRED,
        lambda: last(request(C, kind="pin", pin=PinCheck.OK, at=PIN_DOOR)),
    ),
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_reason_examples(name: str) -> None:
    expected, scenario = EXAMPLES[name]
    decision = scenario()
    assert decision.reason is expected
    assert decision.granted is expected.granted
    assert decision.door in {"lobby", "vault"}


def test_every_reason_has_an_example() -> None:
    assert {reason for reason, _ in EXAMPLES.values()} == set(Reason)


# --------------------------------------------------------------------------- details of rules


def test_decision_carries_cardholder_factor_and_alarms() -> None:
    pending, granted = run(
        request(C, at=PIN_DOOR),
        request(C, kind="pin", pin=PinCheck.DURESS, at=PIN_DOOR, now_s=3),
    )
    assert (pending.cardholder_id, pending.next_factor, pending.alarms) == (1, "pin", ())
    assert (granted.cardholder_id, granted.next_factor, granted.alarms) == (1, None, ("duress",))
    assert last(request(None)).cardholder_id is None


@pytest.mark.parametrize(
    ("holder_state", "cred_state", "expected"),
    [
        (CardholderState.DISABLED, CardholderState.REVOKED, Reason.DENIED_REVOKED),
        (CardholderState.REVOKED, CardholderState.LOST, Reason.DENIED_REVOKED),
        (CardholderState.LOST, CardholderState.DISABLED, Reason.DENIED_LOST),
        (CardholderState.ACTIVE, CardholderState.DISABLED, Reason.DENIED_DISABLED),
        (CardholderState.LOST, CardholderState.ACTIVE, Reason.DENIED_LOST),
    ],
)
def test_the_stricter_state_wins(
    holder_state: CardholderState, cred_state: CardholderState, expected: Reason
) -> None:
    d = last(request(cred(holder(state=holder_state), state=cred_state)))
    assert d.reason is expected
    assert d.cardholder_id == 1


def test_validity_windows_have_times_and_combine() -> None:
    window: dict[str, Any] = {"valid_from": AT_10, "valid_until": AT_10 + timedelta(hours=8)}
    assert last(request(cred(**window))).reason is Reason.GRANTED
    at_end = AT_10 + timedelta(hours=8)
    assert last(request(cred(**window), local=at_end)).reason is Reason.DENIED_EXPIRED
    just_before = at_end - timedelta(seconds=1)
    assert last(request(cred(**window), local=just_before)).reason is Reason.GRANTED
    early = AT_10 - timedelta(seconds=1)
    assert last(request(cred(**window), local=early)).reason is Reason.DENIED_NOT_YET_VALID
    # the cardholder's window narrows the credential's
    narrow = holder(valid_until=AT_10)
    assert last(request(cred(narrow, **window))).reason is Reason.DENIED_EXPIRED
    started = holder(valid_from=AT_10 - timedelta(days=1))
    later = AT_10 + timedelta(seconds=1)
    assert last(request(cred(started, valid_from=later))).reason is Reason.DENIED_NOT_YET_VALID
    assert last(request(cred(holder(valid_from=later)))).reason is Reason.DENIED_NOT_YET_VALID
    # another zone's offset is compared as an instant
    utc_end = (AT_10 + timedelta(minutes=1)).astimezone(UTC)
    assert last(request(cred(valid_until=utc_end))).reason is Reason.GRANTED


def test_naive_validity_is_read_in_the_site_zone_and_never_raises() -> None:
    naive_until = datetime(2026, 6, 1, 10, 30)
    assert last(request(cred(valid_until=naive_until))).reason is Reason.GRANTED
    late = AT_10.replace(hour=11)
    assert last(request(cred(valid_until=naive_until), local=late)).reason is Reason.DENIED_EXPIRED
    naive_local = datetime(2026, 6, 1, 9, 0)  # read as UTC: 11:00 in Berlin
    assert last(request(cred(valid_until=AT_10), local=naive_local)).reason is Reason.DENIED_EXPIRED


def test_schedule_covers_minutes_days_and_holidays() -> None:
    sched = Schedule("s", (Interval(0, 480, 1080), Interval(7, 540, 720), Interval(6, 0, 1440)))
    assert schedule_covers(sched, MONDAY.replace(hour=8), frozenset())
    assert schedule_covers(sched, MONDAY.replace(hour=17, minute=59, second=59), frozenset())
    assert not schedule_covers(sched, MONDAY.replace(hour=18), frozenset())
    assert not schedule_covers(sched, MONDAY.replace(hour=7, minute=59), frozenset())
    holiday = frozenset({MONDAY.date()})
    assert not schedule_covers(sched, MONDAY.replace(hour=8), holiday)  # only day 7 applies
    assert schedule_covers(sched, MONDAY.replace(hour=9), holiday)
    sunday = MONDAY + timedelta(days=6)
    assert schedule_covers(sched, sunday.replace(hour=23, minute=59), frozenset())
    assert not schedule_covers(sched, sunday, frozenset({sunday.date()}))


def test_effective_mode() -> None:
    free = Schedule("free", (Interval(0, 480, 600),))
    nine = MONDAY.replace(hour=9)
    assert effective_mode(DoorMode.CARD_AND_PIN, free, nine) is DoorMode.FREE
    assert effective_mode(DoorMode.CARD_AND_PIN, free, AT_10) is DoorMode.CARD_AND_PIN
    assert effective_mode(DoorMode.LOCKED, free, nine) is DoorMode.LOCKED
    assert effective_mode(DoorMode.CARD, None, nine) is DoorMode.CARD
    assert effective_mode(DoorMode.CARD, free, nine, frozenset({nine.date()})) is DoorMode.CARD


def test_free_door_still_needs_a_level_and_logs_who() -> None:
    d = last(request(C, at=door("vault", mode=DoorMode.FREE)))
    assert d.reason is Reason.DENIED_NO_ACCESS
    d = last(request(C, at=door(mode=DoorMode.FREE, interlock_busy=True)))
    assert (d.reason, d.cardholder_id) == (Reason.GRANTED_FREE_ACCESS, 1)


def test_override_outside_lockdown_follows_normal_rules() -> None:
    assert last(request(OVERRIDER)).reason is Reason.DENIED_NO_ACCESS
    expired = replace(OVERRIDER, valid_until=AT_10)
    assert last(request(expired, lockdown=True)).reason is Reason.DENIED_EXPIRED
    busy = door(interlock_busy=True)
    assert last(request(OVERRIDER, lockdown=True, at=busy)).reason is Reason.DENIED_INTERLOCK
    # in lockdown an override card at a card+PIN door needs no PIN
    assert last(request(OVERRIDER, lockdown=True, at=PIN_DOOR)).reason is Reason.GRANTED_OVERRIDE


def test_lockdown_denies_everyone_else_even_at_free_doors() -> None:
    assert last(request(C, lockdown=True, at=door(mode="free"))).reason is Reason.DENIED_LOCKDOWN
    assert last(request(C, lockdown=True, at=door(mode="locked"))).reason is Reason.DENIED_LOCKDOWN


def test_card_and_pin_flow() -> None:
    state = AccessState()
    d, state = decide(request(C, at=PIN_DOOR), state)
    pending = state.pending_pin("r1")
    assert pending is not None
    assert (pending.cardholder_id, pending.credential_id, pending.deadline_s) == (1, 1, 10)
    d, state = decide(request(C, kind="pin", pin=PinCheck.OK, at=PIN_DOOR, now_s=10), state)
    assert d.reason is Reason.GRANTED
    assert state.pending_pin("r1") is None
    d, state = decide(request(C, kind="pin", pin=PinCheck.OK, at=PIN_DOOR, now_s=11), state)
    assert d.reason is Reason.DENIED_CARD_REQUIRED  # the pending card was used


def test_a_new_card_replaces_the_pending_one_and_readers_are_separate() -> None:
    other = cred(holder(2))
    decisions = run(
        request(C, at=PIN_DOOR),
        request(other, at=PIN_DOOR, reader="r2", now_s=1),
        request(None, at=PIN_DOOR, now_s=2),  # an unknown card at r1 drops C's pending PIN
        request(C, kind="pin", pin=PinCheck.OK, at=PIN_DOOR, now_s=3),
        request(other, kind="pin", pin=PinCheck.OK, at=PIN_DOOR, reader="r2", now_s=4),
    )
    assert [d.reason for d in decisions] == [
        Reason.PENDING_PIN,
        Reason.PENDING_PIN,
        Reason.DENIED_UNKNOWN,
        Reason.DENIED_CARD_REQUIRED,
        Reason.GRANTED,
    ]


def test_pin_step_revalidates_the_credential() -> None:
    revoked = replace(C, state=CardholderState.REVOKED)
    d = last(request(C, at=PIN_DOOR), request(revoked, kind="pin", pin=PinCheck.OK, at=PIN_DOOR))
    assert d.reason is Reason.DENIED_REVOKED
    other = cred(holder(2))
    d = last(request(C, at=PIN_DOOR), request(other, kind="pin", pin=PinCheck.OK, at=PIN_DOOR))
    assert (d.reason, d.cardholder_id) == (Reason.DENIED_UNKNOWN, 1)
    d = last(request(C, at=PIN_DOOR), request(None, kind="pin", pin=PinCheck.OK, at=PIN_DOOR))
    assert d.reason is Reason.DENIED_UNKNOWN
    d = last(request(C, at=PIN_DOOR), request(C, kind="pin", pin=None, at=PIN_DOOR))
    assert d.reason is Reason.DENIED_BAD_PIN  # an unchecked PIN never opens


def test_duress_alarm_is_raised_whatever_the_outcome() -> None:
    late = last(
        request(C, at=PIN_DOOR),
        request(C, kind="pin", pin=PinCheck.DURESS, at=PIN_DOOR, now_s=11),
    )
    assert (late.reason, late.alarms) == (Reason.DENIED_PIN_TIMEOUT, ("duress",))
    hard = door(mode=DoorMode.CARD_AND_PIN, apb="hard")
    denied = last(
        request(C, at=hard),
        request(C, kind="pin", pin=PinCheck.OK, at=hard, now_s=1),
        request(C, at=hard, now_s=20),
    )
    assert denied.reason is Reason.DENIED_APB  # checked at the card, before any PIN
    soft = door(mode=DoorMode.CARD_AND_PIN, apb="soft")
    both = last(
        request(C, at=soft),
        request(C, kind="pin", pin=PinCheck.OK, at=soft, now_s=1),
        request(C, at=soft, now_s=20),
        request(C, kind="pin", pin=PinCheck.DURESS, at=soft, now_s=21),
    )
    assert (both.reason, set(both.alarms)) == (Reason.GRANTED_DURESS, {"duress", "apb"})


@given(
    mode=st.sampled_from([DoorMode.CARD_AND_PIN, DoorMode.PIN]),
    secure=st.booleans(),
    lockdown=st.booleans(),
    dt=st.sampled_from([0.0, 3.0, 10.0, 11.0]),
    state_of=st.sampled_from(list(CardholderState)),
)
def test_a_duress_pin_always_raises_its_alarm_and_a_bad_reader_never_grants(
    mode: DoorMode, secure: bool, lockdown: bool, dt: float, state_of: CardholderState
) -> None:
    """Whatever else refuses the entry (a reader without its secure channel included), the
    person typing a duress PIN may be under threat: the alarm is raised; no grant without the
    secure channel."""
    c = cred(holder(1, state=state_of))  # as the store has it at the PIN
    at = door(mode=mode)
    card = request(C, at=at)  # active when the card was presented
    pin = request(
        c,
        kind="pin",
        pin=PinCheck.DURESS,
        at=at,
        now_s=dt,
        reader_secure=secure,
        lockdown=lockdown,
    )
    d = last(card, pin) if mode is DoorMode.CARD_AND_PIN else last(pin)
    assert "duress" in d.alarms, d
    assert d.cardholder_id == 1
    if not secure:
        assert (d.reason, d.granted) == (Reason.DENIED_READER_INSECURE, False)


def test_pin_only_door() -> None:
    pin_door = door(mode=DoorMode.PIN)
    assert last(request(C, kind="pin", pin=PinCheck.OK, at=pin_door)).reason is Reason.GRANTED
    d = last(request(C, kind="pin", pin=PinCheck.DURESS, at=pin_door))
    assert (d.reason, d.alarms) == (Reason.GRANTED_DURESS, ("duress",))
    assert last(request(None, kind="pin", at=pin_door)).reason is Reason.DENIED_UNKNOWN
    # a card at a PIN-only door is asked for its PIN: card + PIN is never weaker than PIN
    assert last(request(C, at=pin_door)).reason is Reason.PENDING_PIN


def test_two_person_rule() -> None:
    tp = door(mode=DoorMode.TWO_PERSON, apb="hard")
    second = cred(holder(2))
    state = AccessState()
    first_d, state = decide(request(C, at=tp), state)
    assert (first_d.reason, first_d.next_factor) == (Reason.PENDING_SECOND_PERSON, "second-person")
    granted, state = decide(request(second, at=tp, now_s=10), state)
    assert (granted.reason, granted.cardholder_id) == (Reason.GRANTED, 2)
    assert "cardholder 1" in granted.detail  # both persons end up in the journal
    assert state.apb_position("default", 1) == state.apb_position("default", 2) == "in"
    late = run(request(C, at=tp), request(second, at=tp, now_s=10.5))
    assert [d.reason for d in late] == [Reason.PENDING_SECOND_PERSON] * 2
    # an unauthorised second person does not complete the pair
    stranger = cred(holder(3, doors=("vault",)))
    d = run(request(C, at=tp), request(stranger, at=tp, now_s=1), request(second, at=tp, now_s=2))
    assert [x.reason for x in d] == [
        Reason.PENDING_SECOND_PERSON,
        Reason.DENIED_NO_ACCESS,
        Reason.GRANTED,
    ]


def test_two_person_never_pairs_people_on_opposite_sides_of_the_door() -> None:
    outside = door(mode=DoorMode.TWO_PERSON, direction="in")
    inside = door(mode=DoorMode.TWO_PERSON, direction="out")
    first, across, pair = run(
        request(C, at=outside, reader="vault-in", now_s=0),
        request(cred(holder(2)), at=inside, reader="vault-out", now_s=3),
        request(cred(holder(3)), at=outside, reader="vault-in", now_s=4),
    )
    # the insider leaving waits for a second insider; the outsider is paired with an outsider
    assert (first.reason, across.reason) == (Reason.PENDING_SECOND_PERSON,) * 2
    assert (pair.reason, pair.cardholder_id) == (Reason.GRANTED, 3)
    assert "cardholder 1" in pair.detail


def test_anti_passback_directions_and_zones() -> None:
    inside, outside = door(apb="hard"), door("lobby", apb="hard", direction="out")
    reasons = [
        d.reason
        for d in run(
            request(C, at=outside),  # position unknown: leaving is allowed
            request(C, at=outside, now_s=1),  # already out
            request(C, at=inside, now_s=2),
            request(C, at=inside, now_s=3),  # already in
            request(C, at=inside, reader="r9", now_s=4),  # any reader of the zone
            request(C, at=door(zone="other", apb="hard"), now_s=5),  # another zone
        )
    ]
    assert reasons == [
        Reason.GRANTED,
        Reason.DENIED_APB,
        Reason.GRANTED,
        Reason.DENIED_APB,
        Reason.DENIED_APB,
        Reason.GRANTED,
    ]


def test_apb_off_keeps_no_positions_and_reset_forgets() -> None:
    state = AccessState()
    _, state = decide(request(C), state)
    assert len(state.apb) == 0
    _, state = decide(request(C, at=door(apb="hard")), state)
    _, state = decide(request(C, at=door(zone="z2", apb="soft")), state)
    assert state.apb_position("default", 1) == "in"
    assert state.reset_apb("default").apb_position("default", 1) is None
    assert state.reset_apb("default").apb_position("z2", 1) == "in"
    assert len(state.reset_apb().apb) == 0


def test_throttle_trips_alarms_and_expires() -> None:
    state = AccessState()
    reasons = []
    for t in (0, 1, 2):
        d, state = decide(request(None, config=CONFIG, now_s=t), state)
        reasons.append((d.reason, d.alarms))
    assert reasons[-1] == (Reason.DENIED_UNKNOWN, ("throttle",))
    assert [a for _, a in reasons[:2]] == [(), ()]
    assert state.throttled("r1", 61.9)
    d, after = decide(request(C, config=CONFIG, now_s=61.9), state)
    assert d.reason is Reason.DENIED_THROTTLED
    assert after == state  # nothing recorded while throttled
    d, state = decide(request(C, config=CONFIG, now_s=62), state)
    assert d.reason is Reason.GRANTED
    assert not state.throttled("r1", 62)
    d, state = decide(request(None, config=CONFIG, now_s=63, reader="r2"), state)
    assert not state.throttled("r1", 63)  # per reader


def test_throttle_window_and_what_counts() -> None:
    spread = run(*(request(None, config=CONFIG, now_s=t) for t in (0, 20, 30, 45)))
    assert [d.alarms for d in spread] == [(), (), (), ("throttle",)]  # 0 fell out at 30
    grants_between = run(
        request(None, config=CONFIG),
        request(C, config=CONFIG, now_s=1),
        request(None, config=CONFIG, now_s=2),
        request(C, config=CONFIG, now_s=3),
        request(None, config=CONFIG, now_s=4),
    )
    assert grants_between[-1].alarms == ("throttle",)  # grants do not clear the history
    locked = door(mode=DoorMode.LOCKED)
    situational = run(*(request(C, config=CONFIG, at=locked, now_s=t) for t in range(6)))
    assert {d.reason for d in situational} == {Reason.DENIED_DOOR_LOCKED}
    assert all(d.alarms == () for d in situational)
    assert Reason.DENIED_LOCKDOWN not in COUNTED_DENIALS
    assert Reason.DENIED_MALFORMED in COUNTED_DENIALS
    insecure = run(*(request(None, config=CONFIG, reader_secure=False) for _ in range(5)))
    assert {d.reason for d in insecure} == {Reason.DENIED_READER_INSECURE}


def test_details_never_show_the_credential() -> None:
    for reason, scenario in EXAMPLES.values():
        decision = scenario()
        assert "67" not in decision.detail, reason
        assert "h10301" not in decision.detail, reason


def test_config_from_settings_and_door_validation() -> None:
    settings_ = AccessSettings(pin_timeout_s=5.0, throttle_denials=7)
    cfg = PolicyConfig.from_settings(settings_)
    assert (cfg.pin_timeout_s, cfg.throttle_denials) == (5.0, 7)
    assert cfg.throttle_lockout_s == settings_.throttle_lockout_s
    assert DoorPolicy("x", mode="card+pin").mode is DoorMode.CARD_AND_PIN  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="card-and-pin"):
        DoorPolicy("x", mode="card-and-pin")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="apb"):
        DoorPolicy("x", apb="strict")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="direction"):
        DoorPolicy("x", direction="up")  # type: ignore[arg-type]


def test_unknown_request_kind_is_treated_as_malformed() -> None:
    d = last(request(C, kind="swipe"))  # type: ignore[arg-type]
    assert d.reason is Reason.DENIED_MALFORMED


@given(
    st.lists(
        st.tuples(st.sampled_from(["set", "delete"]), st.integers(0, 600), st.integers()),
        max_size=60,
    )
)
def test_frozen_map_behaves_like_a_dict(ops: list[tuple[str, int, int]]) -> None:
    model: dict[int, int] = {}
    fmap: FrozenMap[int, int] = FrozenMap()
    for op, key, value in ops:
        before = fmap
        snapshot = dict(before)
        if op == "set":
            fmap, model[key] = fmap.set(key, value), value
        else:
            fmap = fmap.delete(key)
            model.pop(key, None)
        assert dict(before) == snapshot  # the old map is untouched
    assert dict(fmap) == model
    assert len(fmap) == len(model)
    assert all(k in fmap for k in model)
    probes: list[object] = ["x", []]  # another type; an unhashable key is simply absent
    assert not any(p in fmap for p in probes)
    assert fmap == FrozenMap(model)
    assert hash(fmap) == hash(FrozenMap(model.items()))


# --------------------------------------------------------------------------- reference model

DOORS = ("a", "b", "c")
WEEK_MINUTES = 7 * 24 * 60


def moments() -> st.SearchStrategy[datetime]:
    """A local time in the test week (seconds included)."""
    return st.integers(0, WEEK_MINUTES * 60 - 1).map(lambda s: MONDAY + timedelta(seconds=s))


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in ``n`` draws (False is the simple value hypothesis favours)."""
    return st.sampled_from([False] * (n - 1) + [True])


def rarely_none(strategy: st.SearchStrategy[T], n: int) -> st.SearchStrategy[T | None]:
    """None about once in ``n`` draws, else ``strategy``."""
    return one_in(n).flatmap(lambda none: st.none() if none else strategy)


def rarely(strategy: st.SearchStrategy[T], n: int) -> st.SearchStrategy[T | None]:
    """``strategy`` about once in ``n`` draws, else None."""
    return one_in(n).flatmap(lambda some: strategy if some else st.none())


@st.composite
def intervals(draw: st.DrawFn) -> Interval:
    start = draw(st.integers(0, 1439))
    return Interval(draw(st.integers(0, 7)), start, draw(st.integers(start + 1, 1440)))


SCHEDULES = one_in(2).flatmap(
    lambda weekly: (
        st.lists(intervals(), max_size=6).map(lambda xs: Schedule("s", tuple(xs)))
        if weekly
        else st.just(ALWAYS)
    )
)
LEVELS = st.builds(
    AccessLevel,
    st.just("level"),
    st.frozensets(st.sampled_from(DOORS), min_size=1),
    SCHEDULES,
)
STATES = st.sampled_from([CardholderState.ACTIVE] * 9 + list(CardholderState)[1:])
MAYBE_TIME = rarely(moments(), 4)


@st.composite
def credentials(draw: st.DrawFn, ident: int | None = None) -> Credential:
    """A credential, mostly usable, with random states, windows, privileges and levels."""
    n = draw(st.integers(1, 5)) if ident is None else ident
    owner = Cardholder(
        n,
        f"p{n}",
        state=draw(STATES),
        valid_from=draw(MAYBE_TIME),
        valid_until=draw(MAYBE_TIME),
        privileges=draw(st.frozensets(st.sampled_from(list(Privilege)))),
        has_pin=draw(st.booleans()),
        levels=tuple(draw(st.lists(LEVELS, min_size=0 if draw(one_in(6)) else 1, max_size=3))),
    )
    return Credential(
        n,
        owner,
        state=draw(STATES),
        valid_from=draw(MAYBE_TIME),
        valid_until=draw(MAYBE_TIME),
        display="w34:1:***89",
    )


WEEK_DATES = [(MONDAY + timedelta(days=i)).date() for i in range(7)]
HOLIDAYS = st.frozensets(st.sampled_from(WEEK_DATES), max_size=3)


def reference(
    credential: Credential | None,
    door_name: str,
    mode: DoorMode,
    local: datetime,
    holidays: frozenset[date],
    lockdown: bool,
) -> Reason:
    """A deliberately plain restatement of the card-only / free / locked rules."""
    if credential is None:
        return Reason.DENIED_UNKNOWN
    person = credential.cardholder
    both = {credential.state, person.state}
    if CardholderState.REVOKED in both:
        return Reason.DENIED_REVOKED
    if CardholderState.LOST in both:
        return Reason.DENIED_LOST
    if CardholderState.DISABLED in both:
        return Reason.DENIED_DISABLED
    for start in (credential.valid_from, person.valid_from):
        if start is not None and local < start:
            return Reason.DENIED_NOT_YET_VALID
    for end in (credential.valid_until, person.valid_until):
        if end is not None and not local < end:
            return Reason.DENIED_EXPIRED
    override = Privilege.OVERRIDE in person.privileges
    if lockdown:
        return Reason.GRANTED_OVERRIDE if override else Reason.DENIED_LOCKDOWN
    if mode == DoorMode.LOCKED:
        return Reason.GRANTED_OVERRIDE if override else Reason.DENIED_DOOR_LOCKED
    weekday = 7 if local.date() in holidays else local.weekday()
    minute_of_day = local.hour * 60 + local.minute
    mine = [lv for lv in person.levels if door_name in lv.doors]
    if not mine:
        return Reason.DENIED_NO_ACCESS
    now_ok = [
        lv
        for lv in mine
        for iv in lv.schedule.intervals
        if iv.day == weekday and minute_of_day in range(iv.start_min, iv.end_min)
    ]
    if not now_ok:
        return Reason.DENIED_SCHEDULE
    return Reason.GRANTED_FREE_ACCESS if mode == DoorMode.FREE else Reason.GRANTED


@settings(max_examples=300)
@given(
    rarely_none(credentials(), 10),
    st.sampled_from(DOORS),
    st.sampled_from([DoorMode.CARD, DoorMode.CARD, DoorMode.FREE, DoorMode.LOCKED]),
    moments(),
    HOLIDAYS,
    one_in(5),
)
def test_policy_agrees_with_the_reference_model(
    credential: Credential | None,
    door_name: str,
    mode: DoorMode,
    local: datetime,
    holidays: frozenset[date],
    lockdown: bool,
) -> None:
    expected = reference(credential, door_name, mode, local, holidays, lockdown)
    req = request(
        credential,
        at=door(door_name, mode=mode),
        local=local,
        holidays=holidays,
        lockdown=lockdown,
    )
    decision, _ = decide(req, AccessState())
    assert decision.reason is expected
    assert decision.granted == expected.granted


# --------------------------------------------------------------------------- stateful machines


def simple(ident: int) -> Credential:
    """An always-authorised credential for every test door."""
    return cred(holder(ident, doors=("lobby", "z1-in", "z1-out", "z2-in", "z2-out", "a", "b")))


class AntiPassbackMachine(RuleBasedStateMachine):
    """Hard/soft anti-passback over in/out readers of two zones against a position model."""

    def __init__(self) -> None:
        super().__init__()
        self.state = AccessState()
        self.positions: dict[tuple[str, int], str] = {}
        self.now = 0.0
        self.mode: Literal["soft", "hard"] = "hard"

    @initialize(mode=st.sampled_from(["soft", "hard"]))
    def choose_mode(self, mode: Literal["soft", "hard"]) -> None:
        self.mode = mode

    @rule(
        who=st.integers(1, 3),
        zone=st.sampled_from(["z1", "z2"]),
        direction=st.sampled_from(["in", "out"]),
    )
    def badge(self, who: int, zone: str, direction: Literal["in", "out"]) -> None:
        at = door(f"{zone}-{direction}", zone=zone, apb=self.mode, direction=direction)
        self.now += 1
        d, self.state = decide(request(simple(who), at=at, now_s=self.now), self.state)
        violation = self.positions.get((zone, who)) == direction
        if violation and self.mode == "hard":
            assert d.reason is Reason.DENIED_APB
            return
        assert d.reason is (Reason.GRANTED_SOFT_APB if violation else Reason.GRANTED)
        assert ("apb" in d.alarms) is violation
        self.positions[(zone, who)] = direction

    @rule(zone=st.sampled_from(["z1", "z2"]))
    def reset(self, zone: str) -> None:
        self.state = self.state.reset_apb(zone)
        self.positions = {k: v for k, v in self.positions.items() if k[0] != zone}

    @invariant()
    def positions_match(self) -> None:
        assert dict(self.state.apb) == self.positions


class TwoPersonMachine(RuleBasedStateMachine):
    """The two-person rule with a window, repeated badges and an interlock that comes and goes,
    at the door's in and out readers: only people on the same side are ever paired."""

    def __init__(self) -> None:
        super().__init__()
        self.state = AccessState()
        self.firsts: dict[Direction, tuple[int, float]] = {}
        self.now = 0.0
        self.busy = False

    @rule(dt=st.sampled_from([0.0, 0.5, 4.0, 10.0, 10.5, 30.0]))
    def wait(self, dt: float) -> None:
        self.now += dt

    @rule()
    def toggle_interlock(self) -> None:
        self.busy = not self.busy

    @rule(who=st.integers(1, 3), side=st.sampled_from(["in", "out"]))
    def badge(self, who: int, side: Direction) -> None:
        at = door(mode=DoorMode.TWO_PERSON, interlock_busy=self.busy, direction=side)
        reader = f"lobby-{side}"
        d, self.state = decide(
            request(simple(who), at=at, now_s=self.now, reader=reader), self.state
        )
        if self.busy:
            assert d.reason is Reason.DENIED_INTERLOCK
            return
        first = self.firsts.get(side)
        live = first is not None and self.now <= first[1]
        if live and first is not None and first[0] == who:
            assert d.reason is Reason.DENIED_SAME_PERSON
        elif live and first is not None:
            assert (d.reason, d.cardholder_id) == (Reason.GRANTED, who)
            assert f"cardholder {first[0]}" in d.detail
            del self.firsts[side]
        else:
            assert (d.reason, d.next_factor) == (Reason.PENDING_SECOND_PERSON, "second-person")
            self.firsts[side] = (who, self.now + CONFIG.two_person_window_s)

    @invariant()
    def first_matches(self) -> None:
        for side in ("in", "out"):
            first = self.state.first_person("lobby", side)
            if side not in self.firsts:
                assert first is None
            else:
                assert first is not None
                assert (first.cardholder_id, first.deadline_s) == self.firsts[side]


class CardAndPinMachine(RuleBasedStateMachine):
    """Card then PIN at the same reader within the timeout; the machine plays the service."""

    CREDS = {1: simple(1), 2: simple(2), 3: cred(holder(3, has_pin=False))}

    def __init__(self) -> None:
        super().__init__()
        self.state = AccessState()
        self.pending: tuple[int, float] | None = None
        self.now = 0.0

    @rule(dt=st.sampled_from([0.1, 3.0, 9.9, 10.0, 10.1, 25.0]))
    def wait(self, dt: float) -> None:
        self.now += dt

    @rule(who=st.sampled_from([1, 2, 3]))
    def card(self, who: int) -> None:
        d, self.state = decide(request(self.CREDS[who], at=PIN_DOOR, now_s=self.now), self.state)
        if who == 3:
            assert d.reason is Reason.DENIED_NO_PIN
            self.pending = None
        else:
            assert (d.reason, d.next_factor) == (Reason.PENDING_PIN, "pin")
            self.pending = (who, self.now + CONFIG.pin_timeout_s)

    @rule(check=st.sampled_from(list(PinCheck)))
    def pin(self, check: PinCheck) -> None:
        pending = self.state.pending_pin("r1")  # what the service looks at
        subject = None if pending is None else self.CREDS[pending.cardholder_id]
        req = request(subject, kind="pin", pin=check, at=PIN_DOOR, now_s=self.now)
        d, self.state = decide(req, self.state)
        model, self.pending = self.pending, None
        if model is None:
            assert d.reason is Reason.DENIED_CARD_REQUIRED
        elif self.now > model[1]:
            assert (d.reason, d.cardholder_id) == (Reason.DENIED_PIN_TIMEOUT, model[0])
        elif check is PinCheck.BAD:
            assert d.reason is Reason.DENIED_BAD_PIN
        elif check is PinCheck.DURESS:
            assert d.reason is Reason.GRANTED_DURESS
        else:
            assert d.reason is Reason.GRANTED
        assert ("duress" in d.alarms) is (check is PinCheck.DURESS and model is not None)

    @invariant()
    def pending_matches(self) -> None:
        pending = self.state.pending_pin("r1")
        if self.pending is None:
            assert pending is None
        else:
            assert pending is not None
            assert (pending.cardholder_id, pending.deadline_s) == self.pending


class ThrottleMachine(RuleBasedStateMachine):
    """Counted denials, situational denials and grants at one reader against a model."""

    def __init__(self) -> None:
        super().__init__()
        self.state = AccessState()
        self.denials: list[float] = []
        self.until = -1.0
        self.now = 0.0

    @rule(dt=st.sampled_from([0.5, 1.0, 3.0, 7.0, 12.0, 25.0, 61.0]))
    def wait(self, dt: float) -> None:
        self.now += dt

    def attempt(
        self, credential: Credential | None, at: DoorPolicy, *, counted: bool, kind: Kind = "card"
    ) -> None:
        req = request(credential, kind=kind, at=at, config=CONFIG, now_s=self.now)
        throttled_before = self.state.throttled("r1", self.now)
        d, self.state = decide(req, self.state)
        assert throttled_before is (self.now < self.until)
        if self.now < self.until:
            assert d.reason is Reason.DENIED_THROTTLED
            return
        if not counted:
            assert "throttle" not in d.alarms
            return
        self.denials = [t for t in self.denials if self.now - t < CONFIG.throttle_window_s]
        self.denials.append(self.now)
        if len(self.denials) >= CONFIG.throttle_denials:
            assert d.alarms == ("throttle",)
            self.until = self.now + CONFIG.throttle_lockout_s
            self.denials = []
        else:
            assert d.alarms == ()

    @rule()
    def unknown_card(self) -> None:
        self.attempt(None, door(), counted=True)

    @rule()
    def malformed(self) -> None:
        self.attempt(None, door(), counted=True, kind="malformed")

    @rule()
    def valid_card(self) -> None:
        self.attempt(simple(1), door(), counted=False)

    @rule()
    def locked_door(self) -> None:
        self.attempt(simple(1), door(mode=DoorMode.LOCKED), counted=False)


class VestibuleMachine(RuleBasedStateMachine):
    """Two interlocked doors; the caller derives interlock_busy from door states as the
    access service does, and the doors never stand unlocked or open together."""

    def __init__(self) -> None:
        super().__init__()
        self.state = AccessState()
        self.unlocked_until = {"a": -1.0, "b": -1.0}
        self.open = {"a": False, "b": False}
        self.now = 0.0

    def released(self, name: str) -> bool:
        return self.now < self.unlocked_until[name] or self.open[name]

    @rule(dt=st.sampled_from([0.5, 2.0, 6.0]))
    def wait(self, dt: float) -> None:
        self.now += dt

    @rule(name=st.sampled_from(["a", "b"]), lockdown=st.booleans())
    def badge(self, name: str, lockdown: bool) -> None:
        other = "b" if name == "a" else "a"
        at = door(name, interlock_busy=self.released(other))
        who = OVERRIDER if lockdown else simple(1)
        req = request(who, at=at, now_s=self.now, lockdown=lockdown, reader=name)
        d, self.state = decide(req, self.state)
        if self.released(other):
            assert d.reason is Reason.DENIED_INTERLOCK
        else:
            assert d.granted
            self.unlocked_until[name] = self.now + 5.0

    @rule(name=st.sampled_from(["a", "b"]))
    def open_door(self, name: str) -> None:
        if self.now < self.unlocked_until[name]:
            self.open[name] = True

    @rule(name=st.sampled_from(["a", "b"]))
    def close_door(self, name: str) -> None:
        self.open[name] = False
        self.unlocked_until[name] = min(self.unlocked_until[name], self.now)

    @invariant()
    def never_both(self) -> None:
        assert not (self.released("a") and self.released("b"))


MACHINES = [
    AntiPassbackMachine,
    TwoPersonMachine,
    CardAndPinMachine,
    ThrottleMachine,
    VestibuleMachine,
]


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.__name__)
def test_stateful(machine: type[RuleBasedStateMachine]) -> None:
    run_state_machine_as_test(
        machine, settings=settings(max_examples=60, stateful_step_count=30, deadline=None)
    )


# --------------------------------------------------------------------------- global safety


@dataclass(frozen=True)
class Event:
    kind: Kind
    credential: int | None  # index into the pool
    pin: PinCheck | None
    door: int
    dt: float
    local: datetime
    lockdown: bool
    secure: bool
    interlock: bool


POOL_DOOR_A: list[tuple[DoorMode, AntiPassback, Direction]] = [
    (DoorMode.CARD, "off", "in"),
    (DoorMode.CARD_AND_PIN, "hard", "in"),
    (DoorMode.PIN, "soft", "out"),
    (DoorMode.TWO_PERSON, "hard", "in"),
    (DoorMode.FREE, "off", "in"),
    (DoorMode.LOCKED, "off", "in"),
]
DOOR_POOL = [DoorPolicy("a", mode=m, apb=apb, direction=d) for m, apb, d in POOL_DOOR_A] + [
    DoorPolicy("b", mode=DoorMode.CARD_AND_PIN, apb="hard", direction="out"),
    DoorPolicy("c", mode=DoorMode.TWO_PERSON),
]

EVENTS = st.builds(
    Event,
    kind=st.sampled_from(["card"] * 6 + ["pin"] * 3 + ["malformed"]),
    credential=rarely_none(st.integers(0, 5), 8),
    pin=rarely_none(st.sampled_from(list(PinCheck)), 8),
    door=st.integers(0, len(DOOR_POOL) - 1),
    dt=st.sampled_from([0.0, 0.5, 2.0, 9.0, 11.0, 40.0]),
    local=moments(),
    lockdown=one_in(10),
    secure=one_in(20).map(lambda insecure: not insecure),
    interlock=one_in(8),
)
SAFETY_CONFIG = replace(CONFIG, throttle_denials=6)


def level_allows(person: Cardholder, door_name: str, local: datetime, hol: frozenset[date]) -> bool:
    return any(
        door_name in lv.doors and schedule_covers(lv.schedule, local, hol) for lv in person.levels
    )


def clean(ident: int, override: bool) -> Credential:
    """A credential that passes every check for the pool's doors, at any time."""
    levels = (AccessLevel("all", frozenset({"a", "b", "c"}), ALWAYS),)
    privileges = frozenset({Privilege.OVERRIDE}) if override else frozenset()
    person = Cardholder(ident, f"p{ident}", privileges=privileges, has_pin=True, levels=levels)
    return Credential(ident, person, display="w34:1:***89")


@st.composite
def pools(draw: st.DrawFn) -> list[Credential]:
    """Six credentials with ids 0..5: about half clean, the others random."""
    return [
        draw(credentials(i)) if draw(one_in(2)) else clean(i, draw(one_in(4))) for i in range(6)
    ]


@settings(max_examples=150)
@given(pools(), st.lists(EVENTS, min_size=1, max_size=40), HOLIDAYS)
def test_safety_under_random_sequences(
    pool: list[Credential], events: list[Event], holidays: frozenset[date]
) -> None:
    state = AccessState()
    now = 0.0
    for event in events:
        now += event.dt
        at = replace(DOOR_POOL[event.door], interlock_busy=event.interlock)
        reader = f"r-{at.name}-{at.direction}"
        credential = None if event.credential is None else pool[event.credential]
        if event.kind == "pin":  # as the service does: the pending card's credential, if any
            pending = state.pending_pin(reader)
            if pending is not None:
                credential = pool[pending.credential_id]
            elif at.mode != DoorMode.PIN:
                credential = None
        req = AccessRequest(
            kind=event.kind,
            reader=reader,
            door=at,
            now_s=now,
            local=event.local,
            holidays=holidays,
            credential=credential,
            pin=event.pin,
            config=SAFETY_CONFIG,
            lockdown=event.lockdown,
            reader_secure=event.secure,
        )
        before = state
        decision, state = decide(req, state)
        note(f"{event} -> {decision.reason}")
        if before.throttled(reader, now):
            assert decision.reason is Reason.DENIED_THROTTLED
            assert state == before
        assert decision.door == at.name
        assert "***89" not in decision.detail
        if not decision.granted:
            continue
        # ---- every grant:
        assert credential is not None
        assert event.kind != "malformed"
        assert event.secure
        assert not at.interlock_busy or at.mode == DoorMode.FREE
        person = credential.cardholder
        assert decision.cardholder_id == person.id
        assert credential.state == person.state == CardholderState.ACTIVE
        for start in (credential.valid_from, person.valid_from):
            assert start is None or start <= event.local
        for end in (credential.valid_until, person.valid_until):
            assert end is None or event.local < end
        if event.kind == "pin":
            assert event.pin in (PinCheck.OK, PinCheck.DURESS)
        if event.lockdown or at.mode == DoorMode.LOCKED:
            assert decision.reason is Reason.GRANTED_OVERRIDE
        if decision.reason is Reason.GRANTED_OVERRIDE:
            assert Privilege.OVERRIDE in person.privileges
            assert event.lockdown or at.mode == DoorMode.LOCKED
            continue
        assert level_allows(person, at.name, event.local, holidays)
        if at.mode in (DoorMode.CARD_AND_PIN, DoorMode.PIN):
            assert event.kind == "pin"
        if at.mode == DoorMode.TWO_PERSON:
            first = before.first_person(at.name, at.direction)
            assert first is not None
            assert first.cardholder_id != person.id
            assert now <= first.deadline_s
        if at.apb == "hard" and at.mode != DoorMode.FREE:
            assert before.apb_position(at.zone, person.id) != at.direction


# --------------------------------------------------------------------------- documentation


def test_reason_table_in_docs_matches_the_code() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "access.md").read_text("utf-8")
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and cells[1] in {"yes", "no"}:
            rows[cells[0].strip("`")] = (cells[1] == "yes", cells[2] == "yes")
    assert set(rows) == {r.value for r in Reason}
    for reason in Reason:
        assert rows[reason.value] == (reason.granted, reason in COUNTED_DENIALS), reason


_ORDER = ["free", "card", "pin", "card+pin", "two-person", "locked"]


@given(
    door=st.sampled_from(list(DoorMode)),
    level=st.none() | st.sampled_from([m.value for m in DoorMode]),
)
def test_a_threat_level_never_drops_a_factor_a_door_asks_for(
    door: DoorMode, level: str | None
) -> None:
    mode = stricter(door, level)
    factors = {
        DoorMode.CARD: {"card"},
        DoorMode.PIN: {"pin"},
        DoorMode.CARD_AND_PIN: {"card", "pin"},
    }
    # never weaker than either side, in the documented order
    assert _ORDER.index(mode.value) >= _ORDER.index(door.value)
    if level is not None:
        assert _ORDER.index(mode.value) >= _ORDER.index(level)
    # and a card door under a PIN level (or the reverse) needs both
    if level is not None and door in factors and DoorMode(level) in factors:
        assert factors[door] | factors[DoorMode(level)] <= factors.get(mode, {"card", "pin"})
