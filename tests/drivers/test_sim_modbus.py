"""The Modbus relay-board simulator, driven by a raw pymodbus client over real TCP and a pty."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ExceptionResponse

from controller.settings import LockType, load_settings, parse_toml
from simulators import cli
from simulators.control import SimControlServer, control_request
from simulators.doors import InputWire, SimDoor
from simulators.modbus_board import SimModbusBoard, SimModbusEndpoint, SimRtuLine
from simulators.site import SimSite

TIMEOUT_S = 0.2


# ---- helpers and fixtures -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def tcp_client(
    port: int, timeout_s: float = TIMEOUT_S
) -> AsyncIterator[AsyncModbusTcpClient]:
    """A connected raw pymodbus TCP client that never retries or reconnects by itself."""
    client = AsyncModbusTcpClient(
        "127.0.0.1", port=port, timeout=timeout_s, retries=0, reconnect_delay=0
    )
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


@contextlib.asynccontextmanager
async def rtu_client(
    path: str, timeout_s: float = TIMEOUT_S
) -> AsyncIterator[AsyncModbusSerialClient]:
    """A connected raw pymodbus RTU client on ``path``."""
    # parity "N": a pty refuses E/O parity on pymodbus' second tcsetattr (pyserial#196)
    client = AsyncModbusSerialClient(
        path, timeout=timeout_s, retries=0, reconnect_delay=0, baudrate=38400, parity="N"
    )
    assert await client.connect()
    await asyncio.sleep(0.01)  # the serial transport is set up with call_soon
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
async def endpoint() -> AsyncIterator[SimModbusEndpoint]:
    """A TCP endpoint on a free port with one 8-coil board at unit 1."""
    ep = SimModbusEndpoint("127.0.0.1", 0)
    ep.add_board(SimModbusBoard("main", 1, coils=8, inputs=16))
    await ep.start()
    try:
        yield ep
    finally:
        await ep.stop()


@pytest.fixture
def board(endpoint: SimModbusEndpoint) -> SimModbusBoard:
    """The board on ``endpoint``."""
    return endpoint.boards[1]


@pytest.fixture
async def line(tmp_path: Path) -> AsyncIterator[SimRtuLine]:
    """An RTU line (symlink in tmp_path) with boards at units 7 and 8."""
    rtu = SimRtuLine(tmp_path / "dev" / "rtu.tty", baudrate=38400, parity="E")
    rtu.add_board(SimModbusBoard("annex", 7, coils=8))
    rtu.add_board(SimModbusBoard("annex2", 8, coils=8))
    await rtu.start()
    try:
        yield rtu
    finally:
        await rtu.stop()


@pytest.fixture
async def demo_site(tmp_path: Path) -> AsyncIterator[SimSite]:
    """The embedded demo site on a free TCP port and a pty symlink in tmp_path."""
    site = SimSite(
        load_settings(None), ports={"main": 0}, devices={"annex": tmp_path / "annex.tty"}
    )
    async with site:
        yield site


async def read_coils(client: Any, count: int, unit: int) -> list[bool]:
    """FC1 read that must succeed."""
    rr = await client.read_coils(0, count=count, device_id=unit)
    assert not rr.isError(), rr
    return list(rr.bits[:count])


async def read_inputs(client: Any, count: int, unit: int) -> list[bool]:
    """FC2 read that must succeed."""
    rr = await client.read_discrete_inputs(0, count=count, device_id=unit)
    assert not rr.isError(), rr
    return list(rr.bits[:count])


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- TCP: data, counters, physics -------------------------------------------------------------


async def test_fc15_sets_relays_in_one_request(
    endpoint: SimModbusEndpoint, board: SimModbusBoard
) -> None:
    changes: list[dict[int, bool]] = []
    board.on_coils_changed = lambda c: changes.append(dict(c))
    assert endpoint.port > 0
    async with tcp_client(endpoint.port) as client:
        wr = await client.write_coils(0, [True, False, True, True], device_id=1)
        assert not wr.isError()
        assert board.coils[:4] == (True, False, True, True)
        assert board.requests[15] == 1
        assert await read_coils(client, 8, 1) == [True, False, True, True] + [False] * 4
        assert board.requests[1] == 1
        assert not (await client.write_coil(2, False, device_id=1)).isError()
    assert changes == [{0: True, 2: True, 3: True}, {2: False}]


async def test_registers_and_out_of_range(
    endpoint: SimModbusEndpoint, board: SimModbusBoard
) -> None:
    async with tcp_client(endpoint.port) as client:
        assert not (await client.write_registers(0, [1, 2, 3], device_id=1)).isError()
        assert not (await client.write_register(5, 0xBEEF, device_id=1)).isError()
        rr = await client.read_holding_registers(0, count=6, device_id=1)
        assert rr.registers == [1, 2, 3, 0, 0, 0xBEEF]
        bad = await client.read_coils(4, count=8, device_id=1)  # board has 8 coils
        assert bad.isError()
        assert bad.exception_code == 2
        assert (await client.read_input_registers(0, count=1, device_id=1)).exception_code == 1
    assert board.registers[:3] == (1, 2, 3)


async def test_unknown_function_code_gets_illegal_function(endpoint: SimModbusEndpoint) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
    try:
        for unit, reply in [(1, "00070000000301c101"), (9, "00070000000309c10b")]:
            writer.write(bytes([0, 7, 0, 0, 0, 2, unit, 0x41]))  # FC 0x41: not Modbus
            await writer.drain()
            assert (await asyncio.wait_for(reader.read(64), 1.0)).hex() == reply
        writer.write(bytes([0, 8, 0, 0, 0, 6, 1, 1, 0, 0, 0, 1]))  # FC1 still works after
        await writer.drain()
        assert (await asyncio.wait_for(reader.read(64), 1.0)).hex() == "00080000000401010100"
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    ("lock", "locked_unpowered"), [(LockType.FAIL_SECURE, True), (LockType.FAIL_SAFE, False)]
)
async def test_door_lock_physics_over_modbus(
    endpoint: SimModbusEndpoint, board: SimModbusBoard, lock: LockType, locked_unpowered: bool
) -> None:
    door = SimDoor("d", lock, board, 3, contact=InputWire(board, 0))
    assert door.locked is locked_unpowered
    async with tcp_client(endpoint.port) as client:
        # put the lock in its locked state over Modbus
        energise_to_lock = lock is LockType.FAIL_SAFE
        await client.write_coils(3, [energise_to_lock], device_id=1)
        assert door.locked
        assert door.open() is False
        assert not door.is_open
        assert (await read_inputs(client, 1, 1)) == [False]
        # release it: now a person can pull the door open, and the contact reports it
        await client.write_coils(3, [not energise_to_lock], device_id=1)
        assert not door.locked
        assert door.open() is True
        assert (await read_inputs(client, 1, 1)) == [True]
        door.close()
        assert (await read_inputs(client, 1, 1)) == [False]
        # forced entry opens a locked door regardless
        await client.write_coils(3, [energise_to_lock], device_id=1)
        assert door.open(force=True) is True
        assert door.forced_count == 1
        assert (await read_inputs(client, 1, 1)) == [True]


async def test_rex_tamper_and_inverted_inputs(
    endpoint: SimModbusEndpoint, board: SimModbusBoard
) -> None:
    door = SimDoor(
        "d",
        LockType.FAIL_SECURE,
        board,
        0,
        contact=InputWire(board, 4, invert=True),  # normally-closed contact
        rex=InputWire(board, 5),
        tamper=InputWire(board, 6, invert=True),
    )
    async with tcp_client(endpoint.port) as client:
        # closed door, no rex, no tamper -> raw: contact 1 (inverted), rex 0, tamper 1
        assert (await read_inputs(client, 8, 1))[4:7] == [True, False, True]
        door.press_rex()
        door.set_tamper(True)
        door.open(force=True)
        assert (await read_inputs(client, 8, 1))[4:7] == [False, True, False]
        door.release_rex()
        assert (await read_inputs(client, 8, 1))[5] is False
        pushing = asyncio.create_task(door.push_rex(0.1))
        await asyncio.sleep(0.03)
        assert (await read_inputs(client, 8, 1))[5] is True
        await pushing
        assert (await read_inputs(client, 8, 1))[5] is False
    assert door.snapshot()["tamper"] is True


# ---- TCP: faults ------------------------------------------------------------------------------


async def test_exception_injection(endpoint: SimModbusEndpoint, board: SimModbusBoard) -> None:
    board.exception_code = 4
    async with tcp_client(endpoint.port) as client:
        rr = await client.read_coils(0, count=8, device_id=1)
        assert isinstance(rr, ExceptionResponse)
        assert rr.exception_code == 4
        wr = await client.write_coils(0, [True], device_id=1)
        assert wr.isError()
        assert board.coils[0] is False  # the failed write did nothing
        await board.clear_faults()
        assert not (await client.read_coils(0, count=8, device_id=1)).isError()


async def test_drop_gives_client_timeout(
    endpoint: SimModbusEndpoint, board: SimModbusBoard
) -> None:
    board.drop_next(2)
    async with tcp_client(endpoint.port) as client:
        for _ in range(2):
            with pytest.raises(ModbusException):
                await client.read_coils(0, count=8, device_id=1)
        assert await read_coils(client, 1, 1) == [False]
    assert board.requests[1] == 3


async def test_delay_and_late_reply_keeps_its_transaction_id(
    endpoint: SimModbusEndpoint, board: SimModbusBoard
) -> None:
    board.delay_s = 0.05
    async with tcp_client(endpoint.port, timeout_s=0.5) as client:
        t0 = time.monotonic()
        await read_coils(client, 1, 1)
        assert time.monotonic() - t0 >= 0.045
    board.delay_s = 0.3
    async with tcp_client(endpoint.port, timeout_s=0.1) as client:
        with pytest.raises(ModbusException):
            await client.read_discrete_inputs(0, count=8, device_id=1)  # times out
        client.ctx.comm_params.timeout_connect = 0.6
        # the late FC2 reply arrives while this FC1 request waits: it must not be taken for it
        rr = await client.read_coils(0, count=8, device_id=1)
        assert rr.function_code == 1


async def test_offline_stops_listening_and_online_reuses_port(
    endpoint: SimModbusEndpoint, board: SimModbusBoard
) -> None:
    port = endpoint.port
    async with tcp_client(port) as client:
        await read_coils(client, 1, 1)
        await board.set_offline(True)
        assert not endpoint.listening
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        with pytest.raises(ModbusException):
            await client.read_coils(0, count=1, device_id=1)
        await board.set_offline(False)
        assert endpoint.port == port
        with contextlib.suppress(ModbusException):  # the old socket may still be closing
            await client.read_coils(0, count=1, device_id=1)
    async with tcp_client(port) as client:
        await read_coils(client, 1, 1)


async def test_stuck_relay_acknowledges_but_readback_shows_truth(
    endpoint: SimModbusEndpoint, board: SimModbusBoard
) -> None:
    board.stuck_coil(2, False)
    async with tcp_client(endpoint.port) as client:
        wr = await client.write_coils(0, [True, True, True], device_id=1)
        assert not wr.isError()
        assert await read_coils(client, 3, 1) == [True, True, False]
        assert board.commanded[:3] == (True, True, True)
        board.stuck_coil(2, None)  # released: follows the last command again
        assert await read_coils(client, 3, 1) == [True, True, True]
        board.stuck_coil(0, False)
        assert board.faults() == {"stuck": {"0": False}}


async def test_tcp_corrupt_reply_is_rejected_then_recovers(
    endpoint: SimModbusEndpoint, board: SimModbusBoard
) -> None:
    board.corrupt_next(1)
    async with tcp_client(endpoint.port) as client:
        with pytest.raises(ModbusException):
            await client.read_coils(0, count=1, device_id=1)
        assert await read_coils(client, 1, 1) == [False]


async def test_gateway_hosts_units_and_answers_0x0b_for_missing_ones() -> None:
    async with SimModbusEndpoint() as ep:
        a = ep.add_board(SimModbusBoard("a", 1))
        b = ep.add_board(SimModbusBoard("b", 2))
        async with tcp_client(ep.port) as client:
            await client.write_coils(0, [True], device_id=2)
            assert b.coils[0]
            assert not a.coils[0]
            assert (await client.read_coils(0, count=1, device_id=9)).exception_code == 0x0B
            await b.set_offline(True)
            assert ep.listening  # unit 1 still online behind the gateway
            assert (await client.read_coils(0, count=1, device_id=2)).exception_code == 0x0B
            await read_coils(client, 1, 1)
    with pytest.raises(ValueError, match="unit id 1"):
        ep.add_board(SimModbusBoard("c", 1))


async def test_garbage_on_tcp_does_not_break_the_next_request(
    endpoint: SimModbusEndpoint, board: SimModbusBoard
) -> None:
    async with tcp_client(endpoint.port) as client:
        await read_coils(client, 1, 1)
        board.garbage(b"\x00\x01\x00")  # an incomplete MBAP header while idle
        await asyncio.sleep(0.01)
        assert await read_coils(client, 1, 1) == [False]


# ---- RTU over a pty ---------------------------------------------------------------------------


async def test_rtu_roundtrip_through_symlink(line: SimRtuLine, tmp_path: Path) -> None:
    link = tmp_path / "dev" / "rtu.tty"
    assert link.is_symlink()
    assert os.readlink(link) == line.pty_name
    async with rtu_client(line.path) as client:
        assert not (await client.write_coils(0, [True, False, True], device_id=7)).isError()
        assert line.boards[7].coils[:3] == (True, False, True)
        assert line.boards[8].coils[:3] == (False, False, False)
        line.boards[8].set_input(3, True)
        assert (await read_inputs(client, 4, 8)) == [False, False, False, True]
        assert line.boards[7].requests[15] == 1


async def test_rtu_unknown_unit_is_silent(line: SimRtuLine) -> None:
    async with rtu_client(line.path) as client:
        with pytest.raises(ModbusException):
            await client.read_coils(0, count=1, device_id=3)
        assert await read_coils(client, 1, 7) == [False]


async def test_rtu_faults_exception_offline_drop(line: SimRtuLine) -> None:
    annex = line.boards[7]
    async with rtu_client(line.path) as client:
        annex.exception_code = 6
        assert (await client.read_coils(0, count=1, device_id=7)).exception_code == 6
        annex.exception_code = None
        await annex.set_offline(True)
        with pytest.raises(ModbusException):
            await client.read_coils(0, count=1, device_id=7)
        assert await read_coils(client, 1, 8) == [False]  # the other drop still answers
        await annex.set_offline(False)
        annex.drop_next(1)
        with pytest.raises(ModbusException):
            await client.read_coils(0, count=1, device_id=7)
        assert await read_coils(client, 1, 7) == [False]


async def test_rtu_corruption_and_garbage_do_not_kill_the_sim(line: SimRtuLine) -> None:
    annex = line.boards[7]
    async with rtu_client(line.path) as client:
        annex.corrupt_next(1)
        with pytest.raises(ModbusException):  # bad CRC: the client drops the reply
            await client.read_coils(0, count=1, device_id=7)
        assert await read_coils(client, 1, 7) == [False]
        annex.garbage(b"\x07\x01\x02\x03\xff")  # looks like the start of a reply
        await asyncio.sleep(0.01)
        assert await read_coils(client, 1, 7) == [False]
        # noise toward the boards (from another transmitter on the bus)
        fd = os.open(line.path, os.O_WRONLY | os.O_NOCTTY)
        try:
            os.write(fd, b"\x07\x0f\x00\x00\xff\x13\x37")
        finally:
            os.close(fd)
        await asyncio.sleep(0.01)
        assert await read_coils(client, 1, 7) == [False]
        assert annex.coils[0] is False


async def test_rtu_unplug_fails_the_client_and_replug_works(
    line: SimRtuLine, tmp_path: Path
) -> None:
    link = tmp_path / "dev" / "rtu.tty"
    async with rtu_client(line.path) as client:
        await read_coils(client, 1, 7)
        line.unplug()
        assert not line.plugged
        assert not link.is_symlink()
        for _ in range(100):
            if not client.connected:
                break
            await asyncio.sleep(0.01)
        assert not client.connected
    line.replug()
    async with rtu_client(line.path) as client:
        assert await read_coils(client, 1, 7) == [False]


async def test_rtu_line_never_replaces_a_real_file(tmp_path: Path) -> None:
    device = tmp_path / "ttyUSB0"
    device.write_text("not a pty")
    line = SimRtuLine(device)
    line.add_board(SimModbusBoard("x", 1))
    with pytest.raises(FileExistsError):
        await line.start()
    assert device.read_text() == "not a pty"
    assert not line.running
    await line.stop()


async def test_rtu_over_tcp_socket_url_with_even_parity() -> None:
    settings = parse_toml(
        """
