"""The access service inside the real daemon (in-process) on a simulated board.

Reader events are put straight into the daemon (its reader lines point at devices that do not
exist); the credential store, the policy, the door service, the lockdown runner and the board
simulator are real. Covers the interlock reservation, free doors under a threat level, '*'
(clear or the lockdown gesture) and the gesture's checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.access.formats import encode_wiegand, parse_card
from controller.access.store import CredentialStore
from controller.app import Daemon
from controller.lockdown.model import SetThreatLevel
from controller.settings import parse_toml
from drivers.base import CardFraming, CardRead, Indication, KeypadRead
from simulators.site import SimSite
from tests.conftest import site_toml

READERS = """
[[reader_buses]]
name = "l1"
driver = "serial"
device = "{tmp}/absent1"

[[reader_buses]]
name = "l2"
driver = "serial"
device = "{tmp}/absent2"

[[readers]]
name = "r1"
bus = "l1"
door = "tcp1-d0"

[[readers]]
name = "r2"
bus = "l2"
door = "tcp1-d1"
"""

LAB = """
[[doors]]
name = "lab"
lock = "fail-secure"
relay = {{ board = "tcp1", coil = 5 }}
mode = "{mode}"

[[reader_buses]]
name = "l3"
driver = "serial"
device = "{tmp}/absent3"

[[readers]]
name = "r3"
bus = "l3"
door = "lab"
"""


@dataclass
class Rig:
    daemon: Daemon
    sim: SimSite
    shown: list[tuple[str, Indication]] = field(default_factory=list)

    @property
    def store(self) -> CredentialStore:
        assert self.daemon.store is not None
        return self.daemon.store

    def event(self, event: CardRead | KeypadRead) -> None:
        assert self.daemon.access is not None
        self.daemon.access.on_reader_event(event)

    def card(self, reader: str, text: str) -> None:
        self.event(card(reader, text))

    def keys(self, reader: str, keys: str) -> None:
        self.event(KeypadRead(reader, keys))

    def gesture(self, reader: str, text: str, pin: str) -> None:
        self.keys(reader, "*")
        self.card(reader, text)
        self.keys(reader, f"{pin}#")

    async def entries(self, kind: str) -> list[dict[str, Any]]:
        assert self.daemon.journal is not None
        await self.daemon.journal.flush()
        rows = await self.daemon.journal.read(0, 100_000)
        return [dict(e.data, door=e.door, device=e.device) for e in rows if e.kind == kind]

    async def reasons(self) -> list[str]:
        return [d["reason"] for d in await self.entries("access.decision")]

    async def gestures(self) -> list[tuple[str, str | None]]:
        return [(g["step"], g.get("reason")) for g in await self.entries("access.gesture")]

    def held(self) -> bool:
        assert self.daemon.lockdown is not None
        return self.daemon.lockdown.held("default")

    def enrol(self, name: str, text: str, doors: tuple[str, ...], **kw: Any) -> int:
        cid = self.store.add_cardholder(name, **kw)
        c = parse_card(text)
        self.store.add_credential(cid, c.key, format=c.format.value, masked=c.masked())
        level = f"level-{name.lower()}"
        self.store.add_level(level, doors)
        self.store.grant_level(cid, level)
        return cid


def card(reader: str, text: str) -> CardRead:
    bits, data = encode_wiegand(parse_card(text))
    return CardRead(reader, CardFraming.WIEGAND, data=data, bits=bits)


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, extra: str = "") -> AsyncIterator[Rig]:
    text = site_toml(tmp_path, tcp_port=1) + extra + READERS.format(tmp=tmp_path)
    async with SimSite(parse_toml(text), ports={"tcp1": 0}) as sim:
        daemon = Daemon(sim.client_settings())
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.wait_for(daemon.ready.wait(), 10)
            r = Rig(daemon, sim)
            for bus in daemon.buses.values():  # what each reader was told to show

                def indicate(reader: str, what: Indication) -> None:
                    r.shown.append((reader, what))

                bus.indicate = indicate  # type: ignore[method-assign,assignment]
            yield r
        finally:
            daemon.shutdown.set()
            assert await asyncio.wait_for(task, 10) == 0


# -- interlock -------------------------------------------------------------------------------

INTERLOCK = """
[[interlocks]]
name = "vestibule"
doors = ["tcp1-d0", "tcp1-d1"]
"""


async def test_interlocked_doors_never_open_together_when_decided_back_to_back(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, INTERLOCK) as r:
        r.enrol("Ann", "h10301:3:333", ("tcp1-d0",))
        r.enrol("Bob", "h10301:4:444", ("tcp1-d1",))
        d0, d1 = r.sim.door("tcp1-d0"), r.sim.door("tcp1-d1")
        both = False

        async def watch() -> None:
            nonlocal both
            while True:
                both = both or (not d0.locked and not d1.locked)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        # both cards waiting in the daemon's queue: decided in the same loop turn
        r.daemon.events.put_nowait(card("r1", "h10301:3:333"))
        r.daemon.events.put_nowait(card("r2", "h10301:4:444"))
        await wait_for(lambda: not d0.locked)
        decisions = await r.entries("access.decision")
        assert [(d["reader"], d["reason"]) for d in decisions] == [
            ("r1", "granted"),
            ("r2", "denied-interlock"),
        ]
        # the reservation ends with the pulse: once d0 has relocked, Bob gets in
        await wait_for(lambda: d0.locked, 5)
        await wait_for(lambda: r.daemon.access is not None and not r.daemon.access._unlocking)
        r.card("r2", "h10301:4:444")
        await wait_for(lambda: not d1.locked)
        watcher.cancel()
        assert not both, "both interlocked doors were unlocked at once"
        assert (await r.reasons())[-1] == "granted"


# -- free access and threat levels -----------------------------------------------------------

FREE = """
[[schedules]]
name = "allday"
intervals = ["daily 00:00-24:00"]

