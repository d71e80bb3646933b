"""The access policy: one attempt at a reader in, one Decision and the next state out (pure).

``decide(request, state) -> (decision, state)`` reads no clock and does no I/O: the caller
passes the monotonic time (``now_s``, for PIN, two-person and throttle windows), the site's
local wall-clock time (``local``, for schedules and validity windows), the door's effective
mode and whether its interlock group is busy. ``AccessState`` is immutable; every map in it
is a :class:`FrozenMap`, whose updates copy one small shard, so a decision stays cheap with a
million anti-passback positions.

Decision order (the first rule that applies decides; docs/access.md has the full table):

1.  reader throttled                         -> denied-throttled (nothing else evaluated)
2.  reader without its secure channel        -> denied-reader-insecure (a duress PIN
    still raises its alarm)
3.  malformed frame                          -> denied-malformed
4.  PIN: pending card at this reader expired -> denied-pin-timeout; no pending card and the
    door is not PIN-only                     -> denied-card-required
5.  unknown credential                       -> denied-unknown
6.  cardholder/credential state (stricter)   -> denied-revoked / -lost / -disabled
7.  validity window (both, with times)       -> denied-not-yet-valid / denied-expired
8.  lockdown or door LOCKED                  -> override privilege: granted-override (after
    the PIN if this is a PIN step, and the interlock); others denied-lockdown /
    denied-door-locked
9.  access level for the door, schedule now  -> denied-no-access / denied-schedule
10. PIN step: the PIN check                  -> denied-bad-pin
11. door FREE                                -> granted-free-access
12. interlock group busy                     -> denied-interlock
13. anti-passback (position == direction)    -> hard: denied-apb; soft: granted with "apb"
14. mode: two-person -> pending-second-person / denied-same-person / granted; card+PIN or
    PIN door given a card -> denied-no-pin (cardholder has no PIN) or pending-pin; else granted

Invariants (tested in tests/unit/test_policy.py): no grant for an unknown, revoked, lost,
disabled, expired or not-yet-valid credential, nor outside every access level's door list and
schedule (except the override privilege at a locked door or in lockdown), nor from a malformed
frame, nor while the reader is throttled; in lockdown only override holders are granted.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, tzinfo
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from controller.access.model import (
    CardholderState,
    Credential,
    Decision,
    DoorMode,
    PinCheck,
    Privilege,
    Reason,
    Schedule,
)

if TYPE_CHECKING:
    from controller.settings import AccessSettings

Direction = Literal["in", "out"]
AntiPassback = Literal["off", "soft", "hard"]
RequestKind = Literal["card", "pin", "malformed"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

HOLIDAY = 7  # Interval.day of holiday intervals

COUNTED_DENIALS: frozenset[Reason] = frozenset(
    {
        Reason.DENIED_MALFORMED,
        Reason.DENIED_UNKNOWN,
        Reason.DENIED_DISABLED,
        Reason.DENIED_LOST,
        Reason.DENIED_REVOKED,
        Reason.DENIED_NOT_YET_VALID,
        Reason.DENIED_EXPIRED,
        Reason.DENIED_NO_ACCESS,
        Reason.DENIED_SCHEDULE,
        Reason.DENIED_BAD_PIN,
        Reason.DENIED_PIN_TIMEOUT,
        Reason.DENIED_NO_PIN,
        Reason.DENIED_CARD_REQUIRED,
    }
)
"""Denials that count toward a reader's throttle: failures of the credential itself.

