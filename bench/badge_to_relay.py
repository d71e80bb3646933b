"""Badge to relay: a card presented at an OSDP reader until the door's relay coil is energised.

``python -m bench.badge_to_relay --json`` (``--n``, ``--credentials``; ``--help``).

Set-up
------
* A simulator subprocess (``--child``): two OSDP lines on ptys, each with one simulated reader
  (a libosdp PD with its own SCBK; Secure Channel on), and two Modbus TCP boards (pymodbus
  servers). Every timestamp of a simulated device is ``time.monotonic()`` there.
* This process: the real ``Daemon`` (journal, control socket, access service, door service,
  OSDP driver, Modbus driver) with line A's reader ``r-main`` at door ``main`` (fail-secure,
  so a grant energises the coil; no contact; a 5 ms pulse, so the door has relocked before
  the next card) on board ``w``, and its credential store holding ``--credentials``
  cardholders (built once with ``bench.credential_import``'s generator and cached under
  ``--cache-dir``).
* Also in this process, for the floors: a bare libosdp control panel on line B (the
  ``osdp_sys`` context pumped every 2 ms by a thread of its own, as DESIGN.md recommends; no
  warding code), and a raw pymodbus client to board ``raw``.

Each round does three presentations in random order, each after a random pause, uniform over
0..one poll period, so that cards arrive at every phase of libosdp's poll with the same
weight whatever the phase the pause starts at. libosdp sends a POLL every ~56 ms here (its
50 ms timer restarts after each exchange, ~6 ms with Secure Channel and 2 ms refresh periods
at both ends); the period is measured on line B during the warm-up (the bare control panel
notes when it sends a POLL) and reported as ``poll_period_ms``; ``--jitter-ms`` fixes the
pause instead.

* ``1m``: a random enrolled card at ``r-main``. t0 is taken in the simulator right before the
  PD's ``submit_event``, t1 in the simulated board's ``on_coils_changed`` when coil 0 becomes
  energised: ``latency = t1 - t0``, both in one process. The reader must be idle before the
  pause: the door relocked (coil released) and the previous decision's LED and buzzer
  commands received by the reader. libosdp restarts its poll timer after every command, so
  a card presented while feedback is still going out waits a full period after it (up to
  ~63 ms); nobody badges within 10 ms of the previous person, and without this wait the
  bench would sample that case in about one presentation in ten.
* ``1k``: the same, with the access service reading a 1,000-credential store instead (same
  daemon, same line, same door: the store size is the only difference, and the two series
  interleave so machine noise hits both alike).
* ``osdp floor``: a card at line B; t0 as above, t_cp when libosdp calls the bare control
  panel's event callback (CLOCK_MONOTONIC: the same clock in both processes).

then one ``modbus floor``: FC5 "energise coil 0" from the raw client to board ``raw``; t_send
right before the call, t_coil in that board's ``on_coils_changed`` (one way: the counterpart of
the daemon's write, which t1 also ends at the board), and the round trip. A few unknown
cards are presented too (``--unknown-rate``; untimed: only grants are timed).

Figures (ms; nearest-rank percentiles, ``bench._common.percentile``):
``p50_ms``/``p99_ms`` of the 1M series; ``floor_osdp_p99_ms`` and ``floor_modbus_p99_ms``;
``floor_p99_ms = floor_osdp_p99_ms + floor_modbus_p99_ms`` (the sum of the two p99s: in
practice a little above the p99 of their per-sample sum, ``floor_sum_p99_ms``, which is
reported too, estimated from all pairs of samples); ``overhead_p99_ms = p99_ms -
floor_p99_ms``; ``p99_1k_ms`` and ``ratio_1m_1k = p99_ms / p99_1k_ms``. The daemon's event
queue is tapped to split each sample: ``bridge_*`` from t0 to the CardRead reaching the event
loop (libosdp, warding's OSDP driver and its thread-to-loop hand-off) and ``daemon_*`` from
there to the coil (decision, journal, door service, Modbus driver and the wire). A sample
counts only if the grant was this card's: one grant counted, and its read reached the loop
between t0 and t1; anything else is a failure, listed under ``failures`` and ``errors``.

Targets (issue 3): overhead p99 <= 5 ms; p99(1M) / p99(1k) <= 1.2; p50 <= 50 ms; p99 <= 65 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import hashlib
import importlib
import itertools
import json
import os
import random
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from bench._common import (
    board_lines,
    emit_json,
    non_negative_int,
    percentile,
    positive_int,
    quiet_logs,
    temp_dir,
)

TARGET_OVERHEAD_P99_MS: Final = 5.0
TARGET_RATIO_1M_1K: Final = 1.2
TARGET_P50_MS: Final = 50.0
TARGET_P99_MS: Final = 65.0

HOST: Final = "127.0.0.1"
UNIT_ID: Final = 1
DOOR: Final = "main"
READER: Final = "r-main"
DAEMON_BOARD: Final = "w"
RAW_BOARD: Final = "raw"
COIL: Final = 0
DAEMON_LINE: Final = "daemon"
FLOOR_LINE: Final = "floor"
PD_ADDRESS: Final = 1
UNKNOWN_FACILITY: Final = 255  # h10301:255:x is never generated (bench.credential_import)
_CACHE_FORMAT: Final = "1"  # bump when the cached store's content changes
_CHILD_CONFIG: Final = "child.json"
_OK_MARKER: Final = "complete"
FALLBACK_JITTER_S: Final = 0.060  # until the poll period is measured (or if it cannot be)
DEFAULT_CACHE_DIR: Final = Path("/tmp/warding-bench-cache")  # noqa: S108 - a cache, not a secret


# -- options ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    """What to run."""

    n: int = 1000
    credentials: int = 1_000_000
    small: int = 1000
    warmup: int = 10
    jitter_ms: float | None = None  # None: one poll period, measured on the floor's line
    pulse_s: float = 0.005
    poll_interval_ms: int = 50
    unknown_rate: float = 0.02
    timeout_s: float = 2.0
    seed: int = 1
    cache_dir: Path = DEFAULT_CACHE_DIR


# -- the credential stores --------------------------------------------------------------------


def _source_digest() -> str:
    """A digest of the code that shapes a cached store (a change there rebuilds the cache)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256(_CACHE_FORMAT.encode())
    for rel in (
        "controller/access/store.py",
        "controller/access/csvio.py",
        "controller/access/formats.py",
        "controller/access/secret.py",
        "bench/credential_import.py",
    ):
        with contextlib.suppress(OSError):
            h.update(rel.encode() + b"\0" + (root / rel).read_bytes())
    return h.hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class StoreFiles:
    """A credential store on disk and its site secret."""

    db: Path
    secret: Path
    credentials: int
    built_s: float  # 0.0 when it came from the cache


