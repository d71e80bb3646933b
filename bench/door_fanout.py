"""Door fan-out: lock every door of a site and time it until every relay is read back.

``python -m bench.door_fanout --json`` runs the real ``Daemon`` in this process (journal and
control socket in a temp dir) against simulated Modbus TCP boards in a subprocess. Each round:

* warding: (untimed) ``command_many(all, "unlock")`` and a journal flush, then (timed)
  ``command_many(all, "lock")`` from the call until every door's result is in; a round counts
  only if all 256 are confirmed by readback (else it is counted in ``failures``).
* floor: the same traffic with raw pymodbus and no warding code - per board, concurrently, one
  FC15 of the same coil values and one FC1 readback of the same span (untimed unlock, timed
  lock). It talks to twin boards in the same simulator process: writing the daemon's own boards
  behind its back would (rightly) fault its doors.
* driver: warding's own board driver (``ModbusRelayBoard`` over ``ModbusLink``, polling as in
  the daemon) with no door logic: one coil command per board, timed until every board's
  readback is in. It talks to a third set of twin boards. It splits warding's overhead over the
  floor into the driver's share and the door service's.
* rtt: one FC15 round trip to one twin board.

The kinds take turns in a rotating order round by round, and each timed step starts after the
same random pause (0..poll interval), so machine noise and the phase of the daemon's input
polling hit all alike. The daemon's polling keeps running all the
time, as in a deployment. Besides wall time, the CPU time of this process (all threads: the
journal writer is one) is taken over each timed window. BENCHMARKS.md has figures and findings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType

from bench._common import (
    SimulatorError,
    SimulatorProcess,
    board_lines,
    emit_json,
    free_ports,
    keep_error,
    non_negative_int,
    positive_int,
    quiet_logs,
    summarize,
    temp_dir,
    twin_site_sections,
)
from controller.app import Daemon, build_boards
from controller.sdnotify import SdNotifier
from controller.settings import Settings, parse_toml
from drivers.base import DriverEvent, LinkState
from drivers.modbus.board import ModbusRelayBoard
from drivers.modbus.link import ModbusLink

TARGET_RATIO_P99 = 1.25
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
HOST = "127.0.0.1"
UNIT_ID = 1


@dataclass(frozen=True, slots=True)
class Options:
    """What to run."""

    rounds: int = 200
    warmup: int = 10
    doors: int = 256
    boards: int = 16
    poll_interval_ms: int = 50
    timeout_ms: int = 1000
    seed: int = 1

    @property
    def doors_per_board(self) -> int:
        """Doors (and coils used) on each board."""
        return self.doors // self.boards


@dataclass(slots=True)
class Samples:
    """Raw timings (seconds) and counters collected over the rounds."""

    warding: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    rtt: list[float] = field(default_factory=list)
    driver: list[float] = field(default_factory=list)
    warding_cpu: list[float] = field(default_factory=list)
    floor_cpu: list[float] = field(default_factory=list)
    driver_cpu: list[float] = field(default_factory=list)
    failures: int = 0
    floor_failures: int = 0
    driver_failures: int = 0
    rtt_failures: int = 0
    errors: list[str] = field(default_factory=list)
    fc15_per_lock: list[int] = field(default_factory=list)
    polls_in_window: list[int] = field(default_factory=list)
    journal_backlog: list[int] = field(default_factory=list)

    def note(self, error: str) -> None:
        """Keep the first few distinct errors for the report."""
        keep_error(self.errors, error)


# -- site files -----------------------------------------------------------------------------


def _board_lines(name: str, port: int, opts: Options) -> list[str]:
    return board_lines(
        name,
        port,
        coils=opts.doors_per_board,
        inputs=16,
        timeout_ms=opts.timeout_ms,
        poll_interval_ms=opts.poll_interval_ms,
        host=HOST,
        unit_id=UNIT_ID,
    )


def _door_lines(opts: Options, prefix: str) -> list[str]:
    doors: list[str] = []
    for i in range(opts.doors):
        board, coil = divmod(i, opts.doors_per_board)
        doors += [
            "[[doors]]",
            f'name = "d{i:03d}"',
            'zone = "bench"',
            'lock = "fail-secure"',
            f'relay = {{ board = "{prefix}{board:02d}", coil = {coil} }}',
            "",
        ]
    return doors


def site_files(
    workdir: Path,
    warding_ports: Sequence[int],
    raw_ports: Sequence[int],
    opts: Options,
    driver_ports: Sequence[int] = (),
) -> tuple[str, str, str]:
    """(daemon site, simulator site, driver-floor site) TOML; the simulator hosts the twins."""
    lines = functools.partial(_board_lines, opts=opts)
    head, boards, twins = twin_site_sections(
        workdir, "bench-fanout", warding_ports, raw_ports, lines
    )
    drivers = [line for b, port in enumerate(driver_ports) for line in lines(f"x{b:02d}", port)]
    doors = _door_lines(opts, "w")
    daemon = "\n".join(head + boards + doors)
    sim = "\n".join(head + boards + twins + drivers + doors)
    driver_site = "\n".join(head + drivers + _door_lines(opts, "x")) if driver_ports else ""
    return daemon, sim, driver_site


# -- the measurement ------------------------------------------------------------------------


class Bench:
    """The daemon under test, the raw clients of the floor, and the rounds."""

    def __init__(
        self,
        opts: Options,
        settings: Settings,
        raw_ports: Sequence[int],
        workdir: Path,
        driver_settings: Settings,
    ) -> None:
        self.opts = opts
        self.daemon = Daemon(
            settings,
            socket_path=workdir / "control.sock",
            journal_path=workdir / "journal.db",
            notifier=SdNotifier(None),  # never talk to a systemd that runs the bench
            ready_timeout_s=20.0,
        )
        self.raw_ports = list(raw_ports)
        self.clients: list[AsyncModbusTcpClient] = []
        self.driver_settings = driver_settings
        self.drivers: list[ModbusRelayBoard] = []
        self.driver_links: list[ModbusLink] = []
        self.driver_tasks: list[asyncio.Task[None]] = []
        self.rng = random.Random(opts.seed)
        self.samples = Samples()
        self._task: asyncio.Task[int] | None = None

    # -- set-up and tear-down

    async def start(self) -> None:
        """Run the daemon until it is ready with every board up; connect the raw clients."""
        self._task = asyncio.create_task(self.daemon.run(), name="daemon")
        ready = asyncio.create_task(self.daemon.ready.wait(), name="daemon-ready")
        await asyncio.wait(
            {self._task, ready}, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        if not ready.done():
            ready.cancel()
            self._check_daemon()
            raise RuntimeError(f"daemon not ready within {READY_TIMEOUT_S} s")
        down = [n for n, b in self.daemon.boards.items() if b.link is not LinkState.UP]
        if down:
            raise RuntimeError(f"boards not up after start-up: {down}")
        for port in self.raw_ports:
            client = AsyncModbusTcpClient(
                HOST,
                port=port,
                framer=FramerType.SOCKET,
                timeout=self.opts.timeout_ms / 1000,
                retries=0,
                reconnect_delay=0,
                reconnect_delay_max=0,
            )
            self.clients.append(client)
        connected = await asyncio.gather(*(c.connect() for c in self.clients))
        if not all(connected):
            raise RuntimeError("raw clients could not connect to the twin boards")
        await self._start_drivers()

    async def _start_drivers(self) -> None:
        """Run warding's board drivers (no doors) on the third twin set until all are up."""

        def ignore(event: DriverEvent) -> None:
            del event  # input and coil reports: the driver floor needs only the futures

        boards, self.driver_links = build_boards(self.driver_settings, ignore)
        self.drivers = list(boards.values())
        self.driver_tasks = [
            asyncio.create_task(b.run(), name=f"driver-{b.name}") for b in self.drivers
        ]
        deadline = time.monotonic() + READY_TIMEOUT_S
        while any(b.link is not LinkState.UP for b in self.drivers):
            if time.monotonic() > deadline:
                down = [b.name for b in self.drivers if b.link is not LinkState.UP]
                raise RuntimeError(f"driver-floor boards not up: {down}")
            await asyncio.sleep(0.01)

    def _check_daemon(self) -> None:
        """Raise RuntimeError (with the cause) if the daemon task has ended."""
        task = self._task
        if task is None or not task.done():
            return
        exc = None if task.cancelled() else task.exception()
        raise RuntimeError(f"the daemon stopped: {exc!r}") from exc

    async def stop(self) -> None:
        """Close the raw clients and shut the daemon down (relays to their fail state)."""
        for client in self.clients:
            client.close()
        for board in self.drivers:
            await board.close()
        for driver_task in self.driver_tasks:
            driver_task.cancel()
        await asyncio.gather(*self.driver_tasks, return_exceptions=True)
        for link in self.driver_links:
            link.close()
        self.daemon.shutdown.set()
        task = self._task
        if task is None:
            return
        if not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT_S)
            except TimeoutError:
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task  # its failure, if any, was reported by _check_daemon

    # -- one step of each kind

    async def _pause(self) -> None:
        """A random pause of up to one poll interval (same distribution for every kind)."""
        await asyncio.sleep(self.rng.uniform(0.0, self.opts.poll_interval_ms / 1000))

    async def warding_round(self, record: bool) -> None:
        """Unlock all (untimed), then time locking all until every readback confirmed."""
        doors = self.daemon.doors
        assert doors is not None
        names = doors.door_names
        ok = True
        results = await doors.command_many(names, "unlock", source="bench")
        bad = [r for r in results if not r.confirmed]
        if bad:
            ok = False
            self.samples.note(f"unlock {bad[0].door}: {bad[0].error}")
        if self.daemon.journal is not None:
            await self.daemon.journal.flush()  # a lockdown starts from a quiet journal
        await self._pause()
        boards = self.daemon.boards.values()
        fc15 = sum(b.stats["fc15"] for b in boards)
        polls = sum(b.stats["polls"] for b in boards)
        c0, t0 = time.process_time(), time.perf_counter()
        results = await doors.command_many(names, "lock", source="bench")
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        backlog = None
        if self.daemon.journal is not None:
            doors.settle()  # (normally right after the caller resumes)
            backlog = self.daemon.journal.backlog
            # write this lock's records now (untimed), not during whatever step comes next
            await self.daemon.journal.flush()
        bad = [r for r in results if not r.confirmed]
        if bad or len(results) != len(names):
            ok = False
            if bad:
                self.samples.note(f"lock {bad[0].door}: {bad[0].error}")
        if not record:
            return
        self.samples.fc15_per_lock.append(sum(b.stats["fc15"] for b in boards) - fc15)
        self.samples.polls_in_window.append(sum(b.stats["polls"] for b in boards) - polls)
        if backlog is not None:
            self.samples.journal_backlog.append(backlog)
        if ok:
            self.samples.warding.append(elapsed)
            self.samples.warding_cpu.append(cpu)
        else:
            self.samples.failures += 1

    async def _raw_board(self, client: AsyncModbusTcpClient, values: list[bool]) -> bool:
        """FC15 of ``values`` at coil 0, then FC1 of the same span; True if read back equal."""
        try:
            wr = await client.write_coils(0, values, device_id=UNIT_ID)
            if wr.isError():
                self.samples.note(f"floor FC15: {wr}")
                return False
            rr = await client.read_coils(0, count=len(values), device_id=UNIT_ID)
        except ModbusException as exc:
            self.samples.note(f"floor: {exc}")
            return False
        if rr.isError():
            self.samples.note(f"floor FC1: {rr}")
            return False
        return [bool(b) for b in rr.bits[: len(values)]] == values

    async def floor_round(self, record: bool) -> None:
        """The same work with raw pymodbus: energise all (untimed), then time de-energising."""
        k = self.opts.doors_per_board
        ok = all(await asyncio.gather(*(self._raw_board(c, [True] * k) for c in self.clients)))
        await self._pause()
        c0, t0 = time.process_time(), time.perf_counter()
        done = await asyncio.gather(*(self._raw_board(c, [False] * k) for c in self.clients))
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        if not record:
            return
        if ok and all(done):
            self.samples.floor.append(elapsed)
            self.samples.floor_cpu.append(cpu)
        else:
            self.samples.floor_failures += 1

    async def driver_round(self, record: bool) -> None:
        """Warding's board drivers alone: energise all (untimed), then time de-energising."""
        k = self.opts.doors_per_board

        async def command_all(value: bool) -> bool:
            futures = [b.command(dict.fromkeys(range(k), value)) for b in self.drivers]
            await asyncio.wait(futures, timeout=self.opts.timeout_ms / 1000)
            for fut in futures:
                if not fut.done():
                    self.samples.note("driver: no readback in time")
                    return False
                if not fut.result().ok:
                    self.samples.note(f"driver: {fut.result()}")
                    return False
            return True

        ok = await command_all(True)
        await self._pause()
        c0, t0 = time.process_time(), time.perf_counter()
        done = await command_all(False)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        if not record:
            return
        if ok and done:
            self.samples.driver.append(elapsed)
            self.samples.driver_cpu.append(cpu)
        else:
            self.samples.driver_failures += 1

    async def rtt_round(self, record: bool) -> None:
        """One FC15 round trip to one twin board (the values it already holds)."""
        values = [False] * self.opts.doors_per_board
        await self._pause()
        t0 = time.perf_counter()
        try:
            reply = await self.clients[0].write_coils(0, values, device_id=UNIT_ID)
            ok = not reply.isError()
        except ModbusException as exc:
            self.samples.note(f"rtt: {exc}")
            ok = False
        elapsed = time.perf_counter() - t0
        if not record:
            return
        if ok:
            self.samples.rtt.append(elapsed)
        else:
            self.samples.rtt_failures += 1

    async def run_rounds(self) -> Samples:
        """Warm-up rounds (not recorded), then the measured rounds, in rotating order."""
        kinds = [self.warding_round, self.floor_round, self.driver_round]
        total = self.opts.warmup + self.opts.rounds
        for i in range(total):
            self._check_daemon()
            if self.daemon.shutdown.is_set():
                raise RuntimeError("the daemon was told to stop (signal)")
            record = i >= self.opts.warmup
            first = i % len(kinds)
            for kind in kinds[first:] + kinds[:first]:
                await kind(record)
            await self.rtt_round(record)
        return self.samples


