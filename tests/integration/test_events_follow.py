"""``events`` with ``follow`` through the real daemon: a backlog page smaller than the journal
is followed by every later entry, never a gap, never a duplicate (review D)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.integration.conftest import ApiConnection, running_daemon, simulated_site


async def _read_until(conn: ApiConnection, seqs: list[int], done: Any) -> None:
    """Append streamed seqs until ``done(event)``; fail on anything but an event line."""
    while True:
        msg = await conn.read(within=20)
        assert set(msg) == {"event"}, msg  # never an error line
        seqs.append(msg["event"]["seq"])
        if done(msg["event"]):
            return


def _is_live(source: str) -> Any:
    return lambda e: e["kind"] == "door.command" and e["data"].get("source") == source


async def test_follow_after_with_a_small_limit_streams_every_entry_once(tmp_path: Path) -> None:
    async with simulated_site(tmp_path, doors_per_board=2) as site, running_daemon(site) as daemon:
        door = site.settings.doors[0].name
        for i in range(5):
            await daemon.api("door", action="lock", door=door, source=f"pre{i}")
        head = 0
        for _ in range(500):  # the journal commits shortly after (records linger ~20 ms)
            head = await daemon.seq()
            if head > 6:
                break
            await asyncio.sleep(0.01)
        assert head > 6
        seqs: list[int] = []
        async with await ApiConnection.open(daemon.socket) as conn:
            assert await conn.call("events", follow=True, after=0, limit=3, id="f") == {
                "ok": True,
                "following": True,
                "id": "f",
            }
            await _read_until(conn, seqs, lambda e: e["seq"] >= head)
            assert seqs == list(range(1, head + 1))  # the whole backlog, in order
            await daemon.api("door", action="lock", door=door, source="live")
            await _read_until(conn, seqs, _is_live("live"))
        assert seqs == list(range(1, max(seqs) + 1))  # no gap, no duplicate
        assert max(seqs) > head


async def test_follow_without_after_starts_at_the_newest_entries(tmp_path: Path) -> None:
    async with simulated_site(tmp_path, doors_per_board=2) as site, running_daemon(site) as daemon:
        door = site.settings.doors[0].name
        for i in range(4):
            await daemon.api("door", action="lock", door=door, source=f"pre{i}")
        head = await daemon.seq()
        seqs: list[int] = []
        async with await ApiConnection.open(daemon.socket) as conn:
            assert (await conn.call("events", follow=True, limit=2))["following"] is True
            await daemon.api("door", action="lock", door=door, source="live")
            await _read_until(conn, seqs, _is_live("live"))
        assert seqs[0] >= head - 1  # the newest `limit` entries at the request, then on
        assert seqs == list(range(seqs[0], max(seqs) + 1))
