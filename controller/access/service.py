"""AccessService: reader events -> decision -> door pulse -> reader feedback -> journal.

Decisions use local state only: the credential store (one indexed SQLite read on this box),
the door states the door service already holds, and the pure policy's state. Nothing on the
decision path waits for a network, a board or the journal: the grant's pulse is handed to the
door service (which batches it to the board) and journal records are non-blocking enqueues.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from controller.access.formats import CardNumber, decode_card_read
from controller.access.model import (
    Cardholder,
    Credential,
    Decision,
    DoorMode,
    PinCheck,
    Privilege,
    Reason,
    Schedule,
)
from controller.access.policy import (
    AccessRequest,
    AccessState,
    DoorPolicy,
    PolicyConfig,
    decide,
    effective_mode,
)
from controller.access.store import CredentialStore, StoreError
from controller.doors.machine import Contact, Intent, Phase
from controller.doors.service import DoorService, Recorder
from controller.settings import ReaderSettings, Settings
from drivers.base import (
    CardRead,
    CredentialReaderBus,
    Indication,
    KeypadRead,
    ReaderAlarm,
    ReaderEvent,
    ReaderStatus,
)
from drivers.errors import CodecError

log = structlog.get_logger(__name__)

FREE_SCHEDULE_CHECK_S = 15.0


_STRICTNESS = {
    DoorMode.FREE: 0,
    DoorMode.CARD: 1,
    DoorMode.PIN: 2,
    DoorMode.CARD_AND_PIN: 3,
    DoorMode.TWO_PERSON: 4,
    DoorMode.LOCKED: 5,
}


def stricter(mode: DoorMode, level_mode: str | None) -> DoorMode:
    """The stricter of a door's own mode and the mode the threat level imposes."""
    if level_mode is None:
        return mode
    imposed = DoorMode(level_mode)
    return imposed if _STRICTNESS[imposed] > _STRICTNESS[mode] else mode


@dataclass
class ReaderInfo:
    """What the controller knows about one reader, for `wardctl reader status`."""

    settings: ReaderSettings
    online: bool = False
    tamper: bool = False
    secure: bool | None = None
    detail: str = ""
    last_event: float | None = None
    last_alarm: str = ""
    decisions: int = 0
    grants: int = 0

    def to_json(self, now: float) -> dict[str, Any]:
        """JSON row."""
        s = self.settings
        return {
            "reader": s.name,
            "bus": s.bus,
            "door": s.door,
            "direction": s.direction,
            "address": s.address,
            "online": self.online,
            "tamper": self.tamper,
            "secure": self.secure,
            "secure_required": s.secure_channel,
            "detail": self.detail,
            "last_event_s_ago": None
            if self.last_event is None
            else round(now - self.last_event, 1),
            "last_alarm": self.last_alarm,
            "decisions": self.decisions,
            "grants": self.grants,
        }