async def _measure(
    opts: Options,
    settings: Settings,
    raw_ports: Sequence[int],
    workdir: Path,
    driver_settings: Settings,
) -> Samples:
    bench = Bench(opts, settings, raw_ports, workdir, driver_settings)
    try:
        await bench.start()
        return await bench.run_rounds()
    finally:
        await bench.stop()


def run(opts: Options, *, attempts: int = 3) -> dict[str, Any]:
    """Start simulators, measure, and return the figures (the JSON object)."""
    quiet_logs("error")
    last: Exception | None = None
    for _ in range(attempts):  # a port picked as free may be taken by someone else meanwhile
        with temp_dir("wfan-") as workdir:
            n = opts.boards
            ports = free_ports(3 * n)
            warding_ports, raw_ports, driver_ports = ports[:n], ports[n : 2 * n], ports[2 * n :]
            daemon_toml, sim_toml, driver_toml = site_files(
                workdir, warding_ports, raw_ports, opts, driver_ports
            )
            (workdir / "sim.toml").write_text(sim_toml, "utf-8")
            settings = parse_toml(daemon_toml, "<bench daemon site>")
            driver_settings = parse_toml(driver_toml, "<bench driver-floor site>")
            sim = SimulatorProcess(workdir / "sim.toml", ports, workdir=workdir)
            try:
                sim.start()
            except SimulatorError as exc:
                last = exc
                continue
            try:
                samples = asyncio.run(_measure(opts, settings, raw_ports, workdir, driver_settings))
            finally:
                sim.stop()
            return report(opts, samples)
    raise SimulatorError(f"simulators did not start: {last}")


