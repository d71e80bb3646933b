"""The lockdown runner in-process: real Settings, DoorService, LockdownRunner and LockdownApi on
fake relay boards that answer in the same process.

What this covers that the pure machine tests cannot: verification and re-assertion of held doors
(a hold whose write failed while a board was away), the status lists and records per incident
(overlapping zone and site incidents, override and released doors, elapsed time), persistence of
the state file (serialised writers, retry with backoff, the alarm), incident numbering across a
lost state file (from the journal), the fire reset while a fire input cannot be read, and the
refusals of the lockdown control commands.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import controller.api.lockdown_api as lockdown_api_mod
import controller.lockdown.runner as runner_mod
from controller.access.store import CredentialStore
from controller.api.lockdown_api import MAX_TEXT, LockdownApi, clean_text
from controller.api.protocol import Request
from controller.api.server import PEER
from controller.cli.wardctl import _lockdown_text
from controller.doors.service import DoorService
from controller.errors import CommandError
from controller.journal import Entry, Journal, JournalWriter, format_ts
from controller.lockdown import report
from controller.lockdown.model import (
    SITE,
    AllClear,
    FireAlarm,
    Mode,
    SetThreatLevel,
    SiteState,
    StartEvacuation,
    StartLockdown,
    Trigger,
)
from controller.lockdown.runner import LockdownRunner, load_state, save_state
from controller.settings import Settings, parse_toml
from drivers.base import InputsRead, LinkChanged, LinkState, RelayBoard, WriteOutcome

PANIC = Trigger("panic", "panic input p1", "p1", "panic button")
OPERATOR = Trigger("operator", "root(pid 1)", "control socket", "armed person")

FIRE_BOARD = """
[[boards]]
name = "panel"
transport = "tcp"
host = "127.0.0.1"
port = 1503
coils = 8
inputs = 16
"""

FIRE_INPUT = """
[[lockdown.inputs]]
name = "fire-panel"
kind = "fire"
board = "panel"
input = 0
"""


def site(tmp: Path, *, boards: str = "", lockdown: str = "", verify_s: float = 0.05) -> Settings:
    """Three doors on one board: two in zone north (one a fail-safe egress door), one in east."""
    return parse_toml(f"""
[controller]
id = "unit"
socket = "{tmp}/c.sock"
journal = "{tmp}/j.db"

[[boards]]
name = "b1"
transport = "tcp"
host = "127.0.0.1"
port = 1502
coils = 8
inputs = 16
{boards}
[[doors]]
name = "main"
lock = "fail-secure"
zone = "north"
relay = {{ board = "b1", coil = 0 }}
contact = {{ board = "b1", input = 0 }}

[[doors]]
name = "exit"
lock = "fail-safe"
egress = true
zone = "north"
relay = {{ board = "b1", coil = 1 }}
contact = {{ board = "b1", input = 2 }}

[[doors]]
name = "east"
lock = "fail-secure"
zone = "east"
relay = {{ board = "b1", coil = 2 }}
contact = {{ board = "b1", input = 4 }}

