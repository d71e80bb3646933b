"""The control socket under bad and heavy input: a clear error, a usable connection, no crash."""

from __future__ import annotations

import asyncio
import os
import stat
from typing import Any

import pytest

from controller.api.server import MAX_CLIENTS
from tests.integration.conftest import ApiConnection, Daemon, Site

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _alive(daemon: Daemon) -> None:
    assert daemon.running, daemon.log_text()
    assert await daemon.ping(), "the daemon stopped answering"


async def _error(conn: ApiConnection, raw: bytes) -> str:
    """Send ``raw``; return the ``ok: false`` reply's error, then check the line still works."""
    await conn.send_raw(raw)
    reply = await conn.read()
    assert reply["ok"] is False, reply
    assert isinstance(reply["error"], str), reply
    assert reply["error"], reply
    assert "\n" not in reply["error"]
    pong = await conn.call("ping")
    assert pong["ok"] is True, "the connection is no longer usable"
    return reply["error"]


async def test_socket_mode_is_0660(shared_daemon: Daemon) -> None:
    mode = os.stat(shared_daemon.socket).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


async def test_ping_and_request_id(shared_daemon: Daemon) -> None:
    async with await ApiConnection.open(shared_daemon.socket) as conn:
        reply = await conn.call("ping", id="abc-1")
        assert reply == {"ok": True, "version": reply["version"], "protocol": 1, "id": "abc-1"}
        refused = await conn.call("nope", id=7)
        assert (refused["ok"], refused["id"]) == (False, 7)


@pytest.mark.parametrize(
    ("raw", "expect"),
    [
        pytest.param(b"{not json\n", "not JSON", id="malformed"),
        pytest.param(b"\xff\xfe\xfd garbage\n", "not JSON", id="binary"),
        pytest.param(b"[1, 2, 3]\n", "JSON object", id="array"),
        pytest.param(b'"ping"\n', "JSON object", id="string"),
        pytest.param(b"42\n", "JSON object", id="number"),
        pytest.param(b"{}\n", "'cmd'", id="no-cmd"),
        pytest.param(b'{"cmd": 5}\n', "'cmd'", id="cmd-not-string"),
        pytest.param(b'{"cmd": "explode"}\n', "unknown command 'explode'", id="unknown-cmd"),
        pytest.param(b'{"cmd": "door", "door": "tcp1-d0"}\n', "'action'", id="missing-action"),
        pytest.param(b'{"cmd": "door", "action": "pulse"}\n', "'door'", id="missing-door"),
        pytest.param(
            b'{"cmd": "door", "action": "pulse", "door": "tcp1-d3", "duration_s": "abc"}\n',
            "'duration_s' must be float",
            id="duration-string",
        ),
        pytest.param(
            b'{"cmd": "door", "action": "pulse", "door": "tcp1-d3", "duration_s": true}\n',
            "'duration_s' must be float",
            id="duration-bool",
        ),
        pytest.param(
            b'{"cmd": "door", "action": "pulse", "door": "tcp1-d3", "duration_s": NaN}\n',
            "duration",
            id="duration-nan",
        ),
        pytest.param(
            b'{"cmd": "door", "action": "pulse", "door": "tcp1-d3", "duration_s": -1}\n',
            "duration",
            id="duration-negative",
        ),
        pytest.param(
            b'{"cmd": "door", "action": "explode", "door": "tcp1-d3"}\n',
            "unknown action",
            id="unknown-action",
        ),
        pytest.param(
            b'{"cmd": "door", "action": "unlock", "door": "no-such-door"}\n',
            "unknown door 'no-such-door'",
            id="unknown-door",
        ),
        pytest.param(b'{"cmd": "door", "action": 1, "door": []}\n', "must be str", id="types"),
        pytest.param(b'{"cmd": "events", "limit": 0}\n', "limit", id="limit-zero"),
        pytest.param(b'{"cmd": "events", "limit": "5"}\n', "'limit' must be int", id="limit-str"),
        pytest.param(b'{"cmd": "events", "follow": "yes"}\n', "'follow' must be bool", id="follow"),
        pytest.param(b"[" * 20_000 + b"\n", "not JSON", id="deep-nesting"),
        pytest.param(b'{"cmd": "ping", "id": ' + b"7" * 5000 + b"}\n", "not JSON", id="huge-int"),
    ],
)
async def test_bad_request_gets_an_error_and_the_connection_stays_usable(
    shared_daemon: Daemon, raw: bytes, expect: str
) -> None:
    async with await ApiConnection.open(shared_daemon.socket) as conn:
        error = await _error(conn, raw)
    assert expect in error
    await _alive(shared_daemon)


