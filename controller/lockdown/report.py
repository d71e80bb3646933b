"""Incident timelines from journal entries: summaries, full reports, Markdown/JSON/HTML/SVG.

Theory of operation
-------------------
Pure: every function here takes journal ``Entry`` objects (or an ``Incident`` built from them)
and returns data or text; only ``write_report`` touches the disk, and only the directory its
caller names. Nothing reads the clock, so the same entries always give the same report.

Membership. An entry belongs to incident N when its kind starts with ``lockdown.`` and its
``data["incident"] == N`` (``lockdown.trigger/state/door/status/override/allclear/end/refused``),
or it is a ``lockdown.restored`` whose ``incidents`` list names N. The incident's *span* runs
from its first member (by ``seq``) to its ``lockdown.end`` (inclusive), or to the last entry
given when it has not ended (ongoing). Entries without an incident field are taken into the
report when their ``seq`` is inside the span: ``fire.alarm``, ``fire.reset``,
``threat.level``, other ``lockdown.*`` kinds (refusals without an incident, inputs, alarms;
those naming another scope are left out), and ``access.decision`` entries with reason
``granted-override`` or ``denied-lockdown`` and ``door.command`` entries with ``override``
(an operator's ``wardctl door ... --override``); for a zone incident these two only at the
doors its ``lockdown.door`` / ``lockdown.status`` records name, when it has any.

Times. ``t = 0`` is the first ``lockdown.trigger`` of the incident that is not ``again`` (the
first member when no trigger was journaled). Every relative time is ``ts - t0`` in seconds,
rounded to 3 decimals; absolute times are the journal's own ISO-8601 UTC strings. Membership
and order use ``seq`` (the journal's order), never the wall clock, which may step. Figures
(door confirmed-secure times, time to full lockdown) are clamped at 0 so a clock step cannot
put them before the trigger; timeline rows show the raw difference.

Figures. A door's confirmed-secure time is its first ``lockdown.door`` status ``secured``.
Time to full lockdown is the first ``lockdown.status`` at or after the trigger with
``total > 0`` and ``confirmed >= total`` (None while any door is failed, propped or pending).
Duration is ``lockdown.end`` minus ``t0`` (None while ongoing). ``secured_over_time`` is a step
series ``(t_s, confirmed, total)`` beginning at ``(0, 0, M)`` and then one point for every
status whose (confirmed, total) differs from the previous point; ``t_s`` never decreases.

Overrides. Each ``lockdown.override`` is one responder entry. A ``granted-override``
``access.decision`` within 5 s of an override with the same door and cardholder (and reader,
when both name one) is the same entry and is not counted twice; any other is an override too,
and so is an operator's door command with ``override`` (cardholder = the command's source).

The HTML report is self-contained (inline CSS, no scripts, no external references) and embeds
the SVG plot inline; ``write_report(..., "html", ...)`` also writes the plot beside it.
"""

from __future__ import annotations

import bisect
import html
import json
import math
import os
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from controller.errors import JournalCorruptError
from controller.journal import Entry

__all__ = [
    "FORMATS",
    "REPORT_KINDS",
    "REPORT_VERSION",
    "AccessEvent",
    "AllClearStep",
    "DoorEvent",
    "DoorSummary",
    "Incident",
    "IncidentSummary",
    "ReportDataError",
    "StateChange",
    "TimelineEvent",
    "TriggerInfo",
    "UnknownIncidentError",
    "build_incident",
    "list_incidents",
    "render",
    "render_html",
    "render_json",
    "render_markdown",
    "render_svg_plot",
    "write_report",
]

REPORT_VERSION: Final = 1
"""Version of the JSON report layout (``report_version``)."""

FORMATS: Final = ("md", "json", "html")
"""Report formats ``write_report`` and ``render`` accept (also the file extensions)."""

REPORT_KINDS: Final = frozenset(
    {
        "lockdown.trigger",
        "lockdown.state",
        "lockdown.door",
        "lockdown.status",
        "lockdown.override",
        "lockdown.allclear",
        "lockdown.end",
        "lockdown.refused",
        "lockdown.unknown",
        "lockdown.restored",
        "lockdown.input",
        "lockdown.alarm",
        "fire.alarm",
        "fire.reset",
        "threat.level",
        "access.decision",
        "door.command",
    }
)
"""Journal kinds a report reads: pass ``Journal.read(kinds=REPORT_KINDS)`` pages to the builders."""

_ACCESS_REASONS: Final = frozenset({"granted-override", "denied-lockdown"})
_SITE_KINDS: Final = frozenset({"fire.alarm", "fire.reset", "threat.level"})
_OVERRIDE_MATCH_S: Final = 5.0
_DASH: Final = "—"


class UnknownIncidentError(KeyError):
    """No incident with this id is in the journal entries given."""

    def __init__(self, incident_id: int) -> None:
        """Remember the id that was asked for; ``args[0]`` is the message."""
        super().__init__(f"no incident {incident_id} in the journal")
        self.incident_id = incident_id

    def __str__(self) -> str:
        """The message, unquoted (KeyError would repr it)."""
        return str(self.args[0])


class ReportDataError(JournalCorruptError, ValueError):
    """A journal entry a report needs cannot be used (a bad timestamp); names its seq.

    A ``JournalCorruptError`` (so the control API answers with one error line naming the
    row: ``journal row 17: bad timestamp '...'``) and a ValueError (what it used to be).
    """


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class TriggerInfo:
    """One ``lockdown.trigger``: the first starts the incident, later ones are ``again``."""

    seq: int
    ts: str
    t_s: float
    source: str
    who: str
    where: str
    reason: str
    level: int | None
    again: bool
    evacuation: bool


@dataclass(frozen=True, slots=True)
class DoorEvent:
    """One ``lockdown.door`` status change of one door."""

    seq: int
    ts: str
    t_s: float
    door: str
    status: str  # secured | failed | propped | drift | released | pending
    detail: str


