"""Integration fixtures: a simulated site in-process, the daemon as a real subprocess, clients.

The simulators (``SimSite``: a Modbus TCP board on a free port and a Modbus RTU board on a pty
line in the test's directory) run in the test's event loop; the daemon runs as
``python -m controller.cli.warding run --config SITE`` with its output in a log file, and is
reached only the way an operator reaches it: the control socket (raw, or through ``wardctl``),
its journal file, its exit status and its sd_notify datagrams.

Nothing here sleeps a fixed time to wait for a condition: ``wait_for`` polls a predicate with a
deadline. Tests that share a daemon across a module use the module-scoped ``shared_site`` /
``shared_daemon`` fixtures and must run in the module's event loop
(``pytestmark = pytest.mark.asyncio(loop_scope="module")``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

import pytest
import pytest_asyncio

from controller.settings import LockType, Settings, load_settings, parse_toml
from drivers.modbus.link import ModbusEndpoint, ModbusLink
from simulators.site import SimSite
from tests.conftest import site_toml

T = TypeVar("T")

PYTHON = sys.executable
BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
POLL_S = 0.02

# Inherited from a systemd-run pytest, these would make the daemon under test talk to the
# real service manager; tests that want sd_notify set them explicitly.
_SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "WARDING_SOCKET")

# A door with a short held-open time for the alarm tests: coil 4 and inputs 8/9 of tcp1 are
# free when the site has at most 4 doors per board.
QUICK_DOOR = """
[[doors]]
name = "quick"
lock = "fail-secure"
relay = { board = "tcp1", coil = 4 }
contact = { board = "tcp1", input = 8 }
rex = { board = "tcp1", input = 9 }
pulse_s = 5.0
held_open_s = 0.3
rex_pulse_s = 1.0
"""


# -- waiting ---------------------------------------------------------------------------------


@overload
async def wait_for(
    predicate: Callable[[], Awaitable[T]],
    within: float = ...,
    *,
    what: str = ...,
    interval: float = ...,
) -> T: ...


@overload
async def wait_for(
    predicate: Callable[[], T],
    within: float = ...,
    *,
    what: str = ...,
    interval: float = ...,
) -> T: ...


async def wait_for(
    predicate: Callable[[], Any],
    within: float = 5.0,
    *,
    what: str = "condition",
    interval: float = POLL_S,
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns a truthy value; return that value.

    Raises AssertionError naming ``what`` (and the last falsy value) after ``within`` seconds.
    """
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what} (last: {value!r})")
        await asyncio.sleep(interval)


# -- running commands ------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """A finished command."""

    rc: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        """Non-empty stdout lines."""
        return [line for line in self.stdout.splitlines() if line.strip()]

    @property
    def err_lines(self) -> list[str]:
        """Non-empty stderr lines."""
        return [line for line in self.stderr.splitlines() if line.strip()]


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without systemd/warding variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_ENV}
    env.update(extra or {})
    return env


def console_script(name: str, module: str) -> list[str]:
    """The installed console script ``name`` (as users run it), else ``python -m module``."""
    path = BIN / name
    return [str(path)] if path.exists() else [PYTHON, "-m", module]


WARDCTL = console_script("wardctl", "controller.cli.wardctl")
WARDING = console_script("warding", "controller.cli.warding")


