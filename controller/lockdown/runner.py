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
atomically (a temp file of its own, fsync, rename, fsync of the directory) by one writer at
a time, which always writes the latest state (``StateWriter``; an older state never lands over a
newer one). A write that fails is retried from ``run`` with backoff until one succeeds; the
``lockdown.alarm`` ``persist-failed`` stays raised (status ``persist_error``) until then.

While any scope holds doors, ``run`` verifies them every ``verify_interval_s``: a door is
*secured* when its board is up, it has no fault, its relay reads back locked and it is closed;
*failed* when it has a fault; *propped* when it is open; *override* while a responder's or an
operator's override has it unlocked; *released* while fire releases it. A door counts for every
incident that holds it (a zone incident and the site's). Each door's status changes are
journaled (``lockdown.door``, once per holding incident, and once when another incident begins
to hold it), a ``lockdown.status`` (confirmed N of M, failed, propped, override, released) per
incident is journaled on every change and at least once per interval. Doors whose relay drifted
or faulted are written again at every check, and a door still pending with no write in flight
(its first write failed, e.g. its board was offline) is written again once per interval, so its
confirmation comes from a fresh readback.

Panic inputs must stay active for ``panic_debounce_ms``; fire inputs latch at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from controller.doors.machine import Contact, Fault, Intent
from controller.doors.service import DoorService, Recorder
from controller.errors import JournalError
from controller.journal import Journal
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
from drivers.base import LinkState

JOURNAL_FIRST_S = 1.0
"""How long a state write waits for the journal to commit the records before it."""

log = structlog.get_logger(__name__)

PERSIST_RETRY_INITIAL_S = 0.5  # first retry of a failed state-file write
PERSIST_RETRY_MAX_S = 30.0  # retries back off (doubling) to this
# journal kinds whose records carry an incident number and start or move an incident: the
# highest one found is the floor of the numbering when the state file is lost
INCIDENT_KINDS = frozenset(
    {"lockdown.trigger", "lockdown.state", "lockdown.end", "lockdown.unknown", "lockdown.restored"}
)


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
    """Write the state atomically and durably (own temp file, fsync, rename, fsync directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(state.to_json(), sort_keys=True, indent=1).encode()
    # a temp name of its own: two writers can never write, truncate or rename each other's file
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        try:
            os.fchmod(fd, 0o640)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class StateWriter:
    """Writes the state file from worker threads: one at a time, never an older over a newer.

    Each write carries a generation number, taken when its state was read; a write whose
    generation is not newer than the one on disk is skipped. So even a writer whose waiting
    task was cancelled (its thread goes on) cannot leave an older state on disk.
    """

    def __init__(self, path: Path) -> None:
        """Write to ``path``."""
        self.path = path
        self._lock = threading.Lock()
        self._written = 0

    def write(self, generation: int, state: SiteState) -> bool:
        """Write ``state`` unless a newer generation is already on disk; raise OSError."""
        with self._lock:
            if generation <= self._written:
                return False
            save_state(self.path, state)
            self._written = generation
            return True


def highest_incident(journal: Journal) -> int:
    """The highest incident number any incident record of ``journal`` names (0 if none)."""
    best = 0
    after = 0
    while True:
        batch = journal.read(after, 10_000, INCIDENT_KINDS)
        if not batch:
            return best
        for entry in batch:
            numbers = [entry.data.get("incident")]
            listed = entry.data.get("incidents")
            if isinstance(listed, list):
                numbers += listed
            for n in numbers:
                if isinstance(n, int) and not isinstance(n, bool) and n > best:
                    best = n
        after = batch[-1].seq


@dataclass
class DoorCheck:
    """The last verification status of one held door."""

    status: str = "pending"  # pending | secured | failed | propped | released | override
    since: float = 0.0  # when ``status`` was entered
    held_at: float = 0.0  # when the hold began: only a readback after it confirms the door
    asserted_at: float = 0.0  # when its relay was last commanded by the lockdown
    reported: set[int | None] = field(default_factory=set)  # incidents told its status


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
    _incident_t0: dict[int | None, float] = field(default_factory=dict)  # hold began (mono)
    # called when the threat level changes (the access service re-applies free schedules)
    level_listeners: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.path = self.settings.lockdown_state_file
        self.zone_of = {d.name: d.zone for d in self.settings.doors}
        self.levels = [(lv.level, lv.mode.value) for lv in self.settings.lockdown.levels]
        self._persisted = self.state
        self._writer = StateWriter(self.path)
        self._persist_lock = asyncio.Lock()
        self._generation = 0
        self._persist_failures = 0  # consecutive failed writes
        self._persist_error: str | None = None  # while the state on disk is not the latest
        self._persist_retry_at = 0.0  # monotonic; run() retries a failed write from then
        self._retry: asyncio.Future[Any] | None = None

    # -- start-up --------------------------------------------------------------------------

    def restore(self) -> None:
        """Re-enter the persisted state before anything else runs (blocking file reads).

        Incident numbers never go back: the next one is above every incident the journal
        names, even when the state file is lost, damaged or older than the journal. Nothing
        here raises for a state file that cannot be written: the doors must still be asserted
        (the write is journaled as ``lockdown.alarm`` and retried by ``run``).
        """
        floor = self._journaled_incident() + 1
        try:
            loaded = load_state(self.path)
        except StateFileError as exc:
            # unknown state: fail secure - treat it as a site lockdown and say so loudly
            log.error("lockdown state unreadable; locking down", error=str(exc))
            self.state = SiteState(next_incident=floor)
            self.state, effects = step(
                self.state,
                StartLockdown(
                    SITE,
                    Trigger("restart", "warding", self.settings.controller.id, str(exc)),
                    self.wall(),
                ),
            )
            self._record(effects)
            self._save_now()
            return
        if loaded is None:
            if floor > self.state.next_incident:
                self.state = replace(self.state, next_incident=floor)
                self._save_now()
            return
        self.state = self._persisted = loaded
        if loaded.next_incident < floor:
            log.warning(
                "lockdown state numbers behind the journal",
                next_incident=loaded.next_incident,
                journal_next=floor,
            )
            self.state = replace(loaded, next_incident=floor)
            self._save_now()
        held = [(n, s) for n, s in loaded.scopes if s.mode is not Mode.NORMAL]
        if held or loaded.fire or loaded.threat_level:
            self.recorder.record(
                "lockdown.restored",
                scopes={n: s.mode.value for n, s in held},
                fire=loaded.fire,
                threat_level=loaded.threat_level,
                incidents=[s.incident for _, s in held],
            )

    def _journaled_incident(self) -> int:
        """The highest incident number in the journal (0 if none, or no journal to read)."""
        journal = getattr(self.recorder, "journal", None)
        if not isinstance(journal, Journal):
            return 0
        try:
            return highest_incident(journal)
        except JournalError as exc:
            log.error("cannot read incident numbers from the journal", error=str(exc))
            return 0

    def _save_now(self) -> None:
        """Write the state at start-up (blocking); on failure journal it and let run() retry."""
        self._generation += 1
        try:
            self._writer.write(self._generation, self.state)
        except OSError as exc:
            self._persist_failed(exc)
            return
        self._persist_ok(self.state)

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
        if isinstance(event, StartLockdown) and not event.drill:
            self._relock_held_unlocks(event.scope, before)
        if self.state.threat_level != before.threat_level:
            for listener in self.level_listeners:
                try:
                    listener()
                except Exception:  # a listener must never stop a lockdown
                    log.exception("threat level listener failed")
        if self.state != before:
            if releases:
                # releasing: durable first, then act (see the module header)
                self._spawn(self._persist_then_apply())
            else:
                self._apply(effects)
                self._spawn(self._persist())
        return effects

    def _relock_held_unlocks(self, scope: str, before: SiteState) -> None:
        """A new trigger for ``scope``: its doors that were already held (by it, by their zone
        or by the site) and that an override had left unlocked lock again.

        A fresh trigger is fresh danger; responders still get in with their override cards.
        Override pulses (a responder going through now) end by themselves and are left alone.
        """
        names = [
            name
            for name, zone in self.zone_of.items()
            if scope in (SITE, zone)
            and before.held(zone)
            and self.state.held(zone)
            and self.doors.state(name).intent is Intent.UNLOCKED
            and not self.doors.state(name).released
        ]
        if names:
            self._spawn(self.doors.command_many(names, "lock", source="lockdown: new trigger"))

    def _spawn(self, coro: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.ensure_future(coro)
        self._tasks.add(fut)
        fut.add_done_callback(self._tasks.discard)
        return fut

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

    async def _journal_first(self) -> None:
        """Commit the journal's queued records, so the state file never gets ahead of them.

        A crash between the two then never leaves a state (a lockdown restored at start-up,
        an all-clear) whose records are missing. Bounded: a stuck disk must not keep the
        lockdown state from being written.
        """
        flush = getattr(self.recorder, "flush", None)
        if flush is None:
            return
        try:
            await asyncio.wait_for(flush(), JOURNAL_FIRST_S)
        except TimeoutError:
            log.error("journal not committed in time; writing the lockdown state anyway")

    async def _persist(self) -> bool:
        """Make the latest state durable (one writer at a time); True once it is on disk."""
        async with self._persist_lock:
            state = self.state  # the latest, read when this writer's turn comes
            if state == self._persisted:
                return True
            await self._journal_first()
            state = self.state  # (still the latest after the journal's commit)
            if state == self._persisted:
                return True
            self._generation += 1
            try:
                await asyncio.to_thread(self._writer.write, self._generation, state)
            except OSError as exc:
                self._persist_failed(exc)
                return False
            self._persist_ok(state)
            return True

    def _persist_failed(self, exc: OSError) -> None:
        self._persist_failures += 1
        delay = min(
            PERSIST_RETRY_INITIAL_S * 2 ** (self._persist_failures - 1), PERSIST_RETRY_MAX_S
        )
        self._persist_retry_at = self.mono() + delay
        self._persist_error = str(exc)
        log.error(
            "cannot persist lockdown state",
            error=str(exc),
            attempt=self._persist_failures,
            retry_in_s=delay,
        )
        self.recorder.record(
            "lockdown.alarm",
            alarm="persist-failed",
            active=True,
            detail=str(exc),
            attempt=self._persist_failures,
            retry_in_s=delay,
        )
        self._wake.set()  # run() schedules the retry

    def _persist_ok(self, state: SiteState) -> None:
        self._persisted = state
        if self._persist_failures:
            self.recorder.record(
                "lockdown.alarm",
                alarm="persist-failed",
                active=False,
                detail=f"state written after {self._persist_failures} failed attempt(s)",
            )
            log.warning("lockdown state persisted again", failed=self._persist_failures)
        self._persist_failures = 0
        self._persist_error = None
        self._persist_retry_at = 0.0

    def _retry_persist(self) -> float | None:
        """Start a retry of an unwritten state when due; seconds until the next one is due."""
        if self.state == self._persisted:
            return None
        if self._persist_lock.locked() or (self._retry is not None and not self._retry.done()):
            return None  # a write is under way; its failure schedules the next retry
        wait = self._persist_retry_at - self.mono()
        if wait > 0:
            return wait
        self._retry = self._spawn(self._persist())
        return None

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
        now = self.mono()
        for name in newly:
            self._checks[name] = DoorCheck(since=now, held_at=now, asserted_at=now)
        holding = {st.incident for _, st in self.state.scopes if st.mode in HELD}
        for incident in holding:
            self._incident_t0.setdefault(incident, now)  # when this incident's hold began
        for incident in set(self._incident_t0) - holding:
            del self._incident_t0[incident]
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

    def fire_inputs_unknown(self) -> list[str]:
        """Fire inputs whose state we do not know: never read, or their board's link is not up."""
        unknown = []
        for li in self.settings.lockdown.inputs:
            if li.kind != "fire":
                continue
            try:
                up = self.doors.board_link(li.board) is LinkState.UP
            except KeyError:
                up = False
            if not up or li.name not in self._inputs_active:
                unknown.append(li.name)
        return sorted(unknown)

    def fire_inputs_active(self) -> bool:
        """Whether any fire input is active right now."""
        return any(
            self._inputs_active.get(li.name, False)
            for li in self.settings.lockdown.inputs
            if li.kind == "fire"
        )

    # -- verification ----------------------------------------------------------------------

    def verify(self) -> list[dict[str, Any]]:
        """Check every held door; journal door status changes; one status per incident.

        A door held by both its zone's and the site's incident counts for both: its
        ``lockdown.door`` records go to each, so each incident's report is complete.
        """
        now = self.mono()
        interval = self.settings.lockdown.verify_interval_s
        groups: dict[int | None, dict[str, Any]] = {}
        reassert: list[str] = []
        holders: dict[str, list[dict[str, Any]]] = {}
        for name, check in self._checks.items():
            zone = self.zone_of[name]
            incidents = holders.get(zone)
            if incidents is None:
                incidents = holders[zone] = self.incidents_for(zone)
            st = self.doors.state(name)
            locked_value = self.doors.spec(name).relay_for(False)
            fut = self.doors.outcome(name)
            in_flight = fut is not None and not fut.done()
            if st.faults:
                status = "failed"
            elif st.released:
                status = "released"  # life safety (fire on a fail-safe egress door): not drift
            elif st.intent is not Intent.LOCKED:
                status = "override"  # an override entry or unlock is in progress
            elif st.contact is Contact.OPEN:
                status = "propped"
            elif (
                st.relay == locked_value
                and st.link_up
                and self.doors.readback_at(name) >= check.held_at
                # a door with a contact is secured only when it is seen closed
                and (st.contact is Contact.CLOSED or self.doors.door(name).contact is None)
            ):
                status = "secured"
            else:
                status = "pending"
                if not in_flight and (
                    (st.relay is not None and st.relay != locked_value)  # drift: every check
                    or now - check.asserted_at >= interval  # no fresh readback yet
                ):
                    # a door whose hold write failed (its board was away) is written again,
                    # so that a readback taken after the hold confirms it
                    reassert.append(name)
            if Fault.RELAY in st.faults:
                reassert.append(name)
            for incident in incidents:
                group = groups.get(incident.get("incident"))
                if group is None:
                    group = groups[incident.get("incident")] = {
                        "incident": incident,
                        "n": 0,
                        **{k: [] for k in _LISTED},
                    }
                group["n"] += 1
                if status in _LISTED:
                    group[status].append(name)
            changed = status != check.status
            detail = st.fault_detail if status == "failed" else ""
            for incident in incidents:
                number = incident.get("incident")
                if changed and check.status == "secured" and status not in _NOT_DRIFT:
                    self.recorder.record(
                        "lockdown.door", door=name, status="drift", detail=status, **incident
                    )
                # a door's status goes to every incident holding it; one that began to hold
                # it later hears its current status (a first "pending" needs no record)
                if changed or (number not in check.reported and status != "pending"):
                    self.recorder.record(
                        "lockdown.door", door=name, status=status, detail=detail, **incident
                    )
                    check.reported.add(number)
            if changed:
                check.status, check.since = status, now
        if reassert:
            names = sorted(set(reassert))
            for name in names:
                self._checks[name].asserted_at = now
            self.doors.reassert(names)
        out = []
        for number, g in groups.items():
            t0 = self._incident_t0.get(number)
            if t0 is None:  # (not seen by _apply: the earliest hold of its doors)
                t0 = self._incident_t0[number] = min(
                    (c.held_at for n, c in self._checks.items() if n in _names_of(g)),
                    default=now,
                )
            out.append(
                {
                    "confirmed": len(g["secured"]),
                    "total": g["n"],
                    "failed": sorted(g["failed"]),
                    "propped": sorted(g["propped"]),
                    "override": sorted(g["override"]),
                    "released": sorted(g["released"]),
                    "elapsed_ms": round((now - t0) * 1000, 1),
                    **g["incident"],
                }
            )
        return out

    def incidents_for(self, zone: str) -> list[dict[str, Any]]:
        """Every incident holding ``zone`` (its zone's, then the site's), for journal records."""
        out = []
        for name in (zone, SITE):
            st = self.state.scope(name)
            if st.mode in HELD:
                out.append({"incident": st.incident, "drill": st.drill})
        return out

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
            "fire_inputs_unknown": self.fire_inputs_unknown(),
            # set while the state file does not hold the latest state (writes are retried)
            "persist_error": self._persist_error,
        }
        if self._checks:
            out["doors"] = self.verify_summary()
        return out

    def verify_summary(self) -> dict[str, Any]:
        """Door verification counts without journaling."""
        counts: dict[str, list[str]] = {k: [] for k in _LISTED}
        for name, check in self._checks.items():
            counts.setdefault(check.status, []).append(name)
        return {
            "confirmed": len(counts["secured"]),
            "total": len(self._checks),
            "failed": sorted(counts["failed"]),
            "propped": sorted(counts["propped"]),
            "override": sorted(counts["override"]),
            "released": sorted(counts["released"]),
            "pending": sorted(counts["pending"]),
        }

    async def run(self) -> None:
        """Verify held doors, re-assert drift, retry a failed state write, and tick the machine."""
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
                        tuple(st["override"]),
                        tuple(st["released"]),
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
            retry_in = self._retry_persist()  # a state the file does not hold yet: write it
            # wake early after a change, but check at least once per interval; while the
            # doors are being confirmed look often, so the status is precise
            pending = any(c.status == "pending" for c in self._checks.values())
            timeout = min(interval, 0.02) if pending else interval
            if retry_in is not None:
                timeout = min(timeout, retry_in)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def close(self) -> None:
        """Finish pending persistence; one last attempt if the file is behind the state."""
        await self.flush()
        if self.state != self._persisted:
            await self._persist()


_LISTED = ("secured", "failed", "propped", "override", "released", "pending")
_NOT_DRIFT = ("secured", "override", "released")


def _names_of(group: dict[str, Any]) -> set[str]:
    return {n for k in _LISTED for n in group[k]}


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
