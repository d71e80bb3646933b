"""Incident timelines from synthetic journals: figures, renderers, files, random sequences."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.errors import JournalCorruptError
from controller.journal import Entry, format_ts
from controller.lockdown.report import (
    FORMATS,
    REPORT_KINDS,
    Incident,
    UnknownIncidentError,
    build_incident,
    list_incidents,
    render,
    render_html,
    render_json,
    render_markdown,
    render_svg_plot,
    write_report,
)

BASE = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
DOORS = [f"d{i:02d}" for i in range(1, 17)]
EVIL = "<script>alert('x')</script> & Co|"

# --------------------------------------------------------------------------- journal fabrication


class Fab:
    """Fabricates journal entries with increasing seqs and timestamps at given offsets."""

    def __init__(self, base: datetime = BASE) -> None:
        self.base = base
        self.t = 0.0
        self.entries: list[Entry] = []
        self.trigger_at: dict[int, float] = {}  # incident -> offset of its first trigger

    def add(
        self, kind: str, at: float | None = None, *, on: str | None = None, **data: Any
    ) -> Entry:
        """Append an entry ``at`` seconds after BASE (default 1 ms after the last); ``on``: door."""
        self.t = self.t + 0.001 if at is None else at
        if kind == "lockdown.trigger" and not data.get("again"):
            self.trigger_at.setdefault(data.get("incident", 0), self.t)
        entry = Entry(
            seq=len(self.entries) + 1,
            ts=format_ts(self.base + timedelta(seconds=self.t)),
            kind=kind,
            door=on,
            device=None,
            data=data,
            prev_hash="0" * 64,
            hash="0" * 64,
        )
        self.entries.append(entry)
        return entry

    def ts(self, at: float) -> str:
        """The timestamp written for offset ``at``."""
        return format_ts(self.base + timedelta(seconds=at))


def frm(value: Any) -> dict[str, Any]:
    """The ``from`` field (a keyword in Python)."""
    return {"from": value}


def status(
    fab: Fab,
    at: float,
    confirmed: int,
    *,
    incident: int = 1,
    total: int = 16,
    failed: Sequence[str] = (),
    propped: Sequence[str] = (),
    drill: bool = False,
) -> None:
    fab.add(
        "lockdown.status",
        at,
        incident=incident,
        drill=drill,
        confirmed=confirmed,
        total=total,
        failed=list(failed),
        propped=list(propped),
        elapsed_ms=(at - fab.trigger_at.get(incident, 0.0)) * 1000,  # as the runner: mono
    )


def sixteen_doors(
    fab: Fab,
    *,
    drill: bool = False,
    recover_at: float | None = None,
    end: bool = True,
    cardholder: str = "Officer Jane",
) -> None:
    """Site lockdown: 14 doors secure within 300 ms, d15 fails, d16 is propped then secures."""
    d = drill
    fab.add("access.decision", 0.0, on="d01", reader="r-d01", reason="granted", granted=True)
    fab.add(
        "lockdown.trigger",
        1.0,
        incident=1,
        scope="site",
        drill=d,
        source="panic",
        who="panic input lobby-panic",
        where="lobby-panic",
        reason="panic button",
        level=None,
        again=False,
    )
    fab.add(
        "lockdown.state",
        1.0,
        incident=1,
        scope="site",
        drill=d,
        to="lockdown",
        **frm("normal"),
    )
    for i, name in enumerate(DOORS[:14], start=1):
        if i == 2:
            fab.add(
                "lockdown.door", 1.03, on="d16", incident=1, drill=d, status="propped", detail=""
            )
        if i == 3:
            fab.add(
                "lockdown.door",
                1.05,
                on="d15",
                incident=1,
                drill=d,
                status="failed",
                detail="board offline",
            )
        # runner style (door in Entry.door) and data style both occur
        if i % 2:
            fab.add(
                "lockdown.door",
                1 + 0.02 * i,
                on=name,
                incident=1,
                drill=d,
                status="secured",
                detail="",
            )
        else:
            fab.add(
                "lockdown.door",
                1 + 0.02 * i,
                incident=1,
                drill=d,
                door=name,
                status="secured",
                detail="",
            )
        if i == 5:
            status(fab, 1.1, 5, failed=["d15"], propped=["d16"], drill=d)
    status(fab, 1.29, 14, failed=["d15"], propped=["d16"], drill=d)
    status(fab, 2.29, 14, failed=["d15"], propped=["d16"], drill=d)  # periodic, unchanged
    fab.add("lockdown.door", 3.5, on="d16", incident=1, drill=d, status="secured", detail="")
    status(fab, 3.51, 15, failed=["d15"], drill=d)
    fab.add("threat.level", 4.0, who="operator ann", to=5, **frm(0))
    fab.add(
        "access.decision",
        5.999,
        on="d03",
        reader="r-d03",
        reason="granted-override",
        granted=True,
        cardholder_id=42,
        cardholder=cardholder,
    )
    fab.add(
        "lockdown.override",
        6.0,
        incident=1,
        drill=d,
        door="d03",
        reader="r-d03",
        cardholder_id=42,
        cardholder=cardholder,
    )
    for at in (7.0, 7.5):
        fab.add(
            "access.decision",
            at,
            on="d01",
            reader="r-d01",
            reason="denied-lockdown",
            granted=False,
            cardholder_id=7,
            cardholder="Bob",
        )
    fab.add("access.decision", 7.8, on="d01", reader="r-d01", reason="denied-unknown-card")
    if recover_at is not None:
        fab.add(
            "lockdown.door", recover_at, on="d15", incident=1, drill=d, status="secured", detail=""
        )
        status(fab, recover_at + 0.01, 16, drill=d)
    if not end:
        status(
            fab,
            60.0,
            16 if recover_at is not None else 15,
            failed=[] if recover_at else ["d15"],
            drill=d,
        )
        return
    fab.add(
        "lockdown.allclear",
        101.0,
        incident=1,
        scope="site",
        drill=d,
        person="Alice",
        via="card",
        n=1,
    )
    fab.add(
        "lockdown.state",
        101.0,
        incident=1,
        scope="site",
        drill=d,
        to="all-clear-pending",
        **frm("lockdown"),
    )
    fab.add(
        "lockdown.allclear",
        131.0,
        incident=1,
        scope="site",
        drill=d,
        person="Bruno",
        via="operator",
        n=2,
    )
    fab.add(
        "lockdown.end",
        131.0,
        incident=1,
        scope="site",
        drill=d,
        duration_s=130.0,
        by=["Alice", "Bruno"],
        how="all-clear",
    )
    fab.add(
        "lockdown.state",
        131.0,
        incident=1,
        scope="site",
        drill=d,
        to="normal",
        **frm("all-clear-pending"),
    )
    for name in DOORS:
        fab.add("lockdown.door", on=name, incident=1, drill=d, status="released", detail="")
    fab.add("threat.level", 140.0, who="operator ann", to=0, **frm(5))  # after the end


def built(**kw: Any) -> tuple[Fab, Incident]:
    fab = Fab()
    sixteen_doors(fab, **kw)
    return fab, build_incident(fab.entries, 1)


# --------------------------------------------------------------------------- figures


def test_sixteen_door_lockdown_figures() -> None:
    fab, inc = built()
    stamps = [e.ts for e in fab.entries]
    assert stamps == sorted(stamps)  # a realistic journal: the clock never steps here
    assert (inc.id, inc.scope, inc.kind, inc.drill) == (1, "site", "lockdown", False)
    assert inc.started == fab.ts(1.0)
    trig = inc.trigger
    assert trig is not None
    assert (trig.source, trig.who, trig.where, trig.t_s) == (
        "panic",
        "panic input lobby-panic",
        "lobby-panic",
        0.0,
    )
    assert inc.doors_total == 16
    secured = {d.door: d.secured_s for d in inc.doors}
    for i, name in enumerate(DOORS[:14], start=1):
        assert secured[name] == pytest.approx(0.02 * i, abs=1e-9)
        assert secured[name] <= 0.3  # type: ignore[operator]
    assert secured["d16"] == 2.5
    assert secured["d15"] is None
    assert [d.door for d in inc.doors][:3] == ["d01", "d02", "d03"]
    assert inc.doors[-1].door == "d15"  # never secured: last
    assert inc.failed_doors == ("d15",)
    assert inc.propped_doors == ("d16",)
    assert inc.unsecured_doors == ("d15",)
    d15 = next(d for d in inc.doors if d.door == "d15")
    assert d15.failed_detail == "board offline"
    assert d15.released_s == 130.015  # released after the end, one per ms
    assert inc.time_to_full_lockdown_s is None
    assert inc.full_lockdown_at is None
    assert inc.secured_over_time == ((0.0, 0, 16), (0.1, 5, 16), (0.29, 14, 16), (2.51, 15, 16))
    assert inc.drift_events == ()


def test_people_and_end() -> None:
    fab, inc = built()
    assert len(inc.overrides) == 1  # the decision and the override record are one entry
    ov = inc.overrides[0]
    assert (ov.door, ov.reader, ov.cardholder, ov.cardholder_id, ov.t_s) == (
        "d03",
        "r-d03",
        "Officer Jane",
        "42",
        5.0,
    )
    assert ov.source == "lockdown.override"
    assert inc.denied_count == 2
    assert {a.cardholder for a in inc.denied} == {"Bob"}
    assert [(a.person, a.via, a.n, a.t_s) for a in inc.all_clear] == [
        ("Alice", "card", 1, 100.0),
        ("Bruno", "operator", 2, 130.0),
    ]
    assert inc.ended == fab.ts(131.0)
    assert inc.duration_s == 130.0
    assert inc.end_how == "all-clear"
    assert inc.ended_by == ("Alice", "Bruno")
    assert [(s.from_mode, s.to_mode) for s in inc.states] == [
        ("normal", "lockdown"),
        ("lockdown", "all-clear-pending"),
        ("all-clear-pending", "normal"),
    ]
    # the threat level change during the incident is in; the one after the end is not
    assert [e.text for e in inc.site_events] == ["threat level 0 -> 5 by operator ann"]


def test_time_to_full_lockdown_when_the_failed_door_recovers() -> None:
    fab, inc = built(recover_at=41.0)
    assert inc.time_to_full_lockdown_s == 40.01
    assert inc.full_lockdown_at == fab.ts(41.01)
    assert inc.secured_over_time[-1] == (40.01, 16, 16)
    assert inc.unsecured_doors == ()
    assert inc.failed_doors == ("d15",)  # it did fail, for a while
    assert next(d for d in inc.doors if d.door == "d15").secured_s == 40.0


def test_timeline_is_in_journal_order_and_skips_repeated_status() -> None:
    _, inc = built()
    seqs = [e.seq for e in inc.timeline]
    assert seqs == sorted(seqs)
    statuses = [e for e in inc.timeline if e.kind == "lockdown.status"]
    assert [e.t_s for e in statuses] == [0.1, 0.29, 2.51]
    assert statuses[1].text == "14 of 16 doors confirmed secure; failed: d15; propped: d16"
    assert sum(e.kind == "lockdown.override" for e in inc.timeline) == 1
    assert sum(e.kind == "access.decision" for e in inc.timeline) == 2  # the two denials
    assert inc.timeline[0].text == (
        "lockdown triggered by panic: panic input lobby-panic at lobby-panic (panic button)"
    )


def test_list_incidents_summary() -> None:
    fab = Fab()
    sixteen_doors(fab, recover_at=41.0)
    [summary] = list_incidents(fab.entries)
    assert summary.id == 1
    assert summary.ended == fab.ts(131.0)
    assert (summary.source, summary.who, summary.where) == (
        "panic",
        "panic input lobby-panic",
        "lobby-panic",
    )
    assert (summary.doors_total, summary.time_to_full_lockdown_s, summary.duration_s) == (
        16,
        40.01,
        130.0,
    )
    assert summary.trigger == "panic: panic input lobby-panic at lobby-panic"
    assert summary.to_json()["scope"] == "site"
    assert list_incidents([]) == []


def test_unknown_incident_is_a_key_error() -> None:
    fab, _ = built()
    with pytest.raises(KeyError) as info:
        build_incident(fab.entries, 99)
    assert isinstance(info.value, UnknownIncidentError)
    assert info.value.incident_id == 99
    assert str(info.value) == "no incident 99 in the journal"
    assert info.value.args == ("no incident 99 in the journal",)
    with pytest.raises(UnknownIncidentError):
        build_incident([], 1)


def test_ongoing_incident() -> None:
    fab, inc = built(end=False)
    assert inc.ended is None
    assert inc.duration_s is None
    assert inc.end_how is None
    assert inc.last_seen == fab.ts(60.0)
    assert inc.elapsed_s == 59.0
    assert inc.time_to_full_lockdown_s is None
    assert "**ONGOING**" in render_markdown(inc)
    assert "ONGOING" in render_html(inc)
    [summary] = list_incidents(fab.entries)
    assert summary.ended is None


def test_entries_in_any_order() -> None:
    fab, inc = built()
    again = build_incident(list(reversed(fab.entries)), 1)
    assert again == inc
    for fmt in FORMATS:  # deterministic: a report can be regenerated byte for byte
        assert render(again, fmt) == render(inc, fmt)


def test_two_interleaved_zone_incidents() -> None:
    fab = Fab()

    def trig(at: float, inc: int, zone: str, who: str) -> None:
        fab.add(
            "lockdown.trigger",
            at,
            incident=inc,
            scope=zone,
            drill=False,
            source="operator",
            who=who,
            where="console",
            reason="test",
            level=None,
            again=False,
        )

    def door(at: float, inc: int, name: str, st: str = "secured") -> None:
        fab.add("lockdown.door", at, on=name, incident=inc, drill=False, status=st, detail="")

    def denied(at: float, name: str) -> None:
        fab.add("access.decision", at, on=name, reader=f"r-{name}", reason="denied-lockdown")

    trig(0.0, 1, "east", "ann")
    door(0.01, 1, "e1")
    trig(0.5, 2, "west", "bob")
    door(0.6, 1, "e2")
    status(fab, 0.61, 2, incident=1, total=2)
    door(0.7, 2, "w1")
    door(0.8, 2, "w2", "failed")
    status(fab, 0.81, 1, incident=2, total=2, failed=["w2"])
    denied(1.0, "w1")  # a west door: incident 2 only
    denied(1.1, "e1")  # an east door: incident 1 only
    fab.add("fire.alarm", 2.0, where="fire-panel", latched=False)  # both
    fab.add(
        "lockdown.refused", 2.5, incident=2, scope="west", drill=False, event="AllClear", reason="x"
    )
    fab.add(
        "lockdown.refused",
        2.6,
        incident=None,
        scope="north",
        drill=False,
        event="AllClear",
        reason="y",
    )
    fab.add(
        "lockdown.end",
        3.0,
        incident=1,
        scope="east",
        drill=False,
        duration_s=3.0,
        by=["a", "b"],
        how="all-clear",
    )
    fab.add("threat.level", 4.0, who="ops", to=3, **frm(0))  # after east ended
    door(5.0, 2, "w2")
    status(fab, 5.01, 2, incident=2, total=2)
    fab.add(
        "lockdown.end",
        6.0,
        incident=2,
        scope="west",
        drill=False,
        duration_s=5.5,
        by=["a", "b"],
        how="all-clear",
    )

    summaries = list_incidents(fab.entries)
    assert [(s.id, s.scope, s.who) for s in summaries] == [(1, "east", "ann"), (2, "west", "bob")]
    east, west = build_incident(fab.entries, 1), build_incident(fab.entries, 2)
    assert [d.door for d in east.doors] == ["e1", "e2"]
    assert [d.door for d in west.doors] == ["w1", "w2"]
    assert east.time_to_full_lockdown_s == 0.61
    assert west.time_to_full_lockdown_s == 4.51
    assert west.failed_doors == ("w2",)
    assert [a.door for a in east.denied] == ["e1"]
    assert [a.door for a in west.denied] == ["w1"]
    assert [e.kind for e in east.site_events] == ["fire.alarm"]
    assert [e.kind for e in west.site_events] == ["fire.alarm", "lockdown.refused", "threat.level"]
    assert west.duration_s == 5.5
    assert west.doors[0].secured_s == 0.2  # relative to west's own trigger


def test_additional_trigger_restart_and_drift() -> None:
    fab = Fab()
    common: dict[str, Any] = {"incident": 3, "drill": False, "scope": "site"}
    fab.add(
        "lockdown.trigger",
        0.0,
        **common,
        source="credential",
        who="Kim",
        where="r1",
        reason="",
        level=5,
        again=False,
    )
    fab.add("lockdown.door", 0.1, on="a", incident=3, status="secured", detail="")
    status(fab, 0.11, 1, incident=3, total=1)
    fab.add(
        "lockdown.trigger",
        2.0,
        **common,
        source="panic",
        who="p",
        where="x",
        reason="",
        level=None,
        again=True,
    )
    fab.add(
        "lockdown.restored",
        3.0,
        scopes={"site": "lockdown"},
        fire=False,
        threat_level=5,
        incidents=[3],
    )
    fab.add("lockdown.door", 4.0, on="a", incident=3, status="drift", detail="pending")
    fab.add("lockdown.door", 4.0, on="a", incident=3, status="pending", detail="")
    status(fab, 4.01, 0, incident=3, total=1)
    fab.add("lockdown.door", 4.2, on="a", incident=3, status="secured", detail="")
    status(fab, 4.21, 1, incident=3, total=1)
    inc = build_incident(fab.entries, 3)
    assert [(t.source, t.again, t.t_s) for t in inc.triggers] == [
        ("credential", False, 0.0),
        ("panic", True, 2.0),
    ]
    assert inc.trigger is not None
    assert inc.trigger.level == 5
    assert inc.time_to_full_lockdown_s == 0.11
    assert [e.t_s for e in inc.drift_events] == [4.0]
    assert inc.doors[0].secured_s == 0.1  # the first "secured" counts
    assert inc.doors[0].drifts == 1
    assert inc.secured_over_time == ((0.0, 0, 1), (0.11, 1, 1), (4.01, 0, 1), (4.21, 1, 1))
    assert any(e.kind == "lockdown.restored" for e in inc.timeline)
    assert "additional lockdown trigger by panic" in render_markdown(inc)


def test_evacuation_without_status() -> None:
    fab = Fab()
    fab.add(
        "lockdown.trigger",
        0.0,
        incident=4,
        scope="site",
        drill=True,
        source="operator",
        who="op",
        where="wardctl",
        reason="gas",
        evacuation=True,
    )
    fab.add(
        "lockdown.state",
        0.0,
        incident=4,
        scope="site",
        drill=True,
        to="evacuation",
        **frm("normal"),
    )
    fab.add(
        "lockdown.end",
        30.0,
        incident=4,
        scope="site",
        drill=True,
        duration_s=30.0,
        by=["op"],
        how="evacuation-end",
    )
    inc = build_incident(fab.entries, 4)
    assert inc.kind == "evacuation"
    assert inc.time_to_full_lockdown_s is None
    assert inc.secured_over_time == ()
    assert inc.doors_total == 0
    assert "no lockdown status recorded" in render_svg_plot(inc)
    for fmt in FORMATS:
        assert render(inc, fmt)


def test_incident_without_trigger_and_clock_step() -> None:
    fab = Fab()
    # the machine's unknown-pair path makes an incident with no trigger record
    fab.add("lockdown.unknown", 1.0, scope="site", mode="normal", event="Weird")
    fab.add(
        "lockdown.status", 2.0, incident=5, drill=False, confirmed=0, total=2, failed=[], propped=[]
    )
    fab.add(
        "lockdown.door", 1.5, on="a", incident=5, status="secured", detail=""
    )  # clock stepped back
    fab.add(
        "lockdown.status", 1.6, incident=5, drill=False, confirmed=2, total=2, failed=[], propped=[]
    )
    inc = build_incident(fab.entries, 5)
    assert inc.trigger is None
    assert inc.started == fab.ts(2.0)
    assert inc.time_to_full_lockdown_s == 0.0  # clamped: never before t = 0
    assert inc.doors[0].secured_s == 0.0
    assert [p[0] for p in inc.secured_over_time] == [0.0, 0.0]
    assert "no trigger journaled" in render_markdown(inc)


def test_override_decision_without_record_still_counts() -> None:
    fab = Fab()
    fab.add(
        "lockdown.trigger",
        0.0,
        incident=1,
        scope="site",
        drill=False,
        source="operator",
        who="o",
        where="w",
    )
    fab.add(
        "access.decision",
        1.0,
        on="d1",
        reader="r1",
        reason="granted-override",
        cardholder_id=9,
        cardholder="Medic",
    )
    fab.add(
        "lockdown.override",
        9.0,
        incident=1,
        drill=False,
        door="d1",
        reader="r1",
        cardholder_id=9,
        cardholder="Medic",
    )
    fab.add("door.command", 10.0, on="d1", action="pulse", source="ops@console", override=True)
    fab.add("door.command", 11.0, on="d1", action="pulse", source="ops@console")  # not held
    inc = build_incident(fab.entries, 1)
    assert [(o.t_s, o.source) for o in inc.overrides] == [
        (1.0, "access.decision"),  # 8 s apart: not the same entry
        (9.0, "lockdown.override"),
        (10.0, "door.command"),  # an operator's override through wardctl
    ]
    assert inc.overrides[-1].cardholder == "ops@console"
    assert inc.timeline[-1].text == "operator override: ops@console at d1"


# --------------------------------------------------------------------------- renderers


class _Checker(HTMLParser):
    """Checks that tags nest, and collects tags and text."""

    VOID = frozenset({"meta", "br", "img", "hr", "link", "input", "col", "wbr", "source"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.errors: list[str] = []
        self.svg_parent: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "svg":
            self.svg_parent = self.stack[-1] if self.stack else None
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def check_html(doc: str) -> _Checker:
    p = _Checker()
    p.feed(doc)
    p.close()
    assert p.errors == []
    assert p.stack == []
    return p


def test_html_is_well_formed_escaped_and_embeds_the_plot() -> None:
    _, inc = built(cardholder=EVIL, recover_at=41.0)
    doc = render_html(inc)
    p = check_html(doc)
    assert p.tags[0] == "html"
    assert "script" not in p.tags  # the name became text, not a tag
    assert any(EVIL in t for t in p.text)
    assert p.tags.count("svg") == 1
    assert p.svg_parent == "figure"
    assert "circle" in p.tags  # full-lockdown marker
    assert "<img" not in doc
    assert "http://" not in doc.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "DRILL" not in doc


def test_markdown_sections_and_escaping() -> None:
    _, inc = built(cardholder=EVIL)
    md = render_markdown(inc)
    assert md.startswith("# Incident 1: site lockdown\n")
    for heading in (
        "## Summary",
        "## Timeline",
        "## Doors",
        "## Responder overrides",
        "## Denied attempts (2)",
        "## All-clear",
        "## State transitions",
    ):
        assert heading in md
    assert re.search(r"(?<!\\)<", md) is None  # no raw HTML can reach a Markdown viewer
    assert "\\<script>" in md
    assert "\\|" in md
    # every table row of a table has the same number of unescaped pipes
    for block in re.split(r"\n\n", md):
        rows = [r for r in block.splitlines() if r.startswith("|")]
        counts = {len(re.findall(r"(?<!\\)\|", r)) for r in rows}
        assert len(counts) <= 1, block
    assert "| Time to full lockdown | never reached (at most 15 of 16 doors confirmed) |" in md
    assert "| d15 | — | never | released | failed (board offline); released at 130.015 s |" in md
    assert "| 0.280 |" in md
    assert "DRILL" not in md


def test_drill_banner_everywhere() -> None:
    _, inc = built(drill=True)
    assert inc.drill
    md = render_markdown(inc)
    assert "> **DRILL**" in md
    assert md.startswith("# Incident 1: site lockdown (DRILL)")
    assert 'class="banner drill"' in render_html(inc)
    assert "(DRILL)" in render_svg_plot(inc)
    assert json.loads(render_json(inc))["drill"] is True
    assert list_incidents(built(drill=True)[0].entries)[0].drill


def test_a_real_trigger_during_a_drill_makes_the_incident_real() -> None:
    fab = Fab()
    trigger: dict[str, Any] = {"incident": 4, "scope": "site", "who": "op", "where": "api"}
    trigger |= {"reason": "", "level": None}
    fab.add("lockdown.trigger", 0.0, drill=True, source="operator", again=False, **trigger)
    fab.add("lockdown.door", 0.1, on="a", incident=4, drill=True, status="secured", detail="")
    status(fab, 0.11, 1, incident=4, total=1, drill=True)
    fab.add("lockdown.trigger", 5.0, drill=False, source="panic", again=True, **trigger)
    status(fab, 5.01, 1, incident=4, total=1, drill=False)
    inc = build_incident(fab.entries, 4)
    assert not inc.drill
    assert "DRILL" not in render_markdown(inc)
    assert json.loads(render_json(inc))["drill"] is False
    assert not list_incidents(fab.entries)[0].drill
    # the same incident without the real trigger stays a drill
    drill_only = [e for e in fab.entries if e.data.get("drill") is not False]
    assert build_incident(drill_only, 4).drill


def test_json_report() -> None:
    fab, inc = built(recover_at=41.0)
    doc = json.loads(render_json(inc))
    assert doc["report_version"] == 1
    assert doc["id"] == 1
    assert doc["time_to_full_lockdown_s"] == 40.01
    assert doc["duration_s"] == 130.0
    assert doc["denied_count"] == 2
    assert doc["secured_over_time"][0] == [0.0, 0, 16]
    assert doc["triggers"][0]["who"] == "panic input lobby-panic"
    assert doc["overrides"][0]["cardholder"] == "Officer Jane"
    assert [a["person"] for a in doc["all_clear"]] == ["Alice", "Bruno"]
    assert doc["started"] == fab.ts(1.0)


def _path_steps(svg: str, cls: str) -> int:
    m = re.search(rf'<path class="{cls}" d="([^"]*)"', svg)
    assert m is not None
    return m.group(1).count("V")


def test_svg_plot_steps_axes_and_marker() -> None:
    _, partial = built()
    svg = render_svg_plot(partial)
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("width") == "720"
    assert _path_steps(svg, "secured") == 3  # 0 -> 5 -> 14 -> 15
    assert _path_steps(svg, "total") == 0
    assert 'stroke-dasharray="6 4"' in svg  # the total, dashed
    assert "full-lockdown" not in svg
    _, full = built(recover_at=41.0)
    svg = render_svg_plot(full, width=800, height=400)
    assert ET.fromstring(svg).get("height") == "400"
    assert _path_steps(svg, "secured") == 4
    assert 'class="full-lockdown"' in svg
    assert "full lockdown 40.010 s" in svg
    ns = "{http://www.w3.org/2000/svg}"
    labels = [
        float(t.text or "")
        for t in ET.fromstring(svg).iter(f"{ns}text")
        if t.get("text-anchor") == "middle" and re.fullmatch(r"[\d.]+", t.text or "")
    ]
    assert labels[0] == 0.0
    assert labels == sorted(labels)
    assert len(labels) >= 3
    assert labels[-1] >= 40.01


def test_svg_escapes_scope_names() -> None:
    fab = Fab()
    fab.add(
        "lockdown.trigger",
        0.0,
        incident=1,
        scope="<z&>",
        drill=True,
        source="remote",
        who="peer",
        where="mqtt",
    )
    inc = build_incident(fab.entries, 1)
    ET.fromstring(render_svg_plot(inc))
    check_html(render_html(inc))
    assert "zone \\<z\\&>" in render_markdown(inc)


# --------------------------------------------------------------------------- files


def test_write_report(tmp_path: Path) -> None:
    _, inc = built(recover_at=41.0)
    out = tmp_path / "reports" / "2026"
    assert write_report(inc, "md", out) == [out / "incident-1.md"]
    assert (out / "incident-1.md").read_text(encoding="utf-8") == render_markdown(inc)
    assert write_report(inc, "json", out) == [out / "incident-1.json"]
    assert json.loads((out / "incident-1.json").read_text(encoding="utf-8"))["id"] == 1
    paths = write_report(inc, "html", out)
    assert paths == [out / "incident-1.html", out / "incident-1.svg"]
    assert (out / "incident-1.svg").read_text(encoding="utf-8").strip() == render_svg_plot(inc)
    assert render_svg_plot(inc) in (out / "incident-1.html").read_text(encoding="utf-8")
    assert sorted(p.name for p in out.iterdir()) == [
        "incident-1.html",
        "incident-1.json",
        "incident-1.md",
        "incident-1.svg",
    ]
    assert (out / "incident-1.md").stat().st_mode & 0o777 == 0o640
    with pytest.raises(ValueError, match="unknown report format"):
        write_report(inc, "pdf", out)


def test_report_kinds_cover_what_the_builder_reads() -> None:
    kinds = ("lockdown.trigger", "lockdown.status", "access.decision", "door.command", "fire.alarm")
    for kind in kinds:
        assert kind in REPORT_KINDS


# --------------------------------------------------------------------------- random sequences

ZONES = ["site", "east", "west"]
SDOORS = ["a", "b", "c", "d"]

op = st.one_of(
    st.tuples(st.just("trigger"), st.sampled_from(ZONES), st.booleans()),
    st.tuples(st.just("secure_all"), st.booleans()),
    st.tuples(
        st.just("door"),
        st.sampled_from(SDOORS),
        st.sampled_from(["secured", "failed", "propped", "drift", "pending", "released"]),
    ),
    st.tuples(st.just("status"), st.booleans()),
    st.tuples(st.just("override"), st.text(max_size=8)),
    st.tuples(st.just("denied"), st.sampled_from(SDOORS)),
    st.tuples(st.just("allclear"), st.sampled_from(["Alice", "Bruno", "<b>"])),
    st.tuples(st.just("end"), st.sampled_from(["all-clear", "auto-revert", "superseded"])),
    st.tuples(st.just("fire"), st.booleans()),
    st.tuples(st.just("threat"), st.integers(0, 7)),
    st.tuples(st.just("refused"), st.text(max_size=8)),
)


def simulate(ops: Sequence[tuple[Any, ...]], gaps: Sequence[float]) -> list[Entry]:
    """Turn random operations into a valid journal: incidents, doors, statuses, people."""
    fab = Fab()
    t = 0.0
    running: dict[str, int] = {}  # scope -> incident
    drills: dict[int, bool] = {}
    door_state: dict[int, dict[str, str]] = {}
    next_id = 1
    for i, o in enumerate(ops):
        t += gaps[i % len(gaps)]
        kind = o[0]
        current = next(iter(running.values()), None)
        if kind == "trigger":
            scope, drill = o[1], o[2]
            again = scope in running
            inc = running.get(scope, next_id)
            if not again:
                running[scope], drills[inc], door_state[inc] = inc, drill, {}
                next_id += 1
            fab.add(
                "lockdown.trigger",
                t,
                incident=inc,
                scope=scope,
                drill=drills[inc],
                source="panic",
                who="w",
                where="x",
                reason="",
                level=None,
                again=again,
            )
            if not again:
                fab.add(
                    "lockdown.state",
                    t,
                    incident=inc,
                    scope=scope,
                    drill=drills[inc],
                    to="lockdown",
                    **frm("normal"),
                )
        elif current is None:
            fab.add(
                "fire.alarm" if kind == "fire" else "threat.level",
                t,
                where="p",
                to=1,
                **frm(0),
            )
        elif kind == "door":
            door_state[current][o[1]] = o[2]
            fab.add(
                "lockdown.door",
                t,
                on=o[1],
                incident=current,
                drill=drills[current],
                status=o[2],
                detail="",
            )
        elif kind == "secure_all":
            for name in SDOORS:
                door_state[current][name] = "secured"
                fab.add(
                    "lockdown.door",
                    t,
                    on=name,
                    incident=current,
                    drill=drills[current],
                    status="secured",
                    detail="",
                )
            if o[1]:
                full: dict[str, Any] = {
                    "confirmed": len(SDOORS),
                    "total": len(SDOORS),
                    "failed": [],
                    "propped": [],
                }
                fab.add("lockdown.status", t, incident=current, drill=drills[current], **full)
        elif kind == "status":
            states = door_state[current]
            total = len(SDOORS) if o[1] else len(states)
            fab.add(
                "lockdown.status",
                t,
                incident=current,
                drill=drills[current],
                confirmed=min(total, sum(v == "secured" for v in states.values())),
                total=total,
                failed=sorted(k for k, v in states.items() if v == "failed"),
                propped=sorted(k for k, v in states.items() if v == "propped"),
                elapsed_ms=t * 1000,
            )
        elif kind == "override":
            fab.add(
                "lockdown.override",
                t,
                incident=current,
                drill=drills[current],
                door="a",
                reader="r",
                cardholder_id=1,
                cardholder=o[1],
            )
        elif kind == "denied":
            fab.add(
                "access.decision", t, on=o[1], reader="r", reason="denied-lockdown", cardholder=EVIL
            )
        elif kind == "allclear":
            fab.add(
                "lockdown.allclear",
                t,
                incident=current,
                drill=drills[current],
                person=o[1],
                via="card",
                n=1,
            )
        elif kind == "end":
            scope = next(s for s, v in running.items() if v == current)
            fab.add(
                "lockdown.end",
                t,
                incident=current,
                scope=scope,
                drill=drills[current],
                duration_s=t,
                by=["x"],
                how=o[1],
            )
            del running[scope]
        elif kind == "fire":
            fab.add("fire.alarm", t, where=EVIL, latched=o[1])
        elif kind == "threat":
            fab.add("threat.level", t, who="w", to=o[1], **frm(0))
        else:
            fab.add("lockdown.refused", t, incident=current, event="AllClear", reason=o[1])
    return fab.entries


def check_all_renderers(inc: Incident) -> None:
    assert inc.time_to_full_lockdown_s is None or inc.time_to_full_lockdown_s >= 0
    if inc.full_lockdown_at is not None:
        assert inc.full_lockdown_at >= inc.started  # same ISO format: string order is time order
    assert all(d.secured_s is None or d.secured_s >= 0 for d in inc.doors)
    times = [p[0] for p in inc.secured_over_time]
    assert times == sorted(times)
    assert all(c >= 0 for _, c, _ in inc.secured_over_time)
    json.loads(render_json(inc))
    assert render_markdown(inc)
    check_html(render_html(inc))
    ET.fromstring(render_svg_plot(inc))
    for text in (render_json(inc), render_markdown(inc), render_html(inc), render_svg_plot(inc)):
        assert_terminal_safe(text)
    ET.fromstring(render_svg_plot(inc, width=10, height=10))


@given(
    st.lists(op, max_size=40),
    st.lists(st.sampled_from([0.0, 0.000001, 0.013, 0.25, 1.0, 37.5]), min_size=1, max_size=5),
)
def test_random_valid_sequences_never_crash(ops: list[tuple[Any, ...]], gaps: list[float]) -> None:
    entries = simulate(ops, gaps)
    summaries = list_incidents(entries)
    for s in summaries:
        inc = build_incident(entries, s.id)
        assert inc.summary() == s
        check_all_renderers(inc)
        if inc.trigger is not None:
            assert inc.trigger.t_s == 0.0


json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
FIELDS = [
    "scope",
    "drill",
    "source",
    "who",
    "where",
    "reason",
    "level",
    "again",
    "evacuation",
    "from",
    "to",
    "door",
    "status",
    "detail",
    "confirmed",
    "total",
    "failed",
    "propped",
    "reader",
    "cardholder_id",
    "cardholder",
    "person",
    "via",
    "n",
    "by",
    "how",
    "incidents",
]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(sorted(REPORT_KINDS)),
            st.integers(1, 2),
            st.dictionaries(st.sampled_from(FIELDS), json_value, max_size=6),
        ),
        max_size=25,
    )
)
def test_damaged_data_never_crashes(rows: list[tuple[str, int, dict[str, Any]]]) -> None:
    fab = Fab()
    for kind, inc, data in rows:
        fab.add(kind, incident=inc, **data)
    for s in list_incidents(fab.entries):
        check_all_renderers(build_incident(fab.entries, s.id))


# --------------------------------------------------------------------------- terminal safety


def assert_terminal_safe(text: str) -> None:
    """Only printable characters and newlines: nothing a terminal would act on."""
    bad = sorted({f"U+{ord(c):04X}" for c in text if c != "\n" and not c.isprintable()})
    assert not bad, bad


HOSTILE = [
    "drill\n    999 2026-11-29T12:00:00.000000Z door.state   tcp1-d0   state=unlocked",
    "\x1b[8mhidden\x1b[0m",
    "\x1b]0;title\x07",
    "\x9b2J 8-bit CSI",
    "abc\u202edcba",  # RIGHT-TO-LEFT OVERRIDE
    "\u2066isolate\u2069 \u200bzero-width",
    "line\u2028separator\r\ttab\x00nul\x7fdel",
]
hostile_text = st.sampled_from(HOSTILE) | st.text(max_size=20)


@given(reason=hostile_text, who=hostile_text, door=hostile_text, person=hostile_text)
def test_journal_text_never_reaches_the_terminal_raw(
    reason: str, who: str, door: str, person: str
) -> None:
    fab = Fab()
    fab.add(
        "lockdown.trigger",
        1.0,
        incident=1,
        scope="site",
        source="operator",
        who=who,
        where=door,
        reason=reason,
        again=False,
    )
    fab.add("lockdown.door", 1.1, on=door, incident=1, door=door, status="failed", detail=reason)
    fab.add("lockdown.override", 1.2, incident=1, door=door, reader=who, cardholder=person)
    fab.add("lockdown.allclear", 2.0, incident=1, person=person, via=reason, n=1)
    inc = build_incident(fab.entries, 1)
    benign = build_incident(_benign(), 1)
    md = render_markdown(inc)
    for text in (md, render_json(inc), render_html(inc), render_svg_plot(inc)):
        assert_terminal_safe(text)
    # no forged lines: the Markdown has as many lines as the same report with plain text
    assert len(md.splitlines()) == len(render_markdown(benign).splitlines())
    # JSON keeps the exact values (escapes are JSON's own)
    data = json.loads(render_json(inc))
    assert data["triggers"][0]["reason"] == reason
    assert data["triggers"][0]["who"] == who
    assert [o["cardholder"] for o in data["overrides"]] == [person]
    # what the Markdown shows of ESC is a visible escape
    if "\x1b" in reason:
        assert "\\x1b" in md


def _benign() -> list[Any]:
    fab = Fab()
    fab.add(
        "lockdown.trigger",
        1.0,
        incident=1,
        scope="site",
        source="operator",
        who="w",
        where="d",
        reason="r",
        again=False,
    )
    fab.add("lockdown.door", 1.1, on="d", incident=1, door="d", status="failed", detail="r")
    fab.add("lockdown.override", 1.2, incident=1, door="d", reader="w", cardholder="p")
    fab.add("lockdown.allclear", 2.0, incident=1, person="p", via="r", n=1)
    return fab.entries


def test_a_bad_timestamp_is_one_error_naming_the_row() -> None:
    fab = Fab()
    fab.add("lockdown.trigger", 1.0, incident=1, scope="site", source="operator")
    fab.add("lockdown.status", 1.1, incident=1, confirmed=0, total=1)
    broken = fab.entries[1]
    fab.entries[1] = Entry(
        broken.seq, "not a time", broken.kind, None, None, broken.data, "0" * 64, "0" * 64
    )
    with pytest.raises(JournalCorruptError) as info:
        list_incidents(fab.entries)
    assert info.value.seq == 2
    assert str(info.value) == "journal row 2: bad timestamp 'not a time'"
    with pytest.raises(ValueError, match="row 2"):  # still a ValueError, as before
        build_incident(fab.entries, 1)