[lockdown]
state_file = "{tmp}/lockdown.json"
verify_interval_s = {verify_s}
{lockdown}
""")


class FakeBoard:
    """A relay board that answers each command at once, or fails it while ``offline``."""

    def __init__(self, name: str, n: int = 8) -> None:
        self.name = name
        self.coils = [False] * n
        self.commands: list[dict[int, bool]] = []
        self.offline = False
        self.held: list[tuple[dict[int, bool], asyncio.Future[WriteOutcome]]] = []
        self.answer = True  # False: keep the futures until ``release``

    @property
    def link(self) -> LinkState:
        return LinkState.BACKOFF if self.offline else LinkState.UP

    def command(self, coils: Mapping[int, bool]) -> asyncio.Future[WriteOutcome]:
        fut: asyncio.Future[WriteOutcome] = asyncio.get_running_loop().create_future()
        self.commands.append(dict(coils))
        if self.offline:
            fut.set_result(WriteOutcome(frozenset(), frozenset(coils), "board offline"))
        elif not self.answer:
            self.held.append((dict(coils), fut))
        else:
            for c, v in coils.items():
                self.coils[c] = v
            fut.set_result(WriteOutcome(frozenset(coils), frozenset()))
        return fut

    def release(self) -> None:
        """Answer every held command."""
        held, self.held = self.held, []
        for coils, fut in held:
            for c, v in coils.items():
                self.coils[c] = v
            fut.set_result(WriteOutcome(frozenset(coils), frozenset()))

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def close(self) -> None:
        return None


class ListRecorder:
    """A recorder that keeps journal entries in a list (no disk)."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self._seq = itertools.count(1)

    def record(
        self, kind: str, *, door: str | None = None, device: str | None = None, **data: Any
    ) -> None:
        self.entries.append(Entry(next(self._seq), format_ts(), kind, door, device, data, "", ""))

    def record_many(
        self,
        events: Iterable[tuple[str, str | None, str | None, Mapping[str, Any]]],
        *,
        ts: str | None = None,
    ) -> None:
        for kind, door, device, data in events:
            self.record(kind, door=door, device=device, **dict(data))

    def data(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        """Data of the entries of ``kind`` (door included) whose fields match ``match``."""
        out = []
        for e in self.entries:
            d = {**e.data, "door": e.door}
            if e.kind == kind and all(d.get(k) == v for k, v in match.items()):
                out.append(d)
        return out


@dataclass
class Rig:
    """One site in-process."""

    settings: Settings
    recorder: Any
    boards: dict[str, FakeBoard]
    doors: DoorService
    runner: LockdownRunner
    tmp: Path

    def link(self, board: str, state: LinkState = LinkState.UP) -> None:
        if state is LinkState.UP:  # as a real board: its inputs are read (all idle: closed)
            idle = (False,) * 16
            self.doors.on_driver_event(InputsRead(board, idle, frozenset(range(16))))
        self.doors.on_driver_event(LinkChanged(board, state, ""))

    async def run_for(self, seconds: float) -> None:
        """Let the runner's loop verify, re-assert, retry and tick for ``seconds``."""
        task = asyncio.create_task(self.runner.run())
        try:
            await asyncio.sleep(seconds)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    async def until(self, cond: Any, within: float = 3.0) -> None:
        """Run the runner until ``cond()`` holds (fails after ``within`` seconds)."""
        task = asyncio.create_task(self.runner.run())
        try:
            async with asyncio.timeout(within):
                while not cond():  # noqa: ASYNC110 - polled: conditions on files and doors
                    await asyncio.sleep(0.01)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


def make_rig(
    tmp: Path,
    *,
    recorder: Any = None,
    boards: str = "",
    lockdown: str = "",
    board_objs: dict[str, FakeBoard] | None = None,
) -> Rig:
    s = site(tmp, boards=boards, lockdown=lockdown)
    rec = ListRecorder() if recorder is None else recorder
    fakes = board_objs or {b.name: FakeBoard(b.name) for b in s.boards}
    relay_boards: dict[str, RelayBoard] = dict(fakes)
    doors = DoorService(s, relay_boards, rec)
    return Rig(s, rec, fakes, doors, LockdownRunner(s, doors, rec), tmp)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = make_rig(tmp_path)
    r.link("b1")
    r.runner.restore()
    r.runner.apply()
    yield r
    await r.runner.close()


def on_disk(path: Path) -> SiteState | None:
    """The state file's state; None if absent or still damaged."""
    try:
        return load_state(path)
    except runner_mod.StateFileError:
        return None


def confirmed(r: Rig) -> bool:
    doors = r.runner.status().get("doors")
    return doors is not None and doors["confirmed"] == doors["total"]


# --------------------------------------------------------------------------- verification


async def test_a_door_whose_hold_write_failed_is_written_again_and_confirmed(rig: Rig) -> None:
    """A board away when the lockdown begins: once back, its doors confirm by a fresh readback.

    The driver re-writes its relays itself on reconnect, and a readback that shows nothing new
    is not a fresh one for the door service: so the runner must command the door again.
    """
    board = rig.boards["b1"]
    rig.doors.assert_all()  # start-up: every relay commanded and read back
    await asyncio.sleep(0.01)
    board.offline = True
    rig.link("b1", LinkState.BACKOFF)
    await rig.runner.submit(StartLockdown(SITE, PANIC, 1000.0))
    await rig.run_for(0.15)
    assert rig.runner.status()["doors"]["confirmed"] == 0  # failed while the board is away
    writes_before = len(board.commands)
    board.offline = False
    rig.link("b1")  # back: nothing changed on the board, so no readback reports a change
    await rig.until(lambda: confirmed(rig))
    # confirmed by a write of the runner after the reconnect, not by the old readback
    assert len(board.commands) > writes_before
    secured = rig.recorder.data("lockdown.door", status="secured", incident=1)
    assert {d["door"] for d in secured} == {"main", "exit", "east"}


async def test_a_pending_door_with_a_write_in_flight_is_not_written_again(rig: Rig) -> None:
    board = rig.boards["b1"]
    board.answer = False  # the board takes its time
    await rig.runner.submit(StartLockdown(SITE, PANIC, 1000.0))
    n = len(board.commands)
    await rig.run_for(0.3)  # several verify intervals
    assert len(board.commands) == n  # the hold's write is still in flight: no pile-up
    assert rig.runner.status()["doors"]["pending"] == ["east", "exit", "main"]
    board.release()
    await rig.until(lambda: confirmed(rig))


async def test_override_and_released_doors_are_listed(tmp_path: Path) -> None:
    r = make_rig(tmp_path, boards=FIRE_BOARD, lockdown=FIRE_INPUT)
    r.link("b1")
    r.link("panel")
    r.runner.restore()
    r.runner.watch_inputs()
    r.runner.apply()
    await r.runner.submit(StartLockdown(SITE, PANIC, 1000.0))
    await r.until(lambda: confirmed(r))
    result = await r.doors.command("main", "unlock", override=True, source="wardctl (override)")
    assert result.confirmed, result
    r.doors.on_driver_event(InputsRead("panel", (True,) + (False,) * 15, frozenset({0})))
    await r.runner.flush()
    await r.run_for(0.15)
    doors = r.runner.status()["doors"]
    assert (doors["override"], doors["released"]) == (["main"], ["exit"])
    assert (doors["confirmed"], doors["total"]) == (1, 3)
    last = r.recorder.data("lockdown.status", incident=1)[-1]
    assert (last["override"], last["released"], last["confirmed"]) == (["main"], ["exit"], 1)
    text = _lockdown_text(r.runner.status())
    assert "override: main" in text
    assert "released: exit" in text
    await r.runner.close()


async def test_each_incident_reports_every_door_it_holds(rig: Rig) -> None:
    """A zone lockdown, then a site lockdown: the site's incident names the zone's door too."""
    await rig.runner.submit(StartLockdown("east", PANIC, 1000.0))
    await rig.until(lambda: confirmed(rig))
    await rig.runner.submit(StartLockdown(SITE, OPERATOR, 1001.0))
    await rig.until(lambda: confirmed(rig) and rig.runner.status()["doors"]["total"] == 3)
    await rig.run_for(0.1)
    site_doors = {d["door"] for d in rig.recorder.data("lockdown.door", incident=2)}
    assert site_doors == {"main", "exit", "east"}
    zone_doors = {d["door"] for d in rig.recorder.data("lockdown.door", incident=1)}
    assert zone_doors == {"east"}
    statuses = {d["incident"]: d for d in rig.recorder.data("lockdown.status")}
    assert (statuses[1]["confirmed"], statuses[1]["total"]) == (1, 1)
    assert (statuses[2]["confirmed"], statuses[2]["total"]) == (3, 3)
    # the zone's all-clear does not take its door out of the site incident's report
    await rig.runner.submit(AllClear("east", "#1 ann", True, "card", 1002.0))
    await rig.runner.submit(AllClear("east", "#2 bob", True, "card", 1003.0))
    await rig.run_for(0.1)
    incident = report.build_incident(rig.recorder.entries, 2)
    assert {d.door for d in incident.doors} == {"main", "exit", "east"}
    assert incident.doors_total == 3


async def test_elapsed_counts_from_the_start_of_the_hold(rig: Rig) -> None:
    board = rig.boards["b1"]
    board.answer = False
    await rig.runner.submit(StartLockdown(SITE, PANIC, 1000.0))
    started = time.monotonic()
    await asyncio.sleep(0.5)
    board.release()
    await rig.until(lambda: confirmed(rig))
    await rig.run_for(0.3)
    last = rig.recorder.data("lockdown.status", incident=1)[-1]
    assert last["confirmed"] == 3
    assert last["elapsed_ms"] >= 500  # the board took 500 ms: not restarted at 0 since then
    assert last["elapsed_ms"] <= (time.monotonic() - started) * 1000 + 1


# --------------------------------------------------------------------------- persistence


async def test_a_failed_state_write_is_retried_until_it_succeeds(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = runner_mod.save_state
    failures = {"left": 3}

    def flaky(path: Path, state: SiteState) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, state)

    monkeypatch.setattr(runner_mod, "save_state", flaky)
    monkeypatch.setattr(runner_mod, "PERSIST_RETRY_INITIAL_S", 0.02)
    await rig.runner.submit(StartLockdown(SITE, PANIC, 1000.0))
    assert load_state(rig.tmp / "lockdown.json") is None  # the first write failed
    assert rig.runner.status()["persist_error"] == "[Errno 28] No space left on device"
    await rig.until(lambda: load_state(rig.tmp / "lockdown.json") == rig.runner.state)
    assert load_state(rig.tmp / "lockdown.json") == rig.runner.state
    alarms = rig.recorder.data("lockdown.alarm", alarm="persist-failed")
    assert [a["active"] for a in alarms] == [True, True, True, False]
    assert [a.get("attempt") for a in alarms[:3]] == [1, 2, 3]
    assert [a["retry_in_s"] for a in alarms[:3]] == [0.02, 0.04, 0.08]  # backing off
    assert rig.runner.status()["persist_error"] is None


async def test_concurrent_state_writes_leave_the_latest_state(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow first write (pre-empted after truncating) must not leave an older state on disk."""
    real_write = os.write
    calls = {"n": 0}

    def slow_write(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            time.sleep(0.2)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", slow_write)
    rig.runner.submit_nowait(StartLockdown(SITE, PANIC, 1000.0))
    await asyncio.sleep(0.05)
    rig.runner.submit_nowait(FireAlarm("fire-panel", 1000.05))
    await rig.runner.flush()
    disk = load_state(rig.tmp / "lockdown.json")
    assert disk == rig.runner.state
    assert disk is not None
    assert disk.fire
    assert not rig.recorder.data("lockdown.alarm")
    assert sorted(p.name for p in rig.tmp.iterdir() if p.name.endswith(".tmp")) == []


def test_the_state_writer_never_writes_an_older_generation(tmp_path: Path) -> None:
    path = tmp_path / "lockdown.json"
    writer = runner_mod.StateWriter(path)
    newer, older = SiteState(fire=True), SiteState(threat_level=3)
    assert writer.write(2, newer)
    assert not writer.write(1, older)  # late, from a writer whose task was cancelled
    assert load_state(path) == newer


def test_save_state_uses_its_own_temp_file_per_writer(tmp_path: Path) -> None:
    path = tmp_path / "lockdown.json"
    states = [SiteState(threat_level=n % 8, next_incident=n + 1) for n in range(40)]
    errors: list[OSError] = []

    def write(state: SiteState) -> None:
        try:
            save_state(path, state)
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s,)) for s in states]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert load_state(path) in states  # one whole state, never a torn or truncated one
    assert [p.name for p in tmp_path.iterdir()] == ["lockdown.json"]
    assert oct(path.stat().st_mode & 0o777) == "0o640"


# --------------------------------------------------------------------------- restart


async def journal_rig(tmp: Path) -> tuple[Rig, JournalWriter]:
    writer = JournalWriter(Journal.open(tmp / "j.db"))
    r = make_rig(tmp, recorder=writer)
    r.link("b1")
    r.runner.restore()
    r.runner.apply()
    return r, writer


async def restart(tmp: Path) -> tuple[Rig, JournalWriter]:
    """A new daemon on the same files."""
    return await journal_rig(tmp)


async def end_incident(r: Rig, now: float) -> None:
    await r.runner.submit(AllClear(SITE, "#1 ann", True, "card", now))
    await r.runner.submit(AllClear(SITE, "#2 bob", True, "card", now + 1))


@pytest.mark.parametrize("damage", ["damaged", "deleted"])
async def test_a_lost_state_file_does_not_reuse_incident_numbers(
    tmp_path: Path, damage: str
) -> None:
    r, writer = await journal_rig(tmp_path)
    await r.runner.submit(StartLockdown(SITE, PANIC, 1000.0))
    await r.runner.submit(StartEvacuation("east", OPERATOR, 1001.0))  # incident 2
    await end_incident(r, 1002.0)
    await r.runner.close()
    await writer.close()
    state_file = tmp_path / "lockdown.json"
    if damage == "damaged":
        state_file.write_text("{not json")
    else:
        state_file.unlink()
    r2, writer2 = await restart(tmp_path)
    if damage == "damaged":  # unknown state: a site lockdown, as a new incident
        assert r2.runner.state.scope(SITE).mode is Mode.LOCKDOWN
        assert r2.runner.state.scope(SITE).incident == 3
        assert r2.runner.state.next_incident == 4
    else:
        assert r2.runner.state.next_incident == 3
    await r2.runner.submit(StartLockdown("north", OPERATOR, 2000.0))
    north = r2.runner.state.scope("north").incident
    assert north == (4 if damage == "damaged" else 3)
    await r2.runner.close()
    await writer2.flush()
    entries = writer2.journal.read(0, 100_000)
    firsts = [
        e.data["incident"]
        for e in entries
        if e.kind == "lockdown.trigger" and not e.data.get("again")
    ]
    assert len(firsts) == len(set(firsts))  # every incident number started once
    assert load_state(state_file) == r2.runner.state
    await writer2.close()


async def test_a_state_file_behind_the_journal_is_moved_forward(tmp_path: Path) -> None:
    r, writer = await journal_rig(tmp_path)
    await r.runner.submit(StartLockdown(SITE, PANIC, 1000.0))
    await end_incident(r, 1001.0)
    await r.runner.close()
    await writer.close()
    save_state(tmp_path / "lockdown.json", SiteState())  # e.g. restored from an old backup
    r2, writer2 = await restart(tmp_path)
    assert r2.runner.state.next_incident == 2
    await r2.runner.close()
    assert load_state(tmp_path / "lockdown.json") == SiteState(next_incident=2)
    await writer2.close()


async def test_restore_goes_on_when_the_state_file_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lockdown.json").write_text("[1, 2")  # damaged: the restore re-saves it

    def fail(path: Path, state: SiteState) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(runner_mod, "save_state", fail)
    monkeypatch.setattr(runner_mod, "PERSIST_RETRY_INITIAL_S", 0.02)
    r = make_rig(tmp_path)
    r.link("b1")
    r.runner.restore()  # must not raise: the doors are asserted next
    r.runner.apply()
    assert r.runner.state.scope(SITE).mode is Mode.LOCKDOWN
    assert r.doors.state("main").secured
    (alarm,) = r.recorder.data("lockdown.alarm")
    assert (alarm["alarm"], alarm["active"]) == ("persist-failed", True)
    assert "Read-only" in alarm["detail"]
    monkeypatch.setattr(runner_mod, "save_state", save_state)  # the disk is writable again
    await r.until(lambda: on_disk(tmp_path / "lockdown.json") == r.runner.state)
    assert r.recorder.data("lockdown.alarm")[-1]["active"] is False
    await r.runner.close()


# --------------------------------------------------------------------------- fire reset


async def test_fire_reset_is_refused_while_a_fire_input_cannot_be_read(tmp_path: Path) -> None:
    save_state(tmp_path / "lockdown.json", SiteState(fire=True))  # latched before a restart
    r = make_rig(tmp_path, boards=FIRE_BOARD, lockdown=FIRE_INPUT)
    r.link("b1")  # the fire panel's board is not up yet: its input was never read
    r.runner.restore()
    r.runner.watch_inputs()
    r.runner.apply()
    await asyncio.sleep(0.01)
    assert r.doors.state("exit").released
    api = LockdownApi(r.runner, None, _Committed(), frozenset({"north", "east"}))  # type: ignore[arg-type]
    replies = reply = _Replies()

    PEER.set("op(pid 1)")
    assert r.runner.status()["fire_inputs_unknown"] == ["fire-panel"]
    with pytest.raises(CommandError, match="fire input fire-panel cannot be read"):
        await api.handle(Request("fire.reset", {}), reply)
    assert r.runner.state.fire
    assert r.doors.state("exit").released
    assert r.recorder.data("fire.reset")[-1]["refused"].startswith("fire input fire-panel")
    # read once (quiet): now it can be reset
    r.link("panel")
    r.doors.on_driver_event(InputsRead("panel", (False,) * 16, frozenset(range(16))))
    # its board goes away again: unknown again
    r.link("panel", LinkState.BACKOFF)
    with pytest.raises(CommandError, match="fire-panel"):
        await api.handle(Request("fire.reset", {}), reply)
    r.link("panel")
    await api.handle(Request("fire.reset", {}), reply)
    assert replies[-1]["ok"]
    assert not r.runner.state.fire
    await r.runner.flush()
    assert not r.doors.state("exit").released
    await r.runner.close()


# --------------------------------------------------------------------------- control API


@pytest.fixture
def api(rig: Rig, tmp_path: Path) -> LockdownApi:
    store = CredentialStore.open(tmp_path / "creds.db", b"k" * 32)
    PEER.set("op(pid 1)")
    return LockdownApi(rig.runner, store, _Committed(), frozenset({"north", "east"}))  # type: ignore[arg-type]


async def _no_reply(obj: dict[str, Any]) -> None:
    raise AssertionError(f"unexpected reply {obj}")


@pytest.mark.parametrize("cmd", ["lockdown.clear", "lockdown.end-evacuation"])
@pytest.mark.parametrize("cid", [2**63, 2**64 + 5, -1, 0])
async def test_a_cardholder_id_out_of_range_is_a_clear_refusal(
    rig: Rig, api: LockdownApi, cmd: str, cid: int
) -> None:
    with pytest.raises(CommandError, match="cardholder id must be 1"):
        await api.handle(Request(cmd, {"cardholder": cid, "pin": "1234"}), _no_reply)
    (refused,) = rig.recorder.data("lockdown.refused")
    assert refused["peer"] == "op(pid 1)"
    assert refused["event"] == ("AllClear" if cmd == "lockdown.clear" else "EndEvacuation")


async def test_an_unauthorised_end_of_evacuation_is_journaled(
    rig: Rig, api: LockdownApi, tmp_path: Path
) -> None:
    store = api.store
    holder = store.get_cardholder(store.add_cardholder("Nop Person", pin="1357"))
    await rig.runner.submit(StartEvacuation("north", OPERATOR, 1000.0))
    with pytest.raises(CommandError, match="may not end the evacuation"):
        await api.handle(
            Request(
                "lockdown.end-evacuation",
                {"cardholder": holder.id, "pin": "1357", "scope": "north"},
            ),
            _no_reply,
        )
    assert rig.runner.state.scope("north").mode is Mode.EVACUATION
    (refused,) = rig.recorder.data("lockdown.refused")
    assert (refused["event"], refused["incident"], refused["scope"]) == (
        "EndEvacuation",
        1,
        "north",
    )
    assert refused["reason"] == f"#{holder.id} Nop Person may not end the evacuation"


def test_state_file_json_is_the_machine_state(tmp_path: Path) -> None:
    path = tmp_path / "lockdown.json"
    state = SiteState(threat_level=2, next_incident=7)
    save_state(path, state)
    assert json.loads(path.read_text())["next_incident"] == 7


async def test_a_zone_evacuation_during_a_site_lockdown_releases_no_held_door(rig: Rig) -> None:
    """Accepted (an authorised order, its own incident), but the site's hold wins at the doors."""
    board = rig.boards["b1"]
    await rig.runner.submit(StartLockdown(SITE, PANIC, 1000.0))
    await rig.until(lambda: confirmed(rig))
    exit_locked = rig.doors.spec("exit").relay_for(False)
    await rig.runner.submit(StartEvacuation("north", OPERATOR, 1001.0))
    assert rig.runner.state.scope("north").mode is Mode.EVACUATION
    assert rig.runner.state.scope("north").incident == 2
    await rig.run_for(0.1)
    assert board.coils[1] is exit_locked  # the egress door stays held by the site lockdown
    assert not rig.doors.state("exit").released
    # an evacuation of the locked-down scope itself: refused
    effects = await rig.runner.submit(StartEvacuation(SITE, OPERATOR, 1002.0))
    assert runner_mod.refusal(effects) == "end the lockdown before an evacuation"
    await rig.runner.submit(AllClear(SITE, "#1 ann", True, "card", 1003.0))
    await rig.runner.submit(AllClear(SITE, "#2 bob", True, "card", 1004.0))
    await rig.run_for(0.05)
    assert board.coils[1] is not exit_locked  # the zone's evacuation now releases its exit
    assert board.coils[0] is rig.doors.spec("main").relay_for(False)  # not an egress door


async def test_threat_level_listeners_hear_every_level_change_and_nothing_else(rig: Rig) -> None:
    heard: list[int] = []
    rig.runner.level_listeners.append(lambda: heard.append(rig.runner.state.threat_level))

    def broken() -> None:
        raise RuntimeError("a listener bug")

    rig.runner.level_listeners.insert(0, broken)  # must not stop the others, nor the runner
    now = rig.runner.wall()
    await rig.runner.submit(SetThreatLevel(5, "test", now))
    await rig.runner.submit(StartLockdown(SITE, Trigger("operator", "t", "api"), now))
    await rig.runner.submit(SetThreatLevel(5, "test", now))  # the same level: no change
    await rig.runner.submit(SetThreatLevel(0, "test", now))
    assert heard == [5, 0]
    assert rig.runner.state.scope(SITE).mode.value == "lockdown"


async def test_a_new_trigger_relocks_doors_an_override_left_unlocked(rig: Rig) -> None:
    await rig.runner.submit(StartLockdown(SITE, PANIC, 1000.0))
    await rig.until(lambda: confirmed(rig))
    result = await rig.doors.command("main", "unlock", override=True, source="wardctl (override)")
    assert result.confirmed, result
    pulse = await rig.doors.command("exit", "pulse", override=True, duration_s=30, source="card")
    assert pulse.confirmed, pulse
    await rig.runner.submit(StartLockdown(SITE, OPERATOR, 1001.0))  # a second sighting
    await rig.until(lambda: rig.doors.state("main").intent.value == "locked")
    commands = rig.recorder.data("door.command", source="lockdown: new trigger")
    assert [(c["action"], c.get("door"), c.get("doors")) for c in commands] == [
        ("lock", "main", None)
    ]
    assert rig.doors.state("exit").intent.value == "pulse"  # a responder's pulse runs out itself


class _Replies(list[dict[str, Any]]):
    """The API's replies in order; it is the reply function too."""

    async def __call__(self, obj: dict[str, Any]) -> None:
        self.append(obj)


class _Committed:
    """The API's journal where only its commit (flush) is used: nothing to wait for."""

    async def flush(self) -> None:
        return None


class FlushingRecorder(ListRecorder):
    """A recorder whose flush (the journal's commit) is noted in a shared order of events."""

    def __init__(self, order: list[str]) -> None:
        super().__init__()
        self.order = order
        self.committed = 0

    async def flush(self) -> None:
        await asyncio.sleep(0.01)  # a commit takes a moment
        self.committed = len(self.entries)
        self.order.append(f"journal {self.committed}")


async def test_the_state_file_never_gets_ahead_of_the_journal(tmp_path: Path) -> None:
    order: list[str] = []
    recorder = FlushingRecorder(order)
    r = make_rig(tmp_path, recorder=recorder)
    r.link("b1")
    r.runner.restore()
    r.runner.apply()
    write = r.runner._writer.write

    def noting_write(generation: int, state: SiteState) -> bool:
        committed = recorder.entries[: recorder.committed]
        triggers = [e for e in committed if e.kind == "lockdown.trigger"]
        order.append(f"state {state.scope(SITE).mode.value} after {len(triggers)} triggers")
        return write(generation, state)

    r.runner._writer.write = noting_write  # type: ignore[method-assign]
    await r.runner.submit(StartLockdown(SITE, PANIC, 1000.0))
    assert order[-1] == "state lockdown after 1 triggers"  # its trigger committed first
    await r.runner.close()


async def test_a_site_trigger_over_a_zone_lockdown_relocks_its_override_unlocks(rig: Rig) -> None:
    await rig.runner.submit(StartLockdown("east", PANIC, 1000.0))
    await rig.until(lambda: confirmed(rig))
    result = await rig.doors.command("east", "unlock", override=True, source="wardctl (override)")
    assert result.confirmed, result
    await rig.runner.submit(StartLockdown(SITE, OPERATOR, 1001.0))  # now the whole site
    await rig.until(lambda: rig.doors.state("east").intent.value == "locked")
    commands = rig.recorder.data("door.command", source="lockdown: new trigger")
    assert [c.get("door") for c in commands] == ["east"]


@given(text=st.text())
def test_clean_text_leaves_no_control_or_bidi_character(text: str) -> None:
    out = clean_text(text)
    unsafe = {*range(32), *range(127, 160), *range(0x2028, 0x202F), *range(0x2066, 0x206A)}
    unsafe |= {0x200E, 0x200F, 0x061C, *range(0xD800, 0xE000)}  # marks, lone surrogates
    assert not any(ord(c) in unsafe for c in out)
    out.encode("utf-8")  # always encodable, whatever came in
    if not any(ord(c) in unsafe for c in text):
        assert out == text[:MAX_TEXT]  # clean text is kept as it is


async def test_a_lockdown_reason_with_control_characters_is_kept_safe_not_refused(
    rig: Rig,
) -> None:
    api = LockdownApi(rig.runner, None, _Committed(), frozenset({"north", "east"}))  # type: ignore[arg-type]
    replies = reply = _Replies()

    PEER.set("op(pid 1)")
    forged = "intruder\n999999 door.command tcp1-d0 action=unlock \x1b[2J"
    await api.handle(Request("lockdown.start", {"reason": forged}), reply)
    assert replies[-1]["ok"] is True
    assert rig.runner.held("east")  # locked down all the same
    (trigger,) = rig.recorder.data("lockdown.trigger")
    assert trigger["reason"] == "intruder\\n999999 door.command tcp1-d0 action=unlock \\x1b[2J"
    await rig.runner.close()


class _Stalled:
    """A journal whose disk has stalled: its commit never completes."""

    async def flush(self) -> None:
        await asyncio.sleep(3600)


def _stalled_api(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> LockdownApi:
    """The lockdown API over a stalled journal, waiting for it only 50 ms."""
    monkeypatch.setattr(lockdown_api_mod, "REPLY_JOURNAL_WAIT_S", 0.05)
    return LockdownApi(rig.runner, None, _Stalled(), frozenset({"north", "east"}))  # type: ignore[arg-type]


async def test_a_stalled_journal_never_holds_up_a_lockdown_answer(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = _stalled_api(rig, monkeypatch)
    replies = reply = _Replies()

    PEER.set("op(pid 1)")
    await asyncio.wait_for(api.handle(Request("lockdown.start", {"reason": "shots"}), reply), 5)
    assert replies[-1]["ok"] is True
    assert "journal has not recorded it yet" in replies[-1]["warning"]
    assert rig.runner.held("east")
    await rig.runner.close()


async def test_a_drill_never_relocks_a_door_a_responder_holds_open(rig: Rig) -> None:
    await rig.runner.submit(StartLockdown(SITE, PANIC, 1000.0))
    await rig.until(lambda: confirmed(rig))
    result = await rig.doors.command("east", "unlock", override=True, source="wardctl (override)")
    assert result.confirmed, result
    await rig.runner.submit(StartLockdown("east", OPERATOR, 1001.0, drill=True))
    await rig.run_for(0.1)
    assert rig.doors.state("east").intent.value == "unlocked"
    assert rig.recorder.data("door.command", source="lockdown: new trigger") == []


async def test_a_stalled_journal_keeps_the_other_warning_too(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = _stalled_api(rig, monkeypatch)
    replies = reply = _Replies()

    PEER.set("op(pid 1)")
    await api.handle(Request("lockdown.start", {"reason": "shots", "level": 9}), reply)
    warning = replies[-1]["warning"]
    assert "threat level must be 0..7" in warning
    assert "journal has not recorded it yet" in warning
    await rig.runner.close()