[controller]
id = "t"
[[boards]]
name = "nport"
transport = "rtu"
device = "socket://127.0.0.1:4001"
parity = "E"
unit_id = 5
[[doors]]
name = "d"
lock = "fail-secure"
relay = { board = "nport", coil = 0 }
contact = { board = "nport", input = 0 }
"""
    )
    async with SimSite(settings, ports={"nport": 0}) as site:
        url = site.device("nport")
        assert url.startswith("socket://127.0.0.1:")
        assert url != "socket://127.0.0.1:4001"
        assert site.client_settings().board("nport").model_dump()["device"] == url
        client = AsyncModbusSerialClient(url, parity="E", timeout=TIMEOUT_S, retries=0)
        assert await client.connect()
        try:
            await client.write_coils(0, [True], device_id=5)
            assert not site.door("d").locked
            with pytest.raises(ModbusException):  # RS-485 rules: an unknown unit is silent
                await client.read_coils(0, count=1, device_id=6)
            site.board("nport").corrupt_next(1)
            with pytest.raises(ModbusException):  # bad CRC
                await client.read_coils(0, count=1, device_id=5)
            await site.board("nport").set_offline(True)
            with pytest.raises(ModbusException):
                await client.read_coils(0, count=1, device_id=5)
            await site.board("nport").set_offline(False)
            assert await read_coils(client, 1, 5) == [True]
        finally:
            client.close()


# ---- SimSite ----------------------------------------------------------------------------------


async def test_site_from_demo_with_overrides(demo_site: SimSite, tmp_path: Path) -> None:
    port = demo_site.port("main")
    assert port not in (0, 15020)
    assert demo_site.device("annex") == str(tmp_path / "annex.tty")
    patched = demo_site.client_settings()
    main = patched.board("main")
    assert getattr(main, "port", None) == port
    assert getattr(patched.board("annex"), "device", None) == str(tmp_path / "annex.tty")

    side = demo_site.door("lobby-side")  # fail-secure on main coil 1, contact main input 2
    assert side.locked
    assert side.open() is False
    async with tcp_client(port) as client:
        await client.write_coils(1, [True], device_id=1)
        assert not side.locked
        assert side.open()
        assert (await read_inputs(client, 4, 1))[2] is True

    entry = demo_site.door("annex-entry")  # fail-safe on annex coil 0 (unit 7)
    assert not entry.locked  # a de-energised maglock holds nothing
    async with rtu_client(demo_site.device("annex")) as client:
        await client.write_coils(0, [True], device_id=7)
        assert entry.locked
        assert entry.open() is False
        demo_site.door("fire-exit").press_rex()
        assert (await read_inputs(client, 10, 7))[9] is True

    snap = demo_site.snapshot()
    assert snap["doors"]["lobby-side"]["open"] is True
    assert snap["boards"]["annex"]["online"] is True
    assert snap["boards"]["main"]["requests"]["15"] == 1
    json.dumps(snap)
    with pytest.raises(KeyError, match="unknown door 'nope'"):
        demo_site.door("nope")


async def test_site_stop_is_idempotent_and_cleans_up(tmp_path: Path) -> None:
    link = tmp_path / "sub" / "annex.tty"
    site = SimSite(load_settings(None), ports={"main": 0}, devices={"annex": link})
    await site.start()
    port = site.port("main")
    assert link.is_symlink()
    await site.stop()
    await site.stop()
    assert not link.exists()
    assert not link.is_symlink()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    with pytest.raises(ValueError, match="unknown board"):
        SimSite(load_settings(None), ports={"nope": 0})


# ---- control socket ---------------------------------------------------------------------------


async def test_control_socket_round_trip(demo_site: SimSite, tmp_path: Path) -> None:
    sock = tmp_path / "sim.sock"
    async with SimControlServer(demo_site, sock):
        status = await control_request(sock, {"cmd": "status"})
        assert status["ok"] is True
        assert set(status["doors"]) >= {"lobby-main", "fire-exit"}

        reply = await control_request(sock, {"cmd": "door", "action": "open", "name": "lobby-side"})
        assert reply == {"ok": True, "opened": False, "door": reply["door"]}
        reply = await control_request(
            sock, {"cmd": "door", "action": "force", "name": "lobby-side"}
        )
        assert reply["opened"] is True
        assert reply["door"]["forced"] == 1
        await control_request(sock, {"cmd": "door", "action": "close", "name": "lobby-side"})
        await control_request(sock, {"cmd": "door", "action": "tamper", "name": "server-room"})
        assert demo_site.door("server-room").tampered
        await control_request(sock, {"cmd": "door", "action": "untamper", "name": "server-room"})
        reply = await control_request(
            sock, {"cmd": "door", "action": "rex", "name": "office-north", "hold_s": 0.01}
        )
        assert reply["door"]["rex"] is False

        main = demo_site.board("main")
        steps: list[tuple[dict[str, Any], Callable[[], bool]]] = [
            ({"action": "delay", "ms": 250}, lambda: main.delay_s == 0.25),
            ({"action": "drop", "n": 2}, lambda: main.faults()["drop_next"] == 2),
            ({"action": "corrupt", "n": 1}, lambda: main.faults()["corrupt_next"] == 1),
            ({"action": "exception", "code": 4}, lambda: main.exception_code == 4),
            ({"action": "stuck", "coil": 1, "value": True}, lambda: main.coils[1] is True),
            ({"action": "unstuck", "coil": 1}, lambda: main.coils[1] is False),
            ({"action": "input", "input": 15, "value": True}, lambda: main.inputs[15] is True),
            ({"action": "garbage", "hex": "deadbeef"}, lambda: True),
            ({"action": "offline"}, lambda: main.offline),
            ({"action": "online"}, lambda: not main.offline),
            ({"action": "clear"}, lambda: main.faults() == {}),
        ]
        for req, check in steps:
            reply = await control_request(sock, {"cmd": "board", "name": "main", **req})
            assert reply["ok"] is True, (req, reply)
            assert check(), req
        await control_request(sock, {"cmd": "board", "name": "annex", "action": "offline"})
        status = await control_request(sock, {"cmd": "status"})
        assert status["boards"]["annex"]["online"] is False
        assert status["boards"]["annex"]["faults"] == {"offline": True}


async def test_control_socket_error_replies(demo_site: SimSite, tmp_path: Path) -> None:
    sock = tmp_path / "sim.sock"
    async with SimControlServer(demo_site, sock):
        cases: list[tuple[dict[str, Any], str]] = [
            ({"cmd": "door", "action": "open", "name": "x"}, "unknown door 'x'"),
            ({"cmd": "board", "action": "offline", "name": "x"}, "unknown board 'x'"),
            ({"cmd": "door", "action": "dance", "name": "lobby-main"}, "unknown door action"),
            ({"cmd": "board", "action": "melt", "name": "main"}, "unknown board action"),
            ({"cmd": "board", "action": "delay", "name": "main"}, "'ms' must be an integer"),
            ({"cmd": "board", "action": "stuck", "name": "main", "coil": 99}, "'value'"),
            (
                {"cmd": "board", "action": "stuck", "name": "main", "coil": 99, "value": True},
                "coil 99 out of range",
            ),
            ({"cmd": "board", "action": "garbage", "name": "main", "hex": "zz"}, "hexadecimal"),
            ({"cmd": "reboot"}, "unknown command 'reboot'"),
            ({"name": "x"}, "unknown command None"),
        ]
        for req, error in cases:
            reply = await control_request(sock, req)
            assert reply["ok"] is False, req
            assert error in reply["error"], (req, reply)

        reader, writer = await asyncio.open_unix_connection(str(sock))
        try:
            for raw, error in [
                (b"{not json\n", "malformed JSON"),
                (b"[1, 2]\n", "JSON object"),
                (b"\xff\xfe\n", "malformed JSON"),
                (b'{"cmd": "status"}\n', ""),
            ]:
                writer.write(raw)
                await writer.drain()
                reply = json.loads(await reader.readline())
                if error:
                    assert reply["ok"] is False, raw
                    assert error in reply["error"], raw
                else:
                    assert reply["ok"] is True  # the same connection still works
        finally:
            writer.close()
            await writer.wait_closed()

        with pytest.raises(OSError, match="already listening"):
            await SimControlServer(demo_site, sock).start()


# ---- CLI --------------------------------------------------------------------------------------


def sim_parser() -> argparse.ArgumentParser:
    """A stand-in for the warding CLI with the ``sim`` group registered."""
    parser = argparse.ArgumentParser(prog="warding")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser


async def test_cli_commands_against_a_running_sim(
    demo_site: SimSite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = str(tmp_path / "sim.sock")
    parser = sim_parser()

    async def run(*argv: str) -> int:
        return await asyncio.to_thread(
            cli.run, parser.parse_args(["sim", *argv, "--control", sock])
        )

    async with SimControlServer(demo_site, sock):
        assert await run("door", "open", "lobby-side") == 1
        assert "locked: not opened" in capsys.readouterr().err
        assert await run("door", "force", "lobby-side") == 0
        assert "forced x1" in capsys.readouterr().out
        assert await run("board", "delay", "main", "150") == 0
        assert demo_site.board("main").delay_s == 0.15
        assert await run("board", "stuck", "main", "2", "on") == 0
        assert demo_site.board("main").coils[2] is True
        assert await run("board", "stuck", "main", "2", "release") == 0
        assert await run("board", "exception", "annex", "4") == 0
        assert demo_site.board("annex").exception_code == 4
        assert await run("board", "offline", "annex") == 0
        assert await run("board", "clear", "annex") == 0
        assert demo_site.board("annex").faults() == {}
        assert await run("door", "rex", "office-north", "--hold-s", "0.01") == 0
        capsys.readouterr()
        assert await run("status") == 0
        out = capsys.readouterr().out
        assert "lobby-side" in out
        assert "delay 150 ms" in out
        assert await run("status", "--json") == 0
        assert json.loads(capsys.readouterr().out)["ok"] is True
        assert await run("door", "open", "nope") == 1
        assert capsys.readouterr().err.strip() == "warding sim: unknown door 'nope'"


async def test_cli_without_simulator_and_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    parser = sim_parser()
    monkeypatch.setenv("WARDING_SIM_SOCKET", str(tmp_path / "absent.sock"))
    assert await asyncio.to_thread(cli.run, parser.parse_args(["sim", "status"])) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no simulator listening on" in err
    assert "absent.sock" in err
    for argv in (
        ["sim", "board", "delay", "main", "abc"],
        ["sim", "door", "dance", "lobby-main"],
        ["sim", "board", "stuck", "main", "1", "maybe"],
        ["sim"],
    ):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        assert exc.value.code == 2
    capsys.readouterr()


async def test_cli_modbus_runs_site_in_foreground(tmp_path: Path) -> None:
    port = free_port()
    device = tmp_path / "line.tty"
    sock = tmp_path / "sim.sock"
    config = tmp_path / "site.toml"
    config.write_text(
        f"""