Situational denials (door locked, lockdown, interlock, anti-passback, same person) do not
count: people badging repeatedly at a locked door during a lockdown must not throttle the
reader a responder needs next. Neither do denied-throttled and denied-reader-insecure.
"""

_STATE_RANK = {
    CardholderState.ACTIVE: 0,
    CardholderState.DISABLED: 1,
    CardholderState.LOST: 2,
    CardholderState.REVOKED: 3,
}
_STATE_REASON = {
    CardholderState.DISABLED: Reason.DENIED_DISABLED,
    CardholderState.LOST: Reason.DENIED_LOST,
    CardholderState.REVOKED: Reason.DENIED_REVOKED,
}


class FrozenMap(Mapping[K, V]):
    """An immutable mapping; ``set``/``delete`` copy one of its 1024 shards, sharing the rest."""

    __slots__ = ("_len", "_shards")
    _BITS = 10
    _MASK = (1 << _BITS) - 1
    _EMPTY_SHARD: Mapping[Any, Any] = {}  # shared, never mutated

    _shards: tuple[Mapping[K, V], ...]
    _len: int

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        """Build from a mapping or (key, value) pairs (later pairs win)."""
        shards: list[dict[K, V]] = [{} for _ in range(self._MASK + 1)]
        pairs = items.items() if isinstance(items, Mapping) else items
        for key, value in pairs:
            shards[hash(key) & self._MASK][key] = value
        self._shards = tuple(s if s else self._EMPTY_SHARD for s in shards)
        self._len = sum(len(s) for s in shards)

    @classmethod
    def _make(cls, shards: tuple[Mapping[K, V], ...], length: int) -> FrozenMap[K, V]:
        new = cls.__new__(cls)
        new._shards = shards
        new._len = length
        return new

    def __getitem__(self, key: K) -> V:
        """The value of ``key`` (KeyError if absent)."""
        return self._shards[hash(key) & self._MASK][key]

    def __iter__(self) -> Iterator[K]:
        """Keys, in no particular order."""
        for shard in self._shards:
            yield from shard

    def __len__(self) -> int:
        """Number of entries."""
        return self._len

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is present."""
        try:
            return key in self._shards[hash(key) & self._MASK]
        except TypeError:
            return False

    def __hash__(self) -> int:
        """Hash of the items (values must be hashable)."""
        return hash(frozenset(self.items()))

    def __repr__(self) -> str:
        """``FrozenMap({...})``."""
        return f"FrozenMap({dict(self)!r})"

    def set(self, key: K, value: V) -> FrozenMap[K, V]:
        """A copy with ``key`` set to ``value``."""
        index = hash(key) & self._MASK
        shard = self._shards[index]
        added = key not in shard
        new_shard = dict(shard)
        new_shard[key] = value
        shards = (*self._shards[:index], new_shard, *self._shards[index + 1 :])
        return self._make(shards, self._len + added)

    def delete(self, key: K) -> FrozenMap[K, V]:
        """A copy without ``key`` (the same map if absent)."""
        index = hash(key) & self._MASK
        shard = self._shards[index]
        if key not in shard:
            return self
        new_shard = {k: v for k, v in shard.items() if k != key}
        shards = (*self._shards[:index], new_shard or self._EMPTY_SHARD, *self._shards[index + 1 :])
        return self._make(shards, self._len - 1)


_EMPTY: FrozenMap[Any, Any] = FrozenMap()


# -- inputs ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Site-wide timing of factors and the brute-force throttle (from [access])."""

    pin_timeout_s: float = 10.0
    two_person_window_s: float = 10.0
    throttle_denials: int = 5
    throttle_window_s: float = 30.0
    throttle_lockout_s: float = 60.0

    @classmethod
    def from_settings(cls, access: AccessSettings) -> PolicyConfig:
        """The policy's view of the site's [access] settings."""
        return cls(
            pin_timeout_s=access.pin_timeout_s,
            two_person_window_s=access.two_person_window_s,
            throttle_denials=access.throttle_denials,
            throttle_window_s=access.throttle_window_s,
            throttle_lockout_s=access.throttle_lockout_s,
        )


DEFAULT_CONFIG = PolicyConfig()


