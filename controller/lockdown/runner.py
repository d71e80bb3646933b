"""LockdownRunner: feeds events through the pure machine and carries out its effects.

Theory of operation
-------------------
Every event (panic input, operator, credential, duress, remote/MQTT, fire input, time) goes
through ``submit``: the machine steps, its records are journaled, and ``ApplyDoors`` hands
every door its (secured, fire, evacuate) hold in one event-loop turn, so the door service
sends one FC15 per board for the whole scope. Durability is ordered by safety: a change that
*secures* doors acts first and persists right after (if we crash in between, the restart's
normal state still commands every door locked); a change that *releases* doors persists
first and acts after (a crash in between re-enters the lockdown). The state file is written
atomically (temp file, fsync, rename, fsync of the directory).

While any scope holds doors, ``run`` verifies them every ``verify_interval_s``: a door is
*secured* when its board is up, it has no fault, its relay reads back locked and it is closed;
*failed* when it has a fault; *propped* when it is open. Each door's status changes are
journaled (``lockdown.door``), a ``lockdown.status`` (confirmed N of M, failed, propped) is
journaled on every change and at least once per interval, and doors whose relay drifted are
written again.

Panic inputs must stay active for ``panic_debounce_ms``; fire inputs latch at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from controller.doors.machine import Contact, Fault, Intent
from controller.doors.service import DoorService, Recorder
from controller.lockdown.machine import door_mode_for_level, step
from controller.lockdown.model import (
    HELD,
    SITE,
    AllClear,
    ApplyDoors,
    Effect,
    FireAlarm,
    LockdownEvent,
    Mode,
    Record,
    Refused,
    ScopeState,
    SiteState,
    StartLockdown,
    Tick,
    Trigger,
)
from controller.settings import LockdownInputSettings, Settings

log = structlog.get_logger(__name__)


class StateFileError(Exception):
    """The durable lockdown state could not be read back."""


def load_state(path: Path) -> SiteState | None:
    """Read the durable state; None if there is none yet; StateFileError if it is damaged."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(f"{path}: {exc.strerror}") from exc
    try:
        obj = json.loads(raw)
        if not isinstance(obj, dict):
            raise TypeError("not an object")
        return SiteState.from_json(obj)
    except (ValueError, KeyError, TypeError) as exc:
        raise StateFileError(f"{path}: damaged lockdown state ({exc})") from exc


