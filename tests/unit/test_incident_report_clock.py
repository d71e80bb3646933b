"""Report figures under wall-clock steps: the runner's monotonic ``elapsed_ms`` wins (review G).

An NTP step on a box without an RTC moves the wall clock by minutes to years between two
journal entries. Figures (time to full lockdown, confirmed-secure times, the secured-over-time
series, duration) must follow the runner's monotonic clock, not the step.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from controller.journal import Entry, format_ts
from controller.lockdown import report

BASE = datetime(2026, 1, 1, tzinfo=UTC)


class Journal:
    """Entries at true (monotonic) times; the wall clock adds ``step`` from a chosen entry on."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.step_s = 0.0

    def add(self, kind: str, true_t: float, **data: Any) -> Entry:
        wall = BASE + timedelta(seconds=true_t + self.step_s)
        e = Entry(len(self.entries) + 1, format_ts(wall), kind, None, None, data, "", "")
        self.entries.append(e)
        return e

    def trigger(self, t: float = 0.0) -> None:
        self.add(
            "lockdown.trigger", t, incident=1, scope="site", source="panic", who="p", where="w"
        )

    def status(self, t: float, confirmed: int, total: int = 2, *, hold_t0: float = 0.0) -> None:
        self.add(
            "lockdown.status",
            t,
            incident=1,
            confirmed=confirmed,
            total=total,
            elapsed_ms=round((t - hold_t0) * 1000, 1),
        )

    def door(self, t: float, name: str, status: str = "secured") -> None:
        self.add("lockdown.door", t, incident=1, door=name, status=status)


def test_review_repro_forward_step_before_full_lockdown() -> None:
    j = Journal()
    j.trigger()
    j.status(0.001, 0)
    j.step_s = 3600.0  # NTP steps the clock forward one hour
    j.door(0.2, "a")
    j.door(0.24, "b")
    j.status(0.25, 2)
    inc = report.build_incident(j.entries, 1)
    assert inc.time_to_full_lockdown_s == 0.25
    assert inc.secured_over_time == ((0.0, 0, 2), (0.25, 2, 2))
    # doors secured between two statuses stay between them
    assert all(0.001 <= d.secured_s <= 0.25 for d in inc.doors if d.secured_s is not None)
    assert report.list_incidents(j.entries)[0].time_to_full_lockdown_s == 0.25


def test_backward_step_and_duration_follow_the_monotonic_clock() -> None:
    j = Journal()
    j.trigger()
    j.status(0.5, 1)
    j.step_s = -7200.0
    for t in range(1, 11):  # the runner re-journals its status about once a second
        j.status(float(t), 2)
    j.add("lockdown.end", 10.2, incident=1, how="all-clear", by=["a", "b"])
    inc = report.build_incident(j.entries, 1)
    assert inc.time_to_full_lockdown_s == 1.0
    assert inc.duration_s == 10.2
    assert inc.elapsed_s == 10.2


def test_the_persist_delay_before_the_hold_is_counted() -> None:
    """elapsed_ms counts from when the hold began (after the state is persisted)."""
    j = Journal()
    j.trigger()
    j.status(0.03, 1, hold_t0=0.02)
    j.status(0.12, 2, hold_t0=0.02)
    assert report.build_incident(j.entries, 1).time_to_full_lockdown_s == 0.12


def test_after_a_restart_the_wall_clock_spans_the_downtime() -> None:
    j = Journal()
    j.trigger()
    j.status(0.1, 1)
    j.add("lockdown.restored", 30.0, incidents=[1], scopes={"site": "lockdown"})
    j.status(30.2, 2, hold_t0=30.0)  # the new run's hold began at 30.0
    inc = report.build_incident(j.entries, 1)
    assert inc.time_to_full_lockdown_s == 30.2


def test_without_elapsed_ms_the_wall_clock_is_used_as_before() -> None:
    j = Journal()
    j.trigger()
    j.add("lockdown.status", 0.4, incident=1, confirmed=2, total=2)
    assert report.build_incident(j.entries, 1).time_to_full_lockdown_s == 0.4


@given(
    gaps=st.lists(st.integers(1, 2000), min_size=3, max_size=25),
    full_at=st.integers(0, 24),
    step_at=st.integers(0, 25),
    step_s=st.sampled_from([-86_400.0, -3600.0, -5.0, 5.0, 3600.0, 10 * 365 * 86_400.0]),
)
def test_any_clock_step_leaves_the_figures_on_the_monotonic_clock(
    gaps: list[int], full_at: int, step_at: int, step_s: float
) -> None:
    """Statuses (with elapsed_ms) and door records alternate; the clock steps anywhere."""
    j = Journal()
    j.trigger()
    t = 0.0
    status_times: list[float] = []
    full_at = min(full_at, len(gaps) - 1)
    for i, gap_ms in enumerate(gaps):
        if i == step_at:
            j.step_s = step_s
        t += gap_ms / 1000
        if i % 2:
            j.door(t, f"d{i}")
        else:
            j.status(t, 2 if i >= full_at else 1)
            status_times.append(t)
    inc = report.build_incident(j.entries, 1)
    fulls = [st_ for st_ in status_times if status_times.index(st_) * 2 >= full_at]
    if fulls:
        assert inc.time_to_full_lockdown_s == round(fulls[0], 3)
    for d in inc.doors:
        i = int(d.door[1:])
        before = max(x for k, x in enumerate(status_times) if 2 * k < i)
        after = [x for k, x in enumerate(status_times) if 2 * k > i]
        assert d.secured_s is not None
        assert round(before, 3) <= d.secured_s <= round(after[0] if after else before + 1e9, 3)
    ts = [p[0] for p in inc.secured_over_time]
    assert ts == sorted(ts)
    assert all(x >= 0 for x in ts)
