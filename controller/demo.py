"""``warding demo``: simulators for every board of a site, the daemon as a subprocess, a live view.

The simulators run in this process (so ``warding sim door open NAME`` from another terminal
acts on them through their control socket); the daemon runs as a real ``warding run``
subprocess on the same site file, and the view reads it only through its control API, like
``wardctl`` does. ``--duration`` runs headless: events are printed as lines and the demo
exits 0 after a clean daemon shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from controller.cli.wardctl import format_event, format_status
from controller.errors import WardingError
from controller.settings import (
    Settings,
    demo_site_text,
    load_settings,
    parse_site_bytes,
    read_site_file,
)

SIM_SOCKET_NAME = "sim.sock"
DEMO_LOCK_NAME = "demo.lock"  # held (flock) while a demo runs in its runtime directory

# Demo people: (name, card, PIN, levels, privileges)
DEMO_PEOPLE: tuple[tuple[str, str, str | None, list[str], list[str]], ...] = (
    ("Dana Staff", "h10301:42:1001", None, ["staff"], []),
    ("Ira Admin", "h10301:42:1002", "2468", ["staff", "it"], ["lockdown", "all-clear"]),
    ("Sam Security", "h10301:42:1003", "1357", ["staff"], ["lockdown", "all-clear"]),
    ("Rhea Responder", "h10301:42:1999", None, [], ["override"]),
)
UNKNOWN_CARD = "h10301:42:4242"


class _OsdpAdapter:
    """Lets the simulator control socket reach one simulated OSDP reader."""

    def __init__(self, pd: Any) -> None:
        self._pd = pd

    def present_card(self, card: str) -> object:
        return self._pd.present(card)

    def type_keys(self, keys: str) -> object:
        return self._pd.type_keys(keys)


def start_reader_sims(settings: Settings) -> tuple[list[Any], dict[str, Any]]:
    """Start a simulator for every reader line of the site; return them and a name map.

    On a failure the simulators already started are stopped before the error propagates.
    """
    sims: list[Any] = []
    try:
        by_reader = _start_reader_sims(settings, sims)
    except BaseException:
        for sim in sims:
            sim.stop()
        raise
    return sims, by_reader


def _start_reader_sims(settings: Settings, sims: list[Any]) -> dict[str, Any]:
    from drivers.osdp.keys import load_scbk, write_scbk
    from simulators.osdp_reader import SimOsdpPd, SimOsdpReader
    from simulators.serial_reader import SimSerialReader

    by_reader: dict[str, Any] = {}
    for bus in settings.reader_buses:
        readers = [r for r in settings.readers if r.bus == bus.name]
        if bus.driver == "serial":
            sim = SimSerialReader(bus.device, framing=bus.framing)
            sim.start()
            sims.append(sim)
            for r in readers:
                by_reader[r.name] = sim
            continue
        pds = []
        for r in readers:
            key: bytes | None = None
            if r.key_file is not None:
                r.key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                key = load_scbk(r.key_file) if r.key_file.exists() else None
                if key is None:
                    key = secrets.token_bytes(16)
                    write_scbk(r.key_file, key)
            pd = SimOsdpPd(r.address, key, name=r.name)
            pds.append(pd)
            by_reader[r.name] = _OsdpAdapter(pd)
        line = SimOsdpReader(*pds, device=bus.device)
        line.start()
        sims.append(line)
    return by_reader


def _describe(exc: BaseException) -> str:
    """An exception in a few words, never empty (a TimeoutError has no message)."""
    return str(exc) or type(exc).__name__


async def api_call(path: Path, cmd: str, **args: Any) -> dict[str, Any]:
    """One request/reply on the daemon's control socket (asyncio)."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    reply = json.loads(line)
    if not isinstance(reply, dict) or not reply.get("ok"):
        raise WardingError(f"daemon refused {cmd}: {reply}")
    return reply