[controller]
id = "t"
[[boards]]
name = "a"
transport = "tcp"
host = "127.0.0.1"
port = {port}
[[boards]]
name = "b"
transport = "rtu"
device = "{device}"
unit_id = 3
[[doors]]
name = "d1"
lock = "fail-secure"
relay = {{ board = "a", coil = 0 }}
contact = {{ board = "b", input = 0 }}
"""
    )
    parse_toml(config.read_text())  # the fixture itself is valid
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.cli",
        "sim",
        "modbus",
        "--config",
        str(config),
        "--control",
        str(sock),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        async with asyncio.timeout(10):
            while not lines or not lines[-1].startswith("control:"):
                line = (await proc.stdout.readline()).decode()
                assert line, "simulator exited early"
                lines.append(line)
        assert lines[0].startswith(f"a: modbus tcp 127.0.0.1:{port} unit 1")
        assert lines[1].startswith(f"b: modbus rtu {device} -> /dev/pts/")
        status = await control_request(sock, {"cmd": "status"})
        assert status["doors"]["d1"]["locked"] is True
        async with tcp_client(port) as client:
            await client.write_coils(0, [True], device_id=1)
        status = await control_request(sock, {"cmd": "status"})
        assert status["doors"]["d1"]["locked"] is False
        proc.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0, err
        assert not sock.exists()
        assert not device.is_symlink()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()


# ---- paths that are not the simulator's own, and usage errors (exit 2) -----------------------


async def test_control_socket_never_replaces_a_file_or_a_symlink(
    demo_site: SimSite, tmp_path: Path
) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("precious\n")
    link = tmp_path / "link.sock"
    link.symlink_to(precious)
    for path in (precious, link, tmp_path):
        server = SimControlServer(demo_site, path)
        with pytest.raises(FileExistsError, match="exists and is not a socket; refusing"):
            await server.start()
        await server.stop()
    assert precious.read_text() == "precious\n"
    assert link.is_symlink()


async def test_control_socket_replaces_a_stale_socket(demo_site: SimSite, tmp_path: Path) -> None:
    sock = tmp_path / "sim.sock"
    with socket.socket(socket.AF_UNIX) as s:  # a simulator killed with -9 leaves this behind
        s.bind(str(sock))
    async with SimControlServer(demo_site, sock):
        assert (await control_request(sock, {"cmd": "status"}))["ok"] is True


def _sim_site_file(tmp_path: Path, device: Path) -> Path:
    config = tmp_path / "site.toml"
    config.write_text(
        f"""
