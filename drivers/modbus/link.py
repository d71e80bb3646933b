"""One Modbus connection (TCP socket or RTU serial line) shared by the boards behind it.

This is the only module that imports pymodbus. Every pymodbus exception is wrapped into a
drivers.errors type here, and every reply is checked against its request (function code and
size) because on a serial line a late reply would otherwise be taken for the next answer.
"""

from __future__ import annotations

import asyncio
import termios
import time
from dataclasses import dataclass
from typing import Any, Literal

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from drivers.errors import (
    DeviceConnectionError,
    DeviceError,
    DeviceProtocolError,
    DeviceTimeoutError,
)


@dataclass(frozen=True, slots=True)
class ModbusEndpoint:
    """Where a Modbus link goes: a TCP host/port, or a serial device (path or socket:// URL)."""

    kind: Literal["tcp", "rtu"]
    host: str = ""
    port: int = 502
    device: str = ""
    baudrate: int = 19200
    parity: Literal["N", "E", "O"] = "N"
    stop_bits: int = 1
    byte_size: int = 8

    def key(self) -> str:
        """Identity of the physical link (boards with equal keys share one RTU line)."""
        if self.kind == "tcp":
            return f"tcp://{self.host}:{self.port}"
        return f"rtu:{self.device}"


_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


def exception_name(code: int) -> str:
    """Human name of a Modbus exception code."""
    return _EXCEPTION_NAMES.get(code, f"exception {code}")


class ModbusLink:
    """A pymodbus client with our own reconnect policy and one transaction at a time."""

    def __init__(self, endpoint: ModbusEndpoint, timeout_s: float) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._answered_at = float("-inf")  # monotonic time of the last answered transaction

    @property
    def connected(self) -> bool:
        """True while the underlying transport is open."""
        return self._client is not None and bool(self._client.connected)

    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        ep = self.endpoint
        # reconnect_delay=0: pymodbus must not reconnect on its own; our supervisor does,
        # with backoff. retries=0: a timeout is reported at once and the poll loop decides.
        if ep.kind == "tcp":
            return AsyncModbusTcpClient(
                ep.host,
                port=ep.port,
                framer=FramerType.SOCKET,
                timeout=self.timeout_s,
                retries=0,
                reconnect_delay=0,
                reconnect_delay_max=0,
            )
        return AsyncModbusSerialClient(
            ep.device,
            framer=FramerType.RTU,
            baudrate=ep.baudrate,
            parity=ep.parity,
            stopbits=ep.stop_bits,
            bytesize=ep.byte_size,
            timeout=self.timeout_s,
            retries=0,
            reconnect_delay=0,
            reconnect_delay_max=0,
        )

    async def connect(self) -> None:
        """Open the link if it is not open; raise DeviceConnectionError on failure."""
        if self._closed:
            raise DeviceConnectionError("link closed")
        async with self._lock:
            if self.connected:
                return
            self._drop_client()
            client = self._make_client()
            self._client = client
            try:
                ok = await client.connect()
            except (OSError, ModbusException, termios.error, ValueError) as exc:
                # termios.error: the line refused its settings (e.g. parity on a pty)
                self._drop_client()
                raise DeviceConnectionError(
                    f"cannot connect to {self.endpoint.key()}: {exc}"
                ) from exc
            if not ok or not client.connected:
                self._drop_client()
                raise DeviceConnectionError(f"cannot connect to {self.endpoint.key()}")

    def silent_for_s(self) -> float:
        """Seconds since any unit on this link last answered (inf if none ever did)."""
        return time.monotonic() - self._answered_at

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def reset(self) -> None:
        """Close the transport so the next connect() starts fresh."""
        self._drop_client()

    def close(self) -> None:
        """Close for good; idempotent."""
        self._closed = True
        self._drop_client()

    async def _call(self, fc: int, unit: int, request: Any) -> Any:
        client = self._client
        if client is None or not client.connected:
            raise DeviceConnectionError(f"{self.endpoint.key()} is not connected")
        try:
            response = await request(client)
        except ModbusIOException as exc:
            text = str(exc)
            if "No response" in text or "timeout" in text.lower() or "Timeout" in text:
                raise DeviceTimeoutError(f"unit {unit}: no reply within {self.timeout_s}s") from exc
            raise DeviceProtocolError(f"unit {unit}: {text}") from exc
        except ConnectionException as exc:
            raise DeviceConnectionError(f"unit {unit}: {exc}") from exc
        except TimeoutError as exc:
            raise DeviceTimeoutError(f"unit {unit}: no reply within {self.timeout_s}s") from exc
        except ModbusException as exc:
            raise DeviceProtocolError(f"unit {unit}: {exc}") from exc
        except OSError as exc:
            raise DeviceConnectionError(f"unit {unit}: {exc}") from exc
        if response is None:
            raise DeviceTimeoutError(f"unit {unit}: no reply")
        self._answered_at = time.monotonic()  # (an exception response is an answer too)
        if response.isError():
            code = int(getattr(response, "exception_code", 0) or 0)
            raise DeviceProtocolError(
                f"unit {unit}: exception response to FC{fc}: {exception_name(code)}", code=code
            )
        if int(response.function_code) != fc:
            raise DeviceProtocolError(
                f"unit {unit}: reply with FC{response.function_code} to a FC{fc} request"
            )
        return response

    async def read_coils(self, unit: int, address: int, count: int) -> tuple[bool, ...]:
        """FC1: read ``count`` coils."""
        async with self._lock:
            rr = await self._call(
                1, unit, lambda c: c.read_coils(address, count=count, device_id=unit)
            )
        return _bits(rr, count, unit, 1)

    async def read_inputs(self, unit: int, address: int, count: int) -> tuple[bool, ...]:
        """FC2: read ``count`` discrete inputs."""
        async with self._lock:
            rr = await self._call(
                2, unit, lambda c: c.read_discrete_inputs(address, count=count, device_id=unit)
            )
        return _bits(rr, count, unit, 2)

    async def write_coils(self, unit: int, address: int, values: list[bool]) -> None:
        """FC15 for several coils, FC5 for one."""
        async with self._lock:
            if len(values) == 1:
                await self._call(
                    5, unit, lambda c: c.write_coil(address, values[0], device_id=unit)
                )
            else:
                await self._call(15, unit, lambda c: c.write_coils(address, values, device_id=unit))

    async def write_and_read_coils(
        self, unit: int, address: int, values: list[bool]
    ) -> tuple[bool, ...]:
        """Write coils then read the same span back, with no other transaction between."""
        async with self._lock:
            if len(values) == 1:
                await self._call(
                    5, unit, lambda c: c.write_coil(address, values[0], device_id=unit)
                )
            else:
                await self._call(15, unit, lambda c: c.write_coils(address, values, device_id=unit))
            rr = await self._call(
                1, unit, lambda c: c.read_coils(address, count=len(values), device_id=unit)
            )
        return _bits(rr, len(values), unit, 1)


def _bits(response: Any, count: int, unit: int, fc: int) -> tuple[bool, ...]:
    bits = list(getattr(response, "bits", []) or [])
    if len(bits) < count:
        raise DeviceProtocolError(f"unit {unit}: FC{fc} reply has {len(bits)} bits, wanted {count}")
    return tuple(map(bool, bits[:count]))


__all__ = ["DeviceError", "ModbusEndpoint", "ModbusLink", "exception_name"]
