"""The daemon end to end: a real ``warding run`` subprocess driving simulated Modbus boards.

Life-cycle tests (start-up, signals, a second daemon, a crash, board faults, sd_notify) each get
their own site and daemon; door scenario tests share one daemon per module and use distinct
doors, each reading only the journal entries after its own starting point.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    PYTHON,
    Daemon,
    NotifyListener,
    Site,
    event_matches,
    read_journal,
    run,
    running_daemon,
    simulated_site,
    wait_for,
    warding,
    write_coils_over_modbus,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _door_events(events: list[dict[str, Any]], door: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["door"] == door and e["kind"] == kind]


def _transitions(events: list[dict[str, Any]], door: str) -> list[tuple[str, str]]:
    return [(e["data"]["from"], e["data"]["to"]) for e in _door_events(events, door, "door.state")]


async def _wardctl_events(daemon: Daemon, after: int) -> list[dict[str, Any]]:
    res = await daemon.wardctl("events", "--json", "--after", str(after), "-n", "10000")
    assert res.rc == 0, res
    return [json.loads(line) for line in res.lines]


# -- start-up and shutdown -------------------------------------------------------------------


async def test_startup_asserts_every_door(tmp_path: Path) -> None:
    async with simulated_site(tmp_path) as site:
        # a relay left energised (a power blip, another master): the fail-secure door is open
        await write_coils_over_modbus(site, "tcp1", {0: True})
        assert not site.sim.door("tcp1-d0").locked
        async with running_daemon(site) as daemon:
            # the API answers only once every relay is asserted: no waiting needed here
            assert site.all_locked(), site.relays()
            for name in site.relays():
                lock = site.settings.door(name).lock.value
                # fail-secure: de-energised = locked; fail-safe: energised = locked
                assert site.sim.door(name).relay is (lock == "fail-safe"), name

            res = await daemon.wardctl("status", "--json")
            assert res.rc == 0, res
            status = json.loads(res.stdout)
            assert {d["door"] for d in status["doors"]} == set(site.relays())
            for d in status["doors"]:
                assert (d["state"], d["lock"], d["link"], d["alarms"]) == (
                    "locked",
                    "locked",
                    "up",
                    [],
                ), d
            assert {b["board"]: b["link"] for b in status["boards"]} == {
                "tcp1": "up",
                "rtu1": "up",
            }
            events = await daemon.events()
            kinds = [e["kind"] for e in events]
            assert kinds.index("daemon.start") < kinds.index("daemon.ready")
            ready = next(e for e in events if e["kind"] == "daemon.ready")
            assert sorted(ready["data"]["boards_up"]) == ["rtu1", "tcp1"]
            assert ready["data"]["boards_down"] == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_stops_cleanly_in_fail_state(tmp_path: Path, sig: signal.Signals) -> None:
    async with simulated_site(tmp_path) as site, running_daemon(site) as daemon:
        # one door held unlocked, to see that shutdown de-energises it too
        res = await daemon.wardctl("door", "unlock", "tcp1-d0")
        assert res.rc == 0, res
        assert site.sim.door("tcp1-d0").relay
        assert any(site.relays().values())

        started = time.monotonic()
        rc = await daemon.stop(sig, within=5.0)
        elapsed = time.monotonic() - started
        assert rc == 0, daemon.log_text()
        assert elapsed < 5.0
        assert not daemon.socket.exists(), "the control socket outlived the daemon"

        # every relay de-energised: each lock's own power-loss state
        assert site.relays() == dict.fromkeys(site.relays(), False)
        assert site.sim.door("tcp1-d0").locked  # fail-secure: locked
        assert not site.sim.door("tcp1-d1").locked  # fail-safe: released, as without power

    rows = read_journal(site.journal)
    doors = [d.name for d in site.settings.doors]
    safe = [r for r in rows if r["kind"] == "door.safe"]
    assert sorted(r["door"] for r in safe) == sorted(doors)
    assert all(r["data"]["confirmed"] is True for r in safe), safe
    stop = [r for r in rows if r["kind"] == "daemon.stop"]
    assert len(stop) == 1
    assert stop[0]["data"] == {"doors_safe": len(doors), "failed": []}
    assert max(r["seq"] for r in safe) < stop[0]["seq"]

    verify = await warding("journal", "verify", "--db", str(site.journal))
    assert verify.rc == 0, verify
    assert "OK" in verify.stdout


async def test_second_daemon_refuses_to_start(tmp_path: Path) -> None:
    async with simulated_site(tmp_path) as site, running_daemon(site) as first:
        seq = await first.seq()
        second = await run(
            [PYTHON, "-m", "controller.cli.warding", "run", "--config", str(site.config)],
            within=15,
        )
        assert second.rc != 0
        assert len(second.err_lines) == 1, second.stderr
        assert "another warding daemon" in second.err_lines[0]
        assert "Traceback" not in second.stderr + second.stdout

        # the first one still serves, on the same socket, and its doors are untouched
        assert site.socket.exists()
        assert await first.ping()
        doors = await first.doors()
        assert {d["state"] for d in doors.values()} == {"locked"}
        assert site.all_locked()
        assert await first.seq() >= seq
        rows = read_journal(site.journal)
        assert [r["kind"] for r in rows].count("daemon.start") == 1


async def test_stale_socket_after_kill9_does_not_prevent_restart(tmp_path: Path) -> None:
    async with simulated_site(tmp_path) as site:
        async with running_daemon(site) as crashed:
            for door in ("tcp1-d0", "rtu1-d0"):  # fail-secure doors held unlocked
                res = await crashed.wardctl("door", "unlock", door)
                assert res.rc == 0, res
            assert not site.sim.door("tcp1-d0").locked
            assert await crashed.stop(signal.SIGKILL) == -signal.SIGKILL
        assert site.socket.exists(), "kill -9 should leave the socket file behind"
        # a crash leaves the relays as they were
        assert not site.sim.door("tcp1-d0").locked

        async with running_daemon(site) as restarted:
            # re-asserted before the API answers: locked again, nothing served before that
            assert site.all_locked(), site.relays()
            doors = await restarted.doors()
            assert {d["state"] for d in doors.values()} == {"locked"}
            assert await restarted.stop() == 0

    kinds = [r["kind"] for r in read_journal(site.journal)]
    assert kinds.count("daemon.start") == 2
    verify = await warding("journal", "verify", "--db", str(site.journal))
    assert verify.rc == 0, verify


# -- boards going away -----------------------------------------------------------------------


@pytest.mark.parametrize("board", ["tcp1", "rtu1"])
async def test_board_offline_faults_its_doors_and_never_releases(
    tmp_path: Path, board: str
) -> None:
    async with simulated_site(tmp_path) as site, running_daemon(site) as daemon:
        mine = site.doors_on(board)
        others = [n for n in site.relays() if n not in mine]
        relays = site.relays()
        after = await daemon.seq()

        await site.sim.board(board).set_offline(True)

        async def faulted() -> bool:
            status = await daemon.status()
            doors = {d["door"]: d for d in status["doors"]}
            link = {b["board"]: b["link"] for b in status["boards"]}[board]
            return link != "up" and all(doors[n]["state"] == "fault" for n in mine)

        await wait_for(faulted, 5, what=f"doors on {board} to fault")
        doors = await daemon.doors()
        assert all(doors[n]["state"] == "locked" for n in others), doors
        assert all(doors[n]["lock"] == "unknown" for n in mine), doors

        # a command the board cannot confirm: exit 1; the intent stays until the pulse ends
        door = f"{board}-d0"  # fail-secure
        res = await daemon.wardctl("door", "pulse", door, "--duration", "0.3")
        assert res.rc == 1, res
        assert res.lines[0].startswith(f"{door}: pulse NOT confirmed: ")
        assert site.relays() == relays

        async def pulse_over() -> bool:
            return bool((await daemon.doors())[door]["intent"] == "locked")

        await wait_for(pulse_over, 3, what="the pulse to end")

        await site.sim.board(board).set_offline(False)

        async def recovered() -> bool:
            status = await daemon.status()
            link = {b["board"]: b["link"] for b in status["boards"]}[board]
            doors = status["doors"]
            return link == "up" and {(d["state"], d["lock"]) for d in doors} == {("locked",) * 2}

        await wait_for(recovered, 5, what=f"{board} back up and its doors locked")
        # loss and return of the link released nothing; the expired pulse was not replayed
        assert site.relays() == relays
        assert site.all_locked()

        # (``after`` may precede start-up entries still being committed: anchor on the drop)
        down = (await daemon.wait_event(after, kind="board.link", device=board, state="backoff"))[0]
        await daemon.wait_event(down["seq"], kind="board.link", device=board, state="up")
        events = await daemon.events(down["seq"] - 1)
        for name in mine:
            faults = [e["data"]["active"] for e in _door_events(events, name, "door.alarm")]
            assert faults[0] is True, (name, faults)
            assert faults[-1] is False, (name, faults)


async def test_start_with_a_board_offline(tmp_path: Path) -> None:
    async with simulated_site(tmp_path) as site:
        await site.sim.board("tcp1").set_offline(True)
        listener = NotifyListener(tmp_path / "notify.sock")
        try:
            env = {"NOTIFY_SOCKET": str(listener.path)}
            async with running_daemon(site, env=env) as daemon:
                await wait_for(lambda: listener.first("READY=1"), 5, what="READY=1")
                doors = await daemon.doors()
                for name, row in doors.items():
                    want = "fault" if name.startswith("tcp1") else "locked"
                    assert row["state"] == want, row
                status = await daemon.status()
                assert {b["board"]: b["link"] for b in status["boards"]}["tcp1"] != "up"
                assert site.all_locked(site.doors_on("rtu1"))
                ready = next(e for e in await daemon.events() if e["kind"] == "daemon.ready")
                assert ready["data"]["boards_down"] == ["tcp1"]
                # the fail-safe maglock on tcp1 was never powered: the board was not there
                assert site.sim.door("tcp1-d1").relay is False

                await site.sim.board("tcp1").set_offline(False)
                await wait_for(site.all_locked, 5, what="tcp1 relays asserted on arrival")

                async def all_locked() -> bool:
                    doors = await daemon.doors()
                    return {d["state"] for d in doors.values()} == {"locked"}

                await wait_for(all_locked, 5, what="every door locked")
        finally:
            listener.close()


# -- sd_notify -------------------------------------------------------------------------------


async def test_sd_notify_ready_watchdog_stopping(tmp_path: Path) -> None:
    async with simulated_site(tmp_path) as site:
        listener = NotifyListener(tmp_path / "notify.sock", probe=site.relays)
        try:
            env = {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "400000"}
            async with running_daemon(site, env=env, wait=False) as daemon:

                async def serving() -> bool:
                    assert daemon.running, daemon.log_text()
                    if not await daemon.ping():
                        return False
                    listener.drain()  # READY=1, if sent, was queued before the socket existed
                    assert listener.first("READY=1"), "the API answered before READY=1"
                    return True

                await wait_for(serving, 15, what="the daemon to serve")
                ready = listener.first("READY=1")
                assert ready is not None
                index, relays_at_ready = ready
                # every relay was asserted when READY=1 arrived
                assert relays_at_ready == {n: site.expected_relay(n) for n in site.relays()}

                await wait_for(lambda: listener.count("WATCHDOG=1") >= 3, 5, what="3 WATCHDOG=1")
                first_ping = listener.first("WATCHDOG=1")
                assert first_ping is not None
                assert first_ping[0] > index
                assert listener.count("STOPPING=1") == 0

                assert await daemon.stop() == 0
                listener.drain()
                stopping = listener.first("STOPPING=1")
                assert stopping is not None
                assert stopping[0] > index
                assert listener.count("READY=1") == 1
        finally:
            listener.close()


# -- door scenarios on a shared daemon -------------------------------------------------------


@pytest.mark.parametrize("door", ["tcp1-d0", "rtu1-d1"])  # fail-secure on TCP, fail-safe on RTU
async def test_pulse_end_to_end(shared_site: Site, shared_daemon: Daemon, door: str) -> None:
    site, daemon, sim = shared_site, shared_daemon, shared_site.sim.door(door)
    after = await daemon.seq()
    assert sim.locked

    res = await daemon.wardctl("door", "pulse", door, "--duration", "5")
    assert res.rc == 0, res
    assert res.lines == [f"{door}: pulse confirmed; now unlocked"]
    assert not sim.locked  # confirmed means the readback agreed
    assert sim.open()

    async def phase(want: str) -> bool:
        return bool((await daemon.doors())[door]["state"] == want)

    await wait_for(lambda: phase("open"), 3, what="door open")
    sim.close()
    # relocks because the door closed, well before the 5 s pulse ends
    await wait_for(lambda: sim.locked, 2.5, what="relock at the simulator")
    assert sim.relay == site.expected_relay(door)
    await wait_for(lambda: phase("locked"), 2, what="door locked")
    # start-up entries may still be committing after ``after``: anchor on the command
    command = (await daemon.wait_event(after, kind="door.command", door=door))[0]
    await daemon.wait_event(command["seq"], kind="door.state", door=door, to="locked")

    events = await _wardctl_events(daemon, command["seq"] - 1)
    commands = _door_events(events, door, "door.command")
    assert [(c["data"]["action"], c["data"]["source"]) for c in commands] == [("pulse", "wardctl")]
    assert commands[0]["data"]["duration_s"] == 5.0
    assert _transitions(events, door) == [
        ("locked", "unlocked"),
        ("unlocked", "open"),
        ("open", "locked"),
    ]
    assert not _door_events(events, door, "door.alarm")


async def test_forced_open_alarm(shared_site: Site, shared_daemon: Daemon) -> None:
    door = "tcp1-d2"
    daemon, sim = shared_daemon, shared_site.sim.door(door)
    after = await daemon.seq()
    assert sim.locked
    assert sim.open(force=True)

    async def forced() -> bool:
        row = (await daemon.doors())[door]
        return bool(row["state"] == "forced-open" and row["alarms"] == ["forced-open"])

    await wait_for(forced, 3, what="forced-open alarm")
    res = await daemon.wardctl("status")
    assert res.rc == 0, res
    line = next(line for line in res.lines if line.startswith(door + " "))
    assert "forced-open" in line.split(), line
    assert sim.locked  # an alarm never releases the lock

    await daemon.wait_event(after, kind="door.alarm", door=door, alarm="forced-open", active=True)
    sim.close()
    await daemon.wait_event(after, kind="door.alarm", door=door, alarm="forced-open", active=False)
    row = (await daemon.doors())[door]
    assert (row["state"], row["alarms"]) == ("locked", [])
    events = await daemon.events(after)
    alarms = [e["data"] for e in _door_events(events, door, "door.alarm")]
    assert [(a["alarm"], a["active"]) for a in alarms] == [
        ("forced-open", True),
        ("forced-open", False),
    ]
    assert alarms[0]["detail"] == "opened while locked"
    assert ("locked", "forced-open") in _transitions(events, door)


async def test_held_open_alarm(shared_site: Site, shared_daemon: Daemon) -> None:
    door = "quick"  # held_open_s = 0.3
    daemon, sim = shared_daemon, shared_site.sim.door(door)
    after = await daemon.seq()
    reply = await daemon.api("door", action="pulse", door=door)
    assert reply["result"]["confirmed"] is True
    opened = time.monotonic()
    assert sim.open()

    async def held() -> bool:
        row = (await daemon.doors())[door]
        return bool(row["state"] == "held-open" and row["alarms"] == ["held-open"])

    await wait_for(held, 4, what="held-open alarm")
    assert time.monotonic() - opened >= 0.3
    alarm = await daemon.wait_event(
        after, kind="door.alarm", door=door, alarm="held-open", active=True
    )
    assert alarm[0]["data"]["open_s"] >= 0.3

    sim.close()
    await daemon.wait_event(after, kind="door.alarm", door=door, alarm="held-open", active=False)
    await wait_for(lambda: sim.locked, 2, what="relock after the door closed")
    command = (await daemon.wait_event(after, kind="door.command", door=door))[0]
    await daemon.wait_event(command["seq"], kind="door.state", door=door, to="locked")
    events = await daemon.events(command["seq"] - 1)
    assert not [e for e in events if event_matches(e, kind="door.alarm", alarm="forced-open")]
    assert _transitions(events, door) == [
        ("locked", "unlocked"),
        ("unlocked", "open"),
        ("open", "held-open"),
        ("held-open", "locked"),
    ]


async def test_rex_releases_and_the_opening_is_not_forced(
    shared_site: Site, shared_daemon: Daemon
) -> None:
    door = "rtu1-d2"  # fail-secure, rex_unlocks = true (default)
    daemon, sim = shared_daemon, shared_site.sim.door(door)
    after = await daemon.seq()
    assert sim.locked
    sim.press_rex()
    try:
        await wait_for(lambda: not sim.locked, 3, what="REX to release the lock")
        assert sim.open()  # a plain push, no force needed
    finally:
        sim.release_rex()

    async def phase(want: str) -> bool:
        return bool((await daemon.doors())[door]["state"] == want)

    await wait_for(lambda: phase("open"), 3, what="door open")
    sim.close()
    await wait_for(lambda: sim.locked, 2, what="relock after the door closed")
    await wait_for(lambda: phase("locked"), 2, what="door locked")
    press = (await daemon.wait_event(after, kind="door.rex", door=door))[0]
    await daemon.wait_event(press["seq"], kind="door.state", door=door, to="locked")

    events = await daemon.events(press["seq"] - 1)
    rex = _door_events(events, door, "door.rex")
    assert [e["data"] for e in rex] == [{"unlocks": True}]
    assert not _door_events(events, door, "door.alarm")
    assert "forced-open" not in {to for _, to in _transitions(events, door)}
    assert sim.forced_count == 0


async def test_an_acknowledged_lockdown_is_journaled_even_if_killed_at_once(
    tmp_path: Path,
) -> None:
    async with simulated_site(tmp_path) as site:
        for attempt in range(3):  # a race would show now and then: try a few times
            async with running_daemon(site) as daemon:
                reply = await daemon.api("lockdown.start", reason=f"armed intruder {attempt}")
                assert reply["ok"] is True, reply
                assert await daemon.stop(signal.SIGKILL) == -signal.SIGKILL  # no time to flush
            triggers = [r for r in read_journal(site.journal) if r["kind"] == "lockdown.trigger"]
            assert triggers, "an acknowledged lockdown has no trigger in the journal"
            assert triggers[-1]["data"]["reason"] == f"armed intruder {attempt}"