@dataclass(frozen=True, slots=True)
class DoorSummary:
    """What one door did during the incident."""

    door: str
    secured_ts: str | None  # first "secured"
    secured_s: float | None  # seconds after the trigger (>= 0)
    failed: bool  # reported failed at least once
    failed_detail: str
    propped: bool  # reported propped (physically open) at least once
    drifts: int
    last_status: str
    released_s: float | None


@dataclass(frozen=True, slots=True)
class AccessEvent:
    """A responder override entry, or an access attempt denied because of the lockdown."""

    seq: int
    ts: str
    t_s: float
    door: str
    reader: str
    cardholder_id: str | None
    cardholder: str
    source: str  # "lockdown.override" | "access.decision"


@dataclass(frozen=True, slots=True)
class AllClearStep:
    """One all-clear authorisation (``n`` = 1 or 2)."""

    seq: int
    ts: str
    t_s: float
    person: str
    via: str
    n: int


@dataclass(frozen=True, slots=True)
class StateChange:
    """One ``lockdown.state`` transition of the incident's scope."""

    seq: int
    ts: str
    t_s: float
    scope: str
    from_mode: str
    to_mode: str
    reason: str


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """One row of the timeline: a journal entry with a one-line plain-text description."""

    seq: int
    ts: str
    t_s: float
    kind: str
    text: str