@dataclass(frozen=True, slots=True)
class DoorPolicy:
    """A door as the policy sees it at one reader, now (the caller computes mode and busy)."""

    name: str
    zone: str = "default"
    mode: DoorMode = DoorMode.CARD  # effective now: see effective_mode()
    apb: AntiPassback = "off"  # the zone's anti-passback
    direction: Direction = "in"  # of the reader: 'in' enters the zone, 'out' leaves it
    interlock_busy: bool = False  # another door of its interlock group is unlocked or open

    def __post_init__(self) -> None:
        """Refuse values the policy does not know (a typo must not mean 'card only')."""
        object.__setattr__(self, "mode", DoorMode(self.mode))
        if self.apb not in ("off", "soft", "hard"):
            raise ValueError(f"apb must be 'off', 'soft' or 'hard' (got {self.apb!r})")
        if self.direction not in ("in", "out"):
            raise ValueError(f"direction must be 'in' or 'out' (got {self.direction!r})")


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessRequest:
    """One attempt at a reader: a card, a PIN typed at its keypad, or a malformed frame."""

    kind: RequestKind
    reader: str
    door: DoorPolicy
    now_s: float  # monotonic seconds
    local: datetime  # aware, in the site's time zone
    holidays: frozenset[date] = frozenset()
    credential: Credential | None = None  # None: unknown card (or, PIN-only, unknown PIN)
    pin: PinCheck | None = None  # kind "pin": the PIN checked against the subject cardholder
    config: PolicyConfig = DEFAULT_CONFIG
    lockdown: bool = False  # only the override privilege is granted
    reader_secure: bool = True  # False: the reader lost or never had its secure channel


# -- state -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingPin:
    """A card accepted at a card+PIN reader, waiting for its PIN until ``deadline_s``."""

    cardholder_id: int
    credential_id: int
    deadline_s: float


@dataclass(frozen=True, slots=True)
class FirstPerson:
    """The first of two persons at a two-person door, waiting until ``deadline_s``."""

    cardholder_id: int
    deadline_s: float
    direction: Direction = "in"
    soft_apb: bool = False  # the first person's entry violates soft anti-passback


@dataclass(frozen=True, slots=True)
class AccessState:
    """Everything the policy remembers between attempts (immutable)."""

    pending_pins: FrozenMap[str, PendingPin] = _EMPTY  # per reader
    # per (door, reader direction): people on opposite sides of a door are never paired
    first_persons: FrozenMap[tuple[str, Direction], FirstPerson] = _EMPTY
    apb: FrozenMap[tuple[str, int], Direction] = _EMPTY  # (zone, cardholder id) -> position
    denials: FrozenMap[str, tuple[float, ...]] = _EMPTY  # per reader, recent counted denials
    lockouts: FrozenMap[str, float] = _EMPTY  # per reader, throttled until (monotonic s)

    def pending_pin(self, reader: str) -> PendingPin | None:
        """The card waiting for a PIN at ``reader`` (possibly expired), if any."""
        return self.pending_pins.get(reader)

    def first_person(self, door: str, direction: Direction = "in") -> FirstPerson | None:
        """The first person waiting on the ``direction`` side of a two-person ``door``."""
        return self.first_persons.get((door, direction))

    def apb_position(self, zone: str, cardholder_id: int) -> Direction | None:
        """Where anti-passback believes the cardholder is: 'in', 'out' or unknown (None)."""
        return self.apb.get((zone, cardholder_id))

    def throttled(self, reader: str, now_s: float) -> bool:
        """Whether ``reader`` is ignored at ``now_s``."""
        until = self.lockouts.get(reader)
        return until is not None and now_s < until

    def reset_apb(self, zone: str | None = None) -> AccessState:
        """Forget anti-passback positions in ``zone`` (all zones if None)."""
        if zone is None:
            return replace(self, apb=_EMPTY)
        return replace(self, apb=FrozenMap((k, v) for k, v in self.apb.items() if k[0] != zone))


# -- helpers ---------------------------------------------------------------------------------------


def schedule_covers(schedule: Schedule, local: datetime, holidays: frozenset[date]) -> bool:
    """Whether ``local`` (minute resolution) falls in the schedule; holidays use day 7 only."""
    day = HOLIDAY if local.date() in holidays else local.weekday()
    minute = local.hour * 60 + local.minute
    return any(i.day == day and i.start_min <= minute < i.end_min for i in schedule.intervals)