async def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    within: float = 30.0,
    cwd: Path | None = None,
) -> Result:
    """Run a command to completion (killed after ``within`` seconds) and capture its output."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(env),
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise AssertionError(f"{' '.join(argv)} did not finish within {within}s") from None
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


async def wardctl(*args: str, socket_path: Path | None = None, **kw: Any) -> Result:
    """Run ``wardctl [--socket PATH] ARGS``."""
    prefix = [] if socket_path is None else ["--socket", str(socket_path)]
    return await run([*WARDCTL, *prefix, *args], **kw)


async def warding(*args: str, **kw: Any) -> Result:
    """Run ``warding ARGS``."""
    return await run([*WARDING, *args], **kw)


# -- control API client ----------------------------------------------------------------------


class ApiConnection:
    """One raw connection to the control socket (JSON lines), on a non-blocking socket.

    A raw socket, not asyncio streams: after the daemon drops a connection (e.g. an oversized
    request) the reply it sent before is still readable, which a stream would discard.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def open(cls, path: Path, within: float = 5.0) -> ApiConnection:
        """Connect to the control socket at ``path``."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, str(path)), within)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def close(self) -> None:
        """Close the connection."""
        self._sock.close()

    async def __aenter__(self) -> ApiConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def shutdown_write(self) -> None:
        """Half-close: the daemon sees end of input, we can still read."""
        self._sock.shutdown(socket.SHUT_WR)

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are; a peer that already hung up is not an error here."""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await self._loop.sock_sendall(self._sock, data)

    async def send(self, cmd: str, **args: Any) -> None:
        """Send one request line."""
        await self.send_raw(json.dumps({"cmd": cmd, **args}).encode() + b"\n")

    async def read_line(self, within: float = 5.0) -> bytes | None:
        """The next reply line (without newline), or None once the daemon closed the stream."""
        deadline = time.monotonic() + within
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no reply line within {within}s (have {self._buf[:200]!r})")
            try:
                chunk = await asyncio.wait_for(self._loop.sock_recv(self._sock, 65536), left)
            except ConnectionResetError:
                chunk = b""
            except TimeoutError:
                continue
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    async def read(self, within: float = 5.0) -> dict[str, Any]:
        """The next reply, decoded (AssertionError if the daemon closed the stream)."""
        line = await self.read_line(within)
        assert line is not None, "the daemon closed the connection"
        obj = json.loads(line)
        assert isinstance(obj, dict), f"reply is not an object: {line!r}"
        return obj

    async def call(self, cmd: str, within: float = 5.0, **args: Any) -> dict[str, Any]:
        """Send a request and return its reply (whatever ``ok`` says)."""
        await self.send(cmd, **args)
        return await self.read(within)


async def api(path: Path, cmd: str, **args: Any) -> dict[str, Any]:
    """One request on a fresh connection; AssertionError if the daemon refuses it."""
    async with await ApiConnection.open(path) as conn:
        reply = await conn.call(cmd, **args)
    assert reply.get("ok") is True, f"{cmd} {args} refused: {reply}"
    return reply


# -- the simulated site ----------------------------------------------------------------------


@dataclass
class Site:
    """A running simulated site and the site file that points the daemon at it."""

    sim: SimSite
    config: Path
    settings: Settings
    directory: Path

    @property
    def socket(self) -> Path:
        """The daemon's control socket."""
        return self.settings.controller.socket

    @property
    def journal(self) -> Path:
        """The daemon's journal."""
        return self.settings.controller.journal

    def doors_on(self, board: str) -> list[str]:
        """Names of the doors whose relay is on ``board``."""
        return [d.name for d in self.settings.doors if d.relay.board == board]

    def expected_relay(self, door: str) -> bool:
        """The relay value that holds ``door`` locked (fail-safe: energised)."""
        return self.settings.door(door).lock is LockType.FAIL_SAFE

    def all_locked(self, doors: Sequence[str] | None = None) -> bool:
        """True when every door (or ``doors``) is locked at the simulator by the right relay."""
        names = doors if doors is not None else [d.name for d in self.settings.doors]
        return all(
            self.sim.door(n).locked and self.sim.door(n).relay == self.expected_relay(n)
            for n in names
        )

    def relays(self) -> dict[str, bool]:
        """Every door's relay as the simulator has it (True = energised)."""
        return {d.name: self.sim.door(d.name).relay for d in self.settings.doors}


