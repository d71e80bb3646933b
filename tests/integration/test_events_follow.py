"""``events`` with ``follow`` through the real daemon: a backlog page smaller than the journal
is followed by every later entry, never a gap, never a duplicate (review D)."""

from __future__ import annotations

from pathlib import Path

from tests.integration.conftest import ApiConnection, running_daemon, simulated_site


async def _stream_until_quiet(conn: ApiConnection) -> list[int]:
    seqs: list[int] = []
    while True:
        try:
            msg = await conn.read(within=1.5)
        except AssertionError:  # nothing more within the time: the stream is idle
            return seqs
        assert set(msg) == {"event"}, msg  # never an error line
        seqs.append(msg["event"]["seq"])


async def test_follow_after_with_a_small_limit_streams_every_entry_once(tmp_path: Path) -> None:
    async with simulated_site(tmp_path, doors_per_board=2) as site, running_daemon(site) as daemon:
        door = site.settings.doors[0].name
        for i in range(5):
            await daemon.api("door", action="lock", door=door, source=f"pre{i}")
        head = await daemon.seq()
        assert head > 6
        async with await ApiConnection.open(daemon.socket) as conn:
            assert await conn.call("events", follow=True, after=0, limit=3, id="f") == {
                "ok": True,
                "following": True,
                "id": "f",
            }
            seqs = await _stream_until_quiet(conn)
            assert seqs[:head] == list(range(1, head + 1))  # the whole backlog, in order
            await daemon.api("door", action="lock", door=door, source="live")
            seqs += await _stream_until_quiet(conn)
        assert seqs == list(range(1, max(seqs) + 1))  # no gap, no duplicate
        assert max(seqs) > head


async def test_follow_without_after_starts_at_the_newest_entries(tmp_path: Path) -> None:
    async with simulated_site(tmp_path, doors_per_board=2) as site, running_daemon(site) as daemon:
        door = site.settings.doors[0].name
        for i in range(4):
            await daemon.api("door", action="lock", door=door, source=f"pre{i}")
        head = await daemon.seq()
        async with await ApiConnection.open(daemon.socket) as conn:
            assert (await conn.call("events", follow=True, limit=2))["following"] is True
            seqs = await _stream_until_quiet(conn)
            await daemon.api("door", action="lock", door=door, source="live")
            seqs += await _stream_until_quiet(conn)
        assert seqs[0] >= head - 1  # the newest `limit` entries at the request, then on
        assert seqs == list(range(seqs[0], max(seqs) + 1))
