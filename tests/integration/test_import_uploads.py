"""Credential-import uploads the client abandons, in-process: the real Daemon on its socket.

An upload holds card numbers and PINs in clear until it is committed or aborted; one that is
neither is deleted after ``upload_idle_s`` without a chunk, and at shutdown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.app import Daemon
from controller.journal import verify_journal
from controller.settings import parse_toml
from simulators.site import SimSite
from tests.conftest import site_toml
from tests.integration.conftest import ApiConnection

ROWS = "name,card,pin\nAda,H10301:1:100,4711\n"


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_an_abandoned_upload_is_deleted_and_a_live_one_kept(tmp_path: Path) -> None:
    base = parse_toml(site_toml(tmp_path, tcp_port=1))
    async with SimSite(base, ports={"tcp1": 0}) as sim:
        settings = sim.client_settings()
        uploads = settings.credentials_db.parent / "uploads"
        daemon = Daemon(settings)
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.wait_for(daemon.ready.wait(), 10)
            assert daemon.management is not None
            daemon.management.upload_idle_s = 0.3
            async with await ApiConnection.open(settings.controller.socket) as conn:
                idle = (await conn.call("credential.import.begin", name="idle.csv"))["upload"]
                live = (await conn.call("credential.import.begin", name="live.csv"))["upload"]
                for token in (idle, live):
                    reply = await conn.call("credential.import.chunk", upload=token, data=ROWS)
                    assert reply["ok"], reply
                assert len(list(uploads.glob("import-*.csv"))) == 2
                # keep one upload alive with chunks; leave the other alone
                deadline = time.monotonic() + 0.9
                while time.monotonic() < deadline:
                    reply = await conn.call("credential.import.chunk", upload=live, data="")
                    assert reply["ok"], reply
                    await asyncio.sleep(0.05)
                assert [p.name for p in uploads.glob("import-*.csv")] == [f"import-{live}.csv"]
                gone = await conn.call("credential.import.commit", upload=idle)
                assert not gone["ok"]
                assert gone["error"] == f"unknown upload {idle!r}"
                assert daemon.journal is not None
                await daemon.journal.flush()
                entries = await daemon.journal.read(0, 10_000, frozenset({"admin.import"}))
                assert [e.data for e in entries] == [
                    {"abandoned": True, "name": "idle.csv", "size": len(ROWS), "committed": False}
                ]
        finally:
            daemon.shutdown.set()
            assert await asyncio.wait_for(task, 10) == 0
        # the live upload was never committed: it does not outlive the daemon either
        assert list(uploads.glob("import-*.csv")) == []
    assert verify_journal(settings.controller.journal).ok