class Demo:
    """Simulated site + daemon subprocess + view."""

    def __init__(self, settings: Settings, site_file: Path, runtime: Path) -> None:
        self.settings = settings
        self.site_file = site_file
        self.runtime = runtime
        self.socket = settings.controller.socket
        self.sim_socket = runtime / SIM_SOCKET_NAME
        self.daemon: asyncio.subprocess.Process | None = None
        self.last_seq = 0
        self.recent: list[str] = []
        self._last_status: tuple[Any, ...] | None = None
        self.trouble = ""  # why the daemon did not answer the last poll ("" if it did)

    async def start_daemon(self) -> None:
        """Spawn ``warding run`` on the site file and wait for its control socket."""
        log = (self.runtime / "daemon.log").open("ab")
        self.daemon = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "controller.cli.warding",
            "run",
            "--config",
            str(self.site_file),
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.daemon.returncode is not None:
                raise WardingError(
                    f"daemon exited with status {self.daemon.returncode}; "
                    f"see {self.runtime / 'daemon.log'}"
                )
            with contextlib.suppress(OSError, WardingError, ValueError):
                await api_call(self.socket, "ping")
                return
            await asyncio.sleep(0.1)
        raise WardingError("daemon did not open its control socket within 20 s")

    async def stop_daemon(self) -> int:
        """SIGTERM the daemon and return its exit status."""
        proc = self.daemon
        if proc is None:
            return 0
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        return proc.returncode or 0

    async def new_events(self) -> list[dict[str, Any]]:
        """Journal entries recorded since the last call."""
        if self.last_seq == 0:
            reply = await api_call(self.socket, "events", limit=10)
        else:
            reply = await api_call(self.socket, "events", after=self.last_seq, limit=500)
        events: list[dict[str, Any]] = reply["events"]
        if events:
            self.last_seq = max(self.last_seq, *(int(e["seq"]) for e in events))
        return events

    async def seed(self) -> None:
        """Enrol the demo people once (the store persists across demo runs)."""
        if (await api_call(self.socket, "cardholder.list", limit=1))["cardholders"]:
            return
        doors = [d.name for d in self.settings.doors]
        it = [d.name for d in self.settings.doors if d.zone == "it"]
        staff = [d for d in doors if d not in it]
        await api_call(self.socket, "access-level.add", name="staff", doors=staff, source="demo")
        if it:
            await api_call(self.socket, "access-level.add", name="it", doors=it, source="demo")
        for name, card, pin, levels, privileges in DEMO_PEOPLE:
            req: dict[str, Any] = {
                "name": name,
                "levels": levels,
                "privileges": privileges,
                "source": "demo",
            }
            if pin:
                req["pin"] = pin
            cid = (await api_call(self.socket, "cardholder.add", **req))["cardholder"]
            await api_call(self.socket, "credential.add", cardholder=cid, card=card, source="demo")

    async def sim(self, **request: Any) -> None:
        """Act on the simulators as a person would."""
        from simulators.control import control_request

        await control_request(self.sim_socket, request)

    async def script(self) -> None:
        """A short scenario: a pulse and passage, REX exit, a forced door, a held door."""
        doors = [d.name for d in self.settings.doors]
        if not doors:
            return
        first = doors[0]
        second = doors[1] if len(doors) > 1 else first
        forced = doors[2] if len(doors) > 2 else first
        pin_doors = [d.name for d in self.settings.doors if d.mode.value == "card+pin"]
        third = pin_doors[0] if pin_doors else forced
        step = 0.2
        await asyncio.sleep(step)
        readers = {r.door: r.name for r in self.settings.readers}
        lobby = readers.get(first)
        if lobby is not None:
            await self.sim(cmd="reader", action="card", name=lobby, card=UNKNOWN_CARD)
            await asyncio.sleep(step)
            await self.sim(cmd="reader", action="card", name=lobby, card=DEMO_PEOPLE[0][1])
            await asyncio.sleep(step)
        it_reader = next((r.name for r in self.settings.readers if r.door == third), None)
        if it_reader is not None:
            await self.sim(cmd="reader", action="card", name=it_reader, card=DEMO_PEOPLE[1][1])
            await asyncio.sleep(step)
            await self.sim(cmd="reader", action="keys", name=it_reader, keys="2468#")
            await asyncio.sleep(step)
        await self.sim(cmd="door", action="force", name=forced)
        await asyncio.sleep(step)
        await self.sim(cmd="door", action="close", name=forced)
        await api_call(self.socket, "door", action="pulse", door=first, source="demo-script")
        await asyncio.sleep(step)
        await self.sim(cmd="door", action="open", name=first)
        await asyncio.sleep(step)
        await self.sim(cmd="door", action="close", name=first)
        await asyncio.sleep(step)
        await self.sim(cmd="door", action="rex", name=second)
        await asyncio.sleep(step)
        await self.sim(cmd="door", action="open", name=second)
        await asyncio.sleep(step)
        await self.sim(cmd="door", action="close", name=second)

    def check_daemon(self) -> None:
        """WardingError once the daemon process has exited: nothing left to wait for."""
        if self.daemon is not None and self.daemon.returncode is not None:
            raise WardingError(f"the daemon exited with status {self.daemon.returncode}")

    async def events_or_trouble(self, *, say: bool = True) -> list[dict[str, Any]]:
        """``new_events``; a daemon that is busy or refuses (too many connections, a stalled
        disk) is asked again next time (``say``: once on stderr); one that has exited ends
        the demo (WardingError)."""
        self.check_daemon()
        try:
            events = await self.new_events()
        except (WardingError, OSError, ValueError) as exc:  # (TimeoutError is an OSError)
            self.check_daemon()
            trouble = _describe(exc)
            if say and trouble != self.trouble:
                print(f"warding demo: daemon not answering ({trouble}); retrying", file=sys.stderr)
            self.trouble = trouble
            return []
        self.trouble = ""
        return events

    async def headless(self, duration_s: float, script: bool) -> None:
        """Print events as lines for ``duration_s`` seconds."""
        task = asyncio.create_task(self.script()) if script else None
        deadline = time.monotonic() + duration_s
        try:
            while time.monotonic() < deadline:
                for e in await self.events_or_trouble():
                    print(format_event(e), flush=True)
                await asyncio.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
            for e in await self.events_or_trouble():
                print(format_event(e), flush=True)
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, WardingError):
                    await task

    async def live(self) -> None:
        """Redraw status and recent events until Ctrl-C."""
        status: dict[str, Any] = {}
        while True:
            try:
                status = await api_call(self.socket, "status")
            except (WardingError, OSError, ValueError) as exc:
                self.check_daemon()
                self.trouble = _describe(exc)  # shown on the screen; the last status stays
            for e in await self.events_or_trouble(say=False):  # (the screen says it)
                if e.get("kind") == "lockdown.status":
                    d = e.get("data") or {}
                    key = (d.get("confirmed"), d.get("total"), d.get("failed"), d.get("propped"))
                    if key == self._last_status:
                        continue  # the once-a-second heartbeat: show it only when it changes
                    self._last_status = key
                self.recent.append(format_event(e))
            self.recent = self.recent[-12:]
            width = shutil.get_terminal_size((120, 40)).columns
            screen = [
                "\x1b[H\x1b[2J" + "warding demo - live view (Ctrl-C to stop)".center(width),
                "",
                format_status(status) if status else "(waiting for the daemon)",
                *([f"daemon not answering: {self.trouble}; retrying"] if self.trouble else []),
                "",
                "last events:",
                *(line[:width] for line in self.recent),
                "",
                "act on the site from another terminal, e.g.:",
                f"  warding sim door open {self.settings.doors[0].name}    "
                f"(also close, force, rex, tamper; --control {self.sim_socket})",
                f"  wardctl --socket {self.socket} door pulse {self.settings.doors[0].name}",
                f"  warding sim board offline {self.settings.boards[0].name}",
                *(
                    f"  warding sim reader card {r.name} {DEMO_PEOPLE[0][1]}   "
                    f"(people: {', '.join(f'{p[0]} {p[1]}' for p in DEMO_PEOPLE)})"
                    for r in self.settings.readers[:1]
                ),
            ]
            sys.stdout.write("\n".join(screen) + "\n")
            sys.stdout.flush()
            await asyncio.sleep(0.5)


