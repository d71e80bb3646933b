"""The daemon: build everything from settings, supervise named tasks, shut down safely.

Start-up order: claim the control socket (a second daemon stops here), open the journal,
start the boards, command every door's intended state, and only when each board has either
confirmed its relays or reported that it cannot be reached, send READY=1 and serve the
control API. Shutdown (SIGTERM/SIGINT or the injectable trigger): stop serving, put every
relay in its fail state and wait for the readback (bounded), stop the drivers, drain the
journal, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from controller import __version__
from controller.access.secret import load_or_create_secret
from controller.access.service import AccessService
from controller.access.store import CredentialStore
from controller.api.lockdown_api import COMMANDS as LOCKDOWN_COMMANDS
from controller.api.lockdown_api import LockdownApi
from controller.api.management import Management
from controller.api.protocol import PROTOCOL_VERSION, ProtocolError, Request, arg, ok
from controller.api.server import PEER, SPARE, ControlServer, Reply
from controller.doors.service import DoorService
from controller.errors import CommandError, WardingError
from controller.journal import CLOSE_GRACE_S as JOURNAL_GRACE_S
from controller.journal import Journal, JournalWriter
from controller.lockdown.runner import LockdownRunner
from controller.sdnotify import SdNotifier
from controller.settings import RtuBoardSettings, Settings, TcpBoardSettings
from drivers.base import (
    CardRead,
    CredentialReaderBus,
    DriverEvent,
    KeypadRead,
    LinkState,
    ReaderAlarm,
    ReaderStatus,
    RelayBoard,
)
from drivers.modbus.board import BoardConfig, ModbusRelayBoard
from drivers.modbus.link import ModbusEndpoint, ModbusLink
from drivers.registry import build_reader_bus

log = structlog.get_logger(__name__)

GC_YOUNG_THRESHOLD = 20_000
"""Allocations between young-generation collections (CPython's default is 700)."""


def board_config(b: TcpBoardSettings | RtuBoardSettings) -> BoardConfig:
    """Driver config of a configured board."""
    if isinstance(b, TcpBoardSettings):
        endpoint = ModbusEndpoint("tcp", host=b.host, port=b.port)
    else:
        endpoint = ModbusEndpoint(
            "rtu",
            device=b.device,
            baudrate=b.baudrate,
            parity=b.parity,
            stop_bits=b.stop_bits,
            byte_size=b.byte_size,
        )
    return BoardConfig(
        name=b.name,
        endpoint=endpoint,
        unit_id=b.unit_id,
        coils=b.coils,
        inputs=b.inputs,
        timeout_s=b.timeout_ms / 1000,
        poll_interval_s=b.poll_interval_ms / 1000,
        backoff_initial_s=b.backoff_initial_ms / 1000,
        backoff_max_s=b.backoff_max_ms / 1000,
    )


def build_boards(
    settings: Settings, sink: Callable[[DriverEvent], None]
) -> tuple[dict[str, ModbusRelayBoard], list[ModbusLink]]:
    """One link per TCP board, one shared link per RTU line; one driver per board."""
    links: dict[str, ModbusLink] = {}
    boards: dict[str, ModbusRelayBoard] = {}
    for b in settings.boards:
        cfg = board_config(b)
        key = cfg.endpoint.key() if cfg.endpoint.kind == "rtu" else f"{b.name}@{cfg.endpoint.key()}"
        link = links.get(key)
        if link is None:
            link = links[key] = ModbusLink(cfg.endpoint, cfg.timeout_s)
        boards[b.name] = ModbusRelayBoard(cfg, link, sink)
    return boards, list(links.values())


@dataclass
class Daemon:
    """The running controller; ``run()`` until ``shutdown`` is set."""

    settings: Settings
    socket_path: Path | None = None
    journal_path: Path | None = None
    notifier: SdNotifier = field(default_factory=SdNotifier.from_env)
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    ready_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        self.socket_path = self.socket_path or self.settings.controller.socket
        self.journal_path = self.journal_path or self.settings.controller.journal
        self.events: asyncio.Queue[DriverEvent] = asyncio.Queue()
        self.boards, self._links = build_boards(self.settings, self.events.put_nowait)
        self.started_at = time.time()
        self.ready = asyncio.Event()
        self.journal: JournalWriter | None = None
        self.doors: DoorService | None = None
        self.store: CredentialStore | None = None
        self.access: AccessService | None = None
        self.management: Management | None = None
        self.lockdown: LockdownRunner | None = None
        self.lockdown_api: LockdownApi | None = None
        self.buses: dict[str, CredentialReaderBus] = {}
        self.server = ControlServer(self.socket_path, self._dispatch)
        self._tasks: list[asyncio.Task[Any]] = []
        self._stop_deadline: float | None = None

    async def run(self) -> int:
        """Run until shutdown; return the process exit status."""
        self.server.claim()  # raises AlreadyRunningError before touching anything
        assert self.journal_path is not None
        journal = await asyncio.to_thread(Journal.open, self.journal_path)
        # 20 ms linger: records still reach the disk within tens of ms, but a fan-out to
        # hundreds of doors is not slowed by the write thread (see BENCHMARKS.md)
        self.journal = JournalWriter(journal, linger_s=0.02)
        boards: dict[str, RelayBoard] = dict(self.boards)
        self.doors = DoorService(self.settings, boards, self.journal)
        self.journal.add_flush_hook(self.doors.settle)
        # the lockdown state comes back before anything is asserted: a restart during a
        # lockdown re-enters it and commands its doors secure from the first write
        self.lockdown = LockdownRunner(self.settings, self.doors, self.journal)
        await asyncio.to_thread(self.lockdown.restore)
        self.lockdown.watch_inputs()
        self.lockdown.apply()
        secret = await asyncio.to_thread(load_or_create_secret, self.settings.secret_file)
        schedules = {s.name: s.schedule() for s in self.settings.schedules}
        self.store = await asyncio.to_thread(
            CredentialStore.open,
            self.settings.credentials_db,
            secret,
            schedules=schedules,
            duress=self.settings.access.duress,
        )
        for bus_settings in self.settings.reader_buses:
            readers = [r for r in self.settings.readers if r.bus == bus_settings.name]
            try:
                self.buses[bus_settings.name] = build_reader_bus(
                    bus_settings, readers, self.events.put_nowait
                )
            except (WardingError, ValueError, OSError) as exc:
                # doors come first: a reader line that cannot start is an alarm, not a crash
                log.error("reader bus unavailable", bus=bus_settings.name, error=str(exc))
                for r in readers:
                    self.journal.record(
                        "reader.alarm", device=r.name, alarm="config", detail=str(exc)
                    )
        runner = self.lockdown
        self.access = AccessService(
            self.settings,
            self.store,
            self.doors,
            self.buses,
            self.journal,
            lockdown=runner.held,
            level_mode=runner.level_mode,
            on_gesture=runner.on_gesture,
            on_duress=runner.on_duress,
            incidents_of=runner.incidents_for,
        )
        runner.level_listeners.append(self.access.level_changed)  # free doors relock at once
        self.lockdown_api = LockdownApi(
            runner, self.store, self.journal, frozenset(d.zone for d in self.settings.doors)
        )
        self.management = Management(
            self.store,
            self.access,
            self.journal,
            upload_dir=self.settings.credentials_db.parent / "uploads",
            timezone=self.settings.access.timezone,
            install=self._install,
        )
        self.journal.record(
            "daemon.start",
            controller=self.settings.controller.id,
            version=__version__,
            pid=os.getpid(),
            doors=len(self.settings.doors),
            boards=len(self.settings.boards),
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            async with asyncio.TaskGroup() as tg:
                self._spawn(tg, self.journal.run(), "journal")
                self._spawn(tg, self._pump(), "events")
                for board in self.boards.values():
                    self._spawn(tg, board.run(), f"board:{board.name}")
                self._spawn(tg, self.doors.run(), "doors")
                await self._start_up()
                # everything built at start-up lives as long as the daemon: move it out of
                # the collector's sight so a full collection never stalls a lockdown fan-out
                gc.collect()
                gc.freeze()
                # and collect the young generation less often: a lock-all creates a few
                # thousand short-lived objects, which at the default threshold (700) cost
                # several collections inside the fan-out
                gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
                for bus in self.buses.values():
                    self._spawn(tg, bus.run(), f"readers:{bus.name}")
                self._spawn(tg, self.access.run(), "access")
                self._spawn(tg, runner.run(), "lockdown")
                await self.server.start()
                self._spawn(tg, self.server.serve(), "api")
                self._spawn(tg, self._watchdog(), "watchdog")
                self.ready.set()
                await self.shutdown.wait()
                await self._stop()
        except* WardingError as group:
            # one clear line for the user (e.g. the socket cannot be bound), not a group trace
            first: BaseException = group.exceptions[0]
            while isinstance(first, BaseExceptionGroup):  # (a task group inside a task group)
                first = first.exceptions[0]
            raise first from None
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
            await self._close()
        return 0

    def _spawn(self, tg: asyncio.TaskGroup, coro: Any, name: str) -> None:
        self._tasks.append(tg.create_task(coro, name=name))

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("signal received, shutting down", signal=sig.name)
        self.shutdown.set()

    async def _pump(self) -> None:
        assert self.doors is not None
        assert self.access is not None
        while True:
            event = await self.events.get()
            if isinstance(event, CardRead | KeypadRead | ReaderStatus | ReaderAlarm):
                self.access.on_reader_event(event)
            else:
                self.doors.on_driver_event(event)

    def _install(self, reader: str, window_s: float) -> None:
        """Open a reader's install window on its bus (technician command)."""
        bus_name = next(r.bus for r in self.settings.readers if r.name == reader)
        bus = self.buses.get(bus_name)
        begin = getattr(bus, "begin_install", None)
        if begin is None:
            raise CommandError(f"reader {reader!r} has no install mode (not an OSDP reader)")
        begin(reader, window_s)

    async def _start_up(self) -> None:
        """Assert every door, wait for each board to confirm or fail, then READY=1."""
        assert self.doors is not None
        self.notifier.status("asserting doors")
        futures = self.doors.assert_all()
        deadline = time.monotonic() + self.ready_timeout_s
        pending = set(futures)
        while pending and time.monotonic() < deadline:
            if all(b.link in (LinkState.BACKOFF, LinkState.UP) for b in self.boards.values()):
                # every board has either confirmed (UP) or failed its first attempt
                offline = [b.name for b in self.boards.values() if b.link is not LinkState.UP]
                if offline or all(f.done() for f in pending):
                    break
            _, pending = await asyncio.wait(pending, timeout=0.05)
        up = [b.name for b in self.boards.values() if b.link is LinkState.UP]
        down = [b.name for b in self.boards.values() if b.link is not LinkState.UP]
        self.journal_record("daemon.ready", boards_up=up, boards_down=down)
        if down:
            log.warning("starting with boards offline", boards=down)
        self.notifier.ready(f"{len(up)}/{len(self.boards)} boards up")
        log.info("ready", socket=str(self.socket_path), boards_up=up, boards_down=down)

    def journal_record(self, kind: str, **data: Any) -> None:
        """Record a daemon-level event."""
        if self.journal is not None:
            self.journal.record(kind, **data)

    async def _watchdog(self) -> None:
        interval = (
            self.notifier.watchdog_interval_s() or self.settings.controller.watchdog_interval_s
        )
        while True:
            # the loop running this coroutine at all is the health signal; a wedged loop
            # stops the pings and systemd restarts us
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    def _remaining_s(self, floor_s: float = 0.05) -> float:
        """Seconds left of the shutdown budget (at least ``floor_s``)."""
        deadline = self._stop_deadline
        if deadline is None:
            return self.settings.controller.shutdown_timeout_s
        return max(floor_s, deadline - time.monotonic())

    async def _stop(self) -> None:
        """Doors to their safe state first, then stop serving and stop the tasks.

        The whole shutdown (this and ``_close``) keeps to one budget,
        ``controller.shutdown_timeout_s``; the control socket's lock is released last, so no
        second daemon can take the relays over while this one is still making them safe.
        """
        assert self.doors is not None
        budget = self.settings.controller.shutdown_timeout_s
        self._stop_deadline = time.monotonic() + budget
        self.notifier.stopping()
        held = self.lockdown.held_doors() if self.lockdown is not None else frozenset()
        result = await self.doors.apply_fail_state(budget * 0.5, keep_locked=held)
        failed = [n for n, ok_ in result.items() if not ok_]
        self.journal_record("daemon.stop", doors_safe=len(result) - len(failed), failed=failed)
        await self.server.stop_serving()  # (bounded: a client that stopped reading is dropped)
        # close the drivers first: a board loop then ends by itself even if a cancel is lost
        # inside a library's wait_for (Python 3.11 can swallow one that races a result)
        for board in self.boards.values():
            await board.close()
        for bus in self.buses.values():
            with contextlib.suppress(Exception):
                await bus.close()
        for task in self._tasks:
            task.cancel()
        _, pending = await asyncio.wait(self._tasks, timeout=min(1.0, self._remaining_s() / 3))
        for task in pending:  # a second cancel for anything that swallowed the first
            task.cancel()

    async def _close(self) -> None:
        await self.server.stop_serving()
        if self.management is not None:
            # unfinished uploads hold card numbers and PINs in clear; a running import is
            # called off (or ends) and journaled before the store and the journal close
            await self.management.stop(timeout_s=min(1.0, self._remaining_s() / 3))
        if self.access is not None:
            await self.access.close()
        if self.lockdown is not None:
            await self.lockdown.close()
        for bus in self.buses.values():
            with contextlib.suppress(Exception):
                await bus.close()
        if self.store is not None:
            self.store.close()
        for board in self.boards.values():
            await board.close()
        for link in self._links:
            link.close()
        if self.doors is not None:
            self.doors.settle()  # a last batch's records, if its turn never came
        if self.journal is not None:
            # what is left of the budget, less the journal's grace for a write under way
            await self.journal.close(timeout_s=max(0.1, self._remaining_s() - JOURNAL_GRACE_S))
        await self.server.close()  # the socket and its lock go last
        self.notifier.close()

    # -- control API -----------------------------------------------------------------------

    async def _dispatch(self, req: Request, reply: Reply) -> None:
        assert self.doors is not None
        assert self.journal is not None
        if req.cmd == "ping":
            await reply(ok(req.id, version=__version__, protocol=PROTOCOL_VERSION))
        elif req.cmd == "status":
            await reply(ok(req.id, **self.status()))
        elif req.cmd == "door":
            action = arg(req, "action", str)
            name = arg(req, "door", str)
            duration = arg(req, "duration_s", float, required=False)
            source = arg(req, "source", str, required=False, default="wardctl")
            override = bool(arg(req, "override", bool, required=False, default=False))
            if override:
                source = f"{source} (override by {PEER.get()})"
            result = await self.doors.command(
                name, action, duration_s=duration, source=source, override=override
            )
            await reply(ok(req.id, result=result.to_json()))
        elif req.cmd == "events":
            await self._events(req, reply)
        elif not await self._dispatch_more(req, reply):
            raise ProtocolError(
                f"unknown command {req.cmd!r}; expected ping, status, door, events or one of "
                + ", ".join((*Management.COMMANDS, *LOCKDOWN_COMMANDS))
            )

    async def _dispatch_more(self, req: Request, reply: Reply) -> bool:
        """Management and lockdown commands; False if ``req`` is none of them."""
        if self.management is not None and await self.management.handle(req, reply):
            return True
        return self.lockdown_api is not None and await self.lockdown_api.handle(req, reply)

    def status(self) -> dict[str, Any]:
        """Site status for the API."""
        assert self.doors is not None
        boards = []
        for b in self.boards.values():
            boards.append(
                {
                    "board": b.name,
                    "link": b.link.value,
                    "error": b.last_error,
                    "endpoint": b.config.endpoint.key(),
                    "unit_id": b.config.unit_id,
                }
            )
        return {
            "controller": self.settings.controller.id,
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 1),
            "doors": self.doors.status(),
            "boards": boards,
            "journal_seq": self.journal.recorded_seq if self.journal else 0,
            "readers": self.access.status() if self.access else [],
            "lockdown": self.lockdown.status() if self.lockdown else None,
        }

    async def _events(self, req: Request, reply: Reply) -> None:
        """``events``: a page of the journal; with ``follow``, then every new entry, gap-free.

        Without ``after``: the newest ``limit`` entries; with it, entries after that seq (a
        page of ``limit``, or with ``follow`` all of them). A follow never skips or repeats an
        entry: it pages the journal from the last entry sent up to the head, then streams
        live entries, and a follower that falls behind resumes from the journal by seq.
        """
        assert self.journal is not None
        after = arg(req, "after", int, required=False, default=None)
        limit = arg(req, "limit", int, required=False, default=50)
        if after is not None and not 0 <= after < 2**63:
            raise CommandError("after must be a sequence number >= 0")
        follow = arg(req, "follow", bool, required=False, default=False)
        if not 1 <= limit <= 10_000:
            raise CommandError("limit must be between 1 and 10000")
        if follow and SPARE.get():
            # a stream never ends: on a spare slot it would hold one of the slots kept for
            # commands such as lockdown start
            raise CommandError(
                "too many control connections to follow events now; try again shortly"
            )
        await self.journal.flush()  # a reader sees everything recorded before it asked
        if not follow:
            if after is None:
                page = await self.journal.tail(limit)
            else:
                page = await self.journal.read(after, limit)
            await reply(ok(req.id, events=[e.to_json() for e in page]))
            return
        # the newest `limit` entries to start from, else everything after `after`
        first = await self.journal.tail(limit) if after is None else []
        await reply(ok(req.id, following=True))
        last = after if after is not None else (first[0].seq - 1 if first else 0)
        # aclosing: the subscription ends with this handler (a client that hung up is noticed
        # at the next entry sent to it, a shutdown at once)
        async with contextlib.aclosing(self.journal.follow(last, page=limit)) as stream:
            async for entry in stream:
                await reply({"event": entry.to_json()})


async def run_daemon(
    settings: Settings,
    *,
    socket_path: Path | None = None,
    journal_path: Path | None = None,
    shutdown: asyncio.Event | None = None,
) -> int:
    """Run a daemon on ``settings`` until a signal or ``shutdown`` is set."""
    daemon = Daemon(
        settings,
        socket_path=socket_path,
        journal_path=journal_path,
        shutdown=shutdown or asyncio.Event(),
    )
    return await daemon.run()
