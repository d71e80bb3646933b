"""SerialReaderBus against the simulated serial reader over a real pty, and over socket://."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.access.formats import decode_card_read
from controller.settings import SerialReaderBusSettings
from drivers.base import (
    CardFraming,
    CardRead,
    CredentialReaderBus,
    DriverEvent,
    Indication,
    KeypadRead,
    ReaderAlarm,
    ReaderStatus,
)
from drivers.serial_reader import SerialReaderBus, SerialReaderBusConfig
from drivers.transport.serial_url import parse_serial_url
from simulators.cli_serial_reader import execute
from simulators.serial_reader import GARBAGE, SimSerialReader

ROOT = Path(__file__).resolve().parents[2]
H10301_1_1 = CardRead("r1", CardFraming.WIEGAND, data=bytes.fromhex("80800080"), bits=26)
EM_FOB = b"\x06\x00\x8e\x6d\x5d"  # version 06, id 0x008E6D5D = 9334109
EM_READ = CardRead("r1", CardFraming.NUMBER, text="0009334109")


def uid_read(hex_uid: str) -> CardRead:
    return CardRead("r1", CardFraming.UID, data=bytes.fromhex(hex_uid))


def lexists(path: str) -> bool:
    return os.path.lexists(path)


@dataclass
class Rig:
    """A driver, the simulated reader it reads, and every event the driver emitted."""

    sim: SimSerialReader
    bus: SerialReaderBus
    events: list[DriverEvent] = field(default_factory=list)

    def of(self, kind: type) -> list[DriverEvent]:
        return [e for e in self.events if isinstance(e, kind)]

    def statuses(self) -> list[bool]:
        return [e.online for e in self.events if isinstance(e, ReaderStatus)]

    async def next(self, kind: type, n: int = 1) -> list[DriverEvent]:
        await wait_for(lambda: len(self.of(kind)) >= n)
        return self.of(kind)


async def wait_for(predicate: Callable[[], bool], within_s: float = 5.0) -> None:
    """Poll ``predicate`` until true or fail after ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def running(bus: SerialReaderBus) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(bus.run())
    try:
        yield task
    finally:
        await bus.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_bus(
    device: str, events: list[DriverEvent], framing: str = "auto", **kw: float
) -> SerialReaderBus:
    return SerialReaderBus(
        SerialReaderBusConfig("line1", device, 9600, framing),
        "r1",
        events.append,
        backoff_initial_s=kw.get("backoff_initial_s", 0.02),
        backoff_max_s=kw.get("backoff_max_s", 0.1),
        alarm_interval_s=kw.get("alarm_interval_s", 1.0),
    )


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, framing: str = "auto", **kw: float) -> AsyncIterator[Rig]:
    with SimSerialReader(tmp_path / "dev" / "reader1", framing=framing) as sim:
        events: list[DriverEvent] = []
        bus = make_bus(sim.path, events, framing, **kw)
        r = Rig(sim, bus, events)
        async with running(bus):
            await wait_for(lambda: bus.online)
            yield r


# -- cards and keys --------------------------------------------------------------------------