async def _run(
    settings: Settings, site_file: Path, runtime: Path, duration_s: float | None, script: bool
) -> int:
    from simulators.control import SimControlServer
    from simulators.site import SimSite

    demo = Demo(settings, site_file, runtime)
    site = SimSite(settings)
    control = SimControlServer(site, demo.sim_socket)
    # Claim in order, each before anything that could replace a file: the simulator socket
    # (refused beside a live simulator), the boards' ports and device links, and only then the
    # readers' device links. A failure stops only what this demo started.
    await control.start()
    reader_sims: list[Any] = []
    try:
        await site.start()
        reader_sims, by_reader = start_reader_sims(settings)
        control.readers.update(by_reader)
        return await _serve(demo, runtime, duration_s, script)
    finally:
        for sim in reader_sims:
            sim.stop()
        await control.stop()
        await site.stop()


async def _serve(demo: Demo, runtime: Path, duration_s: float | None, script: bool) -> int:
    settings = demo.settings
    try:
        await demo.start_daemon()
        await demo.seed()
        if duration_s is None:
            print(f"daemon log: {runtime / 'daemon.log'}")
            with contextlib.suppress(asyncio.CancelledError):
                await demo.live()
        else:
            print(
                f"warding demo: {len(settings.doors)} doors on {len(settings.boards)} "
                f"simulated boards, running {duration_s:g}s",
                flush=True,
            )
            await demo.headless(duration_s, script)
    finally:
        status = await demo.stop_daemon()
    if duration_s is not None:
        print(f"warding demo: daemon exited with status {status}", flush=True)
    return 0 if status == 0 else 1


