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
    count_denial,
    credential_refusal,
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
LEVEL_POLL_S = 0.25
"""How often the schedule loop looks at the threat level (a change re-applies free access)."""


_STRICTNESS = {
    DoorMode.FREE: 0,
    DoorMode.CARD: 1,
    DoorMode.PIN: 2,
    DoorMode.CARD_AND_PIN: 3,
    DoorMode.TWO_PERSON: 4,
    DoorMode.LOCKED: 5,
}


def stricter(mode: DoorMode, level_mode: str | None) -> DoorMode:
    """The stricter of a door's own mode and the mode the threat level imposes.

    A card and a PIN are different factors, neither stricter than the other: together they
    need both (card+pin), so a raised level never drops the factor a door already asks for.
    """
    if level_mode is None:
        return mode
    imposed = DoorMode(level_mode)
    if {mode, imposed} == {DoorMode.CARD, DoorMode.PIN}:
        return DoorMode.CARD_AND_PIN
    return imposed if _STRICTNESS[imposed] > _STRICTNESS[mode] else mode


@dataclass(frozen=True, slots=True)
class _Gesture:
    """A card presented after '*' at a reader, waiting for its PIN."""

    key: str | None  # canonical card key; None if the frame could not be decoded
    started: float  # monotonic time of the card


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
    # every incident holding a zone (its zone's and the site's), for the records they share
    incidents_of: Callable[[str], list[dict[str, Any]]] = lambda zone: []
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
        self._gesture_pending: dict[str, _Gesture] = {}
        # door -> grants whose pulse is handed to the door service but not finished: the
        # interlock counts such a door as unlocking from the moment of the grant
        self._unlocking: dict[str, int] = {}
        self._free: dict[str, bool] = {}
        # a lockdown released a door, or the threat level changed: re-apply the schedules
        self._recheck = asyncio.Event()
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
            if self._unlocking.get(other):
                return True  # granted a moment ago: its pulse is on its way
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
        self._abandon_gesture(reader.name, "a card was presented")
        decision = self._decide(request, info, card=card, detail=detail)
        if decision.reason is Reason.PENDING_PIN and card is not None:
            self._pending_keys[reader.name] = card.key
        else:
            self._pending_keys.pop(reader.name, None)

    def _keys(self, info: ReaderInfo, event: KeypadRead) -> None:
        """Assemble a PIN: a multi-key entry is complete; single keys collect until '#'.

        A lone '*' clears the entry while one is open at the reader (a PIN awaited, or keys
        typed); otherwise it arms the lockdown gesture ('*', card, PIN).
        """
        keys = event.keys.strip()
        name = info.settings.name
        now = self.clock()
        gesture = self._gesture_pending.get(name)
        if gesture is not None and now - gesture.started > self.config.pin_timeout_s:
            # an abandoned gesture never takes a later entry: this one is handled as usual
            self._abandon_gesture(name, "PIN too late")
        if keys.startswith("*") and not keys.strip("*"):
            if self._entry_open(name, now):
                self._keybuf.pop(name, None)  # '*' clears the entry; a pending card stays
                return
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
            if len(buffered) >= 16:
                buffered = ""
            self._keybuf[name] = (buffered + keys, started)
            return
        gesture = self._gesture_pending.pop(name, None)
        if gesture is not None:
            self._gesture_pin(info, gesture, entry.strip().rstrip("#").lstrip("*"))
            return
        self._pin(info, entry)

    def _entry_open(self, reader: str, now: float) -> bool:
        """Whether a keypad entry is under way at ``reader`` (so '*' means "clear")."""
        pending = self._state.pending_pin(reader)
        if pending is not None and now <= pending.deadline_s:
            return True
        if reader in self._gesture_pending:
            return True
        buffered, started = self._keybuf.get(reader, ("", now))
        return bool(buffered) and now - started <= self.config.pin_timeout_s

    def _abandon_gesture(self, reader: str, why: str) -> None:
        """Forget a gesture waiting for its PIN at ``reader`` (journaled), if there is one."""
        if self._gesture_pending.pop(reader, None) is not None:
            self.recorder.record("access.gesture", device=reader, step="abandoned", reason=why)

    def _gesture_card(
        self, info: ReaderInfo, credential: Credential | None, card: CardNumber | None
    ) -> bool:
        """A card after '*': hold it for the PIN instead of deciding entry; True if taken.

        Known and unknown cards get the same indication ("PIN needed"); an unknown card
        counts toward the reader's throttle at once, and a throttled reader refuses.
        """
        name = info.settings.name
        armed = self._armed.pop(name, None)
        now = self.clock()
        if armed is None or now - armed > self.config.pin_timeout_s:
            return False
        self._abandon_gesture(name, "a new gesture card")
        self.recorder.record(
            "access.gesture",
            device=name,
            step="card",
            card=card.masked() if card else None,
            known=credential is not None,
        )
        if not self._secure(info):
            self._gesture_refused(info, "reader not secure", count=False)
            return True
        if self._state.throttled(name, now):
            self._gesture_refused(info, "throttled", count=False)
            return True
        if credential is None:
            self._count_denial(info, None)  # guessing cards through the gesture is throttled
        self._gesture_pending[name] = _Gesture(card.key if card is not None else None, now)
        self._indicate(name, Indication.PIN_NEEDED)
        return True

    def _gesture_pin(self, info: ReaderInfo, gesture: _Gesture, pin: str) -> None:
        """The PIN of a gesture: every check of the card again, as the store has it now."""
        name = info.settings.name
        zone = self._door_settings[info.settings.door].zone
        kind = "all-clear" if self.lockdown(zone) else "lockdown"
        needed = Privilege.ALL_CLEAR if kind == "all-clear" else Privilege.LOCKDOWN
        now = self.clock()
        if not self._secure(info):
            self._gesture_refused(info, "reader not secure", gesture=kind, count=False)
            return
        if self._state.throttled(name, now):
            self._gesture_refused(info, "throttled", gesture=kind, count=False)
            return
        if now - gesture.started > self.config.pin_timeout_s:
            self._gesture_refused(info, "PIN too late", gesture=kind)
            return
        # the card is looked up again: a revocation since the card takes effect
        credential: Credential | None = None
        try:
            if gesture.key is not None:
                credential = self.store.lookup(gesture.key)
        except StoreError as exc:
            log.error("credential lookup failed", error=str(exc))
            self._gesture_refused(info, f"store: {exc}", gesture=kind, count=False)
            return
        if credential is None:
            # an unknown card counted when it was presented; a card removed since counts now
            self._gesture_refused(info, "unknown", gesture=kind, count=gesture.key is not None)
            return
        holder = credential.cardholder
        refused = credential_refusal(credential, self.local_now())
        if refused is not None:
            self._gesture_refused(info, refused[1], gesture=kind, holder=holder)
            return
        try:
            check = self.store.check_pin(holder.id, pin)
        except StoreError as exc:
            log.error("PIN check failed", error=str(exc))
            self._gesture_refused(info, f"store: {exc}", gesture=kind, holder=holder, count=False)
            return
        if check is PinCheck.DURESS:
            self._gesture_duress(info, kind, holder, privileged=needed in holder.privileges)
            return
        if check is not PinCheck.OK:
            self._gesture_refused(info, "wrong PIN", gesture=kind, holder=holder)
            return
        if needed not in holder.privileges:
            self._gesture_refused(info, f"no {needed.value} privilege", gesture=kind, holder=holder)
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

    def _gesture_duress(
        self, info: ReaderInfo, kind: str, holder: Cardholder, *, privileged: bool
    ) -> None:
        """A duress PIN in a gesture: the silent alarm; an all-clear never counts.

        The reader shows what an accepted gesture shows, so whoever forces the person sees
        nothing. A lockdown gesture by someone with the lockdown privilege still starts the
        lockdown (nobody forces one to hide); without the privilege it does not.
        """
        name = info.settings.name
        starts = kind == "lockdown" and privileged
        self.recorder.record(
            "access.gesture",
            device=name,
            step="accepted" if starts else "refused",
            gesture=kind,
            reason="duress PIN" if privileged else f"duress PIN; no {kind} privilege",
            cardholder_id=holder.id,
            cardholder=holder.name,
        )
        self.recorder.record(
            "access.alarm", alarm="duress", reader=name, cardholder_id=holder.id, gesture=kind
        )
        log.warning("access alarm", alarm="duress", reader=name, gesture=kind)
        if self.on_duress is not None:
            self.on_duress(holder, name)
        self._indicate(name, Indication.LOCKDOWN if kind == "lockdown" else Indication.GRANTED)
        if starts and self.on_gesture is not None:
            self.on_gesture(holder, name, kind)

    def _gesture_refused(
        self,
        info: ReaderInfo,
        reason: str,
        *,
        gesture: str | None = None,
        holder: Cardholder | None = None,
        count: bool = True,
    ) -> None:
        """Journal a refused gesture, show "denied" (not when throttled), count it if asked."""
        name = info.settings.name
        data: dict[str, Any] = {"reason": reason}
        if gesture is not None:
            data["gesture"] = gesture
        if holder is not None:
            data["cardholder_id"] = holder.id
        self.recorder.record("access.gesture", device=name, step="refused", **data)
        if count:
            self._count_denial(info, holder)
        if reason != "throttled":
            self._indicate(name, Indication.DENIED)

    def _count_denial(self, info: ReaderInfo, holder: Cardholder | None) -> None:
        """Count a gesture refusal toward the reader's throttle (alarm when it trips)."""
        name = info.settings.name
        tripped, self._state = count_denial(self._state, name, self.clock(), self.config)
        if tripped:
            door = info.settings.door
            self.recorder.record(
                "access.alarm",
                door=door,
                alarm="throttle",
                reader=name,
                cardholder_id=holder.id if holder is not None else None,
            )
            log.warning("access alarm", door=door, alarm="throttle", reader=name)

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
            # one record per incident holding the door: each incident's report lists it
            for incident in self.incidents_of(request.door.zone) or [{}]:
                self.recorder.record(
                    "lockdown.override",
                    door=decision.door,
                    reader=request.reader,
                    cardholder_id=decision.cardholder_id,
                    cardholder=holder.name if holder is not None else None,
                    **incident,
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
        door = decision.door
        coro = self.doors.command(
            door,
            "pulse",
            source=f"reader:{reader}",
            override=decision.reason is Reason.GRANTED_OVERRIDE,
        )
        task = asyncio.get_running_loop().create_task(coro, name=f"grant:{door}")
        # reserve the door now: the pulse reaches the door service a loop turn later, and an
        # interlocked door decided in between must already see this one as unlocking
        self._unlocking[door] = self._unlocking.get(door, 0) + 1
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._release(door))

    def _release(self, door: str) -> None:
        """A grant's pulse is applied (or failed): the door state speaks for it from now on."""
        left = self._unlocking.get(door, 0) - 1
        if left > 0:
            self._unlocking[door] = left
        else:
            self._unlocking.pop(door, None)

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
        """Apply scheduled free access (unlock/lock at schedule edges) until cancelled.

        A door is free only while the stricter of its scheduled mode and the threat level's
        mode is ``free`` and no lockdown holds it; a threat-level change is seen within
        ``LEVEL_POLL_S`` and applied at once (``level_changed()`` wakes the loop at once).
        """
        doors = [d for d in self.settings.doors if d.free_schedule]
        if not doors:
            await asyncio.Event().wait()
        loop = asyncio.get_running_loop()
        while True:
            level = self.level_mode()
            now = self.local_now()
            for d in doors:
                schedule = self.schedules.get(d.free_schedule or "")
                mode = stricter(effective_mode(d.mode, schedule, now, self.holidays), level)
                free = mode is DoorMode.FREE and not self.lockdown(d.zone)
                if self._free.get(d.name) != free:
                    self._free[d.name] = free
                    action = "unlock" if free else "lock"
                    self.recorder.record(
                        "access.schedule", door=d.name, free=free, schedule=d.free_schedule
                    )
                    with contextlib.suppress(Exception):
                        await self.doors.command(d.name, action, source="schedule")
            deadline = loop.time() + FREE_SCHEDULE_CHECK_S
            while not self._recheck.is_set() and self.level_mode() == level:
                left = deadline - loop.time()
                if left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._recheck.wait(), min(left, LEVEL_POLL_S))
            self._recheck.clear()

    def level_changed(self) -> None:
        """The threat level changed: re-apply free-access schedules now."""
        self._recheck.set()

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
