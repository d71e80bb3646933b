"""``JournalWriter.follow``: the journal, then live entries, never a gap or a duplicate, and a
follower that falls behind resumes from the journal instead of losing entries (review D, E)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from controller.journal import Journal, JournalWriter


async def _scenario(
    db: Path,
    *,
    before: int,
    after_seq: int,
    bursts: list[int],
    queue_size: int,
    page: int,
    consumer_pauses: list[int],
) -> tuple[list[int], int]:
    """Record ``before`` entries, follow from ``after_seq`` while bursts arrive; seqs seen."""
    w = JournalWriter(Journal.open(db), subscriber_queue_size=queue_size)
    run = asyncio.create_task(w.run())
    try:
        for i in range(before):
            w.record("pre", i=i)
        await w.flush()
        total = before + sum(bursts)
        seen: list[int] = []

        async def consume() -> None:
            pauses = iter(consumer_pauses)
            async for entry in w.follow(after_seq, page=page):
                seen.append(entry.seq)
                for _ in range(next(pauses, 0)):  # a slow consumer: let the writer run ahead
                    await asyncio.sleep(0)
                if entry.seq >= total:
                    return

        consumer = asyncio.create_task(consume())
        for n, size in enumerate(bursts):
            for i in range(size):
                w.record("live", burst=n, i=i)
            if n % 2:
                await w.flush()
            else:
                await asyncio.sleep(0)
        await w.flush()
        if total > after_seq:
            await asyncio.wait_for(consumer, 10)
        else:
            consumer.cancel()
        return seen, total
    finally:
        await w.close()
        await run


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.integers(0, 12),
    after_frac=st.floats(0, 1),
    bursts=st.lists(st.integers(1, 12), max_size=6),
    queue_size=st.integers(1, 4),
    page=st.integers(1, 5),
    consumer_pauses=st.lists(st.integers(0, 6), max_size=40),
)
def test_follow_yields_every_entry_after_the_start_exactly_once(
    before: int,
    after_frac: float,
    bursts: list[int],
    queue_size: int,
    page: int,
    consumer_pauses: list[int],
) -> None:
    after_seq = int(before * after_frac)
    with tempfile.TemporaryDirectory() as tmp:
        seen, total = asyncio.run(
            _scenario(
                Path(tmp) / "j.db",
                before=before,
                after_seq=after_seq,
                bursts=bursts,
                queue_size=queue_size,
                page=page,
                consumer_pauses=consumer_pauses,
            )
        )
    if total > after_seq:
        assert seen == list(range(after_seq + 1, total + 1))


async def test_a_follower_that_falls_behind_resumes_from_the_journal(tmp_path: Path) -> None:
    w = JournalWriter(Journal.open(tmp_path / "j.db"), subscriber_queue_size=2)
    run = asyncio.create_task(w.run())
    try:
        w.record("first")
        await w.flush()
        stream = w.follow(0, page=4)
        assert (await anext(stream)).seq == 1
        waiting = asyncio.create_task(anext(stream))  # caught up: waits for a live entry
        await asyncio.sleep(0.05)
        assert not waiting.done()
        w.record("live", i=0)
        assert (await asyncio.wait_for(waiting, 5)).seq == 2  # delivered live
        with capture_logs() as logs:
            for i in range(1, 31):  # the follower does not read meanwhile: its queue overflows
                w.record("live", i=i)
                await w.flush()
            seen = [(await anext(stream)).seq for _ in range(30)]
            w.record("after")
            await w.flush()
            seen.append((await anext(stream)).seq)
        await stream.aclose()
    finally:
        await w.close()
        await run
    events = [e["event"] for e in logs]
    assert "journal.subscriber_dropped" in events  # the drop really happened...
    assert "journal.follower_resumed" in events
    assert seen == list(range(3, 34))  # ...and nothing was lost or repeated
    assert not w._subscribers  # the stream let go of its subscription


async def test_follow_pages_a_backlog_larger_than_a_page_then_goes_live(tmp_path: Path) -> None:
    seen, total = await _scenario(
        tmp_path / "j.db",
        before=11,
        after_seq=0,
        bursts=[1],
        queue_size=1000,
        page=3,
        consumer_pauses=[],
    )
    assert (seen, total) == (list(range(1, 13)), 12)