def credential_store(n: int, cache_dir: Path) -> StoreFiles:
    """The cached store of ``n`` generated cardholders (built now if missing).

    One card each (``bench.credential_import.card_key``), all with access to ``DOOR`` at any
    time. Built in a private directory and renamed into place only when complete; stores of
    the same size built by other versions of the code are removed then.
    """
    from bench.credential_import import LEVELS, write_csv
    from controller.access.csvio import import_csv
    from controller.access.secret import load_or_create_secret
    from controller.access.store import CredentialStore

    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    final = cache_dir / f"badge-creds-{n}-{_source_digest()}"
    if (final / _OK_MARKER).exists():
        return StoreFiles(final / "credentials.db", final / "site.secret", n, 0.0)
    t0 = time.perf_counter()
    work = cache_dir / f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}"
    work.mkdir(mode=0o700)
    try:
        write_csv(work / "cards.csv", n)
        secret = load_or_create_secret(work / "site.secret")
        with CredentialStore.open(work / "credentials.db", secret) as store:
            for name in LEVELS:
                store.add_level(name, [DOOR, f"door-{name}"], "always")
            report = import_csv(store, work / "cards.csv")
        if not report.committed:
            raise RuntimeError(f"credential import rejected: {report.summary()}")
        (work / "cards.csv").unlink()
        (work / _OK_MARKER).touch()
        try:
            work.rename(final)
        except OSError:  # another run finished the same store first: use that one
            if not (final / _OK_MARKER).exists():
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    for stale in cache_dir.glob(f"badge-creds-{n}-*"):  # built by older code: ~450 MB each
        if stale != final:
            shutil.rmtree(stale, ignore_errors=True)
    return StoreFiles(final / "credentials.db", final / "site.secret", n, time.perf_counter() - t0)


# -- site files ---------------------------------------------------------------------------------


def _board_lines(name: str, port: int, opts: Options) -> list[str]:
    return board_lines(
        name,
        port,
        coils=8,
        inputs=8,
        timeout_ms=500,
        poll_interval_ms=opts.poll_interval_ms,
        host=HOST,
        unit_id=UNIT_ID,
    )


def _head(workdir: Path) -> list[str]:
    return [
        "[controller]",
        'id = "bench-badge"',
        f'socket = "{workdir / "control.sock"}"',
        f'journal = "{workdir / "journal.db"}"',
        'log_level = "warning"',
        "",
    ]


def _door_lines(opts: Options) -> list[str]:
    return [
        "[[doors]]",
        f'name = "{DOOR}"',
        'zone = "bench"',
        'lock = "fail-secure"',
        f'relay = {{ board = "{DAEMON_BOARD}", coil = {COIL} }}',
        f"pulse_s = {opts.pulse_s}",
        "",
    ]


def sim_site_toml(workdir: Path, opts: Options) -> str:
    """The simulator's site: the daemon's board and the raw floor's board (ports chosen later)."""
    lines = _head(workdir) + _board_lines(DAEMON_BOARD, 1, opts)
    lines += _board_lines(RAW_BOARD, 2, opts) + _door_lines(opts)
    return "\n".join(lines)


def daemon_site_toml(
    workdir: Path, opts: Options, *, port: int, store: StoreFiles, device: Path, key_file: Path
) -> str:
    """The daemon's site: board ``w``, door ``main``, reader ``r-main`` on an OSDP line."""
    lines = _head(workdir) + _board_lines(DAEMON_BOARD, port, opts) + _door_lines(opts)
    lines += [
        "[access]",
        f'credentials_db = "{store.db}"',
        f'secret_file = "{store.secret}"',
        "throttle_denials = 1000",  # the few unknown cards must never trip the throttle
        "throttle_window_s = 1.0",
        "",
        "[[reader_buses]]",
        'name = "osdp-a"',
        'driver = "osdp"',
        f'device = "{device}"',
        "baudrate = 115200",
        "",
        "[[readers]]",
        f'name = "{READER}"',
        'bus = "osdp-a"',
        f"address = {PD_ADDRESS}",
        f'door = "{DOOR}"',
        f'key_file = "{key_file}"',
        "",
    ]
    return "\n".join(lines)


# -- the simulator process ------------------------------------------------------------------------