def run_demo(config: Path | None, *, duration_s: float | None = None, script: bool = False) -> int:
    """Entry point of ``warding demo``."""
    if config is None:
        site_text = demo_site_text().encode("utf-8")
        settings = load_settings(None)
    else:  # read once: the site may come through a pipe (--config <(...))
        site_text = read_site_file(config)
        settings = parse_site_bytes(site_text, str(config))
    runtime = settings.controller.socket.parent
    try:
        runtime.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock_runtime(runtime)
    except (OSError, WardingError) as exc:
        print(f"warding demo: {exc}", file=sys.stderr)
        return 1
    try:
        return _run_locked(site_text, settings, runtime, duration_s, script)
    finally:
        os.close(lock_fd)


def _lock_runtime(runtime: Path) -> int:
    """Hold ``runtime/demo.lock`` (flock) for this demo; WardingError if another demo holds it.

    Taken before the demo writes or replaces anything in ``runtime``: a second demo on the
    same site never touches the files (site copy, sockets, device links) of a running one.
    """
    lock = runtime / DEMO_LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WardingError(
            f"another warding demo is running in {runtime} (lock {lock} is held)"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _run_locked(
    site_text: bytes,
    settings: Settings,
    runtime: Path,
    duration_s: float | None,
    script: bool,
) -> int:
    site_file = runtime / "site.toml"
    try:
        site_file.write_bytes(site_text)
    except OSError as exc:
        print(f"warding demo: cannot write {site_file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    os.environ.setdefault("WARDING_SIM_SOCKET", str(runtime / SIM_SOCKET_NAME))
    loop = asyncio.new_event_loop()
    main = loop.create_task(_run(settings, site_file, runtime, duration_s, script))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main.cancel)
    try:
        return loop.run_until_complete(main)
    except asyncio.CancelledError:
        return 0
    except (OSError, WardingError) as exc:
        print(f"warding demo: {_describe(exc)}", file=sys.stderr)
        return 1
    finally:
        loop.close()
