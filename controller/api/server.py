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
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from controller.api.protocol import MAX_LINE, ProtocolError, Request, decode_request, encode, error
from controller.errors import AlreadyRunningError, SocketPathError, WardingError
from controller.settings import UNIX_SOCKET_PATH_MAX

log = structlog.get_logger(__name__)

Reply = Callable[[dict[str, object]], Awaitable[None]]

PEER: contextvars.ContextVar[str] = contextvars.ContextVar("PEER", default="unknown")
"""The OS user on the other end of the control socket (SO_PEERCRED), for attribution."""

SPARE: contextvars.ContextVar[bool] = contextvars.ContextVar("SPARE", default=False)
"""True on a connection served beyond MAX_CLIENTS (one request; no endless stream on it)."""


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

CLIENT_CLOSE_S = 0.5
"""At shutdown, how long a client connection may take to close before it is dropped."""

MAX_CLIENTS = 128
"""Connections served at once. Beyond them, up to as many again get one request each, read
within ONE_SHOT_READ_S, then are closed: a technician's ``wardctl lockdown start`` always gets
through idle or busy connections (a multi-request command such as an import may not: wardctl
then says the connection was lost, exit 3); more still are told so and closed (file
descriptors stay for the boards)."""

ONE_SHOT_READ_S = 5.0
"""How long a connection beyond MAX_CLIENTS may take to send its one request."""


class ControlServer:
    """Serve control requests on ``path`` through ``dispatch``."""

    def __init__(self, path: Path, dispatch: Dispatcher, *, mode: int = 0o660) -> None:
        self.path = path
        self._dispatch = dispatch
        self._mode = mode
        self._server: asyncio.Server | None = None
        self._lock_fd: int | None = None
        self._bound = False
        self._clients: set[asyncio.Task[None]] = set()
        self._one_shots = 0  # of _clients, those served beyond MAX_CLIENTS (one request each)

    def claim(self) -> None:
        """Take the lock file; raise AlreadyRunningError if another daemon holds it.

        WardingError (naming the path) if the socket's directory or lock file cannot be made.
        """
        lock_path = self.path.with_name(self.path.name + ".lock")
        self._check_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o640)
        except OSError as exc:
            raise SocketPathError(
                f"controller.socket: cannot use {self.path} (lock file {lock_path}): "
                f"{exc.strerror or exc}"
            ) from None
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
        """Bind and listen (claims the lock first if needed).

        A stale socket at the path is replaced; anything else there (a file, a directory) is
        left alone and reported as a WardingError: the socket path must never cost a file.
        """
        if self._lock_fd is None:
            self.claim()
        if self._check_path():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # stale: we hold the lock, so nobody serves it
        try:
            self._server = await asyncio.start_unix_server(
                self._client, path=str(self.path), limit=MAX_LINE + 1
            )
            self._bound = True
            os.chmod(self.path, self._mode)
        except OSError as exc:
            raise SocketPathError(
                f"controller.socket: cannot listen on {self.path}: {exc.strerror or exc}"
            ) from None

    async def serve(self) -> None:
        """Serve until cancelled."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    def _check_path(self) -> bool:
        """SocketPathError unless the path is free or a (stale) socket; True if a socket."""
        size = len(os.fsencode(self.path))
        if size > UNIX_SOCKET_PATH_MAX:
            raise SocketPathError(
                f"controller.socket: {self.path} is {size} bytes; a Unix socket path must be "
                f"at most {UNIX_SOCKET_PATH_MAX}"
            )
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise SocketPathError(
                f"controller.socket: cannot use {self.path}: {exc.strerror or exc}"
            ) from None
        if not stat.S_ISSOCK(mode):
            raise SocketPathError(
                f"controller.socket: {self.path} exists and is not a socket; refusing to replace it"
            )
        return True

    async def stop_serving(self) -> None:
        """Stop accepting and drop every client, within CLIENT_CLOSE_S; idempotent.

        The socket file and the lock stay (``close``): until the doors are safe and the
        journal closed, no second daemon may take over the relays.
        """
        server, self._server = self._server, None
        if server is not None:
            server.close()
        clients = list(self._clients)
        for task in clients:
            task.cancel()
        if clients:
            # a client that never reads its replies must not hold up the doors' safe state
            await asyncio.wait(clients, timeout=CLIENT_CLOSE_S)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), CLIENT_CLOSE_S)

    async def close(self) -> None:
        """Stop serving, remove the socket and release the lock; idempotent."""
        await self.stop_serving()
        if self._bound:
            self._bound = False
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        one_shot = len(self._clients) - self._one_shots >= MAX_CLIENTS
        if one_shot and self._one_shots >= MAX_CLIENTS:
            log.warning("control connection refused: too many", limit=2 * MAX_CLIENTS)
            with contextlib.suppress(OSError):
                writer.write(encode(error(f"too many control connections ({2 * MAX_CLIENTS})")))
            writer.close()  # (one short line: the transport sends it, then closes)
            return
        self._clients.add(task)
        self._one_shots += one_shot
        deadline = asyncio.get_running_loop().time() + ONE_SHOT_READ_S
        PEER.set(_peer_name(writer))
        SPARE.set(one_shot)

        async def reply(obj: dict[str, object]) -> None:
            writer.write(encode(obj))
            await writer.drain()

        try:
            while True:
                try:
                    if one_shot:  # beyond the limit: one request, promptly, then goodbye
                        left = deadline - asyncio.get_running_loop().time()
                        line = await asyncio.wait_for(reader.readuntil(b"\n"), max(0.0, left))
                    else:
                        line = await reader.readuntil(b"\n")
                except TimeoutError:
                    break
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
                if one_shot:
                    break  # (served again, a spare slot could be held for ever)
        except ConnectionError:
            pass
        except asyncio.CancelledError:
            # shutting down: drop the connection at once, unsent replies and all (a client
            # that stopped reading would otherwise keep it open for ever)
            writer.transport.abort()
        except Exception:  # a bug must not take the daemon down with one client
            log.exception("control client handler failed")
        finally:
            self._clients.discard(task)
            self._one_shots -= one_shot
            writer.close()
            closed = False
            try:
                await asyncio.wait_for(writer.wait_closed(), CLIENT_CLOSE_S)
                closed = True
            except (TimeoutError, OSError):
                pass  # not closed in time, or the peer reset it: aborted below
            finally:
                if not closed:
                    writer.transport.abort()