async def _child(config: Mapping[str, Any]) -> None:
    """(``--child``) Serve both OSDP lines and both boards; act on stdin, report on stdout."""
    from controller.access.formats import CardFormat, encode_wiegand, parse_card
    from controller.settings import parse_toml
    from drivers.osdp.keys import load_scbk
    from simulators.osdp_reader import SimIndication, SimOsdpPd, SimOsdpReader
    from simulators.site import SimSite

    settings = parse_toml(config["site"], "<bench simulators>")
    out = sys.stdout
    out_lock = threading.Lock()  # coil events come from the loop, reader commands from a thread

    def send(obj: Mapping[str, Any]) -> None:
        line = json.dumps(obj, separators=(",", ":")) + "\n"
        with out_lock:
            out.write(line)
            out.flush()

    def command_received(line: str, indication: SimIndication) -> None:
        send({"ev": "cmd", "line": line, "command": indication.command, "t": indication.at})

    def coils_changed(board: str, changed: Mapping[int, bool]) -> None:
        t = time.monotonic()
        for coil, value in changed.items():
            send({"ev": "coil", "board": board, "coil": coil, "value": value, "t": t})

    pds: dict[str, SimOsdpPd] = {}
    lines: list[SimOsdpReader] = []
    for name, spec in config["lines"].items():
        pd = SimOsdpPd(int(spec["address"]), load_scbk(Path(spec["key_file"])), name=name)
        pd.on_command = functools.partial(command_received, name)
        pds[name] = pd
        lines.append(SimOsdpReader(pd, device=spec["device"]))

    def present(line: str, card: str) -> float:
        pd = pds[line]
        number = parse_card(card)
        if number.format is CardFormat.UID:
            assert number.uid is not None
            uid = number.uid
            t0 = time.monotonic()
            ok = pd.present_uid(uid)
        else:
            bits, data = encode_wiegand(number)
            t0 = time.monotonic()
            ok = pd.present_card(bits, data)
        if not ok:
            raise RuntimeError(f"reader {line} refused the card event")
        return t0

    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    async with SimSite(settings, ports={DAEMON_BOARD: 0, RAW_BOARD: 0}) as site:
        for board in (DAEMON_BOARD, RAW_BOARD):
            site.board(board).on_coils_changed = functools.partial(coils_changed, board)
        try:
            for line in lines:
                line.start()
            send({"ev": "ready", "ports": {b: site.port(b) for b in (DAEMON_BOARD, RAW_BOARD)}})
            while True:
                raw = await commands.readline()
                if not raw:
                    return  # the bench went away
                msg = json.loads(raw)
                if msg["op"] == "quit":
                    return
                if msg["op"] == "present":
                    try:
                        t0 = present(msg["line"], msg["card"])
                    except (RuntimeError, ValueError) as exc:
                        send({"ev": "presented", "id": msg["id"], "error": str(exc)})
                    else:
                        send({"ev": "presented", "id": msg["id"], "t0": t0})
        finally:
            for line in lines:
                line.stop()


class SimChild:
    """The simulator subprocess, seen from the bench: present cards, watch the coils."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log_path = workdir / "sim.log"
        self.ports: dict[str, int] = {}
        self.coils: dict[str, bool] = {DAEMON_BOARD: False, RAW_BOARD: False}
        self.stray_energised = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._next_id = 0
        self._presented: dict[int, asyncio.Future[float]] = {}
        self._coil_waiters: dict[tuple[str, bool], list[asyncio.Future[float]]] = {}
        self.commands: dict[str, int] = {DAEMON_LINE: 0, FLOOR_LINE: 0}
        """Commands (LED, buzzer...) each line's reader received from its control panel."""
        self._command_waiters: list[tuple[str, int, asyncio.Future[float]]] = []

    async def start(self, timeout_s: float = 30.0) -> None:
        """Spawn the simulators and wait until they report their ports."""
        with self.log_path.open("wb") as log:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.badge_to_relay",
                "--child",
                str(self.workdir),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        assert self._proc.stdout is not None
        try:
            line = await asyncio.wait_for(self._proc.stdout.readline(), timeout_s)
            ready = json.loads(line) if line else {}
        except (TimeoutError, ValueError):
            ready = {}
        if ready.get("ev") != "ready":
            await self.stop()
            raise RuntimeError(f"simulators did not start; their log:\n{self.log_tail()}")
        self.ports = {str(k): int(v) for k, v in ready["ports"].items()}
        self._reader = asyncio.create_task(self._read(), name="sim-events")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the simulators logged."""
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self) -> None:
        """Ask the simulators to quit (then terminate them); idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None and proc.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                proc.stdin.write(b'{"op": "quit"}\n')
                await proc.stdin.drain()
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 3.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    def expect_coil(self, board: str, value: bool) -> asyncio.Future[float]:
        """A future for the time of ``board``'s coil 0 next becoming ``value``."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._coil_waiters.setdefault((board, value), []).append(fut)
        return fut

    def expect_commands(self, line: str, n: int) -> asyncio.Future[float]:
        """A future for the time ``line``'s reader receives its ``n``-th command from now."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._command_waiters.append((line, self.commands[line] + n, fut))
        return fut

    async def coil_settled(self, board: str, value: bool, timeout_s: float) -> None:
        """Return once ``board``'s coil 0 is ``value`` (TimeoutError otherwise)."""
        if self.coils[board] is value:
            return
        await asyncio.wait_for(self.expect_coil(board, value), timeout_s)

    async def present(self, line: str, card: str) -> float:
        """Present ``card`` at ``line``'s reader; return t0 (just before the PD got it)."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise RuntimeError("the simulators are not running")
        self._next_id += 1
        ident = self._next_id
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._presented[ident] = fut
        msg = {"op": "present", "id": ident, "line": line, "card": card}
        proc.stdin.write(json.dumps(msg).encode() + b"\n")
        await proc.stdin.drain()
        try:
            return await asyncio.wait_for(fut, 5.0)
        finally:
            self._presented.pop(ident, None)

    async def _read(self) -> None:
        proc = self._proc
        assert proc is not None
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                break
            msg = json.loads(line)
            if msg.get("ev") == "presented":
                fut = self._presented.get(int(msg["id"]))
                if fut is not None and not fut.done():
                    if "error" in msg:
                        fut.set_exception(RuntimeError(str(msg["error"])))
                    else:
                        fut.set_result(float(msg["t0"]))
            elif msg.get("ev") == "cmd":
                self._command(str(msg["line"]), float(msg["t"]))
            elif msg.get("ev") == "coil" and int(msg["coil"]) == COIL:
                board, value = str(msg["board"]), bool(msg["value"])
                self.coils[board] = value
                waiters = self._coil_waiters.pop((board, value), [])
                if value and board == DAEMON_BOARD and not waiters:
                    self.stray_energised += 1
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(float(msg["t"]))
        error = RuntimeError(f"the simulators exited; their log:\n{self.log_tail()}")
        for fut in [
            *self._presented.values(),
            *(f for w in self._coil_waiters.values() for f in w),
            *(f for _, _, f in self._command_waiters),
        ]:
            if not fut.done():
                fut.set_exception(error)

    def _command(self, line: str, t: float) -> None:
        self.commands[line] += 1
        still = []
        for waiter in self._command_waiters:
            name, target, fut = waiter
            if name != line or self.commands[name] < target:
                still.append(waiter)
            elif not fut.done():
                fut.set_result(t)
        self._command_waiters = still


# -- the bare libosdp control panel (OSDP floor) --------------------------------------------------


class BareControlPanel:
    """libosdp's CP context on one line, pumped every ``period_s`` by its own thread.

    No warding code on the path: the event callback timestamps a card read where libosdp
    delivers it (on the pumping thread) and hands the time to the event loop.
    """

    def __init__(self, device: Path, address: int, scbk: bytes, *, period_s: float = 0.002) -> None:
        self._osdp: ModuleType = importlib.import_module("osdp_sys")
        self.device = device
        self.address = address
        self.scbk = scbk
        self.period_s = period_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cp: Any = None
        self._channel: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[float] | None = None
        self._tx: Any = None  # drivers.osdp.wire.Decoder
        self._polls: collections.deque[float] = collections.deque(maxlen=65)
        self.unexpected = 0

    def start(self) -> None:
        """Open the line, build the context, start pumping."""
        from drivers.osdp import wire
        from drivers.osdp.channel import SerialChannel  # a plain pty reader/writer

        self._loop = asyncio.get_running_loop()
        self._osdp.set_loglevel(self._osdp.LOG_CRIT)
        self._tx = wire.Decoder()
        self._channel = SerialChannel(str(self.device), 115200, on_tx=self._tap_tx)
        self._channel.open()
        info = {
            "name": "floor",
            "address": self.address,
            "flags": self._osdp.FLAG_ENFORCE_SECURE,
            "scbk": self.scbk,
            "channel": self._channel,
            "baud_rate": 115200,
        }
        self._cp = self._osdp.ControlPanel([info])
        self._cp.set_event_callback(self._on_event)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bare-osdp-cp", daemon=True)
        self._thread.start()

    @property
    def secure(self) -> bool:
        """True while the reader is online with Secure Channel up."""
        with self._lock:
            cp = self._cp
            return cp is not None and bool(cp.status() & 1) and bool(cp.sc_status() & 1)

    def poll_period_s(self) -> float | None:
        """The median interval between libosdp's recent POLLs on this line (None: too few)."""
        times = list(self._polls)
        if len(times) < 9:
            return None
        gaps = sorted(b - a for a, b in itertools.pairwise(times))
        return gaps[len(gaps) // 2]

    def expect(self) -> asyncio.Future[float]:
        """A future for the time libosdp delivers the next card read."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiter = fut
        return fut

    def stop(self) -> None:
        """Stop pumping, release the context, close the line; idempotent."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(5.0)
        with self._lock:
            cp, self._cp = self._cp, None
            if cp is not None:
                cp.set_event_callback(_ignore_event)
            del cp
            if self._channel is not None:
                self._channel.close()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                if self._cp is not None:
                    self._cp.refresh()
            next_at += self.period_s
            delay = next_at - time.monotonic()
            if delay < 0:
                next_at = time.monotonic()
                delay = 0.0001
            self._stop.wait(delay)

    def _tap_tx(self, data: bytes) -> None:
        """(Pumping thread) note when libosdp sends a POLL: only its code, never the data."""
        from drivers.osdp import wire

        self._tx.feed(data)
        now = time.monotonic()
        for frame in self._tx.frames():
            if not frame.reply and frame.code == wire.CMD_POLL:
                self._polls.append(now)

    def _on_event(self, _pd: int, event: dict[str, Any]) -> int:
        t = time.monotonic()
        loop = self._loop
        if event.get("event") == self._osdp.EVENT_CARDREAD and loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._deliver, t)
        return 0

    def _deliver(self, t: float) -> None:
        fut, self._waiter = self._waiter, None
        if fut is None or fut.done():
            self.unexpected += 1
            return
        fut.set_result(t)