def save_state(path: Path, state: SiteState) -> None:
    """Write the state atomically and durably (temp, fsync, rename, fsync directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    data = json.dumps(state.to_json(), sort_keys=True, indent=1).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass
class DoorCheck:
    """The last verification status of one held door."""

    status: str = "pending"  # pending | secured | failed | propped | released | override
    since: float = 0.0  # when ``status`` was entered
    held_at: float = 0.0  # when the hold began: only a readback after it confirms the door


@dataclass
class LockdownRunner:
    """The lockdown machine in the daemon."""

    settings: Settings
    doors: DoorService
    recorder: Recorder
    wall: Callable[[], float] = time.time
    mono: Callable[[], float] = time.monotonic
    state: SiteState = field(default_factory=SiteState)
    _checks: dict[str, DoorCheck] = field(default_factory=dict)
    _inputs_active: dict[str, bool] = field(default_factory=dict)
    _tasks: set[asyncio.Future[Any]] = field(default_factory=set)
    _last_status: tuple[Any, ...] | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.path = self.settings.lockdown_state_file
        self.zone_of = {d.name: d.zone for d in self.settings.doors}
        self.levels = [(lv.level, lv.mode.value) for lv in self.settings.lockdown.levels]
        self._persisted = self.state

    # -- start-up --------------------------------------------------------------------------

    def restore(self) -> None:
        """Re-enter the persisted state before anything else runs (blocking file read)."""
        try:
            loaded = load_state(self.path)
        except StateFileError as exc:
            # unknown state: fail secure - treat it as a site lockdown and say so loudly
            log.error("lockdown state unreadable; locking down", error=str(exc))
            self.state = SiteState()
            self.state, effects = step(
                self.state,
                StartLockdown(
                    SITE,
                    Trigger("restart", "warding", self.settings.controller.id, str(exc)),
                    self.wall(),
                ),
            )
            self._record(effects)
            save_state(self.path, self.state)
            self._persisted = self.state
            return
        if loaded is None:
            return
        self.state = self._persisted = loaded
        held = [(n, s) for n, s in loaded.scopes if s.mode is not Mode.NORMAL]
        if held or loaded.fire or loaded.threat_level:
            self.recorder.record(
                "lockdown.restored",
                scopes={n: s.mode.value for n, s in held},
                fire=loaded.fire,
                threat_level=loaded.threat_level,
                incidents=[s.incident for _, s in held],
            )

    def holds(self) -> dict[str, tuple[bool, bool, bool]]:
        """Every door's (secured, fire, evacuate) under the current state."""
        st = self.state
        return {
            name: (st.held(zone), st.fire, st.evacuating(zone))
            for name, zone in self.zone_of.items()
        }

    def held_doors(self) -> frozenset[str]:
        """Doors a lockdown holds now."""
        return frozenset(n for n, z in self.zone_of.items() if self.state.held(z))

    def held(self, zone: str) -> bool:
        """Whether doors of ``zone`` are held secure."""
        return self.state.held(zone)

    def level_mode(self) -> str | None:
        """Door mode imposed by the current threat level, if any."""
        return door_mode_for_level(self.levels, self.state.threat_level)

    # -- events ----------------------------------------------------------------------------

    def submit_nowait(self, event: LockdownEvent) -> list[Effect]:
        """Step and act now (securing acts before persisting); persistence runs behind."""
        before = self.state
        self.state, effects = step(
            self.state, event, all_clear_window_s=self.settings.lockdown.all_clear_window_s
        )
        releases = self._releases(before, self.state)
        self._record(effects)
        if self.state != before:
            if releases:
                # releasing: durable first, then act (see the module header)
                fut = asyncio.ensure_future(self._persist_then_apply())
            else:
                self._apply(effects)
                fut = asyncio.ensure_future(self._persist())
            self._tasks.add(fut)
            fut.add_done_callback(self._tasks.discard)
        return effects

    async def submit(self, event: LockdownEvent) -> list[Effect]:
        """Step, act and wait until the new state is durable."""
        effects = self.submit_nowait(event)
        await self.flush()
        return effects

    async def flush(self) -> None:
        """Wait for pending persistence and actions."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _releases(self, before: SiteState, after: SiteState) -> bool:
        return any(before.held(z) and not after.held(z) for z in set(self.zone_of.values())) or (
            before.fire and not after.fire
        )

    async def _persist(self) -> None:
        state = self.state
        if state == self._persisted:
            return
        try:
            await asyncio.to_thread(save_state, self.path, state)
        except OSError as exc:
            log.error("cannot persist lockdown state", error=str(exc))
            self.recorder.record("lockdown.alarm", alarm="persist-failed", detail=str(exc))
            return
        self._persisted = state

    async def _persist_then_apply(self) -> None:
        await self._persist()
        self._apply([ApplyDoors()])

    def _record(self, effects: list[Effect]) -> None:
        for e in effects:
            if isinstance(e, Record):
                self.recorder.record(e.kind, **e.data)
                if e.kind in ("lockdown.trigger", "lockdown.state", "fire.alarm"):
                    log.warning(e.kind, **e.data)

    def _apply(self, effects: list[Effect]) -> None:
        if not any(isinstance(e, ApplyDoors) for e in effects):
            return
        held_before = set(self._checks)
        self.doors.hold(self.holds())
        now_held = self.held_doors()
        newly = now_held - held_before
        for name in newly:
            now = self.mono()
            self._checks[name] = DoorCheck(since=now, held_at=now)
        if newly:
            # command every newly held door now, even one already locked, so that each is
            # confirmed by a readback taken after the lockdown began (one FC15 per board)
            self.doors.reassert(sorted(newly))
            self._wake_on_readbacks(newly)
        for name in held_before - now_held:
            self._checks.pop(name, None)
        if not now_held:
            self._last_status = None
        self._wake.set()

    def _wake_on_readbacks(self, names: set[str] | frozenset[str]) -> None:
        """Verify as soon as every board has answered the hold's commands (not at the next tick)."""
        pending = {
            fut
            for name in names
            if (fut := self.doors.outcome(name)) is not None and not fut.done()
        }
        left = len(pending)
        if not left:
            return

        def answered(_: asyncio.Future[Any]) -> None:
            nonlocal left
            left -= 1
            if left == 0:
                self._wake.set()

        for fut in pending:
            fut.add_done_callback(answered)

    # -- inputs ----------------------------------------------------------------------------

    def watch_inputs(self) -> None:
        """Register the configured panic and fire inputs with the door service."""
        for li in self.settings.lockdown.inputs:
            self.doors.watch_input(li.board, li.input, self._listener(li))

    def _listener(self, li: LockdownInputSettings) -> Callable[[bool, float], None]:
        def listener(raw: bool, now: float) -> None:
            del now
            self._on_input(li.name, li.kind, raw != li.invert, li.zone)

        return listener

    def _on_input(self, name: str, kind: str, active: bool, zone: str | None) -> None:
        was = self._inputs_active.get(name, False)
        self._inputs_active[name] = active
        self.recorder.record("lockdown.input", input=name, input_kind=kind, active=active)
        if not active or was:
            return
        if kind == "fire":
            self.submit_nowait(FireAlarm(name, self.wall()))
            return
        delay = self.settings.lockdown.panic_debounce_ms / 1000
        loop = asyncio.get_running_loop()
        loop.call_later(delay, self._panic_confirm, name, zone)

    def _panic_confirm(self, name: str, zone: str | None) -> None:
        if not self._inputs_active.get(name):
            self.recorder.record("lockdown.input", input=name, input_kind="panic", bounced=True)
            return
        trigger = Trigger("panic", f"panic input {name}", name, "panic button")
        self.submit_nowait(StartLockdown(zone or SITE, trigger, self.wall()))

    def fire_inputs_active(self) -> bool:
        """Whether any fire input is active right now."""
        return any(
            self._inputs_active.get(li.name, False)
            for li in self.settings.lockdown.inputs
            if li.kind == "fire"
        )

    # -- verification ----------------------------------------------------------------------

    def verify(self) -> list[dict[str, Any]]:
        """Check every held door; journal door status changes; one status per incident."""
        now = self.mono()
        groups: dict[Any, dict[str, Any]] = {}
        drifted: list[str] = []
        incidents: dict[str, dict[str, Any]] = {}
        for name, check in self._checks.items():
            zone = self.zone_of[name]
            incident = incidents.get(zone)
            if incident is None:
                incident = incidents[zone] = self.incident_for(zone)
            group = groups.setdefault(
                incident.get("incident"),
                {
                    "incident": incident,
                    "confirmed": [],
                    "failed": [],
                    "propped": [],
                    "n": 0,
                    "since": check.since,
                },
            )
            group["n"] += 1
            group["since"] = min(group["since"], check.since)
            st = self.doors.state(name)
            locked_value = self.doors.spec(name).relay_for(False)
            if st.faults:
                status = "failed"
                group["failed"].append(name)
            elif st.released:
                status = "released"  # life safety (fire on a fail-safe egress door): not drift
            elif st.intent is not Intent.LOCKED:
                status = "override"  # a responder's override entry is in progress
            elif st.contact is Contact.OPEN:
                status = "propped"
                group["propped"].append(name)
            elif (
                st.relay == locked_value
                and st.link_up
                and self.doors.readback_at(name) >= check.held_at
            ):
                status = "secured"
                group["confirmed"].append(name)
            else:
                status = "pending"
                fut = self.doors.outcome(name)
                in_flight = fut is not None and not fut.done()
                if st.relay is not None and st.relay != locked_value and not in_flight:
                    drifted.append(name)  # a command still in flight is not drift
            if status != check.status:
                detail = st.fault_detail if status == "failed" else ""
                if check.status == "secured" and status not in ("secured", "override", "released"):
                    self.recorder.record(
                        "lockdown.door", door=name, status="drift", detail=status, **incident
                    )
                self.recorder.record(
                    "lockdown.door", door=name, status=status, detail=detail, **incident
                )
                check.status, check.since = status, now
            if Fault.RELAY in st.faults:
                drifted.append(name)
        if drifted:
            self.doors.reassert(sorted(set(drifted)))
        return [
            {
                "confirmed": len(g["confirmed"]),
                "total": g["n"],
                "failed": sorted(g["failed"]),
                "propped": sorted(g["propped"]),
                "elapsed_ms": round((now - g["since"]) * 1000, 1),
                **g["incident"],
            }
            for g in groups.values()
        ]

    def incident_for(self, zone: str) -> dict[str, Any]:
        """Incident number and drill flag holding ``zone``, for journal records."""
        for name in (zone, SITE):
            st = self.state.scope(name)
            if st.mode in HELD:
                return {"incident": st.incident, "drill": st.drill}
        return {}

    def apply(self) -> None:
        """Hand every door its hold under the current state (start-up, after restore)."""
        self._apply([ApplyDoors()])

    def on_gesture(self, holder: Any, reader: str, kind: str) -> None:
        """A card + PIN gesture at a reader: start a lockdown, or one all-clear."""
        person = f"#{holder.id} {holder.name}"
        if kind == "lockdown":
            trigger = Trigger("credential", person, reader, "lockdown credential")
            self.submit_nowait(StartLockdown(SITE, trigger, self.wall()))
        else:
            # the all-clear is for whatever holds the reader's door: the site, else its zone
            door = next((r.door for r in self.settings.readers if r.name == reader), "")
            zone = self.zone_of.get(door, SITE)
            scope = SITE if self.state.scope(SITE).mode in HELD else zone
            self.submit_nowait(AllClear(scope, person, True, "card", self.wall()))

    def on_duress(self, holder: Any, reader: str) -> None:
        """A duress PIN: the access layer already raised the silent alarm."""
        if self.settings.lockdown.duress_action != "alarm+lockdown":
            return
        who = "unknown" if holder is None else f"#{holder.id} {holder.name}"
        trigger = Trigger("duress", who, reader, "duress PIN")
        self.submit_nowait(StartLockdown(SITE, trigger, self.wall()))

    def status(self) -> dict[str, Any]:
        """The site's lockdown status for the API."""
        scopes = {n: _scope_json(s) for n, s in self.state.scopes}
        scopes.setdefault(SITE, _scope_json(self.state.scope(SITE)))
        out: dict[str, Any] = {
            "mode": self.state.scope(SITE).mode.value,
            "scopes": scopes,
            "threat_level": self.state.threat_level,
            "level_mode": self.level_mode(),
            "fire": self.state.fire,
            "fire_inputs_active": self.fire_inputs_active(),
        }
        if self._checks:
            out["doors"] = self.verify_summary()
        return out

    def verify_summary(self) -> dict[str, Any]:
        """Door verification counts without journaling."""
        counts: dict[str, list[str]] = {"secured": [], "failed": [], "propped": [], "pending": []}
        for name, check in self._checks.items():
            counts.setdefault(check.status, []).append(name)
        return {
            "confirmed": len(counts["secured"]),
            "total": len(self._checks),
            "failed": sorted(counts["failed"]),
            "propped": sorted(counts["propped"]),
            "pending": sorted(counts["pending"]),
        }

    async def run(self) -> None:
        """Verify held doors, re-assert drift, and tick the machine, until cancelled."""
        interval = self.settings.lockdown.verify_interval_s
        last_status_at = 0.0
        while True:
            if self._checks:
                statuses = self.verify()
                key = tuple(
                    (
                        st.get("incident"),
                        st["confirmed"],
                        st["total"],
                        tuple(st["failed"]),
                        tuple(st["propped"]),
                    )
                    for st in statuses
                )
                now = self.mono()
                if key != self._last_status or now - last_status_at >= interval:
                    for status in statuses:
                        self.recorder.record("lockdown.status", **status)
                    self._last_status, last_status_at = key, now
            self.submit_nowait(Tick(self.wall(), self.settings.lockdown.auto_revert_s))
            self._wake.clear()
            # wake early after a change, but check at least once per interval; while the
            # doors are being confirmed look often, so the status is precise
            pending = any(c.status == "pending" for c in self._checks.values())
            timeout = min(interval, 0.02) if pending else interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def close(self) -> None:
        """Finish pending persistence."""
        await self.flush()


def _scope_json(st: ScopeState) -> dict[str, Any]:
    return {
        "mode": st.mode.value,
        "incident": st.incident,
        "drill": st.drill,
        "since": st.since,
        "first_clear": st.first_clear,
        "trigger": None
        if st.trigger is None
        else {
            "source": st.trigger.source,
            "who": st.trigger.who,
            "where": st.trigger.where,
            "reason": st.trigger.reason,
        },
    }


def refusal(effects: list[Effect]) -> str | None:
    """The reason of a Refused effect, if the machine refused the event."""
    for e in effects:
        if isinstance(e, Refused):
            return e.reason
    return None