def effective_mode(
    door_mode: DoorMode,
    free_schedule: Schedule | None,
    local: datetime,
    holidays: frozenset[date] = frozenset(),
) -> DoorMode:
    """The door's mode now: FREE while its free schedule covers ``local``, unless LOCKED."""
    if (
        door_mode != DoorMode.LOCKED
        and free_schedule is not None
        and schedule_covers(free_schedule, local, holidays)
    ):
        return DoorMode.FREE
    return door_mode


def _aware(moment: datetime, zone: tzinfo) -> datetime:
    """A naive datetime read as wall-clock time in ``zone`` (so comparisons never raise)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


# -- the decision ----------------------------------------------------------------------------------


def decide(request: AccessRequest, state: AccessState) -> tuple[Decision, AccessState]:
    """Decide one attempt; return the Decision and the state to use for the next attempt."""
    until = state.lockouts.get(request.reader)
    if until is not None:
        if request.now_s < until:
            return Decision(
                Reason.DENIED_THROTTLED,
                request.door.name,
                detail="reader ignored after repeated denials",
            ), state
        state = replace(state, lockouts=state.lockouts.delete(request.reader))
    decision, state = _Attempt(request, state).evaluate()
    return _count(request, decision, state)


def _count(
    request: AccessRequest, decision: Decision, state: AccessState
) -> tuple[Decision, AccessState]:
    """Record a counted denial; trip the reader's throttle (alarm 'throttle') at the limit."""
    if decision.reason not in COUNTED_DENIALS:
        return decision, state
    tripped, state = count_denial(state, request.reader, request.now_s, request.config)
    if tripped:
        return replace(decision, alarms=(*decision.alarms, "throttle")), state
    return decision, state


def count_denial(
    state: AccessState, reader: str, now_s: float, config: PolicyConfig
) -> tuple[bool, AccessState]:
    """Count one denial at ``reader``; True (and the reader throttled) if it reaches the limit.

    For refusals decided outside :func:`decide` (the reader's lockdown gesture), so that
    guessing through them is throttled like guessing at the door.
    """
    window = config.throttle_window_s
    recent = (*(t for t in state.denials.get(reader, ()) if now_s - t < window), now_s)
    if len(recent) >= config.throttle_denials:
        state = replace(
            state,
            denials=state.denials.delete(reader),
            lockouts=state.lockouts.set(reader, now_s + config.throttle_lockout_s),
        )
        return True, state
    keep = recent[max(0, len(recent) - config.throttle_denials + 1) :]
    return False, replace(state, denials=state.denials.set(reader, keep))


def credential_refusal(credential: Credential, local: datetime) -> tuple[Reason, str] | None:
    """Why ``credential`` may not be used at ``local`` whatever the door (state, validity).

    The stricter state of cardholder and credential (revoked > lost > disabled), then both
    validity windows; None if neither refuses it.
    """
    holder = credential.cardholder
    worst = max((holder.state, credential.state), key=lambda s: _STATE_RANK.get(s, 1))
    if worst != CardholderState.ACTIVE:
        reason = _STATE_REASON.get(worst, Reason.DENIED_DISABLED)
        whose = "cardholder" if worst == holder.state else "credential"
        return reason, f"{whose} is {worst}"
    local = _aware(local, UTC)
    zone = local.tzinfo or UTC
    starts = [m for m in (holder.valid_from, credential.valid_from) if m is not None]
    ends = [m for m in (holder.valid_until, credential.valid_until) if m is not None]
    if any(local < _aware(m, zone) for m in starts):
        return Reason.DENIED_NOT_YET_VALID, "not valid yet"
    if any(local >= _aware(m, zone) for m in ends):
        return Reason.DENIED_EXPIRED, "expired"
    return None


