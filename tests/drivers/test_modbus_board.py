"""ModbusRelayBoard against the relay-board simulator over real loopback TCP and a real pty."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.base import CoilsRead, DeviceFault, DriverEvent, InputsRead, LinkChanged, LinkState
from drivers.modbus.board import BoardConfig, ModbusRelayBoard
from drivers.modbus.link import ModbusEndpoint, ModbusLink
from drivers.transport.backoff import Backoff
from simulators.modbus_board import SimModbusBoard, SimModbusEndpoint, SimRtuLine


@dataclass
class Rig:
    """A driver, the simulated board it talks to, and every event the driver emitted."""

    sim: SimModbusBoard
    board: ModbusRelayBoard
    events: list[DriverEvent] = field(default_factory=list)

    def of(self, kind: type) -> list[DriverEvent]:
        return [e for e in self.events if isinstance(e, kind)]


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until true or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.005)


def config(name: str, endpoint: ModbusEndpoint, unit: int, **kw: float) -> BoardConfig:
    return BoardConfig(
        name=name,
        endpoint=endpoint,
        unit_id=unit,
        coils=8,
        inputs=16,
        timeout_s=kw.get("timeout_s", 0.15),
        poll_interval_s=kw.get("poll_interval_s", 0.02),
        backoff_initial_s=0.02,
        backoff_max_s=0.2,
    )


@contextlib.asynccontextmanager
async def running(board: ModbusRelayBoard) -> AsyncIterator[None]:
    task = asyncio.create_task(board.run())
    try:
        yield
    finally:
        await board.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def tcp() -> AsyncIterator[Rig]:
    sim = SimModbusBoard("b", 1, coils=8, inputs=16)
    endpoint = SimModbusEndpoint()
    endpoint.add_board(sim)
    async with endpoint:
        ep = ModbusEndpoint("tcp", host="127.0.0.1", port=endpoint.port)
        events: list[DriverEvent] = []
        cfg = config("b", ep, 1)
        link = ModbusLink(ep, cfg.timeout_s)
        board = ModbusRelayBoard(cfg, link, events.append, rng=random.Random(1))
        async with running(board):
            rig = Rig(sim, board, events)
            await wait_for(lambda: board.link is LinkState.UP)
            yield rig
        link.close()


@pytest.fixture
async def rtu(tmp_path: Path) -> AsyncIterator[tuple[Rig, SimRtuLine]]:
    sim = SimModbusBoard("r", 7, coils=8, inputs=16)
    line = SimRtuLine(tmp_path / "line.tty", baudrate=38400)
    line.add_board(sim)
    async with line:
        ep = ModbusEndpoint("rtu", device=str(tmp_path / "line.tty"), baudrate=38400)
        events: list[DriverEvent] = []
        cfg = config("r", ep, 7)
        link = ModbusLink(ep, cfg.timeout_s)
        board = ModbusRelayBoard(cfg, link, events.append, rng=random.Random(2))
        async with running(board):
            await wait_for(lambda: board.link is LinkState.UP)
            yield Rig(sim, board, events), line
        link.close()


async def test_connect_reports_inputs_coils_and_link(tcp: Rig) -> None:
    assert any(isinstance(e, LinkChanged) and e.state is LinkState.UP for e in tcp.events)
    first_inputs = tcp.of(InputsRead)[0]
    assert isinstance(first_inputs, InputsRead)
    assert first_inputs.changed == frozenset(range(16))
    assert tcp.of(CoilsRead)


async def test_changes_in_one_turn_share_one_fc15_and_are_read_back(tcp: Rig) -> None:
    before = tcp.sim.requests[15]
    futures = [tcp.board.command({c: True}) for c in (1, 3, 6)]
    outcomes = await asyncio.wait_for(asyncio.gather(*futures), 2)
    assert all(o.ok for o in outcomes)
    assert tcp.sim.requests[15] == before + 1
    assert [tcp.sim.read_coil(c) for c in range(8)] == [
        False,
        True,
        False,
        True,
        False,
        False,
        True,
        False,
    ]
    assert tcp.board.desired == {1: True, 3: True, 6: True}


async def test_a_write_readback_reaches_the_controller_once(tcp: Rig) -> None:
    # the write's futures carry its readback: no CoilsRead repeats it ...
    reported = len(tcp.of(CoilsRead))
    assert (await tcp.board.command({1: True, 3: True})).ok
    await asyncio.sleep(0.1)  # several polls (20 ms) that see nothing new
    assert len(tcp.of(CoilsRead)) == reported
    # ... but a coil outside the write that changed meanwhile is reported by the next read
    tcp.sim.stuck_coil(5, True)  # never commanded by us: not a mismatch, still a change
    assert (await tcp.board.command({1: False})).ok
    await wait_for(lambda: len(tcp.of(CoilsRead)) > reported)
    last = tcp.of(CoilsRead)[-1]
    assert isinstance(last, CoilsRead)
    assert last.values[5] is True
    assert last.mismatched == frozenset()


async def test_a_write_overtakes_a_poll_but_never_two_polls_in_a_row(tcp: Rig) -> None:
    tcp.sim.delay_s = 0.05  # every reply late: a command lands while a poll reads inputs
    polls, cut = tcp.board.stats["polls"], tcp.board.stats["polls_cut"]
    value = False
    for _ in range(12):
        seen = tcp.sim.requests[2]

        def input_read_began(seen: int = seen) -> bool:
            return tcp.sim.requests[2] > seen

        await wait_for(input_read_began)  # a poll's input read is under way
        value = not value
        assert (await tcp.board.command({7: value})).ok
    polls = tcp.board.stats["polls"] - polls
    cut = tcp.board.stats["polls_cut"] - cut
    assert cut >= 3  # the writes did go first
    assert cut <= polls - cut + 1  # and a cut poll is always followed by a full one


async def test_untouched_coils_in_the_span_keep_their_value(tcp: Rig) -> None:
    # coil 2 was never commanded by us; a FC15 spanning it must write back what it is
    outcome = await tcp.board.command({2: True})
    assert outcome.ok
    await asyncio.gather(tcp.board.command({0: True}), tcp.board.command({4: True}))
    assert tcp.sim.read_coil(2) is True


async def test_single_coil_uses_fc5(tcp: Rig) -> None:
    before = tcp.sim.requests[5]
    assert (await tcp.board.command({5: True})).ok
    assert tcp.sim.requests[5] == before + 1


async def test_input_change_is_reported_with_its_index(tcp: Rig) -> None:
    tcp.sim.set_input(9, True)
    await wait_for(lambda: len(tcp.of(InputsRead)) >= 2)
    last = tcp.of(InputsRead)[-1]
    assert isinstance(last, InputsRead)
    assert last.values[9] is True
    assert last.changed == frozenset({9})


async def test_stuck_relay_is_a_mismatch_not_a_confirmation(tcp: Rig) -> None:
    tcp.sim.stuck_coil(2, False)
    outcome = await tcp.board.command({2: True})
    assert not outcome.ok
    assert outcome.mismatched == frozenset({2})
    await wait_for(lambda: any(isinstance(e, CoilsRead) and 2 in e.mismatched for e in tcp.events))


async def test_drift_is_detected_by_polling(tcp: Rig) -> None:
    assert (await tcp.board.command({4: True})).ok
    tcp.sim.stuck_coil(4, False)  # the relay drops out on its own
    await wait_for(lambda: any(isinstance(e, CoilsRead) and 4 in e.mismatched for e in tcp.events))


async def test_one_dropped_reply_is_tolerated(tcp: Rig) -> None:
    tcp.sim.drop_next(1)
    await wait_for(lambda: any(isinstance(e, DeviceFault) for e in tcp.events))
    fault = tcp.of(DeviceFault)[0]
    assert isinstance(fault, DeviceFault)
    assert fault.kind == "timeout"
    assert (await tcp.board.command({0: True})).ok
    downs = [e for e in tcp.events if isinstance(e, LinkChanged) and e.state is LinkState.BACKOFF]
    assert downs == []


async def test_exception_responses_take_the_link_down_and_recover(tcp: Rig) -> None:
    tcp.sim.exception_code = 4
    await wait_for(lambda: tcp.board.link is LinkState.BACKOFF)
    faults = [e for e in tcp.of(DeviceFault) if isinstance(e, DeviceFault)]
    assert faults[0].kind == "exception"
    assert "device failure" in faults[0].detail
    # a command issued while the board refuses is kept and applied once it answers again
    fut = tcp.board.command({7: True})
    tcp.sim.exception_code = None
    await wait_for(lambda: tcp.board.link is LinkState.UP)
    await wait_for(lambda: tcp.sim.read_coil(7))
    await asyncio.wait_for(fut, 2)


async def test_board_vanishing_mid_command_then_returning_reasserts(tcp: Rig) -> None:
    assert (await tcp.board.command({0: True, 1: True})).ok
    await tcp.sim.set_offline(True)
    await wait_for(lambda: tcp.board.link is LinkState.BACKOFF)
    outcome = await asyncio.wait_for(tcp.board.command({1: False, 2: True}), 2)
    assert not outcome.ok
    assert outcome.error
    tcp.sim.power_cycle()  # while away the board lost power: every relay dropped
    await tcp.sim.set_offline(False)
    await wait_for(lambda: tcp.board.link is LinkState.UP)
    await wait_for(lambda: tcp.sim.coils[:3] == (True, False, True))
    assert tcp.board.desired == {0: True, 1: False, 2: True}


async def test_slow_board_times_out_then_recovers(tcp: Rig) -> None:
    tcp.sim.delay_s = 0.4
    await wait_for(lambda: tcp.board.link is LinkState.BACKOFF)
    tcp.sim.delay_s = 0.0
    await wait_for(lambda: tcp.board.link is LinkState.UP)
    assert (await tcp.board.command({3: True})).ok


async def test_out_of_range_coil_is_refused_at_once(tcp: Rig) -> None:
    outcome = await tcp.board.command({8: True})
    assert not outcome.ok
    assert "out of range" in outcome.error


async def test_rtu_round_trip_and_fc15(rtu: tuple[Rig, SimRtuLine]) -> None:
    rig, _ = rtu
    before = rig.sim.requests[15]
    outcomes = await asyncio.gather(rig.board.command({0: True}), rig.board.command({2: True}))
    assert all(o.ok for o in outcomes)
    assert rig.sim.requests[15] == before + 1
    rig.sim.set_input(3, True)
    await wait_for(lambda: any(isinstance(e, InputsRead) and e.changed == {3} for e in rig.events))


async def test_rtu_garbage_and_corruption_do_not_break_the_link(
    rtu: tuple[Rig, SimRtuLine],
) -> None:
    rig, _ = rtu
    rig.sim.garbage(b"\xff\x00\x13\x37garbage\x01\x02")
    rig.sim.corrupt_next(1)
    await wait_for(lambda: any(isinstance(e, DeviceFault) for e in rig.events))
    assert (await asyncio.wait_for(rig.board.command({5: True}), 3)).ok
    assert rig.sim.read_coil(5)
    assert rig.board.link is LinkState.UP


async def test_rtu_unplug_and_replug_reasserts(rtu: tuple[Rig, SimRtuLine]) -> None:
    rig, line = rtu
    assert (await rig.board.command({1: True})).ok
    line.unplug()
    await wait_for(lambda: rig.board.link is LinkState.BACKOFF)
    rig.sim.power_cycle()
    line.replug()
    await wait_for(lambda: rig.board.link is LinkState.UP)
    await wait_for(lambda: rig.sim.read_coil(1))


async def test_two_boards_share_one_rtu_line(tmp_path: Path) -> None:
    a = SimModbusBoard("a", 3, coils=8, inputs=16)
    b = SimModbusBoard("b", 4, coils=8, inputs=16)
    line = SimRtuLine(tmp_path / "bus.tty", baudrate=38400)
    line.add_board(a)
    line.add_board(b)
    async with line:
        ep = ModbusEndpoint("rtu", device=str(tmp_path / "bus.tty"), baudrate=38400)
        link = ModbusLink(ep, 0.15)
        events: list[DriverEvent] = []
        da = ModbusRelayBoard(config("a", ep, 3), link, events.append)
        db = ModbusRelayBoard(config("b", ep, 4), link, events.append)
        async with running(da), running(db):
            await wait_for(lambda: da.link is LinkState.UP and db.link is LinkState.UP)
            oa, ob = await asyncio.gather(da.command({0: True}), db.command({1: True}))
            assert oa.ok
            assert ob.ok
            assert a.coils[:2] == (True, False)
            assert b.coils[:2] == (False, True)
        link.close()


async def test_unreachable_board_backs_off_without_hammering() -> None:
    ep = ModbusEndpoint("tcp", host="127.0.0.1", port=1)  # nothing listens on port 1
    events: list[DriverEvent] = []
    board = ModbusRelayBoard(config("x", ep, 1), ModbusLink(ep, 0.1), events.append)
    async with running(board):
        await wait_for(lambda: board.stats["reconnects"] >= 3)
        assert board.link in (LinkState.BACKOFF, LinkState.CONNECTING)
        outcome = await asyncio.wait_for(board.command({0: True}), 2)
        assert not outcome.ok


@given(
    base=st.floats(0.001, 10),
    cap=st.floats(0.001, 100),
    attempts=st.integers(0, 100),
    seed=st.integers(0, 2**32),
)
def test_backoff_stays_within_full_jitter_bounds(
    base: float, cap: float, attempts: int, seed: int
) -> None:
    b = Backoff(base, cap, random.Random(seed))
    for n in range(attempts):
        d = b.next_delay()
        assert 0.0 <= d <= min(cap, base * 2**n) + 1e-12
    b.reset()
    assert b.attempt == 0
    b.saturate()
    assert b.ceiling() == pytest.approx(min(cap, max(cap, base)) if base >= cap else cap)