def report(opts: Options, s: Samples) -> dict[str, Any]:
    """The JSON object: warding p50/p99, the floors, their ratios and the counters."""
    if not s.warding or not s.floor or not s.rtt or not s.driver:
        raise RuntimeError(
            f"no successful rounds (failures={s.failures}, floor_failures={s.floor_failures}, "
            f"driver_failures={s.driver_failures}, rtt_failures={s.rtt_failures}): {s.errors}"
        )
    w, f, r = summarize(s.warding), summarize(s.floor), summarize(s.rtt)
    d = summarize(s.driver)
    cpu, floor_cpu = summarize(s.warding_cpu), summarize(s.floor_cpu)
    ratio_p99 = w.p99_ms / f.p99_ms
    out: dict[str, Any] = {
        "bench": "door_fanout",
        "p50_ms": round(w.p50_ms, 3),
        "p99_ms": round(w.p99_ms, 3),
        "floor_ms": round(f.p99_ms, 3),
        "floor_p50_ms": round(f.p50_ms, 3),
        "driver_p50_ms": round(d.p50_ms, 3),
        "driver_p99_ms": round(d.p99_ms, 3),
        "ratio_driver_p99": round(d.p99_ms / f.p99_ms, 3),
        "ratio_driver_p50": round(d.p50_ms / f.p50_ms, 3),
        "rtt_ms": round(r.p99_ms, 3),
        "rtt_p50_ms": round(r.p50_ms, 3),
        "ratio_p99": round(ratio_p99, 3),
        "ratio_p50": round(w.p50_ms / f.p50_ms, 3),
        "target_ratio_p99": TARGET_RATIO_P99,
        "target_met": ratio_p99 <= TARGET_RATIO_P99 and s.failures == 0,
        "n": w.n,
        "floor_n": f.n,
        "rtt_n": r.n,
        "rounds": opts.rounds,
        "warmup": opts.warmup,
        "doors": opts.doors,
        "boards": opts.boards,
        "poll_interval_ms": opts.poll_interval_ms,
        "failures": s.failures,
        "floor_failures": s.floor_failures,
        "driver_failures": s.driver_failures,
        "rtt_failures": s.rtt_failures,
        "cpu_p50_ms": round(cpu.p50_ms, 3),
        "floor_cpu_p50_ms": round(floor_cpu.p50_ms, 3),
        "driver_cpu_p50_ms": round(summarize(s.driver_cpu).p50_ms, 3),
        "max_ms": round(w.max_ms, 3),
        "floor_max_ms": round(f.max_ms, 3),
        "fc15_per_lock": max(s.fc15_per_lock, default=0),
        "polls_in_window_mean": round(sum(s.polls_in_window) / max(1, len(s.polls_in_window)), 3),
        "journal_backlog_max": max(s.journal_backlog, default=0),
    }
    if s.errors:
        out["errors"] = s.errors
    return out


