"""OSDP end to end, in-process: libosdp PD simulator (pty, Secure Channel) -> daemon -> board.

The daemon runs the real OSDP control panel (libosdp) against simulated readers (libosdp in
the PD role) on a real pty, and the real Modbus driver against the simulated board.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
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
from drivers.osdp.keys import write_scbk
from simulators.osdp_reader import SimOsdpPd, SimOsdpReader
from simulators.site import SimSite
from tests.conftest import site_toml

OSDP = """
[access]
throttle_denials = 3
throttle_window_s = 30
throttle_lockout_s = 60

[[interlocks]]
name = "vestibule"
doors = ["tcp1-d0", "tcp1-d1"]

[[reader_buses]]
name = "osdp1"
driver = "osdp"
device = "{device}"

[[readers]]
name = "r1"
bus = "osdp1"
address = 1
door = "tcp1-d0"
key_file = "{key1}"

[[readers]]
name = "r2"
bus = "osdp1"
address = 2
door = "tcp1-d1"
key_file = "{key2}"
"""


@dataclass
class Rig:
    daemon: Daemon
    sim: SimSite
    line: SimOsdpReader

    @property
    def store(self) -> CredentialStore:
        assert self.daemon.store is not None
        return self.daemon.store

    async def entries(self, kind: str) -> list[dict[str, Any]]:
        assert self.daemon.journal is not None
        await self.daemon.journal.flush()
        rows = await self.daemon.journal.read(0, 100_000)
        return [dict(e.data, door=e.door, device=e.device) for e in rows if e.kind == kind]

    def enrol(self, name: str, card: str, doors: tuple[str, ...]) -> None:
        cid = self.store.add_cardholder(name)
        c = parse_card(card)
        self.store.add_credential(cid, c.key)
        self.store.add_level(f"l-{name.lower()}", doors)
        self.store.grant_level(cid, f"l-{name.lower()}")


async def wait_for(predicate: Callable[[], bool], timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.01)


async def decisions(rig: Rig, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        got = await rig.entries("access.decision")
        if len(got) >= n:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"expected {n} decisions, got {[d['reason'] for d in got]}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, *, pd2_key: bytes | None = None) -> AsyncIterator[Rig]:
    device = tmp_path / "osdp.tty"
    keys = [secrets.token_bytes(16), secrets.token_bytes(16)]
    paths = [tmp_path / "keys" / "r1.scbk", tmp_path / "keys" / "r2.scbk"]
    paths[0].parent.mkdir(mode=0o700)
    for path, key in zip(paths, keys, strict=True):
        write_scbk(path, key)
    text = site_toml(tmp_path, tcp_port=1) + OSDP.format(
        device=device, key1=paths[0], key2=paths[1]
    )
    base = parse_toml(text)
    line = SimOsdpReader(
        SimOsdpPd(1, keys[0]),
        SimOsdpPd(2, pd2_key if pd2_key is not None else keys[1]),
        device=device,
    )
    line.start()
    try:
        async with SimSite(base, ports={"tcp1": 0}) as sim:
            daemon = Daemon(sim.client_settings())
            task = asyncio.create_task(daemon.run())
            try:
                await asyncio.wait_for(daemon.ready.wait(), 10)
                yield Rig(daemon, sim, line)
            finally:
                daemon.shutdown.set()
                assert await asyncio.wait_for(task, 10) == 0
    finally:
        line.stop()
    assert verify_journal(tmp_path / "journal.db").ok


def reader_online(r: Rig, name: str) -> bool:
    assert r.daemon.access is not None
    info = r.daemon.access.readers[name]
    return info.online and info.secure is True


async def test_card_over_secure_channel_opens_the_door_with_feedback(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await wait_for(lambda: reader_online(r, "r1"))
        r.enrol("Ann", "h10301:3:333", ("tcp1-d0",))
        door = r.sim.door("tcp1-d0")
        pd = r.line.pd(1)
        pd.present("h10301:3:334")  # unknown
        assert (await decisions(r, 1))[-1]["reason"] == "denied-unknown"
        assert door.locked
        pd.present("h10301:3:333")
        got = await decisions(r, 2)
        assert got[-1]["reason"] == "granted"
        await wait_for(lambda: not door.locked)
        # reader feedback: red for the denial, then green for the grant (LED commands; the
        # buzzer commands in between carry no colour)

        def colours() -> list[str]:
            return [str(i.color).lower() for i in pd.indications if i.color is not None]

        await wait_for(lambda: any("green" in c for c in colours()))
        seen = colours()
        first_red = next(i for i, c in enumerate(seen) if "red" in c)
        first_green = next(i for i, c in enumerate(seen) if "green" in c)
        assert first_red < first_green


async def test_wrong_key_raises_an_alarm_and_never_grants(tmp_path: Path) -> None:
    async with rig(tmp_path, pd2_key=secrets.token_bytes(16)) as r:
        r.enrol("Ben", "h10301:4:444", ("tcp1-d1",))
        await wait_for(lambda: reader_online(r, "r1"))

        async def sc_alarm() -> bool:
            alarms = await r.entries("reader.alarm")
            return any(a["device"] == "r2" and a["alarm"] == "sc-failure" for a in alarms)

        deadline = time.monotonic() + 10
        while not await sc_alarm():
            assert time.monotonic() < deadline, "no sc-failure alarm for the wrong key"
            await asyncio.sleep(0.05)
        r.line.pd(2).present("h10301:4:444")
        await asyncio.sleep(0.5)
        assert [d for d in await r.entries("access.decision") if d["reader"] == "r2"] == []
        assert r.sim.door("tcp1-d1").locked


async def test_unplugged_line_goes_offline_and_throttle_trips(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await wait_for(lambda: reader_online(r, "r1"))
        r.enrol("Cat", "h10301:5:555", ("tcp1-d0",))
        pd = r.line.pd(1)
        for i in range(3):
            pd.present(f"h10301:5:{600 + i}")
            await decisions(r, i + 1)
        pd.present("h10301:5:555")
        assert (await decisions(r, 4))[-1]["reason"] == "denied-throttled"
        assert r.sim.door("tcp1-d0").locked
        assert any(a["alarm"] == "throttle" for a in await r.entries("access.alarm"))
        r.line.unplug()
        assert r.daemon.access is not None
        access = r.daemon.access
        await wait_for(lambda: not access.readers["r1"].online)
        statuses = [s for s in await r.entries("reader.status") if s["device"] == "r1"]
        assert statuses[-1]["online"] is False


async def test_interlock_denies_while_the_other_vestibule_door_is_open(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await wait_for(lambda: reader_online(r, "r1") and reader_online(r, "r2"))
        r.enrol("Dov", "h10301:6:666", ("tcp1-d0", "tcp1-d1"))
        outer = r.sim.door("tcp1-d1")
        r.line.pd(2).present("h10301:6:666")
        assert (await decisions(r, 1))[-1]["reason"] == "granted"
        await wait_for(lambda: not outer.locked)
        assert outer.open()
        assert r.daemon.doors is not None
        doors = r.daemon.doors
        await wait_for(lambda: doors.state("tcp1-d1").contact.value == "open")
        r.line.pd(1).present("h10301:6:666")
        assert (await decisions(r, 2))[-1]["reason"] == "denied-interlock"
        assert r.sim.door("tcp1-d0").locked
        outer.close()
        await wait_for(lambda: doors.state("tcp1-d1").phase.value == "locked")
        r.line.pd(1).present("h10301:6:666")
        assert (await decisions(r, 3))[-1]["reason"] == "granted"
