"""Control socket server: JSON lines on a Unix socket, one task per client.

Binding is exclusive: a lock file beside the socket (flock) proves ownership, so a second
daemon refuses to start instead of stealing the socket, and a stale socket left by a crash
is replaced safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import os
import pwd
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from controller.api.protocol import MAX_LINE, ProtocolError, Request, decode_request, encode, error
from controller.errors import AlreadyRunningError, WardingError

log = structlog.get_logger(__name__)

Reply = Callable[[dict[str, object]], Awaitable[None]]

PEER: contextvars.ContextVar[str] = contextvars.ContextVar("PEER", default="unknown")
"""The OS user on the other end of the control socket (SO_PEERCRED), for attribution."""


def _peer_name(writer: asyncio.StreamWriter) -> str:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return "unknown"
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _ = struct.unpack("3i", raw)
    except OSError:
        return "unknown"
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid{uid}"
    return f"{name}(pid {pid})"


Dispatcher = Callable[[Request, Reply], Awaitable[None]]


class ControlServer:
    """Serve control requests on ``path`` through ``dispatch``."""

    def __init__(self, path: Path, dispatch: Dispatcher, *, mode: int = 0o660) -> None:
        self.path = path
        self._dispatch = dispatch
        self._mode = mode
        self._server: asyncio.Server | None = None
        self._lock_fd: int | None = None
        self._clients: set[asyncio.Task[None]] = set()

    def claim(self) -> None:
        """Take the lock file; raise AlreadyRunningError if another daemon holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunningError(
                f"another warding daemon is running on {self.path} (lock {lock_path} is held)"
            ) from None
        self._lock_fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())

    async def start(self) -> None:
        """Bind and listen (claims the lock first if needed)."""
        if self._lock_fd is None:
            self.claim()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # stale: we hold the lock, so nobody serves it
        self._server = await asyncio.start_unix_server(
            self._client, path=str(self.path), limit=MAX_LINE + 1
        )
        os.chmod(self.path, self._mode)

    async def serve(self) -> None:
        """Serve until cancelled."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        """Stop serving, drop clients, remove the socket and release the lock; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        PEER.set(_peer_name(writer))

        async def reply(obj: dict[str, object]) -> None:
            writer.write(encode(obj))
            await writer.drain()

        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    if exc.partial.strip():
                        await reply(error("request must end with a newline"))
                    break
                except asyncio.LimitOverrunError:
                    await reply(error(f"request longer than {MAX_LINE} bytes"))
                    break
                if not line.strip():
                    continue
                try:
                    req = decode_request(line)
                except ProtocolError as exc:
                    log.info("bad control request", error=str(exc))
                    await reply(error(str(exc)))
                    continue
                try:
                    await self._dispatch(req, reply)
                except ProtocolError as exc:
                    await reply(error(str(exc), req.id))
                except WardingError as exc:
                    await reply(error(str(exc), req.id))
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # a bug must not take the daemon down with one client
            log.exception("control client handler failed")
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