def summary_text(r: dict[str, Any]) -> str:
    """A few readable lines of the figures."""
    met = "met" if r["target_met"] else "MISSED"
    return "\n".join(
        [
            f"door fan-out: {r['doors']} doors on {r['boards']} boards, {r['n']} rounds, "
            f"poll every {r['poll_interval_ms']} ms",
            f"  warding lock-all  p50 {r['p50_ms']:8.3f} ms   p99 {r['p99_ms']:8.3f} ms",
            f"  raw pymodbus      p50 {r['floor_p50_ms']:8.3f} ms   p99 {r['floor_ms']:8.3f} ms",
            f"  board driver only p50 {r['driver_p50_ms']:8.3f} ms   p99 "
            f"{r['driver_p99_ms']:8.3f} ms   (no doors: ratio p99 {r['ratio_driver_p99']:.3f})",
            f"  one FC15 RTT      p50 {r['rtt_p50_ms']:8.3f} ms   p99 {r['rtt_ms']:8.3f} ms",
            f"  CPU of this process in the window (p50): warding {r['cpu_p50_ms']:.3f} ms, "
            f"raw {r['floor_cpu_p50_ms']:.3f} ms, driver {r['driver_cpu_p50_ms']:.3f} ms",
            f"  ratio p99 {r['ratio_p99']:.3f} (target <= {r['target_ratio_p99']}: {met}), "
            f"ratio p50 {r['ratio_p50']:.3f}, failures {r['failures']}",
        ]
    )