@dataclass(frozen=True, slots=True)
class IncidentSummary:
    """One line of ``wardctl incident list``."""

    id: int
    scope: str
    drill: bool
    kind: str  # "lockdown" | "evacuation"
    started: str
    ended: str | None  # None: ongoing
    end_how: str | None
    source: str
    who: str
    where: str
    trigger: str  # "source: who at where", for one table column
    doors_total: int
    time_to_full_lockdown_s: float | None
    duration_s: float | None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Incident:
    """Everything the journal says about one incident, times relative to its trigger."""

    id: int
    scope: str
    drill: bool
    kind: str  # "lockdown" | "evacuation"
    started: str  # ts of t = 0
    ended: str | None  # ts of lockdown.end; None while ongoing
    end_how: str | None  # all-clear | auto-revert | evacuation-end | superseded
    ended_by: tuple[str, ...]
    duration_s: float | None
    last_seen: str  # ts of the last entry of the span
    elapsed_s: float  # last_seen - t0
    triggers: tuple[TriggerInfo, ...]
    doors_total: int
    doors: tuple[DoorSummary, ...]  # ordered by confirmed-secure time, then name
    failed_doors: tuple[str, ...]
    propped_doors: tuple[str, ...]
    unsecured_doors: tuple[str, ...]  # never reported secured
    drift_events: tuple[DoorEvent, ...]
    door_events: tuple[DoorEvent, ...]
    overrides: tuple[AccessEvent, ...]
    denied: tuple[AccessEvent, ...]
    all_clear: tuple[AllClearStep, ...]
    time_to_full_lockdown_s: float | None
    full_lockdown_at: str | None
    states: tuple[StateChange, ...]
    site_events: tuple[TimelineEvent, ...]  # fire, threat level, refusals, inputs, restarts
    secured_over_time: tuple[tuple[float, int, int], ...]
    timeline: tuple[TimelineEvent, ...]
    first_seq: int
    last_seq: int
    report_version: int = field(default=REPORT_VERSION)

    @property
    def trigger(self) -> TriggerInfo | None:
        """The trigger that started the incident (None if none was journaled)."""
        return self.triggers[0] if self.triggers else None

    @property
    def denied_count(self) -> int:
        """Number of access attempts denied because of the lockdown."""
        return len(self.denied)

    def summary(self) -> IncidentSummary:
        """The incident's line for ``list_incidents``."""
        t = self.trigger
        return IncidentSummary(
            id=self.id,
            scope=self.scope,
            drill=self.drill,
            kind=self.kind,
            started=self.started,
            ended=self.ended,
            end_how=self.end_how,
            source=t.source if t else "",
            who=t.who if t else "",
            where=t.where if t else "",
            trigger=f"{t.source}: {t.who} at {t.where}" if t else "",
            doors_total=self.doors_total,
            time_to_full_lockdown_s=self.time_to_full_lockdown_s,
            duration_s=self.duration_s,
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict of the whole incident (``render_json`` dumps it)."""
        out = asdict(self)
        out["secured_over_time"] = [list(p) for p in self.secured_over_time]
        out["denied_count"] = self.denied_count
        return out


# --------------------------------------------------------------------------- data helpers


def _str(data: Mapping[str, Any], key: str, default: str = "") -> str:
    value = data.get(key)
    if value is None:
        return default
    return value if isinstance(value, str) else str(value)


def _int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _strs(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key)
    if isinstance(value, list | tuple):
        return tuple(v if isinstance(v, str) else str(v) for v in value if v is not None)
    return ()


def _door(entry: Entry) -> str:
    return _str(entry.data, "door") or (entry.door or "")


def _incident_of(entry: Entry) -> int | None:
    if not entry.kind.startswith("lockdown."):
        return None
    return _int(entry.data, "incident")


def _restored_incidents(entry: Entry) -> set[int]:
    if entry.kind != "lockdown.restored":
        return set()
    value = entry.data.get("incidents")
    if not isinstance(value, list | tuple):
        return set()
    return {v for v in value if isinstance(v, int) and not isinstance(v, bool)}


def _parse_ts(entry: Entry) -> datetime:
    try:
        moment = datetime.fromisoformat(entry.ts)
    except (TypeError, ValueError) as exc:
        raise ReportDataError(entry.seq, f"bad timestamp {entry.ts!r}") from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _round(seconds: float) -> float:
    value = round(seconds, 3)
    return 0.0 if value == 0 else value


class _Clock:
    """Relative times of entries against t0."""

    def __init__(self, origin: Entry) -> None:
        self.t0 = _parse_ts(origin)

    def rel(self, entry: Entry) -> float:
        """Seconds from t0 to ``entry`` (may be negative if the wall clock stepped)."""
        return _round((_parse_ts(entry) - self.t0).total_seconds())

    def since(self, entry: Entry) -> float:
        """Seconds from t0 to ``entry``, never negative (for figures)."""
        return max(0.0, self.rel(entry))


_HOLD_DELAY_MAX_S: Final = 1.0
"""Most the wall clock may put between a trigger and the start of its hold (state persisted)."""


def _elapsed_s(entry: Entry) -> float | None:
    """The runner's monotonic ``elapsed_ms`` of a ``lockdown.status``, in seconds, if valid."""
    value = entry.data.get("elapsed_ms")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    seconds = float(value) / 1000
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _figure_times(
    members: Sequence[Entry], span: Sequence[Entry], origin: Entry, clock: _Clock
) -> dict[int, float]:
    """Seconds after t0 of every entry of ``span`` for the figures, by seq (see module doc).

    Anchors are the incident's ``lockdown.status`` records with ``elapsed_ms`` (monotonic time
    since the hold began, immune to wall-clock steps); within one run of the daemon, an
    anchor's time is the hold's start plus its elapsed time. Other entries take the wall-clock
    distance from the anchor before them, kept between that anchor and the next. Without
    anchors (an older journal) this is empty and the wall clock alone is used.
    """
    anchors: list[tuple[int, float, Entry]] = []
    offset: float | None = None  # seconds from t0 to the start of the current hold
    last_elapsed = 0.0
    for e in members:
        if e.seq < origin.seq:
            continue
        if e.kind == "lockdown.restored":
            offset = None  # a restart: the runner's monotonic clock starts again
            continue
        elapsed = _elapsed_s(e) if e.kind == "lockdown.status" else None
        if elapsed is None:
            continue
        if offset is None or elapsed < last_elapsed:
            if not anchors:
                # the hold began between the trigger and this status: persisting the state
                # takes milliseconds; more than that means the wall clock stepped meanwhile
                delay = clock.rel(e) - elapsed
                offset = delay if 0.0 <= delay <= _HOLD_DELAY_MAX_S else 0.0
            else:  # after a restart only the wall clock spans the downtime
                _, prev_t, prev = anchors[-1]
                offset = prev_t + max(0.0, clock.rel(e) - clock.rel(prev)) - elapsed
        last_elapsed = elapsed
        anchors.append((e.seq, offset + elapsed, e))
    if not anchors:
        return {}
    seqs = [a[0] for a in anchors]
    times: dict[int, float] = {}
    for e in span:
        i = bisect.bisect_left(seqs, e.seq)
        if i < len(seqs) and seqs[i] == e.seq:
            times[e.seq] = _round(anchors[i][1])
            continue
        if e.seq < origin.seq:
            continue
        if i == 0:
            t = clock.since(e)
        else:
            _, prev_t, prev = anchors[i - 1]
            t = max(prev_t, prev_t + clock.rel(e) - clock.rel(prev))
        if i < len(anchors):
            t = min(t, anchors[i][1])
        times[e.seq] = _round(max(0.0, t))
    return times


# --------------------------------------------------------------------------- building


def _index(entries: Iterable[Entry]) -> tuple[list[Entry], list[int], dict[int, list[Entry]]]:
    ordered = sorted(entries, key=lambda e: e.seq)
    groups: dict[int, list[Entry]] = {}
    for entry in ordered:
        inc = _incident_of(entry)
        if inc is not None:
            groups.setdefault(inc, []).append(entry)
        for other in _restored_incidents(entry):
            groups.setdefault(other, []).append(entry)
    return ordered, [e.seq for e in ordered], groups


def list_incidents(entries: Iterable[Entry]) -> list[IncidentSummary]:
    """Summaries of every incident in ``entries``, in the order they started."""
    ordered, seqs, groups = _index(entries)
    built = [_build(ordered, seqs, members, inc) for inc, members in groups.items()]
    built.sort(key=lambda i: (i.first_seq, i.id))
    return [i.summary() for i in built]


def build_incident(entries: Iterable[Entry], incident_id: int) -> Incident:
    """The full timeline of incident ``incident_id``; raise UnknownIncidentError if absent."""
    ordered, seqs, groups = _index(entries)
    members = groups.get(incident_id)
    if not members:
        raise UnknownIncidentError(incident_id)
    return _build(ordered, seqs, members, incident_id)


def _first_trigger(members: Sequence[Entry]) -> Entry | None:
    triggers = [e for e in members if e.kind == "lockdown.trigger"]
    for e in triggers:
        if e.data.get("again") is not True:
            return e
    return triggers[0] if triggers else None


@dataclass(slots=True)
class _DoorAcc:
    secured: Entry | None = None
    failed: bool = False
    failed_detail: str = ""
    propped: bool = False
    drifts: int = 0
    last_status: str = ""
    released: Entry | None = None
    order: int = 0


def _build(
    ordered: Sequence[Entry], seqs: Sequence[int], members: Sequence[Entry], incident_id: int
) -> Incident:
    first = _first_trigger(members)
    origin = first if first is not None else members[0]
    clock = _Clock(origin)
    end = next((e for e in members if e.kind == "lockdown.end"), None)

    scope = ""
    for e in ([first] if first is not None else []) + list(members):
        scope = _str(e.data, "scope")
        if scope:
            break
    scope = scope or "site"
    # a drill stays one only while every record says so: a real trigger during a drill makes
    # the incident real, and every record from then on carries drill=false
    flags = [
        e.data["drill"]
        for e in ([first] if first is not None else []) + list(members)
        if isinstance(e.data.get("drill"), bool)
    ]
    drill = bool(flags) and all(flags)
    evacuation = (first is not None and first.data.get("evacuation") is True) or (
        first is None
        and any(e.kind == "lockdown.state" and e.data.get("to") == "evacuation" for e in members)
    )

    lo = bisect.bisect_left(seqs, members[0].seq)
    hi = bisect.bisect_right(seqs, end.seq) if end is not None else len(ordered)
    member_seqs = {e.seq for e in members}
    others = [e for e in ordered[lo:hi] if e.seq not in member_seqs]
    span = sorted([*members, *others], key=lambda e: e.seq)
    fig_times = _figure_times(members, span, origin, clock)

    def fig(e: Entry) -> float:
        """Seconds after t0 for figures: monotonic where journaled, never negative."""
        return fig_times.get(e.seq, clock.since(e))

    triggers: list[TriggerInfo] = []
    door_events: list[DoorEvent] = []
    doors: dict[str, _DoorAcc] = {}
    overrides: list[AccessEvent] = []
    all_clear: list[AllClearStep] = []
    states: list[StateChange] = []
    timeline: list[TimelineEvent] = []
    site_events: list[TimelineEvent] = []
    series: list[tuple[float, int, int]] = []
    status_failed: list[str] = []
    status_propped: list[str] = []
    doors_total: int | None = None
    ttfl: float | None = None
    full_at: str | None = None
    last_status_key: tuple[Any, ...] | None = None

    def acc(name: str) -> _DoorAcc:
        if name not in doors:
            doors[name] = _DoorAcc(order=len(doors))
        return doors[name]

    def row(e: Entry, text: str) -> TimelineEvent:
        ev = TimelineEvent(e.seq, e.ts, clock.rel(e), e.kind, text)
        timeline.append(ev)
        return ev

    for e in members:
        d = e.data
        if e.kind == "lockdown.trigger":
            info = TriggerInfo(
                seq=e.seq,
                ts=e.ts,
                t_s=clock.rel(e),
                source=_str(d, "source"),
                who=_str(d, "who"),
                where=_str(d, "where"),
                reason=_str(d, "reason"),
                level=_int(d, "level"),
                again=d.get("again") is True,
                evacuation=d.get("evacuation") is True,
            )
            if e is first:
                triggers.insert(0, info)
            else:
                triggers.append(info)
            row(e, _trigger_text(info))
        elif e.kind == "lockdown.state":
            sc = StateChange(
                e.seq,
                e.ts,
                clock.rel(e),
                _str(d, "scope", scope),
                _str(d, "from"),
                _str(d, "to"),
                _str(d, "reason"),
            )
            states.append(sc)
            note = f" ({sc.reason})" if sc.reason else ""
            row(e, f"{sc.scope}: {sc.from_mode} -> {sc.to_mode}{note}")
        elif e.kind == "lockdown.door":
            name = _door(e)
            status = _str(d, "status")
            dev = DoorEvent(e.seq, e.ts, clock.rel(e), name, status, _str(d, "detail"))
            door_events.append(dev)
            a = acc(name)
            if status == "secured" and a.secured is None and e.seq >= origin.seq:
                a.secured = e
            elif status == "failed":
                a.failed = True
                a.failed_detail = a.failed_detail or dev.detail
            elif status == "propped":
                a.propped = True
            elif status == "drift":
                a.drifts += 1
            elif status == "released" and a.released is None:
                a.released = e
            if status != "drift":
                a.last_status = status
            detail = f": {dev.detail}" if dev.detail else ""
            row(e, f"door {name} {status}{detail}")
        elif e.kind == "lockdown.status":
            confirmed = _int(d, "confirmed") or 0
            total = _int(d, "total") or 0
            failed = _strs(d, "failed")
            propped = _strs(d, "propped")
            for name in failed:
                acc(name)
                if name not in status_failed:
                    status_failed.append(name)
            for name in propped:
                acc(name)
                if name not in status_propped:
                    status_propped.append(name)
            doors_total = total
            if e.seq >= origin.seq:
                t = fig(e)
                if not series:
                    series.append((0.0, 0, total))
                t = max(t, series[-1][0])
                if (confirmed, total) != series[-1][1:]:
                    series.append((t, confirmed, total))
                if ttfl is None and total > 0 and confirmed >= total:
                    ttfl, full_at = t, e.ts
            key = (confirmed, total, failed, propped)
            if key != last_status_key:
                last_status_key = key
                row(e, _status_text(confirmed, total, failed, propped))
        elif e.kind == "lockdown.override":
            overrides.append(_access_event(e, clock))
        elif e.kind == "lockdown.allclear":
            step = AllClearStep(
                e.seq,
                e.ts,
                clock.rel(e),
                _str(d, "person"),
                _str(d, "via"),
                _int(d, "n") or len(all_clear) + 1,
            )
            all_clear.append(step)
            row(e, f"all-clear {step.n}/2 by {step.person} via {step.via}")
        elif e.kind == "lockdown.end":
            by = ", ".join(_strs(d, "by")) or _DASH
            row(e, f"{_kind_word(evacuation)} ended ({_str(d, 'how', '?')}) by {by}")
        elif e.kind == "lockdown.restored":
            row(e, "daemon restarted; lockdown state restored and doors re-asserted")
        else:
            text = _generic_text(e)
            site_events.append(row(e, text))

    # entries without an incident field, inside the span
    door_scope = set(doors)
    decisions: list[AccessEvent] = []
    denied: list[AccessEvent] = []
    operator_entries: list[AccessEvent] = []  # `wardctl door ... --override` on a held door
    for e in others:
        d = e.data
        if e.kind == "access.decision":
            reason = _str(d, "reason")
            if reason not in _ACCESS_REASONS:
                continue
            if scope != "site" and door_scope and _door(e) not in door_scope:
                continue
            ae = _access_event(e, clock)
            if reason == "denied-lockdown":
                denied.append(ae)
                row(e, f"denied (lockdown): {_who_at(ae)}")
            else:
                decisions.append(ae)
        elif e.kind == "door.command":
            if d.get("override") is not True:
                continue
            source, t_s = _str(d, "source"), clock.rel(e)
            if source.startswith("reader:") and any(
                r.door == _door(e)
                and r.reader == source.removeprefix("reader:")
                and abs(r.t_s - t_s) <= _OVERRIDE_MATCH_S
                for r in (*overrides, *decisions)
            ):
                continue  # the pulse of a responder's grant: that entry is already counted
            if scope != "site" and door_scope and _door(e) not in door_scope:
                continue
            operator_entries.append(
                AccessEvent(
                    seq=e.seq,
                    ts=e.ts,
                    t_s=clock.rel(e),
                    door=_door(e),
                    reader="",
                    cardholder_id=None,
                    cardholder=_str(d, "source", "operator"),
                    source=e.kind,
                )
            )
        elif e.kind in _SITE_KINDS or e.kind.startswith("lockdown."):
            other_scope = _str(d, "scope")
            if e.kind.startswith("lockdown.") and (
                _int(d, "incident") is not None or (other_scope and other_scope != scope)
            ):
                continue
            site_events.append(row(e, _generic_text(e)))

    overrides = sorted(
        [*_merge_overrides(overrides, decisions), *operator_entries], key=lambda a: a.seq
    )
    for ov in overrides:
        what = "operator override" if ov.source == "door.command" else "responder override"
        timeline.append(TimelineEvent(ov.seq, ov.ts, ov.t_s, ov.source, f"{what}: {_who_at(ov)}"))
    timeline.sort(key=lambda ev: ev.seq)
    site_events.sort(key=lambda ev: ev.seq)

    summaries = [
        DoorSummary(
            door=name,
            secured_ts=a.secured.ts if a.secured else None,
            secured_s=fig(a.secured) if a.secured else None,
            failed=a.failed or name in status_failed,
            failed_detail=a.failed_detail,
            propped=a.propped or name in status_propped,
            drifts=a.drifts,
            last_status=a.last_status,
            released_s=fig(a.released) if a.released else None,
        )
        for name, a in doors.items()
    ]
    summaries.sort(key=lambda s: (s.secured_s is None, s.secured_s or 0.0, s.door))
    failed_doors = [s.door for s in summaries if s.failed]
    propped_doors = [s.door for s in summaries if s.propped]

    span_end = ordered[hi - 1] if hi > lo else members[-1]
    last = max(span_end, members[-1], key=lambda e: e.seq)
    return Incident(
        id=incident_id,
        scope=scope,
        drill=drill,
        kind="evacuation" if evacuation else "lockdown",
        started=origin.ts,
        ended=end.ts if end is not None else None,
        end_how=(_str(end.data, "how") or None) if end is not None else None,
        ended_by=_strs(end.data, "by") if end is not None else (),
        duration_s=fig(end) if end is not None else None,
        last_seen=last.ts,
        elapsed_s=fig(last),
        triggers=tuple(triggers),
        doors_total=doors_total if doors_total is not None else len(doors),
        doors=tuple(summaries),
        failed_doors=tuple(failed_doors),
        propped_doors=tuple(propped_doors),
        unsecured_doors=tuple(sorted(s.door for s in summaries if s.secured_s is None)),
        drift_events=tuple(ev for ev in door_events if ev.status == "drift"),
        door_events=tuple(door_events),
        overrides=tuple(overrides),
        denied=tuple(denied),
        all_clear=tuple(all_clear),
        time_to_full_lockdown_s=ttfl,
        full_lockdown_at=full_at,
        states=tuple(states),
        site_events=tuple(site_events),
        secured_over_time=tuple(series),
        timeline=tuple(timeline),
        first_seq=members[0].seq,
        last_seq=last.seq,
    )


def _access_event(e: Entry, clock: _Clock) -> AccessEvent:
    d = e.data
    cid = d.get("cardholder_id")
    return AccessEvent(
        seq=e.seq,
        ts=e.ts,
        t_s=clock.rel(e),
        door=_door(e),
        reader=_str(d, "reader"),
        cardholder_id=None if cid is None else str(cid),
        cardholder=_str(d, "cardholder"),
        source=e.kind,
    )


def _merge_overrides(records: list[AccessEvent], decisions: list[AccessEvent]) -> list[AccessEvent]:
    """Overrides from both sources, a decision matching a ``lockdown.override`` counted once."""
    used: set[int] = set()
    extra: list[AccessEvent] = []
    for dec in decisions:
        match = None
        for rec in records:
            if rec.seq in used or rec.door != dec.door or rec.cardholder_id != dec.cardholder_id:
                continue
            if rec.reader and dec.reader and rec.reader != dec.reader:
                continue
            if abs(rec.t_s - dec.t_s) <= _OVERRIDE_MATCH_S:
                match = rec
                break
        if match is None:
            extra.append(dec)
        else:
            used.add(match.seq)
    return sorted([*records, *extra], key=lambda a: a.seq)


# --------------------------------------------------------------------------- texts


def _kind_word(evacuation: bool) -> str:
    return "evacuation" if evacuation else "lockdown"


def _trigger_text(t: TriggerInfo) -> str:
    what = "evacuation" if t.evacuation else "lockdown"
    head = f"additional {what} trigger" if t.again else f"{what} triggered"
    text = f"{head} by {t.source or '?'}: {t.who or '?'} at {t.where or '?'}"
    if t.reason:
        text += f" ({t.reason})"
    if t.level is not None:
        text += f", threat level {t.level}"
    return text


def _status_text(confirmed: int, total: int, failed: Sequence[str], propped: Sequence[str]) -> str:
    text = f"{confirmed} of {total} doors confirmed secure"
    if failed:
        text += f"; failed: {', '.join(failed)}"
    if propped:
        text += f"; propped: {', '.join(propped)}"
    return text


def _who_at(a: AccessEvent) -> str:
    who = a.cardholder or _DASH
    if a.cardholder_id is not None:
        who += f" (#{a.cardholder_id})"
    text = f"{who} at {a.door or _DASH}"
    if a.reader:
        text += f" via {a.reader}"
    return text


def _generic_text(e: Entry) -> str:
    d = e.data
    if e.kind == "fire.alarm":
        latched = " (already latched)" if d.get("latched") is True else ""
        return f"fire alarm at {_str(d, 'where', '?')}{latched}"
    if e.kind == "fire.reset":
        refused = _str(d, "refused")
        who = _str(d, "who", "?")
        return f"fire reset by {who} refused: {refused}" if refused else f"fire reset by {who}"
    if e.kind == "threat.level":
        return (
            f"threat level {_str(d, 'from', '?')} -> {_str(d, 'to', '?')} by {_str(d, 'who', '?')}"
        )
    if e.kind == "lockdown.refused":
        return f"refused {_str(d, 'event', '?')}: {_str(d, 'reason')}"
    details = ", ".join(
        f"{k}={v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)}"
        for k, v in sorted(d.items())
        if k not in ("incident", "drill")
    )
    return f"{e.kind} {details}".strip()


def _fmt_s(value: float | None) -> str:
    return _DASH if value is None else f"{value:.3f}"


def _title(inc: Incident) -> str:
    scope = "site" if inc.scope == "site" else f"zone {inc.scope}"
    return f"Incident {inc.id}: {scope} {inc.kind}" + (" (DRILL)" if inc.drill else "")


def _ended_text(inc: Incident) -> str:
    if inc.ended is None:
        return f"ongoing (last journal entry {inc.last_seen}, t = {inc.elapsed_s:.3f} s)"
    by = ", ".join(inc.ended_by) or _DASH
    return f"{inc.ended} (t = {_fmt_s(inc.duration_s)} s), {inc.end_how or '?'} by {by}"


def _ttfl_text(inc: Incident) -> str:
    if inc.time_to_full_lockdown_s is not None:
        return f"{inc.time_to_full_lockdown_s:.3f} s (at {inc.full_lockdown_at})"
    if not inc.secured_over_time:
        return "never (no lockdown status recorded)"
    best = max(p[1] for p in inc.secured_over_time)
    return f"never reached (at most {best} of {inc.doors_total} doors confirmed)"


def _summary_rows(inc: Incident) -> list[tuple[str, str]]:
    t = inc.trigger
    trig = (
        f"{t.source}: {t.who} at {t.where}" + (f" ({t.reason})" if t.reason else "")
        if t
        else "no trigger journaled"
    )
    if inc.doors:
        secured = sum(1 for d in inc.doors if d.secured_s is not None)
    else:  # no per-door records: the best status count
        secured = max((p[1] for p in inc.secured_over_time), default=0)
    return [
        ("Incident", str(inc.id)),
        ("Type", inc.kind + (" - DRILL" if inc.drill else "")),
        ("Scope", inc.scope),
        ("Trigger", trig),
        ("Threat level", _DASH if t is None or t.level is None else str(t.level)),
        ("Additional triggers", str(max(0, len(inc.triggers) - 1))),
        ("Started (t = 0)", inc.started),
        ("Ended", _ended_text(inc)),
        ("Duration", _DASH if inc.duration_s is None else f"{inc.duration_s:.3f} s"),
        ("Doors in scope", str(inc.doors_total)),
        ("Doors ever confirmed secure", f"{secured} of {inc.doors_total}"),
        ("Time to full lockdown", _ttfl_text(inc)),
        ("Failed doors", ", ".join(inc.failed_doors) or "none"),
        ("Propped doors", ", ".join(inc.propped_doors) or "none"),
        ("Drift events", str(len(inc.drift_events))),
        ("Responder overrides", str(len(inc.overrides))),
        ("Denied attempts", str(inc.denied_count)),
        ("All-clear", ", ".join(a.person for a in inc.all_clear) or "none"),
        ("Journal entries", f"seq {inc.first_seq} to {inc.last_seq}"),
    ]


def _door_notes(d: DoorSummary) -> str:
    notes = []
    if d.failed:
        notes.append("failed" + (f" ({d.failed_detail})" if d.failed_detail else ""))
    if d.propped:
        notes.append("propped")
    if d.drifts:
        notes.append(f"drift x{d.drifts}")
    if d.released_s is not None:
        notes.append(f"released at {d.released_s:.3f} s")
    return "; ".join(notes)


def _tables(inc: Incident) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(heading, header, rows, text when empty) of every table after the summary."""
    timeline = [[f"{ev.t_s:.3f}", ev.ts, ev.kind, ev.text] for ev in inc.timeline]
    doors = [
        [
            d.door,
            _fmt_s(d.secured_s),
            d.secured_ts or "never",
            d.last_status or _DASH,
            _door_notes(d),
        ]
        for d in inc.doors
    ]
    access = ["t (s)", "UTC", "door", "reader", "cardholder", "id"]

    def access_rows(items: Sequence[AccessEvent]) -> list[list[str]]:
        return [
            [f"{a.t_s:.3f}", a.ts, a.door, a.reader, a.cardholder, a.cardholder_id or _DASH]
            for a in items
        ]

    clear = [[f"{a.t_s:.3f}", a.ts, a.person, a.via, f"{a.n}/2"] for a in inc.all_clear]
    states = [[f"{s.t_s:.3f}", s.ts, s.scope, s.from_mode, s.to_mode, s.reason] for s in inc.states]
    site = [[f"{ev.t_s:.3f}", ev.ts, ev.kind, ev.text] for ev in inc.site_events]
    series = [[f"{t:.3f}", str(c), str(n)] for t, c, n in inc.secured_over_time]
    return [
        ("Timeline", ["t (s)", "UTC", "event", "details"], timeline, "No events."),
        (
            "Doors",
            ["door", "confirmed secure (s)", "UTC", "last status", "notes"],
            doors,
            "No door was reported.",
        ),
        ("Responder overrides", access, access_rows(inc.overrides), "None."),
        (f"Denied attempts ({inc.denied_count})", access, access_rows(inc.denied), "None."),
        ("All-clear", ["t (s)", "UTC", "person", "via", "step"], clear, "None."),
        (
            "State transitions",
            ["t (s)", "UTC", "scope", "from", "to", "note"],
            states,
            "None.",
        ),
        (
            "Fire alarms, threat level, refusals and other events",
            ["t (s)", "UTC", "event", "details"],
            site,
            "None.",
        ),
        ("Doors secured over time", ["t (s)", "confirmed", "total"], series, "No status recorded."),
    ]


# --------------------------------------------------------------------------- renderers


_NAMED_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    """A visible Python-style escape of one character: ``\\x1b``, ``\\u202e``, ``\\U000e0001``."""
    code = ord(ch)
    if ch in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[ch]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _visible(text: str) -> str:
    """``text`` safe for a terminal and a reader: no control, format or separator characters.

    Controls (C0 incl. newline, DEL, C1 incl. the 8-bit CSI), format characters (bidi
    overrides and isolates, zero-width characters), line/paragraph separators, surrogates,
    private-use and unassigned characters become visible escapes (ESC -> ``\\x1b``,
    RIGHT-TO-LEFT OVERRIDE -> ``\\u202e``); other spaces become a plain space.
    """
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else " " if unicodedata.category(ch) == "Zs" else _escape_char(ch)
        for ch in text
    )


def _json_escape_invisible(text: str) -> str:
    """JSON text with every non-printable character inside strings as a ``\\uXXXX`` escape.

    ``json.dumps(ensure_ascii=False)`` escapes only C0 controls; C1 controls (a terminal's
    8-bit CSI), bidi overrides and the like would reach a terminal raw. Outside strings the
    text holds only printable ASCII, spaces and newlines, so the newlines are kept.
    """
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\n" or ch.isprintable():
            out.append(ch)
        elif code > 0xFFFF:
            high, low = divmod(code - 0x10000, 0x400)
            out.append(f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out)


def render_json(incident: Incident) -> str:
    """The incident as a JSON document (``Incident.to_json``), indented, keys sorted.

    Non-printable characters of journal text are ``\\u`` escapes (same values, safe output).
    """
    text = json.dumps(
        incident.to_json(), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False
    )
    return _json_escape_invisible(text) + "\n"


_MD_SPECIAL: Final = frozenset("\\`*_[]<|~&")  # enough mid-line: no line starts with text


def _md(text: str) -> str:
    """Escape ``text`` for one Markdown table cell or line: punctuation, pipes, and controls.

    Control and format characters (newline, ESC, bidi overrides...) become visible escapes
    first (``_visible``), so journal text can neither break a line nor drive a terminal.
    """
    flat = " ".join(_visible(str(text)).split())  # runs of spaces, as one
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in flat)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(_md(c) or " " for c in r) + " |" for r in rows]
    return lines


def render_markdown(incident: Incident) -> str:
    """A review-ready Markdown document: banner, summary, timeline, doors, people."""
    out = [f"# {_md(_title(incident))}", ""]
    if incident.drill:
        out += ["> **DRILL** - this incident was a drill, not a real threat.", ""]
    if incident.ended is None:
        out += ["> **ONGOING** - the incident had not ended at the last journal entry.", ""]
    out += ["## Summary", ""]
    out += _md_table(["", ""], _summary_rows(incident))
    out += [
        "",
        "Times: t is seconds after the trigger (3 decimals); UTC is the journal's timestamp.",
    ]
    for heading, header, rows, empty in _tables(incident):
        out += ["", f"## {_md(heading)}", ""]
        out += _md_table(header, rows) if rows else [empty]
    out += ["", f"_warding incident report v{incident.report_version}_", ""]
    return "\n".join(out)


def _h(text: object) -> str:
    """HTML-escape ``text`` after making control and format characters visible."""
    return html.escape(_visible(str(text)), quote=True)


_CSS: Final = """
body{font-family:system-ui,sans-serif;margin:2em;color:#111;max-width:1100px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0;font-size:.9em}
th,td{border:1px solid #bbb;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#eee}td.num{text-align:right;font-variant-numeric:tabular-nums}
.banner{padding:.6em 1em;font-weight:bold;border:2px solid;margin:1em 0}
.drill{background:#fff4cc;border-color:#c90}.ongoing{background:#fde;border-color:#c36}
figure{margin:1em 0}
""".strip()


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["<table>"]
    if any(header):
        lines.append("<tr>" + "".join(f"<th>{_h(c)}</th>" for c in header) + "</tr>")
    for r in rows:
        cells = []
        for c in r:
            numeric = c.replace(".", "", 1).replace("-", "", 1).isdigit()
            cls = ' class="num"' if numeric else ""
            cells.append(f"<td{cls}>{_h(c)}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</table>")
    return lines


def render_html(incident: Incident) -> str:
    """A self-contained HTML report (inline CSS, no scripts) with the SVG plot inline."""
    title = _title(incident)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{_h(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{_h(title)}</h1>",
    ]
    if incident.drill:
        out.append(
            '<p class="banner drill">DRILL - this incident was a drill, not a real threat.</p>'
        )
    if incident.ended is None:
        out.append(
            '<p class="banner ongoing">ONGOING - the incident had not ended at the last'
            " journal entry.</p>"
        )
    out += ["<h2>Summary</h2>", *_html_table(["", ""], _summary_rows(incident))]
    out.append(
        "<p>Times: t is seconds after the trigger (3 decimals); UTC is the journal's timestamp.</p>"
    )
    out += [
        "<h2>Doors secured over time</h2>",
        "<figure>",
        render_svg_plot(incident),
        "<figcaption>Doors confirmed secure (solid) and doors in scope (dashed) against"
        " seconds after the trigger.</figcaption>",
        "</figure>",
    ]
    for heading, header, rows, empty in _tables(incident):
        out.append(f"<h2>{_h(heading)}</h2>")
        out += _html_table(header, rows) if rows else [f"<p>{_h(empty)}</p>"]
    out += [
        f"<p><small>warding incident report v{incident.report_version}</small></p>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------- SVG plot


def _nice_step(span: float, target: int = 6) -> float:
    raw = max(span, 1e-9) / target
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 5.0):
        if raw <= m * mag * (1 + 1e-9):
            return m * mag
    return 10.0 * mag


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9))


def _n(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def render_svg_plot(incident: Incident, width: int = 720, height: int = 320) -> str:
    """An SVG step chart of doors confirmed secure over seconds since the trigger."""
    width, height = max(width, 240), max(height, 160)
    left, right, top, bottom = 56, 20, 34, 46
    pw, ph = width - left - right, height - top - bottom
    series = list(incident.secured_over_time)
    ttfl = incident.time_to_full_lockdown_s

    x_end = max([p[0] for p in series] + [ttfl or 0.0])
    x_end = x_end * 1.05 if x_end > 0 else 1.0
    x_step = _nice_step(x_end)
    x_max = math.ceil(x_end / x_step - 1e-9) * x_step
    y_top = max([p[1] for p in series] + [p[2] for p in series] + [incident.doors_total, 1])
    y_step = max(1.0, float(math.ceil(_nice_step(y_top, 5))))
    y_max = math.ceil(y_top / y_step) * y_step

    def x(t: float) -> float:
        return left + pw * min(max(t, 0.0), x_max) / x_max

    def y(v: float) -> float:
        return top + ph - ph * v / y_max

    title = f"Incident {incident.id}: doors secured over time" + (
        " (DRILL)" if incident.drill else ""
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11"'
        ' role="img">',
        f"<title>{_h(title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{left}" y="20" font-size="13" font-weight="bold">{_h(title)}</text>',
    ]
    # grid, ticks and labels
    dec = _decimals(x_step)
    for i in range(round(x_max / x_step) + 1):
        t = i * x_step
        px = _n(x(t))
        out.append(
            f'<line class="xtick" x1="{px}" y1="{_n(top)}" x2="{px}" y2="{_n(top + ph + 4)}"'
            ' stroke="#ddd"/>'
        )
        out.append(
            f'<text x="{px}" y="{_n(top + ph + 16)}" text-anchor="middle">{t:.{dec}f}</text>'
        )
    for i in range(round(y_max / y_step) + 1):
        v = i * y_step
        py = _n(y(v))
        out.append(
            f'<line class="ytick" x1="{_n(left - 4)}" y1="{py}" x2="{_n(left + pw)}" y2="{py}"'
            ' stroke="#ddd"/>'
        )
        out.append(f'<text x="{_n(left - 7)}" y="{py}" dy="4" text-anchor="end">{v:.0f}</text>')
    out += [
        f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#333"/>',
        f'<text x="{_n(left + pw / 2)}" y="{height - 8}" text-anchor="middle">'
        "seconds after the trigger</text>",
        f'<text transform="translate(14 {_n(top + ph / 2)}) rotate(-90)"'
        ' text-anchor="middle">doors</text>',
    ]
    if not series:
        out.append(
            f'<text x="{_n(left + pw / 2)}" y="{_n(top + ph / 2)}" text-anchor="middle"'
            ' fill="#666">no lockdown status recorded</text>'
        )
    else:
        out.append(
            f'<path class="total" d="{_step_path(series, 2, x, y, x_max)}" fill="none"'
            ' stroke="#888" stroke-width="1.5" stroke-dasharray="6 4"/>'
        )
        out.append(
            f'<path class="secured" d="{_step_path(series, 1, x, y, x_max)}" fill="none"'
            ' stroke="#1f5fbf" stroke-width="2"/>'
        )
        last_total = series[-1][2]
        out.append(
            f'<text x="{_n(left + pw - 2)}" y="{_n(y(last_total) - 4)}" text-anchor="end"'
            f' fill="#666">total {last_total}</text>'
        )
        if ttfl is not None:
            level = next((p[1] for p in reversed(series) if p[0] <= ttfl), series[-1][1])
            cx, cy = _n(x(ttfl)), _n(y(level))
            anchor = "start" if x(ttfl) < left + pw * 0.6 else "end"
            dx = 6 if anchor == "start" else -6
            out += [
                f'<line x1="{cx}" y1="{_n(top)}" x2="{cx}" y2="{_n(top + ph)}" stroke="#2a8a2a"'
                ' stroke-dasharray="2 3"/>',
                f'<circle class="full-lockdown" cx="{cx}" cy="{cy}" r="5" fill="#2a8a2a"/>',
                f'<text x="{cx}" y="{_n(y(level) + 16)}" dx="{dx}" text-anchor="{anchor}"'
                f' fill="#2a8a2a">full lockdown {ttfl:.3f} s</text>',
            ]
    out.append("</svg>")
    return "\n".join(out)


def _step_path(
    series: Sequence[tuple[float, int, int]],
    col: int,
    x: Callable[[float], float],
    y: Callable[[float], float],
    x_max: float,
) -> str:
    """``M`` at the first point, then ``H``/``V`` for every change of column ``col``."""
    t0, *_ = series[0]
    value = series[0][col]
    parts = [f"M{_n(x(t0))} {_n(y(value))}"]
    for point in series[1:]:
        if point[col] != value:
            value = point[col]
            parts.append(f"H{_n(x(point[0]))} V{_n(y(value))}")
    parts.append(f"H{_n(x(x_max))}")
    return " ".join(parts)


# --------------------------------------------------------------------------- files


def render(incident: Incident, fmt: str) -> str:
    """Render ``incident`` in ``fmt`` (one of FORMATS); raise ValueError otherwise."""
    if fmt == "md":
        return render_markdown(incident)
    if fmt == "json":
        return render_json(incident)
    if fmt == "html":
        return render_html(incident)
    raise ValueError(f"unknown report format {fmt!r} (use one of {', '.join(FORMATS)})")


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(incident: Incident, fmt: str, out_dir: Path) -> list[Path]:
    """Write ``incident-<id>.<fmt>`` (and for html the plot ``incident-<id>.svg``) to out_dir."""
    text = render(incident, fmt)
    out_dir.mkdir(parents=True, exist_ok=True)
    main = out_dir / f"incident-{incident.id}.{fmt}"
    written = [main]
    if fmt == "html":
        plot = out_dir / f"incident-{incident.id}.svg"
        _write_atomic(plot, render_svg_plot(incident) + "\n")
        written.append(plot)
    _write_atomic(main, text)
    return written