[[doors]]
name = "lobby-free"
lock = "fail-secure"
relay = {{ board = "tcp1", coil = 4 }}
free_schedule = "allday"

[[lockdown.levels]]
level = 3
mode = "card"

[[lockdown.levels]]
level = 5
mode = "locked"

[[reader_buses]]
name = "l3"
driver = "serial"
device = "{tmp}/absent3"

[[readers]]
name = "r3"
bus = "l3"
door = "lobby-free"
"""


async def test_a_threat_level_relocks_free_doors_at_once_and_lowering_it_frees_them(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, FREE.format(tmp=tmp_path)) as r:
        runner = r.daemon.lockdown
        assert runner is not None
        lobby = r.sim.door("lobby-free")
        await wait_for(lambda: not lobby.locked)  # free by schedule
        r.enrol("Ann", "h10301:3:333", ("lobby-free",))
        start = time.monotonic()
        await runner.submit(SetThreatLevel(5, "test", runner.wall()))  # responders only
        await wait_for(lambda: lobby.locked, 5)
        assert time.monotonic() - start < 10  # not at the next 15 s schedule check
        r.card("r3", "h10301:3:333")
        await asyncio.sleep(0.2)
        assert (await r.reasons())[-1] == "denied-door-locked"
        assert lobby.locked
        # a level imposing "card" is stricter than free: the door stays locked
        await runner.submit(SetThreatLevel(3, "test", runner.wall()))
        await asyncio.sleep(0.6)
        assert lobby.locked
        # back to normal: the schedule applies again, at once
        await runner.submit(SetThreatLevel(0, "test", runner.wall()))
        await wait_for(lambda: not lobby.locked, 5)
        schedule = [s["free"] for s in await r.entries("access.schedule")]
        assert schedule == [True, False, True]


# -- '*': clear the entry, or the lockdown gesture ---------------------------------------------


async def test_star_clears_a_pending_pin_entry_and_never_arms_the_gesture(tmp_path: Path) -> None:
    async with rig(tmp_path, LAB.format(tmp=tmp_path, mode="card+pin")) as r:
        r.enrol("Sec", "h10301:5:555", ("lab",), pin="1357", privileges=["lockdown", "override"])
        r.card("r3", "h10301:5:555")  # pending-pin
        r.keys("r3", "*")  # a typo: clear the entry
        r.card("r3", "h10301:5:555")  # badge again to start over
        r.keys("r3", "1357#")
        await wait_for(lambda: not r.sim.door("lab").locked)
        assert await r.reasons() == ["pending-pin", "pending-pin", "granted"]
        assert await r.gestures() == []
        assert not r.held()
        # a serial keypad sending single keys: '*' after typed keys clears them
        r.keys("r1", "9")
        r.keys("r1", "*")
        assert await r.gestures() == []


async def test_star_then_card_then_pin_still_starts_a_lockdown(tmp_path: Path) -> None:
    async with rig(tmp_path, LAB.format(tmp=tmp_path, mode="card+pin")) as r:
        r.enrol("Lou", "h10301:6:666", ("lab",), pin="2468", privileges=["lockdown"])
        r.gesture("r3", "h10301:6:666", "2468")
        await wait_for(r.held)
        assert await r.gestures() == [("armed", None), ("card", None), ("accepted", None)]
        assert await r.reasons() == []  # the gesture's card is no entry attempt


# -- the gesture's checks --------------------------------------------------------------------


async def test_gesture_refuses_expired_and_not_yet_valid_cardholders(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        now = datetime.now(UTC)
        r.enrol(
            "Exp", "h10301:9:999", ("tcp1-d0",), pin="2468", privileges=["lockdown"],
            valid_from=now - timedelta(days=31), valid_until=now - timedelta(days=1),
        )  # fmt: skip
        r.enrol(
            "New", "h10301:9:998", ("tcp1-d0",), pin="1357", privileges=["lockdown"],
            valid_from=now + timedelta(days=1),
        )  # fmt: skip
        r.gesture("r1", "h10301:9:999", "2468")
        r.gesture("r1", "h10301:9:998", "1357")
        await asyncio.sleep(0.1)
        refused = [g for g in await r.gestures() if g[0] == "refused"]
        assert refused == [("refused", "expired"), ("refused", "not valid yet")]
        assert not r.held()


async def test_gesture_looks_the_card_up_again_at_the_pin(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        cid = r.enrol("Rev", "h10301:7:777", ("tcp1-d0",), pin="1357", privileges=["lockdown"])
        r.keys("r1", "*")
        r.card("r1", "h10301:7:777")
        r.store.set_cardholder_state(cid, "revoked")  # between card and PIN
        r.keys("r1", "1357#")
        r.keys("r2", "*")
        cred = r.store.list_credentials(cid)[0].id
        r.store.set_cardholder_state(cid, "active")
        r.card("r2", "h10301:7:777")
        r.store.set_credential_state(cred, "lost")
        r.keys("r2", "1357#")
        await asyncio.sleep(0.1)
        refused = [g for g in await r.gestures() if g[0] == "refused"]
        assert refused == [("refused", "cardholder is revoked"), ("refused", "credential is lost")]
        assert not r.held()


THROTTLE = """
[access]
throttle_denials = 3
throttle_window_s = 60
throttle_lockout_s = 600
"""


async def test_gesture_pin_guesses_are_throttled(tmp_path: Path) -> None:
    async with rig(tmp_path, THROTTLE) as r:
        r.enrol("Chief", "h10301:8:888", ("tcp1-d0",), pin="7351", privileges=["lockdown"])
        for guess in ("0000", "1111", "2222"):  # a stolen card, PIN guesses by gesture
            r.gesture("r1", "h10301:8:888", guess)
        r.gesture("r1", "h10301:8:888", "7351")  # found: but the reader is throttled
        await asyncio.sleep(0.1)
        assert [g[1] for g in await r.gestures() if g[0] == "refused"] == [
            "wrong PIN",
            "wrong PIN",
            "wrong PIN",
            "throttled",
        ]
        assert [a["alarm"] for a in await r.entries("access.alarm")] == ["throttle"]
        assert not r.held()
        # the throttle is the reader's: an ordinary card there is ignored too
        r.card("r1", "h10301:8:888")
        assert (await r.reasons())[-1] == "denied-throttled"


async def test_gesture_on_a_throttled_reader_is_refused(tmp_path: Path) -> None:
    async with rig(tmp_path, THROTTLE) as r:
        r.enrol("Chief", "h10301:8:888", ("tcp1-d0",), pin="7351", privileges=["lockdown"])
        for i in range(3):
            r.card("r1", f"h10301:1:{i}")
        assert (await r.reasons())[-1] == "denied-unknown"
        r.gesture("r1", "h10301:8:888", "7351")
        await asyncio.sleep(0.1)
        assert ("refused", "throttled") in await r.gestures()
        assert not r.held()


async def test_unknown_gesture_cards_look_known_and_count(tmp_path: Path) -> None:
    async with rig(tmp_path, THROTTLE) as r:
        r.enrol("Chief", "h10301:8:888", ("tcp1-d0",), pin="7351", privileges=["lockdown"])
        r.keys("r1", "*")
        r.card("r1", "h10301:8:888")
        r.keys("r2", "*")
        r.card("r2", "h10301:2:2")  # not enrolled
        known = [w for reader, w in r.shown if reader == "r1"]
        unknown = [w for reader, w in r.shown if reader == "r2"]
        assert known == unknown == [Indication.PIN_NEEDED, Indication.PIN_NEEDED]
        r.keys("r2", "1234#")
        for i in (3, 4):  # two more unknown gesture cards: the third counted denial
            r.keys("r2", "*")
            r.card("r2", f"h10301:2:{i}")
        await asyncio.sleep(0.1)
        assert [a["alarm"] for a in await r.entries("access.alarm")] == ["throttle"]
        r.gesture("r2", "h10301:8:888", "7351")
        await asyncio.sleep(0.1)
        assert (await r.gestures())[-1] == ("refused", "throttled")
        assert not r.held()


# -- an abandoned gesture ---------------------------------------------------------------------

SHORT = """
[access]
pin_timeout_s = 0.5
"""


async def test_an_abandoned_gesture_never_takes_a_later_pin(tmp_path: Path) -> None:
    extra = SHORT + LAB.format(tmp=tmp_path, mode="pin")
    async with rig(tmp_path, extra) as r:
        r.enrol("Ann", "h10301:5:555", ("lab",), pin="1357", privileges=["lockdown"])
        bob = r.enrol("Bob", "h10301:6:666", ("lab",), pin="2468")
        r.keys("r3", "*")
        r.card("r3", "h10301:5:555")  # Ann starts a gesture and walks away
        await asyncio.sleep(0.8)  # longer than pin_timeout_s
        r.keys("r3", "2468#")  # Bob, at the PIN-only door
        await wait_for(lambda: not r.sim.door("lab").locked)
        decisions = await r.entries("access.decision")
        assert [(d["reason"], d["cardholder_id"]) for d in decisions] == [("granted", bob)]
        assert (await r.gestures())[-1] == ("abandoned", "PIN too late")
        assert not r.held()


async def test_a_new_card_ends_a_pending_gesture(tmp_path: Path) -> None:
    async with rig(tmp_path, LAB.format(tmp=tmp_path, mode="card+pin")) as r:
        r.enrol("Ann", "h10301:5:555", ("lab",), pin="1357", privileges=["lockdown"])
        r.enrol("Bob", "h10301:6:666", ("lab",), pin="2468", privileges=["lockdown"])
        r.keys("r3", "*")
        r.card("r3", "h10301:5:555")  # Ann: a gesture, abandoned at once
        r.card("r3", "h10301:6:666")  # Bob: card ...
        r.keys("r3", "2468#")  # ... and PIN: his entry, not Ann's gesture (nor his)
        await wait_for(lambda: not r.sim.door("lab").locked)
        assert await r.reasons() == ["pending-pin", "granted"]
        assert (await r.gestures())[-1] == ("abandoned", "a card was presented")
        assert not r.held()


DURESS = """
[access]
duress = "last-digit-plus-one"
"""


async def test_a_duress_pin_in_a_gesture_raises_the_alarm_and_never_clears_a_lockdown(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, DURESS) as r:
        cid = r.enrol(
            "Chief", "h10301:6:666", ("tcp1-d0",), pin="2468", privileges=["lockdown", "all-clear"]
        )
        r.gesture("r1", "h10301:6:666", "2469")  # the duress PIN: a lockdown all the same
        await wait_for(r.held)
        r.shown.clear()
        r.gesture("r1", "h10301:6:666", "2469")  # forced to all-clear: it must not count
        await asyncio.sleep(0.1)
        assert r.held()
        assert r.daemon.lockdown is not None
        assert r.daemon.lockdown.status()["scopes"]["site"]["mode"] == "lockdown"
        # the reader shows what an accepted all-clear shows: nothing for the attacker to see
        assert ("r1", Indication.GRANTED) in r.shown
        alarms = await r.entries("access.alarm")
        assert [(a["alarm"], a["gesture"], a["cardholder_id"]) for a in alarms] == [
            ("duress", "lockdown", cid),
            ("duress", "all-clear", cid),
        ]
        assert await r.gestures() == [
            ("armed", None),
            ("card", None),
            ("accepted", "duress PIN"),
            ("armed", None),
            ("card", None),
            ("refused", "duress PIN"),
        ]


async def test_a_duress_pin_never_lends_the_lockdown_privilege(tmp_path: Path) -> None:
    async with rig(tmp_path, DURESS) as r:
        cid = r.enrol("Plain", "h10301:6:665", ("tcp1-d0",), pin="2468")
        r.gesture("r1", "h10301:6:665", "2469")  # duress PIN, no lockdown privilege
        await asyncio.sleep(0.1)
        assert not r.held()
        assert ("r1", Indication.LOCKDOWN) in r.shown  # looks the same to an attacker
        alarms = await r.entries("access.alarm")
        assert [(a["alarm"], a["cardholder_id"]) for a in alarms] == [("duress", cid)]
        assert (await r.gestures())[-1] == ("refused", "duress PIN; no lockdown privilege")
