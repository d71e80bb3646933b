"""``wardctl`` as a technician runs it, against a real daemon on a simulated site.

Exit status: 0 ok, 1 refused or not confirmed, 2 usage, 3 daemon unreachable.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from pathlib import Path

import pytest

from tests.integration.conftest import (
    WARDCTL,
    Daemon,
    Site,
    clean_env,
    wait_for,
    wardctl,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

COLUMNS = ["DOOR", "ZONE", "STATE", "LOCK", "CONTACT", "ALARMS", "BOARD", "LINK"]


def site_doors(site: Site) -> list[str]:
    return [d.name for d in site.settings.doors]


def _no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


async def test_status_table(shared_site: Site, shared_daemon: Daemon) -> None:
    res = await shared_daemon.wardctl("status")
    assert res.rc == 0, res
    lines = res.lines
    # the site's lockdown state comes first, then the controller line
    assert lines[0].startswith("site: NORMAL   threat level 0")
    assert any(line.startswith("controller test-site  version ") for line in lines)
    header = next(line for line in lines if line.startswith("DOOR"))
    assert header.split() == COLUMNS
    rows = {
        line.split()[0]: line.split()
        for line in lines
        if line.split() and line.split()[0] in site_doors(shared_site)
    }
    assert set(rows) == set(site_doors(shared_site))
    for name, cells in rows.items():
        board = shared_site.settings.door(name).relay.board
        # DOOR ZONE STATE LOCK CONTACT ALARMS BOARD LINK
        assert cells == [name, "default", "locked", "locked", "closed", "-", board, "up"], cells
    boards = [line.split() for line in lines if line.startswith("board ")]
    assert [(b[1], b[2]) for b in boards] == [("tcp1", "up"), ("rtu1", "up")]


@pytest.mark.parametrize("where", ["after", "before"])
async def test_status_json(shared_site: Site, shared_daemon: Daemon, where: str) -> None:
    args = ["status", "--json"] if where == "after" else ["--json", "status"]
    res = await shared_daemon.wardctl(*args)
    assert res.rc == 0, res
    status = json.loads(res.stdout)
    assert "ok" not in status
    assert status["controller"] == "test-site"
    assert [d["door"] for d in status["doors"]] == site_doors(shared_site)
    assert {b["board"]: b["link"] for b in status["boards"]} == {"tcp1": "up", "rtu1": "up"}
    assert isinstance(status["journal_seq"], int)
    assert status["journal_seq"] > 0


async def test_door_unlock_then_lock(shared_site: Site, shared_daemon: Daemon) -> None:
    door = "tcp1-d1"  # fail-safe
    sim = shared_site.sim.door(door)
    res = await shared_daemon.wardctl("door", "unlock", door)
    assert res.rc == 0, res
    assert res.lines == [f"{door}: unlock confirmed; now unlocked"]
    assert not sim.locked
    assert sim.relay is False
    assert (await shared_daemon.doors())[door]["state"] == "unlocked"

    res = await shared_daemon.wardctl("door", "lock", door, "--json")
    assert res.rc == 0, res
    assert json.loads(res.stdout) == {
        "door": door,
        "action": "lock",
        "confirmed": True,
        "phase": "locked",
        "error": "",
    }
    assert sim.locked
    assert sim.relay is True


async def test_door_pulse_with_duration_relocks_by_itself(
    shared_site: Site, shared_daemon: Daemon
) -> None:
    door = "rtu1-d3"
    sim = shared_site.sim.door(door)
    res = await shared_daemon.wardctl("door", "pulse", door, "--duration", "0.8")
    assert res.rc == 0, res
    assert "pulse confirmed" in res.stdout
    assert not sim.locked
    await wait_for(lambda: sim.locked, 3, what="the pulse to end at the simulator")
    status = await shared_daemon.doors()
    assert status[door]["state"] == "locked"
    commands = [
        e
        for e in await shared_daemon.events(after=0)
        if e["kind"] == "door.command" and e["door"] == door
    ]
    assert commands[-1]["data"]["duration_s"] == 0.8


async def test_door_pulse_default_duration(shared_site: Site, shared_daemon: Daemon) -> None:
    door = "tcp1-d3"
    res = await shared_daemon.wardctl("door", "pulse", door)
    assert res.rc == 0, res
    assert not shared_site.sim.door(door).locked
    row = (await shared_daemon.doors())[door]
    if row["state"] == "unlocked":  # unless this machine is slow enough for 1 s to pass
        assert 0 < row["pulse_remaining_s"] <= 1.0  # pulse_s = 1.0 in the site file
    await wait_for(lambda: shared_site.sim.door(door).locked, 3, what="relock")


async def test_unknown_door_is_refused(shared_daemon: Daemon) -> None:
    res = await shared_daemon.wardctl("door", "unlock", "no-such-door")
    assert res.rc == 1, res
    assert res.err_lines == ["wardctl: unknown door 'no-such-door'"]
    assert res.stdout == ""


@pytest.mark.parametrize("action", ["lock", "unlock"])
async def test_duration_only_with_pulse(
    shared_site: Site, shared_daemon: Daemon, action: str
) -> None:
    before = shared_site.relays()
    res = await shared_daemon.wardctl("door", action, "tcp1-d2", "--duration", "3")
    assert res.rc == 2, res
    assert "--duration applies to pulse only" in res.stderr
    _no_traceback(res.stderr)
    assert shared_site.relays() == before


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="nothing"),
        pytest.param(["frobnicate"], id="unknown-command"),
        pytest.param(["door", "explode", "tcp1-d0"], id="unknown-action"),
        pytest.param(["door", "pulse"], id="no-door"),
        pytest.param(["door", "pulse", "tcp1-d0", "--duration", "soon"], id="bad-duration"),
        pytest.param(["events", "-n", "many"], id="bad-limit"),
        pytest.param(["events", "-n", "0"], id="limit-zero"),
    ],
)
async def test_usage_errors_exit_2(shared_daemon: Daemon, args: list[str]) -> None:
    res = await shared_daemon.wardctl(*args)
    assert res.rc == 2, res
    assert res.stderr.strip()
    _no_traceback(res.stderr)


async def test_daemon_not_running_exits_3(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "control.sock"
    res = await wardctl("status", socket_path=missing)
    assert res.rc == 3, res
    assert res.err_lines == [
        f"wardctl: cannot reach the warding daemon at {missing} (is it running?)"
    ]
    assert res.stdout == ""

    # a socket file nobody listens on (a crashed daemon): same answer
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(stale))
    for args in (["status"], ["door", "pulse", "x"], ["events", "-f"]):
        res = await wardctl(*args, socket_path=stale)
        assert res.rc == 3, res
        assert len(res.err_lines) == 1, res
        assert "cannot reach" in res.stderr
        _no_traceback(res.stderr)


async def test_warding_socket_environment(shared_daemon: Daemon, tmp_path: Path) -> None:
    env = {"WARDING_SOCKET": str(shared_daemon.socket)}
    res = await wardctl("status", "--json", env=env)
    assert res.rc == 0, res
    assert json.loads(res.stdout)["controller"] == "test-site"

    # --socket wins over the environment
    res = await wardctl("status", socket_path=tmp_path / "absent.sock", env=env)
    assert res.rc == 3, res
    res = await wardctl(
        "status", socket_path=shared_daemon.socket, env={"WARDING_SOCKET": str(tmp_path / "x")}
    )
    assert res.rc == 0, res


async def test_events_limit(shared_daemon: Daemon) -> None:
    assert await shared_daemon.seq() > 5
    res = await shared_daemon.wardctl("events", "-n", "5")
    assert res.rc == 0, res
    assert 1 <= len(res.lines) <= 5
    res = await shared_daemon.wardctl("events", "-n", "5", "--json")
    assert res.rc == 0, res
    events = [json.loads(line) for line in res.lines]
    assert len(events) == 5
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    assert seqs[-1] >= await shared_daemon.seq() - 5

    res = await shared_daemon.wardctl("events", "--after", str(seqs[0]), "-n", "2", "--json")
    assert res.rc == 0, res
    assert [json.loads(line)["seq"] for line in res.lines] == seqs[1:3]


async def test_events_human_format(shared_daemon: Daemon) -> None:
    res = await shared_daemon.wardctl("events", "-n", "50")
    assert res.rc == 0, res
    starts = [line for line in res.lines if "daemon.start" in line]
    assert starts, res.stdout
    assert "controller=test-site" in starts[0]


async def test_events_follow_streams_new_events(shared_daemon: Daemon) -> None:
    proc = await asyncio.create_subprocess_exec(
        *WARDCTL,
        "--socket",
        str(shared_daemon.socket),
        "events",
        "--follow",
        "-n",
        "1",
        "--json",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    assert proc.stdout is not None
    try:
        backlog = json.loads(await asyncio.wait_for(proc.stdout.readline(), 5))
        res = await shared_daemon.wardctl("door", "lock", "rtu1-d0")
        assert res.rc == 0, res
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), 5)
            assert line, "wardctl events --follow ended"
            event = json.loads(line)
            assert event["seq"] > backlog["seq"]
            if event["kind"] == "door.command" and event["door"] == "rtu1-d0":
                assert event["data"]["action"] == "lock"
                break
        assert proc.returncode is None
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 5)
    _no_traceback(err.decode())
    assert await shared_daemon.ping()


@pytest.mark.parametrize(
    "args",
    [["door", "lock", "tcp1-d0", "--duration", "3"], ["events", "-n", "0"]],
    ids=["duration-on-lock", "limit-zero"],
)
async def test_usage_errors_need_no_daemon(tmp_path: Path, args: list[str]) -> None:
    res = await wardctl(*args, socket_path=tmp_path / "absent.sock")
    assert res.rc == 2, res