async def test_wiegand_card_becomes_a_card_read_with_raw_bits(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        assert r.sim.present_card("h10301:1:1") == b"W26:0x2020002\r\n"
        (read,) = await r.next(CardRead)
        assert read == H10301_1_1
        assert isinstance(read, CardRead)
        assert decode_card_read(read).key == "h10301:1:1"
        assert r.events[0] == ReaderStatus("r1", online=True, secure=None, detail=r.sim.path)


@pytest.mark.parametrize(
    ("framing", "card", "expected"),
    [
        ("decimal", "number:9334109", EM_READ),
        ("decimal", EM_FOB, EM_READ),
        ("em4100-stx", EM_FOB, EM_READ),
        ("auto", "number:9334109", EM_READ),
        ("uid-hex", "uid:04A1B2C3D4E5F6", uid_read("04A1B2C3D4E5F6")),
        ("auto", b"\x04\xa1\xb2\xc3", uid_read("04A1B2C3")),
        ("wiegand-hex", "h10301:1:1", H10301_1_1),
        ("auto", "h10301:1:1", H10301_1_1),
    ],
)
async def test_every_framing_end_to_end(
    tmp_path: Path, framing: str, card: str | bytes, expected: CardRead
) -> None:
    async with rig(tmp_path, framing) as r:
        r.sim.present_card(card)
        assert await r.next(CardRead) == [expected]
        assert not r.of(ReaderAlarm)


async def test_the_same_fob_gives_one_key_on_an_rdm6300_and_a_usb_decimal_reader(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        r.sim.present_card(EM_FOB, "em4100-stx")
        r.sim.present_card(EM_FOB, "decimal")
        reads = await r.next(CardRead, 2)
        keys = {decode_card_read(read).key for read in reads if isinstance(read, CardRead)}
        assert keys == {"number:9334109"}


async def test_keypad_line_and_wiegand_keypad_bursts(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.sim.type_keys("1234#")
        r.sim.type_keys("9*", style="wiegand4")
        r.sim.type_keys("0#", style="wiegand8")
        keys = await r.next(KeypadRead, 5)
        assert [k.keys for k in keys if isinstance(k, KeypadRead)] == ["1234#", "9", "*", "0", "#"]
        assert not r.of(CardRead)
        assert not r.of(ReaderAlarm)


async def test_bad_wiegand_keypad_code_is_malformed_not_a_card(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.sim.present_wiegand(8, b"\x11")  # inverted nibble does not match
        (alarm,) = await r.next(ReaderAlarm)
        assert alarm == ReaderAlarm("r1", "malformed", "invalid wiegand keypad code")
        assert not r.of(CardRead)
        assert not r.of(KeypadRead)


# -- malformed input -------------------------------------------------------------------------


async def test_malformed_line_raises_an_alarm_and_the_next_card_still_arrives(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        r.sim.garbage()
        r.sim.present_card("h10301:1:1")
        assert await r.next(CardRead) == [H10301_1_1]
        (alarm,) = r.of(ReaderAlarm)
        assert isinstance(alarm, ReaderAlarm)
        assert alarm.kind == "malformed"
        assert alarm.detail == f"non-printable byte in line ({len(GARBAGE) - 2} bytes)"
        assert r.bus.online
        assert r.bus.stats["malformed"] == 1


async def test_framing_mismatch_is_malformed(tmp_path: Path) -> None:
    async with rig(tmp_path, "wiegand-hex") as r:
        r.sim.present_card("number:9334109", framing="decimal")
        (alarm,) = await r.next(ReaderAlarm)
        assert isinstance(alarm, ReaderAlarm)
        assert alarm.detail.startswith("not a wiegand-hex line")
        assert not r.of(CardRead)


async def test_repeated_malformed_alarms_are_rate_limited_but_counted(tmp_path: Path) -> None:
    async with rig(tmp_path, alarm_interval_s=0.4) as r:
        for _ in range(5):
            r.sim.garbage()
        r.sim.send_raw(b"\x02" + b"Z" * 40)  # an overlong binary frame, reported as it overflows
        await wait_for(lambda: r.bus.stats["malformed"] == 6)
        assert len(r.of(ReaderAlarm)) == 1  # the first at once, the rest held back...
        alarms = await r.next(ReaderAlarm, 2)  # ...and summarised when the interval ends
        assert isinstance(alarms[1], ReaderAlarm)
        assert alarms[1].detail.startswith("5 more malformed frame(s) within 0.4 s")
        assert r.bus.stats["malformed"] == 6
        assert not r.of(CardRead)


async def test_summary_of_suppressed_alarms_is_not_lost_at_stop(tmp_path: Path) -> None:
    async with rig(tmp_path, alarm_interval_s=30) as r:
        r.sim.garbage()
        r.sim.garbage()
        await wait_for(lambda: r.bus.stats["malformed"] == 2)
    alarms = r.of(ReaderAlarm)
    assert len(alarms) == 2
    assert isinstance(alarms[1], ReaderAlarm)
    assert alarms[1].detail.startswith("1 more malformed frame(s)")
    assert r.statuses() == [True, False]


# -- link loss -------------------------------------------------------------------------------


async def test_unplug_goes_offline_and_replug_comes_back(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.sim.send_raw(b"00093")  # a card half sent when the cable is pulled
        await wait_for(lambda: r.bus.stats["bytes"] == 5)
        r.sim.unplug()
        await wait_for(lambda: r.statuses() == [True, False])
        assert not lexists(r.sim.path)
        (alarm,) = r.of(ReaderAlarm)
        assert isinstance(alarm, ReaderAlarm)
        assert alarm.detail == "record cut short by end of stream (5 bytes)"
        await asyncio.sleep(0.15)  # a few failed reopen attempts: still just one offline
        assert r.statuses() == [True, False]
        r.sim.replug()
        await wait_for(lambda: r.statuses() == [True, False, True])
        r.sim.present_card("h10301:1:1")
        assert await r.next(CardRead) == [H10301_1_1]
        assert r.bus.stats["opens"] == 2
        assert not r.of(CardRead)[1:]


async def test_reader_absent_at_start_reports_offline_then_online(tmp_path: Path) -> None:
    device = tmp_path / "dev" / "late"
    events: list[DriverEvent] = []
    bus = make_bus(str(device), events)
    async with running(bus):
        await wait_for(lambda: bool(events))
        assert events == [
            ReaderStatus("r1", online=False, secure=None, detail=f"{device}: no such device")
        ]
        with SimSerialReader(device) as sim:
            await wait_for(lambda: bus.online)
            sim.present_card("h10301:1:1")
            await wait_for(lambda: any(isinstance(e, CardRead) for e in events))
    assert [e.online for e in events if isinstance(e, ReaderStatus)] == [False, True, False]


async def test_not_a_serial_device_raises_one_config_alarm(tmp_path: Path) -> None:
    device = tmp_path / "not-a-tty"
    device.write_text("")
    events: list[DriverEvent] = []
    bus = make_bus(str(device), events, backoff_max_s=0.02)
    async with running(bus):
        await wait_for(lambda: bus.stats["failures"] >= 4)
    alarms = [e for e in events if isinstance(e, ReaderAlarm)]
    assert len(alarms) == 1
    assert alarms[0].kind == "config"
    assert [e.online for e in events if isinstance(e, ReaderStatus)] == [False]


async def test_close_is_idempotent_and_ends_run(tmp_path: Path) -> None:
    with SimSerialReader(tmp_path / "r") as sim:
        events: list[DriverEvent] = []
        bus = make_bus(sim.path, events)
        task = asyncio.create_task(bus.run())
        await wait_for(lambda: bus.online)
        await bus.close()
        await bus.close()
        await asyncio.wait_for(task, 2)
        await bus.close()
        assert [e.online for e in events if isinstance(e, ReaderStatus)] == [True, False]
        assert events[-1] == ReaderStatus("r1", online=False, secure=None, detail="stopped")


# -- socket:// -------------------------------------------------------------------------------


async def test_socket_url_reads_cards_and_reconnects() -> None:
    connections: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await connections.put(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    events: list[DriverEvent] = []
    bus = make_bus(f"socket://127.0.0.1:{port}", events)
    peer: asyncio.StreamWriter | None = None
    try:
        async with running(bus):
            peer = await asyncio.wait_for(connections.get(), 5)
            await wait_for(lambda: bus.online)
            peer.write(b"W26:0x2020002\r\nK:42#\r\n")
            await wait_for(lambda: len(events) >= 3)
            assert events[1:] == [H10301_1_1, KeypadRead("r1", "42#")]
            peer.close()  # the device server drops the connection
            await peer.wait_closed()
            peer = await asyncio.wait_for(connections.get(), 5)
            await wait_for(lambda: bus.online)
            peer.write(b"0009334109\n")
            await wait_for(lambda: len(events) >= 6)
        assert events[3].online is False  # type: ignore[union-attr]
        assert events[5] == EM_READ
        assert events[6:] == [ReaderStatus("r1", online=False, secure=None, detail="stopped")]
    finally:
        server.close()
        await server.wait_closed()
        if peer is not None:
            connections.put_nowait(peer)
        while not connections.empty():
            writer = connections.get_nowait()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class HangUpListener:
    """A TCP port that accepts every connection and closes it at once (plain sockets)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        asyncio.get_running_loop().add_reader(self.sock, self.drain)

    def drain(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return
            conn.close()
            self.accepted += 1

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock)
        self.drain()  # every handshake the client completed is in the backlog
        self.sock.close()


async def test_a_line_that_drops_at_once_backs_off_instead_of_flapping() -> None:
    listener = HangUpListener()
    events: list[DriverEvent] = []
    bus = SerialReaderBus(
        SerialReaderBusConfig("line1", f"socket://127.0.0.1:{listener.port}"),
        "r1",
        events.append,
        backoff_initial_s=0.02,
        backoff_max_s=0.2,
        rng=random.Random(7),
    )
    try:
        async with running(bus):
            await asyncio.sleep(0.8)
    finally:
        listener.close()
    # resetting the backoff on every open reconnects ~70 times here (mean delay 10 ms);
    # growing to the 0.2 s cap, about 15
    assert 2 <= bus.stats["opens"] <= 30


async def test_socket_url_connection_refused_is_retried() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    events: list[DriverEvent] = []
    bus = make_bus(f"socket://127.0.0.1:{port}", events)
    async with running(bus):
        await wait_for(lambda: bus.stats["failures"] >= 2)
    assert not [e for e in events if isinstance(e, ReaderAlarm)]
    assert [e.online for e in events if isinstance(e, ReaderStatus)] == [False]


# -- construction, role, settings ------------------------------------------------------------


def test_bus_is_a_credential_reader_bus_and_indicate_is_a_no_op() -> None:
    settings = SerialReaderBusSettings(
        driver="serial", name="lobby-line", device="/dev/ttyUSB0", framing="decimal"
    )
    bus = SerialReaderBus(settings, "lobby-in", lambda e: None)
    assert isinstance(bus, CredentialReaderBus)
    assert bus.readers == ("lobby-in",)
    assert bus.name == "lobby-line"
    bus.indicate("lobby-in", Indication.GRANTED)  # no LED control on these readers


@pytest.mark.parametrize(
    "device", ["", "rfc2217://host:2217", "socket://host", "socket://:5000", "socket://h:1/x"]
)
def test_bad_device_url_is_rejected_at_construction(device: str) -> None:
    with pytest.raises(ValueError, match="serial"):
        make_bus(device, [])


def test_serial_url_parsing() -> None:
    assert parse_serial_url("/dev/ttyUSB0").path == "/dev/ttyUSB0"
    url = parse_serial_url("socket://10.0.0.5:4001")
    assert (url.kind, url.host, url.port) == ("socket", "10.0.0.5", 4001)


# -- shell simulator -------------------------------------------------------------------------


def test_shell_commands_against_the_simulator(tmp_path: Path) -> None:
    with SimSerialReader(tmp_path / "r", framing="decimal") as sim:
        assert execute(sim, "uid 06:00:8e:6d:5d") == ("sent b'0009334109\\r\\n'", False)
        assert execute(sim, "wiegand 26 2020002") == ("sent b'W26:0x2020002\\r\\n'", False)
        assert execute(sim, "em 06008E6D5D") == ("sent b'\\x0206008E6D5DB8\\x03'", False)
        assert execute(sim, "keys 12# wiegand4")[0].startswith("sent b'W4:0x1")
        assert execute(sim, "card h10301:1:1")[0].startswith("error: a Wiegand card")
        assert execute(sim, "card nonsense")[0].startswith("error:")
        assert execute(sim, "frobnicate")[0].startswith("error: unknown command")
        assert execute(sim, "unplug") == ("unplugged", False)
        assert execute(sim, "number 1")[0] == "error: simulated reader is unplugged"
        assert execute(sim, "replug")[0].startswith("plugged /dev/pts/")
        assert execute(sim, "# a comment") == ("", False)
        assert execute(sim, "quit") == ("bye", True)


async def test_warding_sim_serial_reader_from_a_shell(tmp_path: Path) -> None:
    device = tmp_path / "dev" / "shell-reader"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.cli_serial_reader",
        "--device",
        str(device),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    events: list[DriverEvent] = []
    try:
        banner = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert banner.startswith(f"serial-reader: {device} -> /dev/pts/".encode())
        bus = make_bus(str(device), events)
        async with running(bus):
            await wait_for(lambda: bus.online)
            proc.stdin.write(b"card h10301:1:1\nkeys 1234#\ngarbage\nnumber 0009334109\n")
            await proc.stdin.drain()
            await wait_for(lambda: len(events) >= 5)
            proc.stdin.write(b"quit\n")
            await proc.stdin.drain()
            assert await asyncio.wait_for(proc.wait(), 10) == 0
            await wait_for(lambda: not bus.online)
        assert events[1:5] == [
            H10301_1_1,
            KeypadRead("r1", "1234#"),
            ReaderAlarm(
                "r1", "malformed", f"non-printable byte in line ({len(GARBAGE) - 2} bytes)"
            ),
            EM_READ,
        ]
        assert not lexists(str(device))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        proc.stdin.close()
        await proc.stdout.read()
        assert proc.stderr is not None
        await proc.stderr.read()