@contextlib.asynccontextmanager
async def simulated_site(
    directory: Path,
    *,
    doors_per_board: int = 2,
    rtu: bool = True,
    extra_door: str = "",
    **toml: Any,
) -> AsyncIterator[Site]:
    """Start simulators for a small site (``tests/conftest.py::site_toml``) in ``directory``.

    The TCP board listens on a free port; the RTU line is a pty symlinked at
    ``directory/rtu.tty``. The site file ``directory/site.toml`` points at both.
    """
    directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - test set-up
    rtu_device = directory / "rtu.tty" if rtu else None

    def text(port: int) -> str:
        return site_toml(
            directory,
            tcp_port=port,
            rtu_device=rtu_device,
            doors_per_board=doors_per_board,
            extra_door=extra_door,
            **toml,
        )

    # port 1 is a placeholder for validation; the simulator takes any free port instead
    sim = SimSite(parse_toml(text(1)), ports={"tcp1": 0})
    async with sim:
        config = directory / "site.toml"
        config.write_text(text(sim.port("tcp1")), encoding="utf-8")
        yield Site(sim, config, load_settings(config), directory)


# -- the daemon subprocess -------------------------------------------------------------------


@dataclass
class Daemon:
    """A ``warding run`` subprocess."""

    proc: asyncio.subprocess.Process
    site: Site
    log: Path

    @property
    def socket(self) -> Path:
        """Its control socket."""
        return self.site.socket

    @property
    def running(self) -> bool:
        """True until the process has been seen to exit."""
        return self.proc.returncode is None

    def log_text(self) -> str:
        """Everything the daemon wrote to stdout/stderr so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def api(self, cmd: str, **args: Any) -> dict[str, Any]:
        """One accepted control request."""
        return await api(self.socket, cmd, **args)

    async def wardctl(self, *args: str, **kw: Any) -> Result:
        """``wardctl --socket SOCKET ARGS``."""
        return await wardctl(*args, socket_path=self.socket, **kw)

    async def status(self) -> dict[str, Any]:
        """The ``status`` reply."""
        return await self.api("status")

    async def doors(self) -> dict[str, dict[str, Any]]:
        """The status rows by door name."""
        return {d["door"]: d for d in (await self.status())["doors"]}

    async def seq(self) -> int:
        """The newest committed journal seq."""
        return int((await self.status())["journal_seq"])

    async def events(self, after: int = 0, limit: int = 10_000) -> list[dict[str, Any]]:
        """Committed journal entries after ``after``."""
        reply = await self.api("events", after=after, limit=limit)
        events: list[dict[str, Any]] = reply["events"]
        return events

    async def wait_event(
        self, after: int, within: float = 5.0, **match: Any
    ) -> list[dict[str, Any]]:
        """Wait until an entry after ``after`` matches (``kind=``, ``door=``, data keys...)."""

        async def found() -> list[dict[str, Any]]:
            return [e for e in await self.events(after) if event_matches(e, **match)]

        return await wait_for(found, within, what=f"journal entry {match}")

    async def ping(self) -> bool:
        """True if the daemon answers ``ping`` right now."""
        try:
            async with await ApiConnection.open(self.socket, within=1.0) as conn:
                reply = await conn.call("ping", within=1.0)
        except (OSError, AssertionError, TimeoutError, ValueError):
            return False
        return reply.get("ok") is True

    async def wait_ready(self, within: float = READY_TIMEOUT_S) -> None:
        """Wait until the daemon answers ``ping``; fail at once if it exits."""

        async def ready() -> bool:
            if not self.running:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode} before it was ready:\n"
                    f"{self.log_text()}"
                )
            return await self.ping()

        await wait_for(ready, within, what="the daemon to answer ping")

    async def wait_exit(self, within: float = STOP_TIMEOUT_S) -> int:
        """Wait for the process to exit; AssertionError (and kill) after ``within`` seconds."""
        try:
            return await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(
                f"daemon did not exit within {within}s:\n{self.log_text()}"
            ) from None

    async def stop(self, sig: int = signal.SIGTERM, within: float = STOP_TIMEOUT_S) -> int:
        """Send ``sig`` and return the exit status."""
        if self.running:
            self.proc.send_signal(sig)
        return await self.wait_exit(within)


async def start_daemon(site: Site, *, env: Mapping[str, str] | None = None) -> Daemon:
    """Spawn ``warding run --config SITE`` (output to a log file); do not wait for it."""
    log = site.directory / f"daemon-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            PYTHON,
            "-m",
            "controller.cli.warding",
            "run",
            "--config",
            str(site.config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=clean_env(env),
        )
    return Daemon(proc, site, log)


@contextlib.asynccontextmanager
async def running_daemon(
    site: Site, *, env: Mapping[str, str] | None = None, wait: bool = True
) -> AsyncIterator[Daemon]:
    """A daemon on ``site`` (ready unless ``wait=False``), stopped with SIGTERM on exit.

    A daemon still running at the end must exit 0 within STOP_TIMEOUT_S of SIGTERM (else it is
    killed and, unless the test already failed, that fails the test).
    """
    daemon = await start_daemon(site, env=env)
    try:
        if wait:
            await daemon.wait_ready()
        yield daemon
    except BaseException:
        if daemon.running:
            daemon.proc.kill()
            await daemon.proc.wait()
        raise
    if daemon.running:
        rc = await daemon.stop()
        assert rc == 0, f"daemon exited with {rc} on SIGTERM:\n{daemon.log_text()}"


# -- journal and Modbus helpers --------------------------------------------------------------


def event_matches(entry: Mapping[str, Any], **match: Any) -> bool:
    """True if ``entry`` has ``kind``/``door``/``device`` and every other key in its data."""
    data = entry.get("data") or {}
    for key, value in match.items():
        have = entry.get(key) if key in ("kind", "door", "device") else data.get(key)
        if have != value:
            return False
    return True


def read_journal(path: Path) -> list[dict[str, Any]]:
    """Every journal row (read-only; the daemon may still be writing)."""
    with contextlib.closing(
        sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    ) as conn:
        rows = conn.execute("SELECT seq, kind, door, device, data FROM events ORDER BY seq")
        return [
            {"seq": s, "kind": k, "door": d, "device": dev, "data": json.loads(data)}
            for s, k, d, dev, data in rows
        ]


async def write_coils_over_modbus(site: Site, board: str, coils: Mapping[int, bool]) -> None:
    """Set relays on a TCP board the way any Modbus master could (before the daemon runs)."""
    b = site.settings.board(board)
    port = site.sim.port(board)
    link = ModbusLink(ModbusEndpoint("tcp", host="127.0.0.1", port=port), 1.0)
    try:
        await link.connect()
        for coil, value in coils.items():
            await link.write_coils(b.unit_id, coil, [value])
    finally:
        link.close()


class NotifyListener:
    """An AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET.

    Each datagram is stored with ``probe()`` evaluated at the moment it was received (in the
    same event-loop turn as the readiness callback), e.g. the simulator's relays at READY=1.
    """

    def __init__(self, path: Path, probe: Callable[[], Any] = lambda: None) -> None:
        self.path = path
        self._probe = probe
        self.messages: list[tuple[str, Any]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._sock.bind(str(path))
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self.drain)

    def drain(self) -> None:
        """Take every queued datagram now."""
        while True:
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            self.messages.append((data.decode(), self._probe()))

    def fields(self) -> list[list[str]]:
        """The received datagrams, each split into its KEY=value fields."""
        return [msg.split("\n") for msg, _ in self.messages]

    def first(self, field: str) -> tuple[int, Any] | None:
        """(index, probe) of the first datagram carrying ``field``."""
        for i, (msg, probe) in enumerate(self.messages):
            if field in msg.split("\n"):
                return i, probe
        return None

    def count(self, field: str) -> int:
        """How many datagrams carried ``field``."""
        return sum(field in msg.split("\n") for msg, _ in self.messages)

    def close(self) -> None:
        """Stop listening."""
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()


# -- fixtures --------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    """One simulated site for a whole module: 4 doors per board on tcp1 and rtu1, + ``quick``."""
    async with simulated_site(
        tmp_path_factory.mktemp("site"), doors_per_board=4, extra_door=QUICK_DOOR
    ) as site:
        yield site


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_daemon(shared_site: Site) -> AsyncIterator[Daemon]:
    """One daemon for a whole module, on ``shared_site``; checks that it stops cleanly."""
    async with running_daemon(shared_site) as daemon:
        yield daemon