@dataclass
class AccessService:
    """Every reader of the site: decisions, feedback, free-access schedules."""

    settings: Settings
    store: CredentialStore
    doors: DoorService
    buses: Mapping[str, CredentialReaderBus]
    recorder: Recorder
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], datetime] | None = None
    lockdown: Callable[[str], bool] = lambda zone: False  # zone -> held by a lockdown?
    level_mode: Callable[[], str | None] = lambda: None  # door mode imposed by threat level
    # (cardholder, reader, kind) with kind "lockdown" or "all-clear": the '*' gesture
    on_gesture: Callable[[Cardholder, str, str], None] | None = None
    on_duress: Callable[[Cardholder | None, str], None] | None = None
    incident_of: Callable[[str], dict[str, Any]] = lambda zone: {}
    _state: AccessState = field(default_factory=AccessState)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.tz = zoneinfo.ZoneInfo(self.settings.access.timezone)
        self.readers = {r.name: ReaderInfo(r) for r in self.settings.readers}
        self.schedules: dict[str, Schedule] = {
            s.name: s.schedule() for s in self.settings.schedules
        }
        self.holidays = frozenset(self.settings.access.holidays)
        self.config = PolicyConfig.from_settings(self.settings.access)
        self.zones = {z.name: z for z in self.settings.zones}
        self._door_settings = {d.name: d for d in self.settings.doors}
        self.interlock_of: dict[str, list[str]] = {}
        for group in self.settings.interlocks:
            for d in group.doors:
                self.interlock_of.setdefault(d, []).extend(x for x in group.doors if x != d)
        self._pending_keys: dict[str, str] = {}  # reader -> card key awaiting its PIN
        self._keybuf: dict[str, tuple[str, float]] = {}  # reader -> (keys so far, started)
        self._armed: dict[str, float] = {}  # reader -> when '*' was pressed
        self._gesture_pending: dict[str, tuple[Credential, float]] = {}
        self._free: dict[str, bool] = {}
        self._recheck = asyncio.Event()  # a lockdown released a door: re-apply its schedule
        self._bus_of = {r.name: r.bus for r in self.settings.readers}
        self.doors.add_listener(self._on_door_record)

    # -- time ------------------------------------------------------------------------------

    def local_now(self) -> datetime:
        """Aware local wall-clock time in the site's zone."""
        if self.wall is not None:
            return self.wall().astimezone(self.tz)
        return datetime.now(self.tz)

    # -- events ----------------------------------------------------------------------------

    def on_reader_event(self, event: ReaderEvent) -> None:
        """Handle one reader event (called on the event loop, never blocks on I/O)."""
        info = self.readers.get(event.reader)
        if info is None:
            self.recorder.record(
                "reader.alarm", device=event.reader, alarm="unknown-reader", detail=str(event)
            )
            return
        info.last_event = self.clock()
        match event:
            case CardRead():
                self._card(info, event)
            case KeypadRead():
                self._keys(info, event)
            case ReaderStatus():
                self._status(info, event)
            case ReaderAlarm():
                info.last_alarm = event.kind
                if event.kind in ("sc-failure", "no-secure-channel"):
                    info.secure = False
                self.recorder.record(
                    "reader.alarm", device=event.reader, alarm=event.kind, detail=event.detail
                )
                log.warning("reader alarm", reader=event.reader, alarm=event.kind)

    def _status(self, info: ReaderInfo, event: ReaderStatus) -> None:
        changed = (info.online, info.tamper, info.secure) != (
            event.online,
            event.tamper,
            event.secure,
        )
        if event.tamper != info.tamper:
            self.recorder.record(
                "reader.alarm", device=info.settings.name, alarm="tamper", active=event.tamper
            )
        info.online, info.tamper, info.secure = event.online, event.tamper, event.secure
        info.detail = event.detail
        if changed:
            self.recorder.record(
                "reader.status",
                device=info.settings.name,
                online=event.online,
                tamper=event.tamper,
                secure=event.secure,
                detail=event.detail,
            )

    def _door_policy(self, reader: ReaderSettings) -> DoorPolicy:
        door = self._door_settings[reader.door]
        free = self.schedules.get(door.free_schedule) if door.free_schedule else None
        mode = effective_mode(door.mode, free, self.local_now(), self.holidays)
        mode = stricter(mode, self.level_mode())
        zone = self.zones.get(door.zone)
        return DoorPolicy(
            name=door.name,
            zone=door.zone,
            mode=mode,
            apb=zone.anti_passback if zone is not None else "off",
            direction=reader.direction,
            interlock_busy=self._interlock_busy(door.name),
        )

    def _interlock_busy(self, door: str) -> bool:
        for other in self.interlock_of.get(door, ()):
            s = self.doors.state(other)
            if s.intent is not Intent.LOCKED or s.contact is not Contact.CLOSED:
                return True
            if s.phase in (Phase.OPEN, Phase.FORCED_OPEN, Phase.HELD_OPEN):
                return True
        return False

    def _secure(self, info: ReaderInfo) -> bool:
        return not info.settings.secure_channel or info.secure is not False

    def _card(self, info: ReaderInfo, event: CardRead) -> None:
        reader = info.settings
        card: CardNumber | None
        try:
            card = decode_card_read(event)
        except CodecError as exc:
            card = None
            detail = str(exc)
        else:
            detail = ""
        credential: Credential | None = None
        if card is not None:
            try:
                credential = self.store.lookup(card.key)
            except StoreError as exc:
                # the store is unreadable: deny (never grant on an error) and say why
                log.error("credential lookup failed", error=str(exc))
                credential = None
                detail = "credential store unavailable"
        request = AccessRequest(
            kind="card" if card is not None else "malformed",
            reader=reader.name,
            door=self._door_policy(reader),
            now_s=self.clock(),
            local=self.local_now(),
            holidays=self.holidays,
            credential=credential,
            config=self.config,
            lockdown=self.lockdown(self._door_settings[reader.door].zone),
            reader_secure=self._secure(info),
        )
        if self._gesture_card(info, credential, card):
            return
        decision = self._decide(request, info, card=card, detail=detail)
        if decision.reason is Reason.PENDING_PIN and card is not None:
            self._pending_keys[reader.name] = card.key
        else:
            self._pending_keys.pop(reader.name, None)

    def _keys(self, info: ReaderInfo, event: KeypadRead) -> None:
        """Assemble a PIN: a multi-key entry is complete; single keys collect until '#'."""
        keys = event.keys.strip()
        name = info.settings.name
        now = self.clock()
        if keys == "*" or (keys.startswith("*") and not keys.strip("*")):
            self._armed[name] = now  # '*' then card then PIN: a lockdown / all-clear gesture
            self._keybuf.pop(name, None)
            self.recorder.record("access.gesture", device=name, step="armed")
            self._indicate(name, Indication.PIN_NEEDED)
            return
        if len(keys) > 1 or keys == "#":
            buffered, _ = self._keybuf.pop(name, ("", 0.0))
            entry = (buffered + keys) if keys == "#" else keys
        else:
            buffered, started = self._keybuf.get(name, ("", now))
            if now - started > self.config.pin_timeout_s:
                buffered, started = "", now
            if keys == "*":
                self._keybuf.pop(name, None)  # '*' clears the entry
                return
            if len(buffered) >= 16:
                buffered = ""
            self._keybuf[name] = (buffered + keys, started)
            return
        if name in self._gesture_pending:
            self._gesture_pin(info, entry.strip().rstrip("#").lstrip("*"))
            return
        self._pin(info, entry)

    def _gesture_card(
        self, info: ReaderInfo, credential: Credential | None, card: CardNumber | None
    ) -> bool:
        """A card after '*': hold it for the PIN instead of deciding entry; True if taken."""
        name = info.settings.name
        armed = self._armed.pop(name, None)
        now = self.clock()
        if armed is None or now - armed > self.config.pin_timeout_s:
            return False
        self.recorder.record(
            "access.gesture",
            device=name,
            step="card",
            card=card.masked() if card else None,
            known=credential is not None,
        )
        if credential is None or not self._secure(info):
            self.recorder.record("access.gesture", device=name, step="refused", reason="unknown")
            self._indicate(name, Indication.DENIED)
            return True
        self._gesture_pending[name] = (credential, now)
        self._indicate(name, Indication.PIN_NEEDED)
        return True

    def _gesture_pin(self, info: ReaderInfo, pin: str) -> None:
        name = info.settings.name
        credential, started = self._gesture_pending.pop(name)
        holder = credential.cardholder
        zone = self._door_settings[info.settings.door].zone
        kind = "all-clear" if self.lockdown(zone) else "lockdown"
        needed = Privilege.ALL_CLEAR if kind == "all-clear" else Privilege.LOCKDOWN
        reason = ""
        try:
            check = self.store.check_pin(holder.id, pin)
        except StoreError as exc:
            check, reason = PinCheck.BAD, f"store: {exc}"
        if self.clock() - started > self.config.pin_timeout_s:
            reason = "PIN too late"
        elif check is not PinCheck.OK:
            reason = "wrong PIN"
        elif needed not in holder.privileges:
            reason = f"no {needed.value} privilege"
        elif holder.state.value != "active" or credential.state.value != "active":
            reason = "credential not active"
        if reason:
            self.recorder.record(
                "access.gesture",
                device=name,
                step="refused",
                gesture=kind,
                cardholder_id=holder.id,
                reason=reason,
            )
            self._indicate(name, Indication.DENIED)
            return
        self.recorder.record(
            "access.gesture",
            device=name,
            step="accepted",
            gesture=kind,
            cardholder_id=holder.id,
            cardholder=holder.name,
        )
        self._indicate(name, Indication.LOCKDOWN if kind == "lockdown" else Indication.GRANTED)
        if self.on_gesture is not None:
            self.on_gesture(holder, name, kind)

    def _pin(self, info: ReaderInfo, entry: str) -> None:
        reader = info.settings
        pin = entry.strip().rstrip("#").lstrip("*")
        # the policy state says whether a card waits for this PIN; the credential is read
        # again so that a revocation between card and PIN takes effect
        key = self._pending_keys.pop(reader.name, None)
        pending = self._state.pending_pin(reader.name)
        credential: Credential | None = None
        check: PinCheck = PinCheck.BAD
        policy = self._door_policy(reader)
        try:
            if pending is not None and key is not None:
                credential = self.store.lookup(key)
                check = self.store.check_pin(pending.cardholder_id, pin)
            elif policy.mode is DoorMode.PIN:
                match = self.store.match_pin(pin)
                if match is not None:
                    credential, check = match.credential, match.check
        except StoreError as exc:
            log.error("PIN check failed", error=str(exc))
            credential, check = None, PinCheck.BAD
        request = AccessRequest(
            kind="pin",
            reader=reader.name,
            door=policy,
            now_s=self.clock(),
            local=self.local_now(),
            holidays=self.holidays,
            credential=credential,
            pin=check,
            config=self.config,
            lockdown=self.lockdown(self._door_settings[reader.door].zone),
            reader_secure=self._secure(info),
        )
        self._decide(request, info, card=None, detail="", via="pin")

    def _decide(
        self,
        request: AccessRequest,
        info: ReaderInfo,
        *,
        card: CardNumber | None,
        detail: str,
        via: str = "card",
    ) -> Decision:
        decision, self._state = decide(request, self._state)
        info.decisions += 1
        holder = request.credential.cardholder if request.credential is not None else None
        data: dict[str, Any] = {
            "reader": request.reader,
            "via": via,
            "reason": decision.reason.value,
            "granted": decision.granted,
        }
        if decision.cardholder_id is not None:
            data["cardholder_id"] = decision.cardholder_id
        if holder is not None and holder.id == decision.cardholder_id:
            data["cardholder"] = holder.name
        if card is not None:
            data["card"] = card.masked()
        if decision.next_factor:
            data["next_factor"] = decision.next_factor
        if decision.alarms:
            data["alarms"] = list(decision.alarms)
        if detail or decision.detail:
            data["detail"] = detail or decision.detail
        self.recorder.record("access.decision", door=decision.door, **data)
        if "duress" in decision.alarms and self.on_duress is not None:
            self.on_duress(holder, request.reader)
        for alarm in decision.alarms:
            self.recorder.record(
                "access.alarm",
                door=decision.door,
                alarm=alarm,
                reader=request.reader,
                cardholder_id=decision.cardholder_id,
            )
            log.warning("access alarm", door=decision.door, alarm=alarm, reader=request.reader)
        if decision.reason is Reason.GRANTED_OVERRIDE:
            self.recorder.record(
                "lockdown.override",
                door=decision.door,
                reader=request.reader,
                cardholder_id=decision.cardholder_id,
                cardholder=holder.name if holder is not None else None,
                **self.incident_of(request.door.zone),
            )
        if decision.granted:
            info.grants += 1
            self._grant(request.reader, decision)
        elif decision.reason in (Reason.PENDING_PIN, Reason.PENDING_SECOND_PERSON):
            self._indicate(request.reader, Indication.PIN_NEEDED)
        elif decision.reason is Reason.DENIED_LOCKDOWN:
            self._indicate(request.reader, Indication.LOCKDOWN)
        elif decision.reason is not Reason.DENIED_THROTTLED:
            self._indicate(request.reader, Indication.DENIED)
        return decision

    def _grant(self, reader: str, decision: Decision) -> None:
        self._indicate(reader, Indication.GRANTED)
        if decision.reason is Reason.GRANTED_FREE_ACCESS:
            return  # the door is already unlocked by its schedule
        coro = self.doors.command(
            decision.door,
            "pulse",
            source=f"reader:{reader}",
            override=decision.reason is Reason.GRANTED_OVERRIDE,
        )
        task = asyncio.get_running_loop().create_task(coro, name=f"grant:{decision.door}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _indicate(self, reader: str, indication: Indication) -> None:
        bus = self.buses.get(self._bus_of.get(reader, ""))
        if bus is None:
            return
        try:
            bus.indicate(reader, indication)
        except Exception:  # feedback is best effort; it must never break a decision
            log.exception("reader feedback failed", reader=reader)

    # -- schedules -------------------------------------------------------------------------

    async def run(self) -> None:
        """Apply scheduled free access (unlock/lock at schedule edges) until cancelled."""
        doors = [d for d in self.settings.doors if d.free_schedule]
        if not doors:
            await asyncio.Event().wait()
        while True:
            now = self.local_now()
            for d in doors:
                schedule = self.schedules.get(d.free_schedule or "")
                free = effective_mode(d.mode, schedule, now, self.holidays) is DoorMode.FREE
                free = free and not self.lockdown(d.zone)
                if self._free.get(d.name) != free:
                    self._free[d.name] = free
                    action = "unlock" if free else "lock"
                    self.recorder.record(
                        "access.schedule", door=d.name, free=free, schedule=d.free_schedule
                    )
                    with contextlib.suppress(Exception):
                        await self.doors.command(d.name, action, source="schedule")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recheck.wait(), FREE_SCHEDULE_CHECK_S)
            self._recheck.clear()

    def _on_door_record(self, kind: str, data: Mapping[str, Any]) -> None:
        """A lockdown hold ended on a door: its free schedule applies again, at once."""
        if kind == "door.secure" and data.get("secured") is False:
            door = str(data.get("door"))
            settings = self._door_settings.get(door)
            if settings is None or not settings.free_schedule:
                return
            if self._free.get(door):
                # the hold relocked a door the schedule had unlocked: forget that, so a free
                # period that is still on unlocks it again (and a finished one does not)
                del self._free[door]
            self._recheck.set()  # now, not at the next periodic check

    def status(self) -> list[dict[str, Any]]:
        """One row per reader."""
        now = self.clock()
        return [info.to_json(now) for info in self.readers.values()]

    async def close(self) -> None:
        """Cancel pending grant tasks."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
