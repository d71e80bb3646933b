"""Lockdown states, events and effects: plain frozen records shared by the machine and runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

SITE = "site"  # the scope name of a site-wide state; zones use their own names


class Mode(StrEnum):
    """What a scope (the site, or one zone) is in."""

    NORMAL = "normal"
    LOCKDOWN = "lockdown"
    ALL_CLEAR_PENDING = "all-clear-pending"  # still locked down; one all-clear person so far
    EVACUATION = "evacuation"


HELD = frozenset({Mode.LOCKDOWN, Mode.ALL_CLEAR_PENDING})


@dataclass(frozen=True, slots=True)
class Trigger:
    """Who started an incident, how and where."""

    source: str  # "panic" | "operator" | "credential" | "duress" | "remote" | "restart"
    who: str
    where: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ScopeState:
    """The state of one scope."""

    mode: Mode = Mode.NORMAL
    incident: int | None = None
    drill: bool = False
    trigger: Trigger | None = None
    since: float = 0.0  # wall-clock epoch seconds when the mode was entered
    first_clear: str | None = None  # the first all-clear person, while ALL_CLEAR_PENDING
    clear_deadline: float | None = None
    # when the lockdown was last renewed: its start, its latest trigger, its latest expired
    # all-clear window (None = ``since``); auto-revert counts from here, not from ``since``
    renewed_at: float | None = None

    @property
    def quiet_since(self) -> float:
        """Since when nothing has renewed this scope's lockdown (auto-revert counts from it)."""
        return self.since if self.renewed_at is None else self.renewed_at


@dataclass(frozen=True, slots=True)
class SiteState:
    """Everything the lockdown machine knows; persisted after every change."""

    scopes: tuple[tuple[str, ScopeState], ...] = ()  # (scope name, state); absent = NORMAL
    threat_level: int = 0
    fire: bool = False  # latched by a fire alarm until a manual reset
    next_incident: int = 1

    def scope(self, name: str) -> ScopeState:
        """The state of ``name`` (NORMAL if never set)."""
        for n, st in self.scopes:
            if n == name:
                return st
        return ScopeState()

    def with_scope(self, name: str, st: ScopeState) -> SiteState:
        """A copy with ``name`` set to ``st`` (NORMAL scopes other than the site are dropped)."""
        rest = tuple((n, s) for n, s in self.scopes if n != name)
        if st.mode is Mode.NORMAL and name != SITE:
            return _replace(self, scopes=rest)
        return _replace(self, scopes=tuple(sorted((*rest, (name, st)))))

    def held(self, zone: str) -> bool:
        """True when doors of ``zone`` are held secure (site or zone lockdown)."""
        return self.scope(SITE).mode in HELD or self.scope(zone).mode in HELD

    def evacuating(self, zone: str) -> bool:
        """True when ``zone``'s egress routes are released for evacuation."""
        return Mode.EVACUATION in (self.scope(SITE).mode, self.scope(zone).mode)

    def to_json(self) -> dict[str, Any]:
        """Durable, JSON-able form."""
        return {
            "threat_level": self.threat_level,
            "fire": self.fire,
            "next_incident": self.next_incident,
            "scopes": {
                name: {
                    "mode": st.mode.value,
                    "incident": st.incident,
                    "drill": st.drill,
                    "since": st.since,
                    "first_clear": st.first_clear,
                    "clear_deadline": st.clear_deadline,
                    "renewed_at": st.renewed_at,
                    "trigger": None
                    if st.trigger is None
                    else {
                        "source": st.trigger.source,
                        "who": st.trigger.who,
                        "where": st.trigger.where,
                        "reason": st.trigger.reason,
                    },
                }
                for name, st in self.scopes
            },
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> SiteState:
        """Inverse of ``to_json``; raise ValueError/KeyError/TypeError on a damaged document."""
        try:
            return cls._from_json(obj)
        except (AttributeError, OverflowError) as exc:  # a list for an object, 1e999 for an int
            raise ValueError(f"damaged lockdown state: {exc}") from exc

    @classmethod
    def _from_json(cls, obj: dict[str, Any]) -> SiteState:
        scopes = []
        for name, raw in dict(obj.get("scopes", {})).items():
            trig = raw.get("trigger")
            scopes.append(
                (
                    str(name),
                    ScopeState(
                        mode=Mode(raw["mode"]),
                        incident=None if raw.get("incident") is None else int(raw["incident"]),
                        drill=bool(raw.get("drill", False)),
                        trigger=None
                        if trig is None
                        else Trigger(
                            str(trig["source"]),
                            str(trig["who"]),
                            str(trig["where"]),
                            str(trig.get("reason", "")),
                        ),
                        since=float(raw.get("since", 0.0)),
                        first_clear=_opt_str(raw.get("first_clear")),
                        clear_deadline=None
                        if raw.get("clear_deadline") is None
                        else float(raw["clear_deadline"]),
                        renewed_at=None
                        if raw.get("renewed_at") is None
                        else float(raw["renewed_at"]),
                    ),
                )
            )
        level = int(obj.get("threat_level", 0))
        if not 0 <= level <= 7:
            raise ValueError(f"threat level {level} out of range")
        return cls(
            scopes=tuple(sorted(scopes)),
            threat_level=level,
            fire=bool(obj.get("fire", False)),
            next_incident=int(obj.get("next_incident", 1)),
        )


def _opt_str(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"expected a string or null, got {type(value).__name__}")


def _replace(state: SiteState, **changes: Any) -> SiteState:
    from dataclasses import replace

    return replace(state, **changes)


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartLockdown:
    """Lock down ``scope`` (SITE or a zone)."""

    scope: str
    trigger: Trigger
    now: float
    level: int | None = None
    drill: bool = False


@dataclass(frozen=True, slots=True)
class StartEvacuation:
    """Release the egress routes of ``scope``."""

    scope: str
    trigger: Trigger
    now: float
    drill: bool = False


@dataclass(frozen=True, slots=True)
class AllClear:
    """One person's all-clear for ``scope``; ``authorised`` = holds the all-clear privilege."""

    scope: str
    person: str
    authorised: bool
    via: str  # "card" | "operator"
    now: float


@dataclass(frozen=True, slots=True)
class EndEvacuation:
    """A person ends an evacuation of ``scope``; ``authorised`` = holds the all-clear privilege."""

    scope: str
    person: str
    now: float
    authorised: bool = True


@dataclass(frozen=True, slots=True)
class FireAlarm:
    """A fire-alarm input became active (latches until FireReset)."""

    where: str
    now: float


@dataclass(frozen=True, slots=True)
class FireReset:
    """A manual fire reset; refused while any fire input is still active or unknown."""

    who: str
    inputs_active: bool
    now: float
    inputs_unknown: tuple[str, ...] = ()  # fire inputs never read, or whose board is not up


@dataclass(frozen=True, slots=True)
class SetThreatLevel:
    """Set the site threat level (0..7)."""

    level: int
    who: str
    now: float


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passes: all-clear windows and auto-revert."""

    now: float
    auto_revert_s: float = 0.0


LockdownEvent = (
    StartLockdown
    | StartEvacuation
    | AllClear
    | EndEvacuation
    | FireAlarm
    | FireReset
    | SetThreatLevel
    | Tick
)


# -- effects ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """Journal this."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ApplyDoors:
    """Re-derive every door's lockdown hold, fire release and evacuation from the new state."""


@dataclass(frozen=True, slots=True)
class Refused:
    """The event was not applied; ``reason`` tells the caller (and the journal) why."""

    reason: str


Effect = Record | ApplyDoors | Refused