[controller]
id = "t"
[[boards]]
name = "a"
transport = "tcp"
host = "127.0.0.1"
port = {free_port()}
[[boards]]
name = "b"
transport = "rtu"
device = "{device}"
unit_id = 3
[[doors]]
name = "d1"
lock = "fail-secure"
relay = {{ board = "a", coil = 0 }}
"""
    )
    return config


async def run_sim_cli(*argv: str, within: float = 20) -> tuple[int, str, str]:
    """``python -m simulators.cli ARGV`` to completion: (status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.cli",
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise AssertionError(f"{argv} did not finish within {within}s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_modbus_refuses_a_file_at_the_control_path(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("precious\n")
    config = _sim_site_file(tmp_path, tmp_path / "line.tty")
    rc, out, err = await run_sim_cli(
        "sim", "modbus", "--config", str(config), "--control", str(precious)
    )
    assert rc == 2, (out, err)
    assert err.splitlines() == [
        f"warding sim: {precious} exists and is not a socket; refusing to replace it"
    ]
    assert precious.read_text() == "precious\n"
    assert not (tmp_path / "line.tty").exists()  # nothing else was started


async def test_cli_modbus_refuses_a_file_at_an_rtu_device_before_serving(tmp_path: Path) -> None:
    device = tmp_path / "annex.tty"
    device.write_text("keep\n")
    config = _sim_site_file(tmp_path, device)
    sock = tmp_path / "sim.sock"
    rc, out, err = await run_sim_cli(
        "sim", "modbus", "--config", str(config), "--control", str(sock)
    )
    assert rc == 2, (out, err)
    # one line, no pymodbus traceback from a server started and torn down before the check
    assert err.splitlines() == [
        f"warding sim: {device} exists and is not a symlink: not replacing it"
    ]
    assert device.read_text() == "keep\n"
    assert not sock.exists()


async def test_cli_modbus_bad_site_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[controller\n")
    rc, out, err = await run_sim_cli(
        "sim", "modbus", "--config", str(bad), "--control", str(tmp_path / "s.sock")
    )
    assert rc == 2, (out, err)
    assert "Traceback" not in err
    assert err.splitlines()
    assert all(line.startswith(f"{bad}: ") for line in err.splitlines())
    rc, out, err = await run_sim_cli(
        "sim", "modbus", "--config", str(tmp_path / "absent.toml"), "--control", "x.sock"
    )
    assert rc == 2, (out, err)
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["door", "rex", "lobby-main", "--hold-s", "-1"],
        ["door", "rex", "lobby-main", "--hold-s", "nan"],
        ["door", "rex", "lobby-main", "--hold-s", "61"],
        ["board", "delay", "main", "600001"],
        ["board", "drop", "main", "1000001"],
        ["board", "exception", "main", "256"],
        ["board", "stuck", "main", "65536", "on"],
        ["board", "input", "main", "70000", "on"],
    ],
)
def test_cli_out_of_range_values_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # found by the parser: exit 2 before any request goes to the simulator (none is running)
    with pytest.raises(SystemExit) as exc:
        sim_parser().parse_args(["sim", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("warding sim "), err
    assert "error: argument" in err
