"""JSON-lines control socket for a running SimSite, and a small client for it.

One request per line, one reply per line, on a Unix socket::

    {"cmd": "door", "action": "open", "name": "lobby-main"}
    {"ok": true, "door": {...}, "opened": false}

Bad input of any kind (malformed JSON, unknown command, bad argument) gets
``{"ok": false, "error": "..."}`` and the connection stays usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol

from simulators.ptyline import PathInUseError
from simulators.site import SimSite

__all__ = [
    "BOARD_ACTIONS",
    "DEFAULT_SOCKET",
    "DOOR_ACTIONS",
    "MAX_LINE",
    "SimControlServer",
    "SimControlUnavailableError",
    "control_request",
    "default_socket_path",
]

log = logging.getLogger(__name__)

DEFAULT_SOCKET: Final = "/tmp/warding-demo/sim.sock"  # noqa: S108 - the demo's runtime dir
MAX_LINE: Final = 64 * 1024
DOOR_ACTIONS: Final = ("open", "close", "force", "rex", "tamper", "untamper")
BOARD_ACTIONS: Final = (
    "offline",
    "online",
    "delay",
    "drop",
    "exception",
    "stuck",
    "unstuck",
    "corrupt",
    "garbage",
    "input",
    "clear",
)

Reply = dict[str, Any]


def default_socket_path() -> str:
    """The control socket path: ``$WARDING_SIM_SOCKET`` or the demo default."""
    return os.environ.get("WARDING_SIM_SOCKET") or DEFAULT_SOCKET


class _BadRequestError(Exception):
    """A request the server rejects with a message for the caller."""


def _arg_int(req: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    value = req.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _BadRequestError(f"{key!r} must be an integer {lo}..{hi}")
    if not lo <= value <= hi:
        raise _BadRequestError(f"{key!r} must be {lo}..{hi} (got {value})")
    return value


def _arg_number(req: Mapping[str, Any], key: str, lo: float, hi: float) -> float:
    value = req.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadRequestError(f"{key!r} must be a number {lo}..{hi}")
    if not lo <= value <= hi:
        raise _BadRequestError(f"{key!r} must be {lo}..{hi} (got {value})")
    return float(value)


def _arg_bool(req: Mapping[str, Any], key: str, *, allow_null: bool = False) -> bool | None:
    value = req.get(key)
    if value is None and allow_null:
        return None
    if not isinstance(value, bool):
        null = " or null" if allow_null else ""
        raise _BadRequestError(f"{key!r} must be true or false{null}")
    return value


def _arg_str(req: Mapping[str, Any], key: str) -> str:
    value = req.get(key)
    if not isinstance(value, str) or not value:
        raise _BadRequestError(f"{key!r} must be a non-empty string")
    return value


class SimReader(Protocol):
    """A simulated badge reader a person can use from the shell."""

    def present_card(self, card: str) -> object:
        """Present a card given in parse_card syntax (h10301:12:345, uid:04A1...)."""
        ...

    def type_keys(self, keys: str) -> object:
        """Type keys on the reader's keypad."""
        ...