async def test_bad_requests_change_nothing(shared_site: Site, shared_daemon: Daemon) -> None:
    before = shared_site.relays()
    async with await ApiConnection.open(shared_daemon.socket) as conn:
        for raw in (
            b'{"cmd": "door", "action": "unlock", "door": "tcp1-d3", "duration_s": "x"}\n',
            b'{"cmd": "door", "action": "unlock"}\n',
            b'{"cmd": "door", "action": "unlock ", "door": "tcp1-d3"}\n',
        ):
            await _error(conn, raw)
    assert shared_site.relays() == before
    assert (await shared_daemon.doors())["tcp1-d3"]["state"] == "locked"


async def test_blank_lines_are_ignored(shared_daemon: Daemon) -> None:
    async with await ApiConnection.open(shared_daemon.socket) as conn:
        await conn.send_raw(b"\n  \n\r\n")
        assert (await conn.call("ping"))["ok"] is True


async def test_oversized_request_is_refused_and_the_daemon_survives(
    shared_daemon: Daemon,
) -> None:
    async with await ApiConnection.open(shared_daemon.socket) as conn:
        await conn.send_raw(b'{"cmd": "ping", "pad": "' + b"x" * 100_000 + b'"}\n')
        reply = await conn.read()
        assert reply["ok"] is False
        assert "longer than" in reply["error"]
    await _alive(shared_daemon)


async def test_unterminated_request_at_hangup_gets_an_error(shared_daemon: Daemon) -> None:
    async with await ApiConnection.open(shared_daemon.socket) as conn:
        await conn.send_raw(b'{"cmd": "ping"}')
        conn.shutdown_write()
        reply = await conn.read()
        assert reply["ok"] is False
        assert "newline" in reply["error"]
        assert await conn.read_line() is None
    await _alive(shared_daemon)


async def test_client_hanging_up_mid_stream_is_harmless(shared_daemon: Daemon) -> None:
    for _ in range(5):
        conn = await ApiConnection.open(shared_daemon.socket)
        await conn.send_raw(b'{"cmd": "events", "follow": true, "limit": 5}\n{"cmd": "sta')
        conn.close()
    await _alive(shared_daemon)


async def test_many_concurrent_clients(shared_daemon: Daemon) -> None:
    async def client(i: int) -> list[dict[str, Any]]:
        async with await ApiConnection.open(shared_daemon.socket) as conn:
            replies = []
            for cmd in ("ping", "status", "events"):
                await conn.send(cmd, id=i)
            for _ in range(3):
                replies.append(await conn.read(within=10))
            return replies

    results = await asyncio.gather(*(client(i) for i in range(64)))
    for i, replies in enumerate(results):
        assert [r["ok"] for r in replies] == [True, True, True], replies
        assert [r["id"] for r in replies] == [i, i, i]
        assert "doors" in replies[1]
        assert "events" in replies[2]
    await _alive(shared_daemon)


async def test_follow_streams_new_events(shared_daemon: Daemon) -> None:
    async with await ApiConnection.open(shared_daemon.socket) as conn:
        first = await conn.call("events", follow=True, limit=2, id="f")
        assert first == {"ok": True, "following": True, "id": "f"}
        backlog = [await conn.read() for _ in range(2)]
        assert all(set(m) == {"event"} for m in backlog)
        last = backlog[-1]["event"]["seq"]
        await shared_daemon.api("door", action="lock", door="tcp1-d3", source="follow-test")
        while True:
            event = (await conn.read())["event"]
            assert event["seq"] > last
            last = event["seq"]
            if event["kind"] == "door.command" and event["door"] == "tcp1-d3":
                assert event["data"]["source"] == "follow-test"
                break


async def test_events_after_out_of_range_is_an_error(shared_daemon: Daemon) -> None:
    async with await ApiConnection.open(shared_daemon.socket) as conn:
        await _error(conn, b'{"cmd": "events", "after": 18446744073709551616}\n')
    await _alive(shared_daemon)


async def test_no_endless_follow_on_a_spare_connection(shared_daemon: Daemon) -> None:
    """Beyond MAX_CLIENTS a connection gets one request: never an endless follow on it."""
    held = [await ApiConnection.open(shared_daemon.socket) for _ in range(MAX_CLIENTS)]
    try:
        await asyncio.sleep(0.1)
        async with await ApiConnection.open(shared_daemon.socket) as conn:
            reply = await conn.call("events", follow=True)
        assert reply["ok"] is False, reply
        assert "follow events now" in reply["error"]
        async with await ApiConnection.open(shared_daemon.socket) as conn:
            assert (await conn.call("status"))["ok"] is True  # a one-off still gets through
    finally:
        for conn in held:
            conn.close()
    await _alive(shared_daemon)