def _ignore_event(_pd: int, _event: dict[str, Any]) -> int:
    return 0


# -- the measurement ------------------------------------------------------------------------------


@dataclass(slots=True)
class Samples:
    """Raw timings (seconds) and counters collected over the rounds."""

    total: dict[str, list[float]] = field(default_factory=lambda: {"1m": [], "1k": []})
    bridge: dict[str, list[float]] = field(default_factory=lambda: {"1m": [], "1k": []})
    daemon: dict[str, list[float]] = field(default_factory=lambda: {"1m": [], "1k": []})
    osdp_floor: list[float] = field(default_factory=list)
    modbus_one_way: list[float] = field(default_factory=list)
    modbus_rtt: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(
        default_factory=lambda: {"1m": 0, "1k": 0, "osdp": 0, "modbus": 0, "unknown": 0}
    )
    unknown: int = 0
    feedback_missing: int = 0
    errors: list[str] = field(default_factory=list)

    def note(self, kind: str, error: str) -> None:
        """Count a failed presentation; keep the first few distinct errors."""
        self.failures[kind] += 1
        text = f"{kind}: {error}"
        if text not in self.errors and len(self.errors) < 8:
            self.errors.append(text)


class Bench:
    """The daemon under test, the simulators, the floors' clients, and the rounds."""

    def __init__(
        self,
        opts: Options,
        workdir: Path,
        big: StoreFiles,
        small: StoreFiles,
    ) -> None:
        self.opts = opts
        self.workdir = workdir
        self.big = big
        self.small_files = small
        self.rng = random.Random(opts.seed)
        self.samples = Samples()
        self.child = SimChild(workdir)
        self.keys = {DAEMON_LINE: secrets.token_bytes(16), FLOOR_LINE: secrets.token_bytes(16)}
        self.devices = {
            DAEMON_LINE: workdir / "osdp-daemon.tty",
            FLOOR_LINE: workdir / "osdp-floor.tty",
        }
        self.key_files = {line: workdir / "keys" / f"{line}.scbk" for line in self.keys}
        self.daemon: Any = None  # controller.app.Daemon (imported late: logs first)
        self.cp: BareControlPanel | None = None
        self.client: Any = None  # pymodbus AsyncModbusTcpClient
        self.store_big: Any = None
        self.store_small: Any = None
        self._task: asyncio.Task[int] | None = None
        self._tap_waiter: asyncio.Future[float] | None = None
        self.feedback_commands = _feedback_commands()
        fixed = opts.jitter_ms is not None
        self.jitter_s = (opts.jitter_ms or 0.0) / 1000 if fixed else FALLBACK_JITTER_S
        self.poll_period_s: float | None = None

    # -- set-up and tear-down

    async def start(self) -> None:
        """Simulators, then the daemon (ready, reader secure), then the floors' clients."""
        from drivers.osdp.keys import write_scbk

        (self.workdir / "keys").mkdir(mode=0o700)
        for line, key in self.keys.items():
            write_scbk(self.key_files[line], key)
        lines = {
            line: {
                "address": PD_ADDRESS,
                "key_file": str(self.key_files[line]),
                "device": str(self.devices[line]),
            }
            for line in self.keys
        }
        (self.workdir / _CHILD_CONFIG).write_text(
            json.dumps({"site": sim_site_toml(self.workdir, self.opts), "lines": lines}), "utf-8"
        )
        await self.child.start()
        await self._start_daemon()
        await self._start_floors()

    async def _start_daemon(self) -> None:
        from controller.access.secret import load_secret
        from controller.access.store import CredentialStore
        from controller.app import Daemon
        from controller.sdnotify import SdNotifier
        from controller.settings import parse_toml
        from drivers.base import CardRead, DriverEvent

        text = daemon_site_toml(
            self.workdir,
            self.opts,
            port=self.child.ports[DAEMON_BOARD],
            store=self.big,
            device=self.devices[DAEMON_LINE],
            key_file=self.key_files[DAEMON_LINE],
        )
        settings = parse_toml(text, "<bench daemon site>")
        daemon = Daemon(
            settings,
            socket_path=self.workdir / "control.sock",
            journal_path=self.workdir / "journal.db",
            notifier=SdNotifier(None),  # never talk to a systemd that runs the bench
            ready_timeout_s=20.0,
        )
        self.daemon = daemon
        deliver = daemon.events.put_nowait

        def tap(event: DriverEvent) -> None:
            # the reader bus is built in run() with ``daemon.events.put_nowait``: this tap
            # sees every reader event as the event loop receives it from the OSDP thread
            if isinstance(event, CardRead):
                waiter, self._tap_waiter = self._tap_waiter, None
                if waiter is not None and not waiter.done():
                    waiter.set_result(time.monotonic())
            deliver(event)

        setattr(daemon.events, "put_nowait", tap)  # noqa: B010 - patching a bound method
        self._task = asyncio.create_task(daemon.run(), name="daemon")
        ready = asyncio.create_task(daemon.ready.wait())
        await asyncio.wait({self._task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            if self._task.done():
                await self._task  # raises what stopped the daemon
            raise RuntimeError("the daemon did not become ready")
        self.store_big = daemon.store
        self.store_small = await asyncio.to_thread(
            CredentialStore.open,
            self.small_files.db,
            load_secret(self.small_files.secret),
            duress=settings.access.duress,
        )
        access = daemon.access
        assert access is not None
        deadline = time.monotonic() + 20
        while not (access.readers[READER].online and access.readers[READER].secure):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"reader {READER} did not come up with Secure Channel: "
                    f"{access.readers[READER].detail}; simulator log:\n{self.child.log_tail()}"
                )
            await asyncio.sleep(0.02)

    async def _start_floors(self) -> None:
        from pymodbus.client import AsyncModbusTcpClient
        from pymodbus.framer import FramerType

        self.cp = BareControlPanel(self.devices[FLOOR_LINE], PD_ADDRESS, self.keys[FLOOR_LINE])
        self.cp.start()
        deadline = time.monotonic() + 20
        while not self.cp.secure:
            if time.monotonic() > deadline:
                raise RuntimeError("the bare OSDP control panel did not get Secure Channel")
            await asyncio.sleep(0.02)
        self.client = AsyncModbusTcpClient(
            HOST,
            port=self.child.ports[RAW_BOARD],
            framer=FramerType.SOCKET,
            timeout=0.5,
            retries=0,
            reconnect_delay=0,
            reconnect_delay_max=0,
        )
        if not await self.client.connect():
            raise RuntimeError("the raw Modbus client could not connect")

    async def stop(self) -> None:
        """Everything down, the daemon through its own shutdown; idempotent."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cp is not None:
            await asyncio.to_thread(self.cp.stop)
            self.cp = None
        if self.daemon is not None:
            if self.store_big is not None:
                self.daemon.access.store = self.store_big
            self.daemon.shutdown.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 15.0)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self.store_small is not None:
            self.store_small.close()
            self.store_small = None
        await self.child.stop()

    # -- one presentation of each kind

    async def _diagnose(self, tapped: bool, decisions: int) -> str:
        """What became of a card that opened nothing: the loop, the decision, the driver."""
        if not tapped:
            bus = next(iter(self.daemon.buses.values()), None)
            stats = dict(getattr(bus, "stats", {}))
            return f"the card never reached the event loop (OSDP driver stats {stats})"
        if decisions == 0:
            return "the card reached the event loop but no decision was made"
        journal = self.daemon.journal
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(journal.flush(), 5.0)
        for entry in reversed(await journal.tail(50)):
            if entry.kind == "access.decision":
                return f"decision {entry.data.get('reason')!r}"
        return "decided, but no decision in the journal"

    async def _feedback_done(self, feedback: asyncio.Future[float]) -> None:
        """Wait until the reader got the decision's LED/buzzer commands (see the docstring)."""
        try:
            await asyncio.wait_for(feedback, self.opts.timeout_s)
        except (TimeoutError, RuntimeError):
            self.samples.feedback_missing += 1

    async def _pause(self) -> None:
        await asyncio.sleep(self.rng.uniform(0.0, self.jitter_s))

    def _check_alive(self) -> None:
        if self._task is not None and self._task.done():
            raise RuntimeError("the daemon stopped during the benchmark")

    async def badge(self, series: str, record: bool) -> None:
        """Present an enrolled card at ``r-main``; time it until the coil is energised."""
        s = self.samples
        access = self.daemon.access
        info = access.readers[READER]

        def fail(error: str) -> None:
            if record:
                s.note(series, error)

        try:
            await self.child.coil_settled(DAEMON_BOARD, False, self.opts.timeout_s)
        except TimeoutError:
            fail("the door did not relock after the previous grant")
            return
        await self._pause()
        small = series == "1k"
        count = self.small_files.credentials if small else self.big.credentials
        card = _card_key(self.rng.randrange(count))
        grants, decisions = info.grants, info.decisions
        access.store = self.store_small if small else self.store_big
        energised = self.child.expect_coil(DAEMON_BOARD, True)
        feedback = self.child.expect_commands(DAEMON_LINE, self.feedback_commands)
        tapped: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._tap_waiter = tapped
        try:
            t0 = await self.child.present(DAEMON_LINE, card)
            t1 = await asyncio.wait_for(energised, self.opts.timeout_s)
        except (TimeoutError, RuntimeError) as exc:
            feedback.cancel()
            if record:
                why = await self._diagnose(tapped.done(), info.decisions - decisions)
                fail(f"no energised coil ({str(exc) or type(exc).__name__}): {why}")
            return
        finally:
            access.store = self.store_big
            self._tap_waiter = None
        await self._feedback_done(feedback)
        if info.grants != grants + 1:
            fail(f"coil energised but {info.grants - grants} grants were counted")
            return
        # the coil must be this card's doing: its read reached the loop before the coil moved
        t_loop = tapped.result() if tapped.done() else None
        if t_loop is None or not t0 < t_loop < t1:
            fail("the coil was energised before this card reached the event loop")
            return
        if record:
            s.total[series].append(t1 - t0)
            s.bridge[series].append(t_loop - t0)
            s.daemon[series].append(t1 - t_loop)

    async def unknown(self) -> None:
        """Present a card nobody holds (untimed); it must be denied and open nothing."""
        s = self.samples
        info = self.daemon.access.readers[READER]
        try:
            await self.child.coil_settled(DAEMON_BOARD, False, self.opts.timeout_s)
        except TimeoutError:
            s.note("unknown", "the door did not relock")
            return
        await self._pause()
        decisions, grants = info.decisions, info.grants
        card = f"h10301:{UNKNOWN_FACILITY}:{self.rng.randrange(65536)}"
        s.unknown += 1
        feedback = self.child.expect_commands(DAEMON_LINE, self.feedback_commands)
        try:
            await self.child.present(DAEMON_LINE, card)
        except (TimeoutError, RuntimeError) as exc:
            feedback.cancel()
            s.note("unknown", str(exc))
            return
        deadline = time.monotonic() + self.opts.timeout_s
        # no event marks a decision: poll its counter (untimed, so the poll costs nothing)
        while info.decisions == decisions and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        await self._feedback_done(feedback)
        if info.decisions == decisions:
            s.note("unknown", "no decision")
        elif info.grants != grants or self.child.coils[DAEMON_BOARD]:
            s.note("unknown", "an unknown card was granted")

    async def osdp_floor(self, record: bool) -> None:
        """Present a card at line B; time it until libosdp hands it to the bare CP."""
        assert self.cp is not None
        await self._pause()
        fut = self.cp.expect()
        try:
            t0 = await self.child.present(FLOOR_LINE, _card_key(self.rng.randrange(1 << 20)))
            t_cp = await asyncio.wait_for(fut, self.opts.timeout_s)
        except (TimeoutError, RuntimeError) as exc:
            if record:
                self.samples.note("osdp", f"no card event: {str(exc) or type(exc).__name__}")
            return
        if record:
            self.samples.osdp_floor.append(t_cp - t0)

    async def modbus_floor(self, record: bool) -> None:
        """One FC5 'energise' from the raw client: one way to the board, and round trip."""
        from pymodbus.exceptions import ModbusException

        s = self.samples
        energised = self.child.expect_coil(RAW_BOARD, True)
        try:
            t_send = time.monotonic()
            reply = await self.client.write_coil(COIL, True, device_id=UNIT_ID)
            t_reply = time.monotonic()
            if reply.isError():
                raise RuntimeError(str(reply))
            t_coil = await asyncio.wait_for(energised, self.opts.timeout_s)
            released = self.child.expect_coil(RAW_BOARD, False)
            await self.client.write_coil(COIL, False, device_id=UNIT_ID)
            await asyncio.wait_for(released, self.opts.timeout_s)
        except (TimeoutError, RuntimeError, ModbusException) as exc:
            if record:
                s.note("modbus", str(exc) or type(exc).__name__)
            return
        if record:
            s.modbus_one_way.append(t_coil - t_send)
            s.modbus_rtt.append(t_reply - t_send)

    async def run_rounds(self) -> Samples:
        """Warm-up rounds (not recorded), then the measured ones."""
        for i in range(self.opts.warmup + self.opts.n):
            self._check_alive()
            record = i >= self.opts.warmup
            if i == self.opts.warmup:
                self._measure_poll_period()
            kinds = ["1m", "1k", "osdp"]
            self.rng.shuffle(kinds)
            for kind in kinds:
                if kind == "osdp":
                    await self.osdp_floor(record)
                else:
                    await self.badge(kind, record)
            await self.modbus_floor(record)
            if self.rng.random() < self.opts.unknown_rate:
                await self.unknown()
        return self.samples

    def _measure_poll_period(self) -> None:
        """Pauses of 0..one poll period give every phase of the poll the same weight."""
        assert self.cp is not None
        self.poll_period_s = self.cp.poll_period_s()
        if self.opts.jitter_ms is None and self.poll_period_s is not None:
            self.jitter_s = self.poll_period_s

    def driver_stats(self) -> dict[str, float]:
        """The daemon's OSDP driver figures: refresh thread, cards, drops."""
        bus = next(iter(self.daemon.buses.values()), None)
        tick_stats = getattr(bus, "tick_stats", None)
        out = dict(tick_stats()) if tick_stats is not None else {}
        counters = getattr(bus, "stats", {})
        for key in ("cards", "dropped_insecure", "kicks", "line_failures"):
            if key in counters:
                out[key] = counters[key]
        return out


def _feedback_commands() -> int:
    """How many commands the driver sends a reader for a grant (and for a denial)."""
    from drivers.base import Indication
    from drivers.osdp.driver import INDICATION_COMMANDS

    granted = len(INDICATION_COMMANDS[Indication.GRANTED])
    if granted != len(INDICATION_COMMANDS[Indication.DENIED]):
        raise RuntimeError("grant and denial feedback differ in length: update the bench")
    return granted


def _card_key(i: int) -> str:
    from bench.credential_import import card_key

    return card_key(i)


# -- figures --------------------------------------------------------------------------------------


def _ms(samples: Sequence[float], q: float) -> float:
    return round(1000.0 * percentile(samples, q), 3)


def _sum_p99(a: Sequence[float], b: Sequence[float], limit: int = 2_000_000) -> float:
    """p99 of x + y over all pairs (or a deterministic sample of ``limit`` pairs)."""
    if len(a) * len(b) <= limit:
        sums = [x + y for x in a for y in b]
    else:
        rng = random.Random(0)
        sums = [rng.choice(a) + rng.choice(b) for _ in range(limit)]
    return round(1000.0 * percentile(sums, 99), 3)


def report(opts: Options, s: Samples, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON object (see the module docstring for the definitions)."""
    big, small = s.total["1m"], s.total["1k"]
    if not big or not small or not s.osdp_floor or not s.modbus_one_way:
        raise RuntimeError(f"too few successful presentations: {s.failures}; {s.errors}")
    p50, p99 = _ms(big, 50), _ms(big, 99)
    p99_1k = _ms(small, 99)
    osdp_p99, modbus_p99 = _ms(s.osdp_floor, 99), _ms(s.modbus_one_way, 99)
    floor_p99 = round(osdp_p99 + modbus_p99, 3)
    floor_p50 = round(_ms(s.osdp_floor, 50) + _ms(s.modbus_one_way, 50), 3)
    overhead_p99 = round(p99 - floor_p99, 3)
    ratio = round(p99 / p99_1k, 3)
    out: dict[str, Any] = {
        "bench": "badge_to_relay",
        "p50_ms": p50,
        "p99_ms": p99,
        "floor_p99_ms": floor_p99,
        "overhead_p99_ms": overhead_p99,
        "p99_1k_ms": p99_1k,
        "ratio_1m_1k": ratio,
        "n": len(big),
        "max_ms": round(1000.0 * max(big), 3),
        "mean_ms": round(1000.0 * sum(big) / len(big), 3),
        "p50_1k_ms": _ms(small, 50),
        "n_1k": len(small),
        "floor_p50_ms": floor_p50,
        "overhead_p50_ms": round(p50 - floor_p50, 3),
        "floor_definition": "floor_osdp_p99_ms + floor_modbus_p99_ms",
        "floor_osdp_p50_ms": _ms(s.osdp_floor, 50),
        "floor_osdp_p99_ms": osdp_p99,
        "floor_osdp_max_ms": round(1000.0 * max(s.osdp_floor), 3),
        "floor_osdp_n": len(s.osdp_floor),
        "floor_modbus_p50_ms": _ms(s.modbus_one_way, 50),
        "floor_modbus_p99_ms": modbus_p99,
        "floor_modbus_rtt_p99_ms": _ms(s.modbus_rtt, 99),
        "floor_modbus_n": len(s.modbus_one_way),
        "floor_sum_p99_ms": _sum_p99(s.osdp_floor, s.modbus_one_way),
    }
    for series, prefix in (("1m", ""), ("1k", "1k_")):
        if s.bridge[series]:
            out[f"bridge_{prefix}p50_ms"] = _ms(s.bridge[series], 50)
            out[f"bridge_{prefix}p99_ms"] = _ms(s.bridge[series], 99)
            out[f"daemon_{prefix}p50_ms"] = _ms(s.daemon[series], 50)
            out[f"daemon_{prefix}p99_ms"] = _ms(s.daemon[series], 99)
            out[f"daemon_{prefix}max_ms"] = round(1000.0 * max(s.daemon[series]), 3)
    out.update(
        {
            "targets": {
                "overhead_p99_ms": TARGET_OVERHEAD_P99_MS,
                "ratio_1m_1k": TARGET_RATIO_1M_1K,
                "p50_ms": TARGET_P50_MS,
                "p99_ms": TARGET_P99_MS,
            },
            "target_met": {
                "overhead_p99_ms": overhead_p99 <= TARGET_OVERHEAD_P99_MS,
                "ratio_1m_1k": ratio <= TARGET_RATIO_1M_1K,
                "p50_ms": p50 <= TARGET_P50_MS,
                "p99_ms": p99 <= TARGET_P99_MS,
            },
            "credentials": opts.credentials,
            "credentials_1k": opts.small,
            "rounds": opts.n,
            "warmup": opts.warmup,
            "pulse_s": opts.pulse_s,
            "board_poll_interval_ms": opts.poll_interval_ms,
            "unknown_cards": s.unknown,
            "failures": dict(s.failures),
            "feedback_missing": s.feedback_missing,
            **extra,
        }
    )
    if s.errors:
        out["errors"] = list(s.errors)
    return out


def summary_text(r: Mapping[str, Any]) -> str:
    """A few readable lines of the figures."""
    met = r["target_met"]

    def mark(key: str) -> str:
        return "ok" if met[key] else "MISSED"

    lines = [
        f"badge to relay: {r['n']} grants with {r['credentials']} credentials "
        f"(+{r['n_1k']} with {r['credentials_1k']}), OSDP Secure Channel, "
        f"pauses 0..{r['jitter_ms']:g} ms",
        f"  {r['credentials']:>9} creds p50 {r['p50_ms']:8.3f} ms ({mark('p50_ms')})   "
        f"p99 {r['p99_ms']:8.3f} ms ({mark('p99_ms')})   max {r['max_ms']:.3f} ms",
        f"  {r['credentials_1k']:>9} creds p50 {r['p50_1k_ms']:8.3f} ms   "
        f"p99 {r['p99_1k_ms']:8.3f} ms   "
        f"ratio p99 {r['ratio_1m_1k']:.3f} ({mark('ratio_1m_1k')})",
        f"  floor OSDP      p50 {r['floor_osdp_p50_ms']:8.3f} ms   "
        f"p99 {r['floor_osdp_p99_ms']:8.3f} ms"
        " (bare libosdp CP, 2 ms refresh)",
        f"  floor FC5       p50 {r['floor_modbus_p50_ms']:8.3f} ms   p99 "
        f"{r['floor_modbus_p99_ms']:8.3f} ms (one way; round trip p99 "
        f"{r['floor_modbus_rtt_p99_ms']:.3f} ms)",
        f"  floor p99 {r['floor_p99_ms']:.3f} ms; overhead p99 {r['overhead_p99_ms']:.3f} ms "
        f"({mark('overhead_p99_ms')}), overhead p50 {r['overhead_p50_ms']:.3f} ms",
    ]
    if "daemon_p50_ms" in r:
        lines.append(
            f"  split (1M): card -> event loop p50 {r['bridge_p50_ms']:.3f} / p99 "
            f"{r['bridge_p99_ms']:.3f} ms; event loop -> coil p50 {r['daemon_p50_ms']:.3f} / "
            f"p99 {r['daemon_p99_ms']:.3f} / max {r['daemon_max_ms']:.3f} ms"
        )
    lines.append(f"  failures {r['failures']}")
    return "\n".join(lines)


# -- entry points ---------------------------------------------------------------------------------


async def _measure(opts: Options, workdir: Path, big: StoreFiles, small: StoreFiles) -> Any:
    bench = Bench(opts, workdir, big, small)
    try:
        await bench.start()
        t0 = time.monotonic()
        samples = await bench.run_rounds()
        elapsed = time.monotonic() - t0
        period = bench.cp.poll_period_s() if bench.cp is not None else None
        extra = {
            "jitter_ms": round(1000 * bench.jitter_s, 3),
            "poll_period_ms": None if period is None else round(1000 * period, 3),
            "measure_s": round(elapsed, 1),
            "osdp_driver": {k: round(v, 3) for k, v in bench.driver_stats().items()},
            "stray_grants": bench.child.stray_energised,
            "floor_osdp_unexpected": bench.cp.unexpected if bench.cp is not None else 0,
        }
        return samples, extra
    finally:
        await bench.stop()


def run(opts: Options) -> dict[str, Any]:
    """Build (or reuse) the stores, run the rounds, return the JSON object."""
    quiet_logs("error")
    started = time.monotonic()
    big = credential_store(opts.credentials, opts.cache_dir)
    small = credential_store(opts.small, opts.cache_dir)
    with temp_dir("wbadge-") as workdir:
        samples, extra = asyncio.run(_measure(opts, workdir, big, small))
    extra["store_build_s"] = round(big.built_s + small.built_s, 1)
    extra["wall_s"] = round(time.monotonic() - started, 1)
    return report(opts, samples, extra)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number (got {text!r})") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected 0..1 (got {value})")
    return value


def parse_args(argv: Sequence[str] | None = None) -> tuple[Options, bool]:
    """Options from the command line, and whether to print JSON only."""
    p = argparse.ArgumentParser(
        prog="python -m bench.badge_to_relay",
        description="Time an OSDP card read (Secure Channel) until the door relay is energised, "
        "with 1M and 1k credentials, against libosdp's and Modbus's own floors in the same run.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object only")
    p.add_argument("--n", type=positive_int, default=1000, help="timed grants per series (1000)")
    p.add_argument(
        "--credentials", type=positive_int, default=1_000_000, help="credentials (1000000)"
    )
    p.add_argument(
        "--small", type=positive_int, default=1000, help="credentials of the small series (1000)"
    )
    p.add_argument("--warmup", type=non_negative_int, default=10, help="unrecorded rounds (10)")
    p.add_argument(
        "--jitter-ms",
        type=float,
        default=None,
        help="pause before a card: 0..this (default: one poll period, measured in the run)",
    )
    p.add_argument(
        "--unknown-rate", type=_fraction, default=0.02, help="unknown cards per round (0.02)"
    )
    p.add_argument("--seed", type=int, default=1, help="seed of cards and pauses")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        help=f"where generated credential stores are kept ({DEFAULT_CACHE_DIR})",
    )
    args = p.parse_args(argv)
    if args.credentials > 10_000_000 or args.small > 10_000_000:
        p.error("at most 10000000 credentials")
    if args.jitter_ms is not None and not 0 <= args.jitter_ms <= 1000:
        p.error("--jitter-ms must be between 0 and 1000")
    opts = Options(
        n=args.n,
        credentials=args.credentials,
        small=args.small,
        warmup=args.warmup,
        jitter_ms=args.jitter_ms,
        unknown_rate=args.unknown_rate,
        seed=args.seed,
        cache_dir=args.cache_dir,
    )
    return opts, bool(args.json)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print JSON (``--json``) or a summary followed by the JSON."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--child"] and len(args) == 2:
        quiet_logs("error")
        with contextlib.suppress(KeyboardInterrupt):
            config = json.loads((Path(args[1]) / _CHILD_CONFIG).read_text("utf-8"))
            asyncio.run(_child(config))
        return 0
    opts, json_only = parse_args(args)
    try:
        result = run(opts)
    except RuntimeError as exc:
        print(f"badge_to_relay: {exc}", file=sys.stderr)
        return 1
    if not json_only:
        print(summary_text(result))
    emit_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