def parse_args(argv: Sequence[str] | None = None) -> tuple[Options, bool]:
    """Options from the command line, and whether to print JSON only."""
    p = argparse.ArgumentParser(
        prog="python -m bench.door_fanout",
        description="Time locking every door until each relay is read back, against raw "
        "pymodbus doing the same work in the same run.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object only")
    p.add_argument("--rounds", type=positive_int, default=200, help="measured rounds (200)")
    p.add_argument("--warmup", type=non_negative_int, default=10, help="unrecorded rounds (10)")
    p.add_argument("--doors", type=positive_int, default=256, help="doors (256)")
    p.add_argument("--boards", type=positive_int, default=16, help="boards (16)")
    p.add_argument("--poll-ms", type=positive_int, default=50, help="input poll interval (50)")
    p.add_argument("--seed", type=int, default=1, help="seed of the random pauses")
    args = p.parse_args(argv)
    if args.doors % args.boards:
        p.error("--doors must be a multiple of --boards")
    if not 5 <= args.poll_ms <= 60_000:
        p.error("--poll-ms must be between 5 and 60000")
    if args.doors // args.boards > 1968:
        p.error("at most 1968 doors per board (one FC15)")
    opts = Options(
        rounds=args.rounds,
        warmup=args.warmup,
        doors=args.doors,
        boards=args.boards,
        poll_interval_ms=args.poll_ms,
        seed=args.seed,
    )
    return opts, bool(args.json)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print JSON (``--json``) or a summary followed by the JSON."""
    opts, json_only = parse_args(argv)
    try:
        result = run(opts)
    except (SimulatorError, RuntimeError) as exc:
        print(f"door_fanout: {exc}", file=sys.stderr)
        return 1
    if not json_only:
        print(summary_text(result))
    emit_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
