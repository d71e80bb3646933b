"""Badge to relay, in-process: serial reader simulator (pty) -> daemon -> simulated board (TCP).

The daemon, its credential store, the access policy and the door service are all real; the
reader and the board are simulators speaking their real wire protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.access.formats import parse_card
from controller.access.store import CredentialStore
from controller.app import Daemon
from controller.journal import verify_journal
from controller.settings import parse_toml
from simulators.serial_reader import SimSerialReader
from simulators.site import SimSite
from tests.conftest import site_toml

READER = """
[access]
pin_timeout_s = 3
throttle_denials = 3
throttle_window_s = 30
throttle_lockout_s = 2
duress = "last-digit-plus-one"

[[reader_buses]]
name = "line1"
driver = "serial"
device = "{device}"
framing = "auto"

[[readers]]
name = "r-front"
bus = "line1"
door = "{door}"
"""


@dataclass
class Rig:
    daemon: Daemon
    sim: SimSite
    reader: SimSerialReader

    @property
    def store(self) -> CredentialStore:
        assert self.daemon.store is not None
        return self.daemon.store

    async def entries(self, kind: str) -> list[dict[str, Any]]:
        assert self.daemon.journal is not None
        await self.daemon.journal.flush()
        rows = await self.daemon.journal.read(0, 100_000)
        return [dict(e.data, door=e.door) for e in rows if e.kind == kind]

    async def decisions(self) -> list[str]:
        return [d["reason"] for d in await self.entries("access.decision")]

    def enrol(self, name: str, card: str, *, pin: str | None = None, doors: tuple[str, ...]) -> int:
        cid = self.store.add_cardholder(name, pin=pin)
        c = parse_card(card)
        self.store.add_credential(cid, c.key, format=c.format.value, masked=c.masked())
        level = f"level-{name.lower()}"
        self.store.add_level(level, doors)
        self.store.grant_level(cid, level)
        return cid


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.01)


async def wait_decisions(rig: Rig, n: int, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        got = await rig.decisions()
        if len(got) >= n:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"expected {n} decisions, got {got}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, *, mode: str = "card") -> AsyncIterator[Rig]:
    device = tmp_path / "reader.tty"
    text = site_toml(tmp_path, tcp_port=1) + READER.format(device=device, door="tcp1-d0")
    if mode != "card":
        text = text.replace('name = "tcp1-d0"', f'name = "tcp1-d0"\nmode = "{mode}"', 1)
    base = parse_toml(text)
    async with SimSite(base, ports={"tcp1": 0}) as sim, SimSerialReader(device) as reader:
        daemon = Daemon(sim.client_settings())
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.wait_for(daemon.ready.wait(), 10)
            assert daemon.access is not None
            access = daemon.access
            await wait_for(lambda: access.readers["r-front"].online)
            yield Rig(daemon, sim, reader)
        finally:
            daemon.shutdown.set()
            assert await asyncio.wait_for(task, 10) == 0
    assert verify_journal(tmp_path / "journal.db").ok


async def test_enrolled_card_opens_the_door_unknown_card_does_not(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.enrol("Ada", "h10301:12:34567", doors=("tcp1-d0",))
        door = r.sim.door("tcp1-d0")
        assert door.locked
        r.reader.present_card("h10301:12:60001")  # not enrolled
        assert (await wait_decisions(r, 1))[-1] == "denied-unknown"
        assert door.locked
        r.reader.present_card("h10301:12:34567")
        assert (await wait_decisions(r, 2))[-1] == "granted"
        await wait_for(lambda: not door.locked)
        assert door.open()
        door.close()
        await wait_for(lambda: door.locked)
        decisions = await r.entries("access.decision")
        assert decisions[-1]["cardholder"] == "Ada"
        assert decisions[-1]["card"] == "h10301:12:***67"
        # a full card number never reaches the journal
        for d in decisions:
            assert "34567" not in str(d)
            assert "60001" not in str(d)


async def test_wrong_door_and_revocation_take_effect_immediately(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.enrol("Bob", "h10301:1:100", doors=("tcp1-d1",))  # not the reader's door
        r.reader.present_card("h10301:1:100")
        assert (await wait_decisions(r, 1))[-1] == "denied-no-access"
        cid = r.enrol("Cy", "h10301:1:200", doors=("tcp1-d0",))
        r.reader.present_card("h10301:1:200")
        assert (await wait_decisions(r, 2))[-1] == "granted"
        assert r.store.revoke_key(parse_card("h10301:1:200").key)
        r.reader.present_card("h10301:1:200")
        assert (await wait_decisions(r, 3))[-1] == "denied-revoked"
        r.store.set_cardholder_state(cid, "disabled")


async def test_malformed_frame_is_never_a_grant(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.enrol("Dee", "h10301:5:555", doors=("tcp1-d0",))
        r.reader.present_wiegand(26, b"\xff\xff\xff\xc0")  # parity cannot hold
        got = await wait_decisions(r, 1)
        assert got[-1] == "denied-malformed"
        assert r.sim.door("tcp1-d0").locked
        r.reader.garbage()
        r.reader.present_card("h10301:5:555")
        assert (await wait_decisions(r, 2))[-1] == "granted"


async def test_card_and_pin_with_duress(tmp_path: Path) -> None:
    async with rig(tmp_path, mode="card+pin") as r:
        r.enrol("Eve", "h10301:7:777", pin="4321", doors=("tcp1-d0",))
        door = r.sim.door("tcp1-d0")
        r.reader.present_card("h10301:7:777")
        assert (await wait_decisions(r, 1))[-1] == "pending-pin"
        assert door.locked
        r.reader.type_keys("1111#")
        assert (await wait_decisions(r, 2))[-1] == "denied-bad-pin"
        assert door.locked
        r.reader.present_card("h10301:7:777")
        r.reader.type_keys("4321#", style="wiegand4")  # one key per burst, '#' ends it
        assert (await wait_decisions(r, 4))[-1] == "granted"
        await wait_for(lambda: not door.locked)
        r.reader.present_card("h10301:7:777")
        r.reader.type_keys("4322#")  # last digit + 1: the duress PIN
        assert (await wait_decisions(r, 6))[-1] == "granted-duress"
        alarms = await r.entries("access.alarm")
        assert [a["alarm"] for a in alarms] == ["duress"]


async def test_repeated_denials_throttle_the_reader(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.enrol("Fay", "h10301:9:9", doors=("tcp1-d0",))
        for i in range(3):
            r.reader.present_card(f"h10301:9:{100 + i}")
            await wait_decisions(r, i + 1)
        r.reader.present_card("h10301:9:9")  # a valid card, but the reader is ignored now
        got = await wait_decisions(r, 4)
        assert got[-1] == "denied-throttled"
        assert r.sim.door("tcp1-d0").locked
        alarms = await r.entries("access.alarm")
        assert any(a["alarm"] == "throttle" for a in alarms)
        await asyncio.sleep(2.1)  # the configured lockout
        r.reader.present_card("h10301:9:9")
        assert (await wait_decisions(r, 5))[-1] == "granted"


async def test_reader_unplug_is_journaled(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        assert r.daemon.access is not None
        access = r.daemon.access
        r.reader.unplug()
        await wait_for(lambda: not access.readers["r-front"].online)
        r.reader.replug()
        await wait_for(lambda: access.readers["r-front"].online)
        statuses = await r.entries("reader.status")
        assert [s["online"] for s in statuses][-2:] == [False, True]