class SimControlServer:
    """Serve the control protocol for ``site`` on a Unix socket at ``path``."""

    def __init__(
        self, site: SimSite, path: str | Path, readers: Mapping[str, SimReader] | None = None
    ) -> None:
        self.site = site
        self.readers: dict[str, SimReader] = dict(readers or {})
        self.path = Path(path)
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self._handlers: dict[str, Callable[[Mapping[str, Any]], Awaitable[Reply]]] = {
            "status": self._status,
            "door": self._door,
            "board": self._board,
            "reader": self._reader,
        }

    async def __aenter__(self) -> SimControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen on the socket (replacing only a stale socket); OSError if it cannot be ours.

        PathInUseError if something other than a socket is at the path (never removed).
        """
        if self._server is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise OSError(f"{self.path}: cannot make its directory ({reason})") from None
        try:
            mode: int | None = os.lstat(self.path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None:
            if not stat.S_ISSOCK(mode):
                # a file, a directory, a symlink: never ours to delete
                raise PathInUseError(
                    f"{self.path} exists and is not a socket; refusing to replace it"
                )
            if await _alive(self.path):
                raise OSError(f"another simulator is already listening on {self.path}")
            self.path.unlink()  # a stale socket left by a simulator that was killed
        self._server = await asyncio.start_unix_server(
            self._serve_connection, path=str(self.path), limit=MAX_LINE
        )

    async def stop(self) -> None:
        """Stop listening, end open connections and remove the socket; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(OSError):
                self.path.unlink()
        conns = list(self._conns)
        for task in conns:
            task.cancel()
        if conns:
            await asyncio.gather(*conns, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    async def _reader(self, req: Mapping[str, Any]) -> Reply:
        name = _arg_str(req, "name")
        reader = self.readers.get(name)
        if reader is None:
            known = ", ".join(sorted(self.readers)) or "none"
            raise _BadRequestError(f"unknown reader {name!r} (simulated readers: {known})")
        action = _arg_str(req, "action")
        if action == "card":
            reader.present_card(_arg_str(req, "card"))
        elif action == "keys":
            reader.type_keys(_arg_str(req, "keys"))
        else:
            raise _BadRequestError(f"unknown reader action {action!r} (expected card or keys)")
        return {"ok": True, "reader": name, "action": action}

    async def handle(self, request: object) -> Reply:
        """Execute one decoded request and return its reply (never raises for bad input)."""
        if not isinstance(request, dict):
            return {"ok": False, "error": "request must be a JSON object"}
        cmd = request.get("cmd")
        handler = self._handlers.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            known = ", ".join(sorted(self._handlers))
            return {"ok": False, "error": f"unknown command {cmd!r} (expected one of: {known})"}
        try:
            return await handler(request)
        except _BadRequestError as exc:
            return {"ok": False, "error": str(exc)}
        except (KeyError, IndexError, ValueError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            return {"ok": False, "error": str(msg)}
        except OSError as exc:
            return {"ok": False, "error": f"{cmd}: {exc}"}

    async def handle_line(self, line: bytes) -> Reply:
        """Decode one request line and execute it."""
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return {"ok": False, "error": f"malformed JSON: {exc}"}
        return await self.handle(request)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than MAX_LINE
                    await _send(writer, {"ok": False, "error": "request line too long"})
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                await _send(writer, await self.handle_line(line))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if task is not None:
                self._conns.discard(task)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _status(self, req: Mapping[str, Any]) -> Reply:
        return {"ok": True, **self.site.snapshot()}

    async def _door(self, req: Mapping[str, Any]) -> Reply:
        door = self.site.door(_arg_str(req, "name"))
        action = req.get("action")
        reply: Reply = {"ok": True}
        if action == "open":
            reply["opened"] = door.open()
        elif action == "force":
            reply["opened"] = door.open(force=True)
        elif action == "close":
            door.close()
        elif action == "rex":
            hold_s = _arg_number(req, "hold_s", 0.0, 60.0) if "hold_s" in req else 0.5
            await door.push_rex(hold_s)
        elif action == "tamper":
            door.set_tamper(True)
        elif action == "untamper":
            door.set_tamper(False)
        else:
            raise _BadRequestError(
                f"unknown door action {action!r} (expected one of: {', '.join(DOOR_ACTIONS)})"
            )
        reply["door"] = door.snapshot()
        return reply

    async def _board(self, req: Mapping[str, Any]) -> Reply:
        board = self.site.board(_arg_str(req, "name"))
        action = req.get("action")
        if action == "offline":
            await board.set_offline(True)
        elif action == "online":
            await board.set_offline(False)
        elif action == "delay":
            board.delay_s = _arg_int(req, "ms", 0, 600_000) / 1000
        elif action == "drop":
            board.drop_next(_arg_int(req, "n", 0, 1_000_000))
        elif action == "corrupt":
            board.corrupt_next(_arg_int(req, "n", 0, 1_000_000))
        elif action == "exception":
            code = req.get("code")
            board.exception_code = None if code is None else _arg_int(req, "code", 1, 255)
        elif action == "stuck":
            if "value" not in req:
                raise _BadRequestError("'value' must be true, false or null (null releases)")
            board.stuck_coil(
                _arg_int(req, "coil", 0, 65535), _arg_bool(req, "value", allow_null=True)
            )
        elif action == "unstuck":
            board.stuck_coil(_arg_int(req, "coil", 0, 65535), None)
        elif action == "garbage":
            try:
                data = bytes.fromhex(_arg_str(req, "hex"))
            except ValueError:
                raise _BadRequestError("'hex' must be hexadecimal bytes, e.g. 'deadbeef'") from None
            board.garbage(data)
        elif action == "input":
            value = _arg_bool(req, "value")
            board.set_input(_arg_int(req, "input", 0, 65535), bool(value))
        elif action == "clear":
            await board.clear_faults()
        else:
            raise _BadRequestError(
                f"unknown board action {action!r} (expected one of: {', '.join(BOARD_ACTIONS)})"
            )
        return {"ok": True, "board": self.site.snapshot()["boards"][board.name]}


async def _send(writer: asyncio.StreamWriter, reply: Reply) -> None:
    writer.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


async def _alive(path: Path) -> bool:
    """True if something accepts connections on the Unix socket at ``path``."""
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class SimControlUnavailableError(ConnectionError):
    """No simulator answers on the control socket."""


async def _exchange(path: str | Path, request: Mapping[str, Any]) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=16 * MAX_LINE)
    try:
        writer.write(json.dumps(dict(request)).encode() + b"\n")
        await writer.drain()
        return await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def control_request(
    path: str | Path, request: Mapping[str, Any], *, timeout_s: float = 10.0
) -> Reply:
    """Send one request to the simulator at ``path`` and return its reply."""
    try:
        line = await asyncio.wait_for(_exchange(path, request), timeout_s)
    except TimeoutError:
        raise SimControlUnavailableError(f"simulator on {path} did not answer") from None
    except (FileNotFoundError, ConnectionRefusedError):
        raise SimControlUnavailableError(
            f"no simulator listening on {path} (start one with 'warding sim modbus')"
        ) from None
    except OSError as exc:
        raise SimControlUnavailableError(
            f"cannot talk to the simulator on {path}: {exc.strerror or exc}"
        ) from None
    except ValueError:
        raise SimControlUnavailableError(f"simulator on {path} sent an oversized reply") from None
    if not line:
        raise SimControlUnavailableError(f"simulator on {path} closed the connection")
    try:
        reply = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SimControlUnavailableError(f"simulator on {path} sent bad JSON: {exc}") from None
    if not isinstance(reply, dict):
        raise SimControlUnavailableError(f"simulator on {path} sent a non-object reply")
    return reply