class _Attempt:
    """The evaluation of one request (a helper of decide(), not kept)."""

    def __init__(self, request: AccessRequest, state: AccessState) -> None:
        self.req = request
        self.door = request.door
        self.state = state
        self.cardholder_id: int | None = None
        self.alarms: tuple[str, ...] = ()

    def decision(self, reason: Reason, detail: str, **extra: Any) -> tuple[Decision, AccessState]:
        """A decision about the current subject, with the state as it now stands."""
        return Decision(
            reason,
            self.door.name,
            cardholder_id=self.cardholder_id,
            alarms=(*self.alarms, *extra.pop("alarms", ())),
            detail=detail,
            **extra,
        ), self.state

    def evaluate(self) -> tuple[Decision, AccessState]:
        """Apply the rules in the documented order."""
        req, door = self.req, self.door
        if not req.reader_secure:
            if req.kind == "pin" and req.pin == PinCheck.DURESS:
                # the person may be under threat: raise the alarm, still refuse the entry
                self.alarms = ("duress",)
                pending = self.state.pending_pins.get(req.reader)
                if pending is not None:
                    self.cardholder_id = pending.cardholder_id
                elif req.credential is not None:
                    self.cardholder_id = req.credential.cardholder.id
            return self.decision(Reason.DENIED_READER_INSECURE, "reader is not secure")
        if req.kind == "pin":
            found = self._pin_subject()
            if isinstance(found, tuple):
                return found
            credential = found
        else:
            # a new presentation supersedes a card waiting for its PIN at this reader
            self._drop_pending()
            if req.kind != "card":
                return self.decision(Reason.DENIED_MALFORMED, "card data could not be decoded")
            credential = req.credential
        if credential is None:
            return self.decision(Reason.DENIED_UNKNOWN, "credential not enrolled")
        holder = credential.cardholder
        self.cardholder_id = holder.id
        duress = req.kind == "pin" and req.pin == PinCheck.DURESS
        if duress:
            self.alarms = ("duress",)
        pin_ok = req.kind != "pin" or req.pin in (PinCheck.OK, PinCheck.DURESS)

        refused = self._credential_refusal(credential)
        if refused is not None:
            return refused
        if req.lockdown or door.mode == DoorMode.LOCKED:
            if Privilege.OVERRIDE not in holder.privileges:
                if req.lockdown:
                    return self.decision(Reason.DENIED_LOCKDOWN, "lockdown: override only")
                return self.decision(Reason.DENIED_DOOR_LOCKED, "door is locked")
            if not pin_ok:
                return self.decision(Reason.DENIED_BAD_PIN, "wrong PIN")
            if door.interlock_busy:
                return self.decision(Reason.DENIED_INTERLOCK, "another door of the group is open")
            return self._grant(Reason.GRANTED_OVERRIDE, "override privilege")

        levels = [level for level in holder.levels if door.name in level.doors]
        if not levels:
            return self.decision(Reason.DENIED_NO_ACCESS, "no access level includes this door")
        if not any(schedule_covers(lv.schedule, req.local, req.holidays) for lv in levels):
            return self.decision(Reason.DENIED_SCHEDULE, "outside the access schedule")
        if not pin_ok:
            return self.decision(Reason.DENIED_BAD_PIN, "wrong PIN")
        if door.mode == DoorMode.FREE:
            reason = Reason.GRANTED_DURESS if duress else Reason.GRANTED_FREE_ACCESS
            return self._grant(reason, "door is in free access")
        if door.interlock_busy:
            return self.decision(Reason.DENIED_INTERLOCK, "another door of the group is open")
        soft = False
        if door.apb != "off" and self.state.apb_position(door.zone, holder.id) == door.direction:
            if door.apb != "soft":
                return self.decision(Reason.DENIED_APB, f"anti-passback: already {door.direction}")
            soft = True
        if door.mode == DoorMode.TWO_PERSON:
            return self._two_person(holder.id, soft=soft, duress=duress)
        if req.kind == "card" and door.mode in (DoorMode.CARD_AND_PIN, DoorMode.PIN):
            if not holder.has_pin:
                return self.decision(Reason.DENIED_NO_PIN, "door needs a PIN; cardholder has none")
            deadline = req.now_s + req.config.pin_timeout_s
            pending = PendingPin(holder.id, credential.id, deadline)
            self.state = replace(
                self.state, pending_pins=self.state.pending_pins.set(req.reader, pending)
            )
            return self.decision(Reason.PENDING_PIN, "PIN required", next_factor="pin")
        return self._grant(self._grant_reason(duress=duress, soft=soft), "", soft=soft)

    def _drop_pending(self) -> PendingPin | None:
        pending = self.state.pending_pins.get(self.req.reader)
        if pending is not None:
            pins = self.state.pending_pins.delete(self.req.reader)
            self.state = replace(self.state, pending_pins=pins)
        return pending

    def _pin_subject(self) -> Credential | tuple[Decision, AccessState] | None:
        """Whose PIN this is: the card pending at this reader, or (PIN-only door) the store's."""
        req = self.req
        pending = self._drop_pending()
        if pending is not None:
            self.cardholder_id = pending.cardholder_id
            if req.pin == PinCheck.DURESS:  # raised even if the PIN comes too late
                self.alarms = ("duress",)
            if req.now_s > pending.deadline_s:
                return self.decision(Reason.DENIED_PIN_TIMEOUT, "PIN entered too late")
            credential = req.credential
            if credential is None or credential.id != pending.credential_id:
                return self.decision(Reason.DENIED_UNKNOWN, "the pending card is no longer known")
            return credential
        if self.door.mode == DoorMode.PIN:
            return req.credential
        return self.decision(Reason.DENIED_CARD_REQUIRED, "present a card before the PIN")

    def _credential_refusal(self, credential: Credential) -> tuple[Decision, AccessState] | None:
        """States (the stricter of cardholder and credential) and validity windows."""
        refused = credential_refusal(credential, self.req.local)
        return None if refused is None else self.decision(*refused)

    @staticmethod
    def _grant_reason(*, duress: bool, soft: bool) -> Reason:
        if duress:
            return Reason.GRANTED_DURESS
        return Reason.GRANTED_SOFT_APB if soft else Reason.GRANTED

    def _grant(
        self,
        reason: Reason,
        detail: str,
        *,
        soft: bool = False,
        companion: FirstPerson | None = None,
    ) -> tuple[Decision, AccessState]:
        """Grant; record anti-passback positions of the subject (and a first person)."""
        door = self.door
        if door.apb != "off" and self.cardholder_id is not None:
            apb = self.state.apb.set((door.zone, self.cardholder_id), door.direction)
            if companion is not None:
                apb = apb.set((door.zone, companion.cardholder_id), companion.direction)
            self.state = replace(self.state, apb=apb)
        return self.decision(reason, detail, alarms=("apb",) if soft else ())

    def _two_person(
        self, holder_id: int, *, soft: bool, duress: bool
    ) -> tuple[Decision, AccessState]:
        req, door = self.req, self.door
        side = (door.name, door.direction)  # two people pass together: same door, same way
        first = self.state.first_persons.get(side)
        if first is not None and req.now_s <= first.deadline_s:
            if first.cardholder_id == holder_id:
                return self.decision(Reason.DENIED_SAME_PERSON, "a second, different person")
            self.state = replace(self.state, first_persons=self.state.first_persons.delete(side))
            soft = soft or first.soft_apb
            return self._grant(
                self._grant_reason(duress=duress, soft=soft),
                f"second person; first was cardholder {first.cardholder_id}",
                soft=soft,
                companion=first,
            )
        deadline = req.now_s + req.config.two_person_window_s
        waiting = FirstPerson(holder_id, deadline, door.direction, soft)
        self.state = replace(self.state, first_persons=self.state.first_persons.set(side, waiting))
        return self.decision(
            Reason.PENDING_SECOND_PERSON,
            "waiting for a second person",
            next_factor="second-person",
        )
