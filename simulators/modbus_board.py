"""Simulated Modbus relay/IO boards served by real pymodbus 3.16 servers.

A ``SimModbusBoard`` is the device model: coils (relays), discrete inputs, a small block of
holding registers, a request counter and scripted faults. Boards are hosted by unit id on a
bus: ``SimModbusEndpoint`` (Modbus TCP on a host/port, one board or a gateway with several;
or, with ``rtu=True``, RTU framing over TCP for ``socket://`` clients) or ``SimRtuLine``
(Modbus RTU over a pty, one board or a multi-drop line).

Theory of operation. The wire side is pymodbus' own server (``ModbusTcpServer`` or
``ModbusSerialServer``), so framing, MBAP/CRC and PDU encoding are the real thing both ways.
We subclass its per-connection ``ServerRequestHandler`` in one place only (pymodbus is pinned
to 3.16; ``tests/drivers/test_sim_modbus.py`` pins the behaviour we rely on): a decoded request
PDU is handed to ``_SimBus.serve`` in a task we keep a reference to, and the reply is framed by
the connection's own framer. That gives fault injection the exact request (unit id, function
code, transaction id), keeps a delayed reply tagged with *its* transaction id (pymodbus 3.16
re-reads ``last_pdu`` after the datastore await, so a reply delayed past the next request would
carry the wrong id), and lets ``stop()`` cancel replies still in flight. The data itself goes
through the stock PDU ``datastore_update`` against a small context object per board.

RTU runs over two pty pairs joined by a relay in this process::

    client ── pty A slave (symlink) ═ A master ⇄ relay ⇄ B master ═ B slave ── ModbusSerialServer

The relay is where raw garbage enters the line, and closing A's master is a USB unplug.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self, cast

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import SimData, SimDevice
from pymodbus.transaction import TransactionManager

from simulators.ptyline import PtyPair, check_device, plug, unlink_device

if TYPE_CHECKING:
    from pymodbus.datastore import ModbusServerContext

__all__ = [
    "FC_READ_COILS",
    "FC_READ_DISCRETE_INPUTS",
    "FC_READ_HOLDING_REGISTERS",
    "FC_WRITE_COIL",
    "FC_WRITE_COILS",
    "FC_WRITE_REGISTER",
    "FC_WRITE_REGISTERS",
    "CoilsChanged",
    "SimModbusBoard",
    "SimModbusEndpoint",
    "SimRtuLine",
]

log = logging.getLogger(__name__)

FC_READ_COILS: Final = 1
FC_READ_DISCRETE_INPUTS: Final = 2
FC_READ_HOLDING_REGISTERS: Final = 3
FC_WRITE_COIL: Final = 5
FC_WRITE_REGISTER: Final = 6
FC_WRITE_COILS: Final = 15
FC_WRITE_REGISTERS: Final = 16
_FC_MASK_WRITE_REGISTER: Final = 22
_FC_READ_WRITE_REGISTERS: Final = 23
_COIL_FCS: Final = frozenset({FC_READ_COILS, FC_WRITE_COIL, FC_WRITE_COILS})
_REGISTER_FCS: Final = frozenset(
    {
        FC_READ_HOLDING_REGISTERS,
        FC_WRITE_REGISTER,
        FC_WRITE_REGISTERS,
        _FC_MASK_WRITE_REGISTER,
        _FC_READ_WRITE_REGISTERS,
    }
)

CoilsChanged = Callable[[Mapping[int, bool]], None]
"""Callback with the coils whose actual (relay) value changed: index -> new value."""

Values = list[bool] | list[int]


@dataclass(frozen=True, slots=True)
class _Reply:
    """A response PDU to frame and send, possibly to be corrupted on the way out."""

    pdu: ModbusPDU
    corrupt: bool = False


class _BoardContext:
    """The pymodbus datastore interface for one board (what ``datastore_update`` calls)."""

    def __init__(self, board: SimModbusBoard) -> None:
        self._board = board

    def device_ids(self) -> list[int]:
        """Return the unit ids this context answers for."""
        return [self._board.unit_id]

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> Values | ExcCodes:
        """Read ``count`` values for ``func_code`` at ``address`` or return an exception code."""
        return self._board._get_values(func_code, address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Values
    ) -> ExcCodes | None:
        """Write ``values`` for ``func_code`` at ``address``; an exception code on failure."""
        return self._board._set_values(func_code, address, values)


class SimModbusBoard:
    """A Modbus relay/IO board: coils (relays), discrete inputs, registers and scripted faults.

    Coil True means the relay is energised. Fault knobs: ``delay_s`` (every reply late),
    ``exception_code`` (every request answered with that Modbus exception), ``drop_next``,
    ``corrupt_next``, ``stuck_coil``, ``set_offline``, ``garbage``; ``clear_faults`` undoes all.
    """

    def __init__(
        self,
        name: str,
        unit_id: int = 1,
        *,
        coils: int = 16,
        inputs: int = 16,
        registers: int = 16,
    ) -> None:
        if not 0 <= unit_id <= 247:
            raise ValueError(f"unit id must be 0..247 (got {unit_id})")
        self.name = name
        self.unit_id = unit_id
        self._commanded = [False] * coils
        self._stuck: dict[int, bool] = {}
        self._inputs = [False] * inputs
        self._registers = [0] * registers
        self._context = _BoardContext(self)
        self._bus: _SimBus | None = None
        self._offline = False
        self._drop = 0
        self._corrupt = 0
        self.delay_s = 0.0
        self.exception_code: int | None = None
        self.requests: Counter[int] = Counter()
        """Requests addressed to this board, by function code (counted even when dropped)."""
        self.on_coils_changed: CoilsChanged | None = None

    def __repr__(self) -> str:
        return f"SimModbusBoard({self.name!r}, unit_id={self.unit_id})"

    # ---- data ---------------------------------------------------------------------------

    @property
    def coils(self) -> tuple[bool, ...]:
        """The actual relay states (a stuck relay shows its stuck value)."""
        return tuple(self._stuck.get(i, v) for i, v in enumerate(self._commanded))

    @property
    def commanded(self) -> tuple[bool, ...]:
        """The coil values last written by a client (what the relays were told to be)."""
        return tuple(self._commanded)

    @property
    def inputs(self) -> tuple[bool, ...]:
        """The discrete input values (raw, as a client reads them with FC2)."""
        return tuple(self._inputs)

    @property
    def registers(self) -> tuple[int, ...]:
        """The holding register values."""
        return tuple(self._registers)

    def read_coil(self, index: int) -> bool:
        """Return the actual state of relay ``index``."""
        self._check_index(index, len(self._commanded), "coil")
        return self._stuck.get(index, self._commanded[index])

    def read_input(self, index: int) -> bool:
        """Return the raw value of discrete input ``index``."""
        self._check_index(index, len(self._inputs), "input")
        return self._inputs[index]

    def set_input(self, index: int, value: bool) -> None:
        """Drive discrete input ``index`` (what field wiring does)."""
        self._check_index(index, len(self._inputs), "input")
        self._inputs[index] = bool(value)

    def power_cycle(self) -> None:
        """Lose power for a moment: every relay drops (de-energised), inputs are kept."""
        before = self.coils
        self._commanded = [False] * len(self._commanded)
        self._notify(before)

    # ---- faults -------------------------------------------------------------------------

    @property
    def offline(self) -> bool:
        """True while the board does not communicate at all."""
        return self._offline

    async def set_offline(self, offline: bool) -> None:
        """Take the board off the bus or put it back (TCP: stop/restart listening)."""
        self._offline = bool(offline)
        if self._bus is not None:
            await self._bus._board_state_changed()

    def drop_next(self, n: int = 1) -> None:
        """Send no reply to the next ``n`` requests."""
        if n < 0:
            raise ValueError("n must be >= 0")
        self._drop = n

    def corrupt_next(self, n: int = 1) -> None:
        """Corrupt the next ``n`` replies on the wire (RTU: bad CRC; TCP: bad MBAP header)."""
        if n < 0:
            raise ValueError("n must be >= 0")
        self._corrupt = n

    def stuck_coil(self, index: int, value: bool | None) -> None:
        """Weld relay ``index`` at ``value`` (writes acknowledged but ignored); None releases."""
        self._check_index(index, len(self._commanded), "coil")
        before = self.coils
        if value is None:
            self._stuck.pop(index, None)
        else:
            self._stuck[index] = bool(value)
        self._notify(before)

    @property
    def stuck(self) -> Mapping[int, bool]:
        """The welded relays: index -> stuck value."""
        return dict(self._stuck)

    def garbage(self, data: bytes) -> None:
        """Write raw bytes onto the line now (RTU), or into every open connection (TCP)."""
        if self._bus is None:
            raise RuntimeError(f"board {self.name!r} is not on a bus")
        self._bus._inject(bytes(data))

    async def clear_faults(self) -> None:
        """Remove every injected fault and bring the board back online."""
        self.delay_s = 0.0
        self.exception_code = None
        self._drop = 0
        self._corrupt = 0
        before = self.coils
        self._stuck.clear()
        self._notify(before)
        if self._offline:
            await self.set_offline(False)

    def faults(self) -> dict[str, Any]:
        """Return the active faults as a JSON-friendly dict (empty when healthy)."""
        out: dict[str, Any] = {}
        if self._offline:
            out["offline"] = True
        if self.delay_s:
            out["delay_s"] = self.delay_s
        if self._drop:
            out["drop_next"] = self._drop
        if self._corrupt:
            out["corrupt_next"] = self._corrupt
        if self.exception_code is not None:
            out["exception_code"] = self.exception_code
        if self._stuck:
            out["stuck"] = {str(i): v for i, v in sorted(self._stuck.items())}
        return out

    # ---- request processing -------------------------------------------------------------

    async def _process(self, pdu: ModbusPDU) -> _Reply | None:
        """Apply faults and the datastore to one request; None means stay silent."""
        fc = int(pdu.function_code)
        self.requests[fc] += 1
        if self._offline:
            return None
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
            if self._offline:
                return None
        if self._drop > 0:
            self._drop -= 1
            return None
        response: ModbusPDU
        if self.exception_code is not None:
            response = ExceptionResponse(fc, self.exception_code)
        else:
            try:
                response = await pdu.datastore_update(
                    cast("ModbusServerContext", self._context), pdu.dev_id
                )
            except Exception:
                log.exception("board %s: request %s failed", self.name, pdu)
                response = ExceptionResponse(fc, ExcCodes.DEVICE_FAILURE)
        response.transaction_id = pdu.transaction_id
        response.dev_id = pdu.dev_id
        corrupt = self._corrupt > 0
        if corrupt:
            self._corrupt -= 1
        return _Reply(response, corrupt)

    def _get_values(self, fc: int, address: int, count: int) -> Values | ExcCodes:
        block: list[bool] | list[int]
        if fc == FC_WRITE_COIL:
            block = self._commanded  # FC5 echoes the request, as real boards do
        elif fc in _COIL_FCS:
            block = list(self.coils)
        elif fc == FC_READ_DISCRETE_INPUTS:
            block = self._inputs
        elif fc in _REGISTER_FCS:
            block = self._registers
        else:
            return ExcCodes.ILLEGAL_FUNCTION
        if address < 0 or count < 1 or address + count > len(block):
            return ExcCodes.ILLEGAL_ADDRESS
        return list(block[address : address + count])

    def _set_values(self, fc: int, address: int, values: Values) -> ExcCodes | None:
        if fc in _COIL_FCS:
            if address < 0 or address + len(values) > len(self._commanded):
                return ExcCodes.ILLEGAL_ADDRESS
            before = self.coils
            for offset, value in enumerate(values):
                self._commanded[address + offset] = bool(value)
            self._notify(before)
            return None
        if fc in _REGISTER_FCS:
            if address < 0 or address + len(values) > len(self._registers):
                return ExcCodes.ILLEGAL_ADDRESS
            if any(not 0 <= int(v) <= 0xFFFF for v in values):
                return ExcCodes.ILLEGAL_VALUE
            for offset, value in enumerate(values):
                self._registers[address + offset] = int(value)
            return None
        return ExcCodes.ILLEGAL_FUNCTION

    def _notify(self, before: tuple[bool, ...]) -> None:
        after = self.coils
        changed = {i: a for i, (b, a) in enumerate(zip(before, after, strict=True)) if a != b}
        if changed and self.on_coils_changed is not None:
            self.on_coils_changed(changed)

    def _attach(self, bus: _SimBus) -> None:
        if self._bus is not None and self._bus is not bus:
            raise ValueError(f"board {self.name!r} is already on another bus")
        self._bus = bus

    @staticmethod
    def _check_index(index: int, size: int, what: str) -> None:
        if not 0 <= index < size:
            raise IndexError(f"{what} {index} out of range 0..{size - 1}")


# ---- pymodbus glue ----------------------------------------------------------------------


class _BusContext:
    """Server-wide pymodbus context: dispatches to boards by unit id (used for broadcasts)."""

    def __init__(self, bus: _SimBus) -> None:
        self._bus = bus

    def device_ids(self) -> list[int]:
        """Return the unit ids on the bus."""
        return sorted(self._bus.boards)

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> Values | ExcCodes:
        """Read values from the board with ``device_id``."""
        board = self._bus.boards.get(device_id)
        if board is None:
            return ExcCodes.GATEWAY_NO_RESPONSE
        return board._get_values(func_code, address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Values
    ) -> ExcCodes | None:
        """Write values to the board with ``device_id``."""
        board = self._bus.boards.get(device_id)
        if board is None:
            return ExcCodes.GATEWAY_NO_RESPONSE
        return board._set_values(func_code, address, values)


def _placeholder_device() -> SimDevice:
    """A minimal SimDevice to satisfy the server constructor (replaced by our context)."""
    return SimDevice(id=1, simdata=[SimData(0)])


class _SimRequestHandler(ServerRequestHandler):
    """One server connection: decoded requests go to the bus in tracked tasks."""

    def __init__(self, owner: ModbusTcpServer | ModbusSerialServer, bus: _SimBus) -> None:
        super().__init__(owner, None, None, None)  # type: ignore[no-untyped-call]
        self._bus = bus

    def callback_data(self, data: bytes, addr: tuple[Any, ...] | None = None) -> int:
        """Frame one request out of ``data`` and answer it; return the bytes consumed."""
        try:
            used_len = int(TransactionManager.callback_data(self, data, addr))
        except ModbusIOException as exc:  # a well-framed request with an unknown function code
            _used, _dev, _tid, pdu_bytes = self.framer.decode(data)
            fc = int(pdu_bytes[0]) if pdu_bytes else int(exc.fcode or 0)
            if exc.dev_id in self._bus.boards:
                self._write(
                    _Reply(
                        ExceptionResponse(
                            fc,
                            ExcCodes.ILLEGAL_FUNCTION,
                            device_id=exc.dev_id,
                            transaction=exc.transaction_id,
                        )
                    )
                )
            elif reply := self._bus._unknown_unit(fc, exc.dev_id, exc.transaction_id):
                self._write(reply)
            return len(data)
        pdu: ModbusPDU | None = self.last_pdu
        if pdu is not None:
            self._bus._spawn(self._answer(pdu))
        return used_len

    def handle_later(self) -> None:
        """Disable pymodbus' own dispatch (we answer from ``callback_data``)."""

    async def _answer(self, pdu: ModbusPDU) -> None:
        reply = await self._bus.serve(pdu)
        if reply is not None:
            self._write(reply)

    def _write(self, reply: _Reply) -> None:
        if not self.transport or self.is_closing:
            return
        frame: bytes = self.framer.buildFrame(reply.pdu)
        if reply.corrupt:
            frame = self._bus._corrupt_frame(frame)
        self.send(frame)


