"""A whole simulated site built from a site file: Modbus endpoints, RTU lines, boards, doors."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from controller.settings import RtuBoardSettings, Settings, TcpBoardSettings
from simulators.doors import SimDoor
from simulators.modbus_board import SimModbusBoard, SimModbusEndpoint, SimRtuLine

__all__ = ["SimSite"]

SimBus = SimModbusEndpoint | SimRtuLine
V = TypeVar("V")


def _override(names: list[str], overrides: Mapping[str, V], default: V, what: str, key: str) -> V:
    """The one override for a group of boards sharing ``key`` (or ``default``)."""
    chosen = {overrides[n] for n in names if n in overrides}
    if len(chosen) > 1:
        raise ValueError(f"boards {', '.join(names)} share {key} but got different {what}s")
    return chosen.pop() if chosen else default


def _socket_url(url: str) -> tuple[str, int]:
    """Split ``socket://host:port`` (as pyserial takes it) into host and port."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ValueError(f"expected socket://HOST:PORT (got {url!r})")
    return parts.hostname, port


class SimSite:
    """Every board and door of a site file, simulated over real TCP and pty transports.

    ``ports`` maps a board name to a TCP port to listen on instead of the configured one
    (0 = any free port; read it back with ``port(name)`` after ``start()``); ``devices`` maps an
    RTU board name to the path where its line's symlink is made instead of the configured
    ``device``. An RTU board whose device is ``socket://host:port`` is served as RTU framing
    over TCP there (its port can be overridden like a TCP board's). Boards that share a
    configured host:port (a gateway) or a device (a multi-drop line) share one simulated
    endpoint or line, and so do their overrides.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        ports: Mapping[str, int] | None = None,
        devices: Mapping[str, str | Path] | None = None,
    ) -> None:
        ports = dict(ports or {})
        devices = dict(devices or {})
        names = {b.name for b in settings.boards}
        for name in [*ports, *devices]:
            if name not in names:
                raise ValueError(f"unknown board {name!r}")
        self.settings = settings
        self._boards: dict[str, SimModbusBoard] = {}
        self._bus_of: dict[str, SimBus] = {}
        self._buses: list[SimBus] = []

        tcp_groups: dict[tuple[str, int], list[TcpBoardSettings]] = {}
        rtu_groups: dict[str, list[RtuBoardSettings]] = {}
        for b in settings.boards:
            if isinstance(b, TcpBoardSettings):
                tcp_groups.setdefault((b.host, b.port), []).append(b)
            else:
                rtu_groups.setdefault(b.device, []).append(b)

        for (host, port), group in tcp_groups.items():
            group_names = [b.name for b in group]
            actual = _override(group_names, ports, port, "port", f"{host}:{port}")
            self._add_bus(SimModbusEndpoint(host, actual), group)
        for device, rgroup in rtu_groups.items():
            group_names = [b.name for b in rgroup]
            if device.startswith("socket://"):  # RTU framing over TCP (a serial device server)
                if any(n in devices for n in group_names):
                    raise ValueError(f"{device} is RTU over TCP: override its port, not a device")
                host, port = _socket_url(device)
                port = _override(group_names, ports, port, "port", device)
                self._add_bus(SimModbusEndpoint(host, port, rtu=True), rgroup)
                continue
            if any(n in ports for n in group_names):
                raise ValueError(f"{device} is a serial line: override its device, not a port")
            path = _override(group_names, devices, device, "device", device)
            if str(path).startswith("socket://"):
                raise ValueError(f"board on {device}: a device override must be a path")
            first = rgroup[0]
            line = SimRtuLine(
                path,
                baudrate=first.baudrate,
                parity=first.parity,
                stop_bits=first.stop_bits,
                byte_size=first.byte_size,
            )
            self._add_bus(line, rgroup)

        self._doors = {d.name: SimDoor.from_settings(d, self._boards) for d in settings.doors}
        self._started = False

    def _add_bus(self, bus: SimBus, group: list[TcpBoardSettings] | list[RtuBoardSettings]) -> None:
        for b in group:
            board = SimModbusBoard(b.name, b.unit_id, coils=b.coils, inputs=b.inputs)
            bus.add_board(board)
            self._boards[b.name] = board
            self._bus_of[b.name] = bus
        self._buses.append(bus)

    async def __aenter__(self) -> SimSite:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def doors(self) -> Mapping[str, SimDoor]:
        """Every door by name."""
        return self._doors

    @property
    def boards(self) -> Mapping[str, SimModbusBoard]:
        """Every board by name."""
        return self._boards

    def door(self, name: str) -> SimDoor:
        """Return the door called ``name`` (KeyError naming it if absent)."""
        try:
            return self._doors[name]
        except KeyError:
            raise KeyError(f"unknown door {name!r}") from None

    def board(self, name: str) -> SimModbusBoard:
        """Return the board called ``name`` (KeyError naming it if absent)."""
        try:
            return self._boards[name]
        except KeyError:
            raise KeyError(f"unknown board {name!r}") from None

    def bus(self, board: str) -> SimModbusEndpoint | SimRtuLine:
        """Return the endpoint or line hosting ``board``."""
        self.board(board)
        return self._bus_of[board]

    def port(self, board: str) -> int:
        """Return the TCP port a TCP board listens on (the actual one once started)."""
        bus = self.bus(board)
        if not isinstance(bus, SimModbusEndpoint):
            raise ValueError(f"board {board!r} is not a TCP board")
        return bus.port

    def device(self, board: str) -> str:
        """Return what a serial client opens for an RTU board: a path or ``socket://h:p``."""
        bus = self.bus(board)
        if isinstance(bus, SimModbusEndpoint) and not bus.rtu:
            raise ValueError(f"board {board!r} is not an RTU board")
        return bus.url if isinstance(bus, SimModbusEndpoint) else bus.path

    def address(self, board: str) -> str:
        """Return where a board is reached: ``127.0.0.1:15020``, ``/tmp/x.tty``, ``socket://…``."""
        bus = self.bus(board)
        return bus.url if isinstance(bus, SimModbusEndpoint) else bus.path

    async def start(self) -> None:
        """Start every endpoint and line; on failure stop what started and re-raise."""
        if self._started:
            return
        self._started = True
        try:
            for bus in self._buses:
                await bus.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every endpoint and line; idempotent."""
        self._started = False
        for bus in self._buses:
            await bus.stop()

    def client_settings(self) -> Settings:
        """The site settings with every board pointed at where the simulators actually are."""
        boards: list[TcpBoardSettings | RtuBoardSettings] = []
        for b in self.settings.boards:
            bus = self._bus_of[b.name]
            if isinstance(b, TcpBoardSettings) and isinstance(bus, SimModbusEndpoint):
                boards.append(b.model_copy(update={"host": bus.host, "port": bus.port}))
            elif isinstance(b, RtuBoardSettings):
                boards.append(b.model_copy(update={"device": self.device(b.name)}))
        return self.settings.model_copy(update={"boards": tuple(boards)})

    def snapshot(self) -> dict[str, Any]:
        """Return every door's physical state and every board's link, faults and io."""
        boards: dict[str, Any] = {}
        for name, board in self._boards.items():
            bus = self._bus_of[name]
            boards[name] = {
                "transport": "tcp" if isinstance(bus, SimModbusEndpoint) and not bus.rtu else "rtu",
                "address": self.address(name),
                "unit_id": board.unit_id,
                "online": bus.running and not board.offline,
                "faults": board.faults(),
                "coils": list(board.coils),
                "inputs": list(board.inputs),
                "requests": {str(fc): n for fc, n in sorted(board.requests.items())},
            }
        return {
            "doors": {name: door.snapshot() for name, door in self._doors.items()},
            "boards": boards,
        }
