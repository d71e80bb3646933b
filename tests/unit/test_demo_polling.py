"""The demo's view keeps going when the daemon is busy or refuses; it never ends the demo."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from controller.demo import Demo
from controller.errors import WardingError
from controller.settings import load_settings


async def _refusing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readline()
    writer.write(json.dumps({"ok": False, "error": "too many control connections (256)"}).encode())
    writer.write(b"\n")
    await writer.drain()
    writer.close()


async def test_a_refusing_or_absent_daemon_is_retried_not_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = Demo(load_settings(None), tmp_path / "site.toml", tmp_path)
    demo.socket = tmp_path / "control.sock"
    assert await demo.events_or_trouble() == []  # nobody there yet
    assert demo.trouble
    server = await asyncio.start_unix_server(_refusing, path=str(demo.socket))
    try:
        assert await demo.events_or_trouble() == []
        assert await demo.events_or_trouble() == []
        assert "too many control connections" in demo.trouble
    finally:
        server.close()
        await server.wait_closed()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2  # each new kind of trouble said once, not at every poll
    assert all(line.startswith("warding demo: daemon not answering (") for line in err)


async def test_a_daemon_that_has_exited_ends_the_demo(tmp_path: Path) -> None:
    demo = Demo(load_settings(None), tmp_path / "site.toml", tmp_path)
    demo.socket = tmp_path / "control.sock"
    demo.daemon = await asyncio.create_subprocess_exec("sh", "-c", "exit 137")
    await demo.daemon.wait()  # killed (say, kill -9): nothing will ever answer again
    with pytest.raises(WardingError, match="the daemon exited with status 137"):
        await demo.events_or_trouble()