class _SimTcpServer(ModbusTcpServer):
    """pymodbus' TCP server with our request handler and context."""

    def __init__(self, bus: _SimBus, host: str, port: int, rtu: bool = False) -> None:
        super().__init__(
            _placeholder_device(),
            address=(host, port),
            framer=FramerType.RTU if rtu else FramerType.SOCKET,
            ignore_missing_devices=True,
        )
        self.context = cast("ModbusServerContext", _BusContext(bus))
        self._sim_bus = bus

    def callback_new_connection(self) -> _SimRequestHandler:
        """Create the handler for a new connection."""
        return _SimRequestHandler(self, self._sim_bus)


class _SimSerialServer(ModbusSerialServer):
    """pymodbus' serial (RTU) server with our request handler and context."""

    def __init__(self, bus: _SimBus, port: str, **serial: Any) -> None:
        super().__init__(_placeholder_device(), port=port, ignore_missing_devices=True, **serial)
        self.context = cast("ModbusServerContext", _BusContext(bus))
        self._sim_bus = bus

    def callback_new_connection(self) -> _SimRequestHandler:
        """Create the handler for the serial connection."""
        return _SimRequestHandler(self, self._sim_bus)


# ---- buses ------------------------------------------------------------------------------


class _SimBus:
    """Boards by unit id, the in-flight reply tasks, and the bus-specific fault hooks."""

    def __init__(self) -> None:
        self._boards: dict[int, SimModbusBoard] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = False

    @property
    def boards(self) -> Mapping[int, SimModbusBoard]:
        """The boards on this bus by unit id."""
        return self._boards

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._running

    def add_board(self, board: SimModbusBoard) -> SimModbusBoard:
        """Host ``board`` at its unit id (unique on the bus); return it."""
        if board.unit_id in self._boards:
            raise ValueError(
                f"unit id {board.unit_id} already used by {self._boards[board.unit_id].name!r}"
            )
        board._attach(self)
        self._boards[board.unit_id] = board
        return board

    async def serve(self, pdu: ModbusPDU) -> _Reply | None:
        """Answer one request: the addressed board's reply, or None for silence."""
        board = self._boards.get(pdu.dev_id)
        if board is None:
            return self._unknown_unit(int(pdu.function_code), pdu.dev_id, pdu.transaction_id)
        reply = await board._process(pdu)
        if reply is None and board.offline:
            return self._unknown_unit(int(pdu.function_code), pdu.dev_id, pdu.transaction_id)
        return reply

    def _unknown_unit(self, fc: int, dev_id: int, tid: int) -> _Reply | None:
        """Reply for a unit nobody answers for (RTU: silence)."""
        return None

    def _corrupt_frame(self, frame: bytes) -> bytes:
        raise NotImplementedError

    def _inject(self, data: bytes) -> None:
        raise NotImplementedError

    async def _board_state_changed(self) -> None:
        """React to a board going offline/online."""

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if not self._running:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel_replies(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start serving."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop serving; idempotent."""
        raise NotImplementedError


class SimModbusEndpoint(_SimBus):
    """A Modbus TCP endpoint (``host:port``) hosting one board, or several behind a gateway.

    Port 0 picks a free port; read the actual one from ``port`` after ``start()``. When all its
    boards are offline the endpoint stops listening and drops its connections; it listens on
    the same port again when a board comes back. A unit id nobody answers for (or an offline board
    while others on the gateway are online) gets exception 0x0B, as real gateways do.

    ``rtu=True`` serves RTU framing over TCP instead (a serial device server, reached by a
    client as ``socket://host:port``): the RS-485 rules apply — unknown or offline units are
    silent, the listener stays up, and corruption breaks the CRC.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, rtu: bool = False) -> None:
        super().__init__()
        self.host = host
        self.rtu = rtu
        self._port = port
        self._server: _SimTcpServer | None = None

    def __repr__(self) -> str:
        return f"SimModbusEndpoint({self.host!r}, {self._port}, rtu={self.rtu})"

    @property
    def url(self) -> str:
        """``host:port``, or ``socket://host:port`` for RTU framing (a serial client's URL)."""
        return f"socket://{self.host}:{self._port}" if self.rtu else f"{self.host}:{self._port}"

    @property
    def port(self) -> int:
        """The TCP port (the actual one once started)."""
        return self._port

    @property
    def listening(self) -> bool:
        """True while the endpoint accepts connections."""
        return self._server is not None

    async def start(self) -> None:
        """Listen (unless every board is offline); raise OSError if the port is unavailable."""
        if self._running:
            return
        self._running = True
        try:
            await self._sync_listening()
        except BaseException:
            self._running = False
            raise

    async def stop(self) -> None:
        """Stop listening, drop connections and cancel replies in flight; idempotent."""
        self._running = False
        await self._close_listener()
        await self._cancel_replies()

    async def _board_state_changed(self) -> None:
        await self._sync_listening()

    async def _sync_listening(self) -> None:
        boards = self._boards.values()
        want = self._running and (self.rtu or not boards or any(not b.offline for b in boards))
        if want and self._server is None:
            await self._listen()
        elif not want and self._server is not None:
            await self._close_listener()
            await self._cancel_replies()

    async def _listen(self) -> None:
        server = _SimTcpServer(self, self.host, self._port, self.rtu)
        # what ModbusProtocol.listen() does, minus swallowing the OSError we want to report
        server.is_closing = False
        server.is_listener = True
        listener: asyncio.AbstractServer = await server.call_create()
        server.transport = cast("asyncio.BaseTransport", listener)
        sockets = getattr(listener, "sockets", ())
        if sockets:
            self._port = int(sockets[0].getsockname()[1])
        self._server = server

    async def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        listener = server.transport
        await server.shutdown()  # type: ignore[no-untyped-call]  # listener + connections
        if isinstance(listener, asyncio.AbstractServer):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(listener.wait_closed(), 1.0)

    def _unknown_unit(self, fc: int, dev_id: int, tid: int) -> _Reply | None:
        if self.rtu:
            return None
        return _Reply(
            ExceptionResponse(fc, ExcCodes.GATEWAY_NO_RESPONSE, device_id=dev_id, transaction=tid)
        )

    def _corrupt_frame(self, frame: bytes) -> bytes:
        if self.rtu:
            return _break_crc(frame)
        # no checksum on TCP: break the MBAP protocol id, which a client must check
        return frame[:2] + b"\xde\xad" + frame[4:]

    def _inject(self, data: bytes) -> None:
        if self._server is None:
            return
        for conn in list(self._server.active_connections.values()):
            if conn.transport:
                cast("asyncio.Transport", conn.transport).write(data)


class SimRtuLine(_SimBus):
    """A Modbus RTU line over a pty, hosting one board or several (multi-drop) by unit id.

    ``device`` (optional) is where the client opens the line: a symlink to the pty slave is
    created there (parents too) and removed on ``stop()``. An unknown unit id gets no reply,
    like real RS-485. ``unplug()`` closes the client side like pulling a USB adapter;
    ``replug()`` makes a new pty and re-points the symlink.
    """

    def __init__(
        self,
        device: str | Path | None = None,
        *,
        baudrate: int = 19200,
        parity: str = "N",
        stop_bits: int = 1,
        byte_size: int = 8,
    ) -> None:
        super().__init__()
        self.device = Path(device) if device is not None else None
        self.baudrate = baudrate
        self.parity = parity
        self.stop_bits = stop_bits
        self.byte_size = byte_size
        # A pty has no parity or character size: Linux accepts PARENB/CS7 in a batch of other
        # changes but fails a later tcsetattr (pyserial's timeout change) with EINVAL
        # (pyserial#196). The server side therefore opens 8N1; the line settings are recorded
        # for reporting only. A *client* asking a pty for E/O parity hits the same error.
        self._serial = {"baudrate": baudrate, "parity": "N", "stopbits": 1, "bytesize": 8}
        self._client_side: PtyPair | None = None
        self._server_side: PtyPair | None = None
        self._server: _SimSerialServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # RTU frames end with 3.5 character times of silence (11 bits/char); a pty has no
        # baud timing, so at least 2 ms
        self._t35 = max(0.002, 3.5 * 11 / baudrate)
        self._last_rx = 0.0

    def __repr__(self) -> str:
        return f"SimRtuLine({str(self.device) if self.device else None!r})"

    @property
    def path(self) -> str:
        """Where a client opens the line: the symlink if configured, else the pty slave."""
        if self.device is not None:
            return str(self.device)
        return self.pty_name

    @property
    def pty_name(self) -> str:
        """The client-side pty slave (``/dev/pts/N``); empty while unplugged or stopped."""
        return self._client_side.name if self._client_side is not None else ""

    @property
    def plugged(self) -> bool:
        """True while the client side of the line exists."""
        return self._client_side is not None

    async def start(self) -> None:
        """Create the ptys, the symlink and the relay, and start the RTU server."""
        if self._running:
            return
        check_device(self.device)  # a file at the device path: refuse before serving anything
        self._loop = asyncio.get_running_loop()
        self._running = True
        try:
            self.replug()  # the device path first: nothing is served if it cannot be ours
            self._server_side = PtyPair()
            server = _SimSerialServer(self, self._server_side.name, **self._serial)
            await server.serve_forever(background=True)
            self._server = server
            self._loop.add_reader(self._server_side.master, self._from_server)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop the server and relay, close the ptys and remove the symlink; idempotent."""
        self._running = False
        self.unplug()
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]
        side, self._server_side = self._server_side, None
        if side is not None:
            if self._loop is not None:
                self._loop.remove_reader(side.master)
            side.close()
        await self._cancel_replies()

    def unplug(self) -> None:
        """Close the client side of the line: the client's port fails like a pulled adapter."""
        side, self._client_side = self._client_side, None
        if side is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(side.master)
        side.close()
        self._remove_link(side.name)

    def replug(self) -> None:
        """Give the line a new client side (a new pty) and point the symlink at it."""
        if not self._running or self._loop is None:
            raise RuntimeError("line is not running")
        if self._client_side is not None:
            return
        side = plug(self.device)
        self._client_side = side
        self._loop.add_reader(side.master, self._from_client)

    def _remove_link(self, target: str) -> None:
        """Remove the symlink if it still points at ``target`` (not someone else's line)."""
        unlink_device(self.device, target)

    def _from_client(self) -> None:
        side = self._client_side
        if side is None or self._loop is None:
            return
        data = _read(side.master)
        if not data or self._server_side is None:
            return
        now = self._loop.time()
        if now - self._last_rx >= self._t35 and self._server is not None:
            # silence on the line ended whatever came before: start a new frame, as an RTU
            # slave does, so noise never glues itself to the next request
            for conn in list(self._server.active_connections.values()):
                conn.recv_buffer = b""
        self._last_rx = now
        _write(self._server_side.master, data)

    def _from_server(self) -> None:
        side = self._server_side
        if side is None:
            return
        data = _read(side.master)
        if data and self._client_side is not None:
            _write(self._client_side.master, data)

    def _corrupt_frame(self, frame: bytes) -> bytes:
        return _break_crc(frame)

    def _inject(self, data: bytes) -> None:
        if self._client_side is not None and data:
            _write(self._client_side.master, data)


def _break_crc(frame: bytes) -> bytes:
    """Flip the last CRC byte of an RTU frame: the client must reject it."""
    return frame[:-1] + bytes([frame[-1] ^ 0xFF])


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""
    except OSError as exc:
        if exc.errno != errno.EIO:
            log.warning("pty read failed: %s", exc)
        return b""


def _write(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except BlockingIOError:
        log.warning("pty buffer full: %d bytes lost", len(data))  # like a UART overrun
    except OSError as exc:
        log.warning("pty write failed: %s", exc)
