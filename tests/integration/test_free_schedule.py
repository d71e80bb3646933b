"""Free-access schedules and lockdowns, in-process: the real Daemon against simulated boards.

A door on a schedule that is free all day is unlocked by it; a lockdown relocks it, and when
the lockdown ends the schedule takes the door back at once, however short the lockdown was.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.access.service import FREE_SCHEDULE_CHECK_S
from controller.app import Daemon
from controller.lockdown.model import SITE, AllClear, StartLockdown, Trigger
from controller.settings import parse_toml
from simulators.site import SimSite
from tests.conftest import site_toml

FREE_DOOR = """
[[schedules]]
name = "always"
intervals = ["daily 00:00-24:00"]

[[doors]]
name = "lobby-free"
lock = "fail-secure"
relay = { board = "tcp1", coil = 4 }
free_schedule = "always"
"""


async def wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_a_short_lockdown_hands_a_free_door_back_to_its_schedule(tmp_path: Path) -> None:
    base = parse_toml(site_toml(tmp_path, tcp_port=1, extra_door=FREE_DOOR))
    async with SimSite(base, ports={"tcp1": 0}) as sim:
        daemon = Daemon(sim.client_settings())
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.wait_for(daemon.ready.wait(), 10)
            doors, runner = daemon.doors, daemon.lockdown
            assert doors is not None
            assert runner is not None

            def intent() -> str:
                assert doors is not None
                return doors.state("lobby-free").intent.value

            # the schedule's free period: unlocked, and the strike released
            await wait_for(lambda: intent() == "unlocked" and not sim.door("lobby-free").locked, 5)

            # a lockdown that starts and ends well within one periodic schedule check
            trigger = Trigger("operator", "test", "test", "drill of the schedule hand-back")
            await runner.submit(StartLockdown(SITE, trigger, runner.wall()))
            await wait_for(lambda: intent() == "locked" and sim.door("lobby-free").locked, 5)
            for person in ("Ace", "Bea"):
                await runner.submit(AllClear(SITE, person, True, "operator", runner.wall()))
            assert runner.status()["mode"] == "normal"

            # the schedule unlocks it again at once, not at its next periodic check
            await wait_for(lambda: intent() == "unlocked", FREE_SCHEDULE_CHECK_S / 3)
            await wait_for(lambda: not sim.door("lobby-free").locked, 2)
        finally:
            daemon.shutdown.set()
            assert await asyncio.wait_for(task, 10) == 0
