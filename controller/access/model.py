"""Access-control data shared by the credential store, the policy and the access service.

Plain frozen records, no I/O. Times are timezone-aware ``datetime``s in the site's local zone
for validity windows; schedules are evaluated on local wall-clock time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum


class CardholderState(StrEnum):
    """Lifecycle of a cardholder or a credential."""

    ACTIVE = "active"
    DISABLED = "disabled"
    LOST = "lost"
    REVOKED = "revoked"


class Privilege(StrEnum):
    """Special rights beyond door access (used by the lockdown issue)."""

    OVERRIDE = "override"  # first responder: granted during lockdown, journaled as override
    LOCKDOWN = "lockdown"  # may start a lockdown with card + PIN
    ALL_CLEAR = "all-clear"  # may authorise the end of a lockdown
    FIRE_RESET = "fire-reset"


class DoorMode(StrEnum):
    """What a door requires, set per door in the site file (and by schedule/threat level)."""

    CARD = "card"
    CARD_AND_PIN = "card+pin"
    PIN = "pin"
    TWO_PERSON = "two-person"  # two distinct authorised cardholders within the window
    FREE = "free"  # unlocked by schedule; credentials still logged
    LOCKED = "locked"  # no credential opens it (except override privilege)


class Reason(StrEnum):
    """Stable, documented reason codes of access decisions (docs/access.md). Never renumber."""

    GRANTED = "granted"
    GRANTED_OVERRIDE = "granted-override"
    GRANTED_DURESS = "granted-duress"  # granted as usual, silent duress alarm raised
    GRANTED_SOFT_APB = "granted-soft-apb"  # granted, anti-passback violation alarmed
    GRANTED_FREE_ACCESS = "granted-free-access"
    PENDING_PIN = "pending-pin"  # card accepted, PIN required next
    PENDING_SECOND_PERSON = "pending-second-person"
    DENIED_UNKNOWN = "denied-unknown"
    DENIED_DISABLED = "denied-disabled"
    DENIED_LOST = "denied-lost"
    DENIED_REVOKED = "denied-revoked"
    DENIED_NOT_YET_VALID = "denied-not-yet-valid"
    DENIED_EXPIRED = "denied-expired"
    DENIED_NO_ACCESS = "denied-no-access"  # no access level includes this door
    DENIED_SCHEDULE = "denied-schedule"  # a level includes the door, but not now
    DENIED_BAD_PIN = "denied-bad-pin"
    DENIED_PIN_TIMEOUT = "denied-pin-timeout"
    DENIED_NO_PIN = "denied-no-pin"  # the door needs a PIN and the cardholder has none
    DENIED_APB = "denied-apb"
    DENIED_INTERLOCK = "denied-interlock"
    DENIED_SAME_PERSON = "denied-same-person"  # two-person rule: the same cardholder twice
    DENIED_THROTTLED = "denied-throttled"
    DENIED_DOOR_LOCKED = "denied-door-locked"
    DENIED_LOCKDOWN = "denied-lockdown"
    DENIED_MALFORMED = "denied-malformed"  # a frame that could not be decoded
    DENIED_READER_INSECURE = "denied-reader-insecure"
    DENIED_CARD_REQUIRED = "denied-card-required"  # a PIN alone where a card must come first

    @property
    def granted(self) -> bool:
        """True for the reasons that open the door."""
        return self.value.startswith("granted")


@dataclass(frozen=True, slots=True)
class Interval:
    """Part of a weekly schedule: ``day`` 0=Monday..6=Sunday, 7=holiday; minutes since 00:00."""

    day: int
    start_min: int
    end_min: int  # exclusive; 1440 = midnight at the end of the day


@dataclass(frozen=True, slots=True)
class Schedule:
    """A named weekly schedule. On a holiday only ``day == 7`` intervals apply."""

    name: str
    intervals: tuple[Interval, ...]


ALWAYS = Schedule("always", tuple(Interval(d, 0, 1440) for d in range(8)))


@dataclass(frozen=True, slots=True)
class AccessLevel:
    """Door group x weekly schedule."""

    name: str
    doors: frozenset[str]
    schedule: Schedule = ALWAYS


@dataclass(frozen=True, slots=True)
class Cardholder:
    """A person, as the policy sees them (no secrets)."""

    id: int
    name: str
    state: CardholderState = CardholderState.ACTIVE
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    privileges: frozenset[Privilege] = frozenset()
    has_pin: bool = False
    levels: tuple[AccessLevel, ...] = ()


@dataclass(frozen=True, slots=True)
class Credential:
    """A credential found in the store for a presented card, with its cardholder."""

    id: int
    cardholder: Cardholder
    state: CardholderState = CardholderState.ACTIVE
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    display: str = ""  # masked, e.g. "h10301:**:***67"


class PinCheck(StrEnum):
    """Outcome of checking an entered PIN against a cardholder's stored hashes."""

    OK = "ok"
    DURESS = "duress"
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class Decision:
    """The result of the access policy for one attempt."""

    reason: Reason
    door: str
    cardholder_id: int | None = None
    next_factor: str | None = None  # "pin" | "second-person" | None
    alarms: tuple[str, ...] = ()  # "duress", "apb", "throttle", ...
    detail: str = ""

    @property
    def granted(self) -> bool:
        """True when the door should open."""
        return self.reason.granted


@dataclass(frozen=True, slots=True)
class Holidays:
    """The site's holiday dates."""

    dates: frozenset[date] = field(default_factory=frozenset)
