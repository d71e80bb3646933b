"""ControlServer on a real Unix socket: ownership of the path, and a shutdown no client holds up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import controller.api.server as server_mod
from controller.api.protocol import Request
from controller.api.server import MAX_CLIENTS, ControlServer, Reply
from controller.errors import AlreadyRunningError, WardingError


async def _status(req: Request, reply: Reply) -> None:
    await reply({"ok": True, "id": req.id, "padding": "x" * 4096})


async def test_a_client_that_never_reads_does_not_hold_up_the_stop(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    server = ControlServer(path, _status)
    await server.start()
    serving = asyncio.create_task(server.serve())
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(str(path))
    client.setblocking(False)
    try:
        # ask and ask, never read: the daemon's replies fill both socket buffers
        for _ in range(200):
            with contextlib.suppress(BlockingIOError):
                client.send(b'{"cmd":"status"}\n' * 50)
            await asyncio.sleep(0.002)
        await asyncio.wait_for(server.stop_serving(), 5)
        # the lock is still ours after stop_serving: no second daemon while doors are made safe
        with pytest.raises(AlreadyRunningError):
            ControlServer(path, _status).claim()
        assert path.exists()
        await asyncio.wait_for(server.close(), 5)
        assert not path.exists()
        second = ControlServer(path, _status)
        second.claim()  # released by close()
        await second.close()
    finally:
        client.close()
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


async def test_a_file_at_the_socket_path_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "credentials.db"
    path.write_text("precious")
    server = ControlServer(path, _status)
    with pytest.raises(WardingError, match=r"controller\.socket: .* is not a socket"):
        await server.start()
    await server.close()
    assert path.read_text() == "precious"


async def test_a_socket_path_under_a_file_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "site.toml"
    blocker.write_text("[controller]\n")
    server = ControlServer(blocker / "control.sock", _status)
    with pytest.raises(WardingError, match=r"controller\.socket: cannot use"):
        server.claim()
    assert blocker.read_text() == "[controller]\n"


async def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays: a crashed daemon's socket
    server = ControlServer(path, _status)
    await server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b'{"cmd":"status","id":7}\n')
        line = await asyncio.wait_for(reader.readline(), 5)
        assert json.loads(line)["id"] == 7
        writer.close()
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def _full_server(tmp_path: Path) -> AsyncIterator[Path]:
    """A serving ControlServer whose MAX_CLIENTS slots idle connections hold; its path."""
    path = tmp_path / "control.sock"
    server = ControlServer(path, _status)
    await server.start()
    serving = asyncio.create_task(server.serve())
    held: list[asyncio.StreamWriter] = []
    try:
        for _ in range(MAX_CLIENTS):  # idle connections that never go away
            _, writer = await asyncio.open_unix_connection(str(path))
            held.append(writer)
        await asyncio.sleep(0.05)
        yield path
    finally:
        for w in held:
            w.close()
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await server.close()


async def test_beyond_the_limit_one_request_still_gets_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_mod, "ONE_SHOT_READ_S", 0.3)

    async def call(path: Path, req_id: int) -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(json.dumps({"cmd": "status", "id": req_id}).encode() + b"\n")
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readline(), 5))
        assert await asyncio.wait_for(reader.read(), 5) == b""  # one request, then closed
        writer.close()
        return reply

    async with _full_server(tmp_path) as path:
        # an operator's one-off command still gets through, answered then closed
        assert (await call(path, 7))["id"] == 7
        # as many again that send nothing: held at most ONE_SHOT_READ_S, then closed
        silent = [await asyncio.open_unix_connection(str(path)) for _ in range(MAX_CLIENTS)]
        await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_unix_connection(str(path))
        refused = json.loads(await asyncio.wait_for(reader.readline(), 5))
        assert refused["ok"] is False
        assert "too many control connections" in refused["error"]
        writer.close()
        for r, _ in silent:
            assert await asyncio.wait_for(r.read(), 5) == b""  # timed out and closed
        for _, w in silent:
            w.close()
        assert (await call(path, 8))["id"] == 8  # a slot is free again


async def test_a_spare_connection_that_keeps_asking_is_still_closed_after_one(
    tmp_path: Path,
) -> None:
    """Polling clients must not hold the spare slots: a spare serves one request, always."""
    async with _full_server(tmp_path) as path:
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b'{"cmd":"status","id":1}\n{"cmd":"status","id":2}\n')
        assert json.loads(await asyncio.wait_for(reader.readline(), 5))["id"] == 1
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the second is not served
        writer.close()
