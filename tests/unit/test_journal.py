"""The hash-chained journal on real SQLite files, and the asyncio writer around it."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import sqlite3
import stat
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from controller.errors import JournalError
from controller.journal import (
    GENESIS_HASH,
    Entry,
    Journal,
    JournalWriter,
    Record,
    entry_hash,
    format_ts,
    verify_journal,
)

# --------------------------------------------------------------------------- helpers


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.db"


@pytest.fixture
def journal(db: Path) -> Iterator[Journal]:
    j = Journal.open(db)
    yield j
    j.close()


def fill(journal: Journal, n: int) -> list[Entry]:
    return journal.append_many(
        [Record("door.state", door=f"d{i % 3}", data={"i": i, "state": "locked"}) for i in range(n)]
    )


def raw(db: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run SQL on the file directly, as an attacker or an auditor would."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        return conn.execute(sql, tuple(params)).fetchall()
    finally:
        conn.close()


def auditor_verify(db: Path) -> int:
    """Independent re-implementation of the chain check from docs/journal.md; returns rows."""
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    prev, expected_seq = "0" * 64, 1
    rows = conn.execute(
        "SELECT seq, ts, kind, door, device, data, prev_hash, hash FROM events ORDER BY seq"
    ).fetchall()
    conn.close()
    for seq, ts, kind, door, device, data, prev_hash, h in rows:
        assert seq == expected_seq
        assert prev_hash == prev
        assert isinstance(data, str)
        assert (
            json.dumps(json.loads(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            == data
        )
        body = json.dumps(
            [seq, ts, kind, door, device, json.loads(data)],
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        assert hashlib.sha256((prev + body).encode("utf-8")).hexdigest() == h
        prev, expected_seq = h, seq + 1
    return len(rows)


# --------------------------------------------------------------------------- Journal


def test_open_creates_private_parent_dir_and_file(db: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    with Journal.open(db):
        pass
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o750 & ~umask
    assert stat.S_IMODE(db.stat().st_mode) == 0o640 & ~umask


def test_wal_and_synchronous_full_are_in_effect(journal: Journal, db: Path) -> None:
    conn = journal._conn
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    # journal_mode=WAL is persistent in the file: any other connection sees it too.
    assert raw(db, "PRAGMA journal_mode") == [("wal",)]
    assert raw(db, "SELECT value FROM meta WHERE key = 'schema_version'") == [("1",)]


def test_chain_links_every_row_and_verifies(journal: Journal, db: Path) -> None:
    entries = fill(journal, 10)
    assert [e.seq for e in entries] == list(range(1, 11))
    assert entries[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(entries):
        assert after.prev_hash == before.hash
    report = verify_journal(db)
    assert report.ok, report.reason
    assert (report.rows, report.first_bad_seq, report.exit_code) == (10, None, 0)
    assert report.head_hash == entries[-1].hash
    assert journal.last_seq() == 10


def test_documented_hash_recipe_matches(journal: Journal, db: Path) -> None:
    fill(journal, 5)
    journal.append("door.alarm", door="main", data={"alarm": "forced", "ünïcode": "✓", "n": 1.5})
    assert auditor_verify(db) == 6
    e = journal.tail(1)[0]
    assert e.hash == entry_hash(
        e.prev_hash, seq=e.seq, ts=e.ts, kind=e.kind, door=e.door, device=e.device, data=e.data
    )


def test_append_many_commits_once_per_batch(journal: Journal, db: Path) -> None:
    statements: list[str] = []
    assert journal._conn is not None
    journal._conn.set_trace_callback(statements.append)
    fill(journal, 50)
    assert sum(s.strip().upper() == "COMMIT" for s in statements) == 1
    # Committed means visible to any other connection once append_many returns.
    assert raw(db, "SELECT count(*) FROM events") == [(50,)]


def test_append_fills_in_defaults_and_ts_format(journal: Journal) -> None:
    e = journal.append("daemon.start")
    assert (e.seq, e.kind, e.door, e.device, e.data) == (1, "daemon.start", None, None, {})
    datetime.strptime(e.ts, "%Y-%m-%dT%H:%M:%S.%fZ")  # raises if the format is wrong
    moment = datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=UTC)
    assert journal.append("x", ts=moment).ts == "2026-11-29T12:00:00.123456Z"
    assert format_ts(moment) == "2026-11-29T12:00:00.123456Z"
    with pytest.raises(ValueError, match="aware"):
        format_ts(datetime(2026, 1, 1))


def test_reopen_continues_the_chain(db: Path) -> None:
    with_first = Journal.open(db)
    first = fill(with_first, 3)
    with_first.close()
    reopened = Journal.open(db)
    try:
        assert reopened.last_seq() == 3
        more = fill(reopened, 2)
    finally:
        reopened.close()
    assert [e.seq for e in more] == [4, 5]
    assert more[0].prev_hash == first[-1].hash
    assert verify_journal(db).rows == 5


def test_read_filters_and_tail(journal: Journal) -> None:
    journal.append("door.state", door="a")
    journal.append("door.alarm", door="a", data={"alarm": "held"})
    journal.append("board.link", device="board-a", data={"up": True})
    journal.append("door.state", door="b")
    assert [e.seq for e in journal.read()] == [1, 2, 3, 4]
    assert [e.seq for e in journal.read(after_seq=2)] == [3, 4]
    assert [e.seq for e in journal.read(limit=2)] == [1, 2]
    assert [e.seq for e in journal.read(kinds={"door.state"})] == [1, 4]
    assert [e.seq for e in journal.read(kinds={"door.alarm", "board.link"})] == [2, 3]
    assert journal.read(kinds=set()) == []
    assert journal.read(limit=0) == []
    assert [e.seq for e in journal.tail(2)] == [3, 4]
    assert journal.tail(0) == []
    assert journal.read(after_seq=1, limit=1)[0].to_json() == {
        "seq": 2,
        "ts": journal.read(after_seq=1, limit=1)[0].ts,
        "kind": "door.alarm",
        "door": "a",
        "device": None,
        "data": {"alarm": "held"},
        "prev_hash": journal.read(limit=1)[0].hash,
        "hash": journal.tail(3)[0].hash,
    }


def test_close_is_idempotent_and_final(db: Path) -> None:
    j = Journal.open(db)
    j.close()
    j.close()
    assert j.closed
    with pytest.raises(JournalError, match="closed"):
        j.append("x")
    with pytest.raises(JournalError, match="closed"):
        j.read()


def test_open_refuses_files_that_are_not_journals(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(JournalError, match=r"junk\.db"):
        Journal.open(junk)
    other = tmp_path / "other.db"
    raw(other, "CREATE TABLE cards (number TEXT)")
    with pytest.raises(JournalError, match="not a warding journal"):
        Journal.open(other)
    assert raw(other, "SELECT name FROM sqlite_master WHERE type='table'") == [("cards",)]


def test_odd_data_is_coerced_never_lost(journal: Journal, db: Path) -> None:
    odd: dict[str, Any] = {
        "tuple": (1, 2),
        "nan": float("nan"),
        "bytes": b"\x01\xff",
        "surrogate": "bad\udcff",
        "nested": {3: "int key", "ok": [None, True]},
        "path": Path("/dev/ttyUSB0"),
    }
    e = journal.append("reader.frame", device="rdr\udc80", data=odd)
    assert e.data["tuple"] == [1, 2]
    assert e.data["nan"] == "nan"
    assert e.data["bytes"] == "01ff"
    assert e.data["nested"] == {"3": "int key", "ok": [None, True]}
    assert e.data["path"] == "/dev/ttyUSB0"
    assert "\\udcff" in e.data["surrogate"]
    assert journal.read() == [e]
    assert verify_journal(db).ok
    assert auditor_verify(db) == 1


def test_a_record_without_a_time_is_stamped_when_written(journal: Journal) -> None:
    before = format_ts()
    stamped, kept = journal.append_many(
        [Record("door.state", door="d1"), Record("door.state", ts="2026-01-01T00:00:00.000000Z")]
    )
    assert before <= stamped.ts <= format_ts()
    assert kept.ts == "2026-01-01T00:00:00.000000Z"
    assert stamped.data == {}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children)
    ),
    max_leaves=8,
)
records = st.builds(
    Record,
    kind=st.text(min_size=1, max_size=12),
    door=st.none() | st.text(max_size=8),
    device=st.none() | st.text(max_size=8),
    data=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    ts=st.builds(format_ts),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(records, min_size=1, max_size=6), min_size=1, max_size=4))
def test_random_batches_verify_and_round_trip(batches: list[list[Record]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "j.db"
        j = Journal.open(path)
        try:
            for batch in batches:
                j.append_many(batch)
            stored = j.read(limit=10_000)
        finally:
            j.close()
        flat = [r for batch in batches for r in batch]
        assert [e.seq for e in stored] == list(range(1, len(flat) + 1))
        assert [(e.ts, e.kind, e.door, e.device, e.data) for e in stored] == [
            (r.ts, r.kind, r.door, r.device, r.data) for r in flat
        ]
        report = verify_journal(path)
        assert report.ok, report.reason
        assert report.rows == len(flat)
        assert auditor_verify(path) == len(flat)


# --------------------------------------------------------------------------- verify_journal


def test_tampered_data_is_the_first_bad_row(journal: Journal, db: Path) -> None:
    fill(journal, 20)
    raw(db, "UPDATE events SET data = ? WHERE seq = 17", ['{"i":16,"state":"unlocked"}'])
    report = verify_journal(db)
    assert not report.ok
    assert (report.first_bad_seq, report.rows, report.exit_code) == (17, 16, 1)
    assert report.reason == "row 17: hash does not match its contents"


def test_tampered_and_rehashed_row_breaks_the_next_link(journal: Journal, db: Path) -> None:
    entries = fill(journal, 20)
    e = entries[16]
    forged = entry_hash(
        e.prev_hash, seq=17, ts=e.ts, kind=e.kind, door=e.door, device=e.device, data={"i": 0}
    )
    raw(db, "UPDATE events SET data = '{\"i\":0}', hash = ? WHERE seq = 17", [forged])
    report = verify_journal(db)
    assert (report.first_bad_seq, report.reason) == (18, "row 18: previous-hash link broken")


def test_edited_prev_hash_is_detected(journal: Journal, db: Path) -> None:
    fill(journal, 10)
    raw(db, "UPDATE events SET prev_hash = ? WHERE seq = 6", ["f" * 64])
    report = verify_journal(db)
    assert (report.first_bad_seq, report.reason) == (6, "row 6: previous-hash link broken")


@pytest.mark.parametrize(
    ("deleted", "first_bad", "reason"),
    [
        ([20], 20, "row 20 missing (seq jumps 19 -> 21)"),
        ([20, 21, 22], 20, "rows 20-22 missing (seq jumps 19 -> 23)"),
        ([1], 1, "row 1 missing (seq starts at 2)"),
    ],
)
def test_deleted_rows_are_detected(
    journal: Journal, db: Path, deleted: list[int], first_bad: int, reason: str
) -> None:
    fill(journal, 30)
    for seq in deleted:
        raw(db, "DELETE FROM events WHERE seq = ?", [seq])
    report = verify_journal(db)
    assert not report.ok
    assert (report.first_bad_seq, report.reason, report.exit_code) == (first_bad, reason, 1)


def test_garbled_data_json_is_reported(journal: Journal, db: Path) -> None:
    fill(journal, 3)
    raw(db, "UPDATE events SET data = '{oops' WHERE seq = 2")
    report = verify_journal(db)
    assert (report.first_bad_seq, report.reason) == (2, "row 2: data is not valid JSON")
    with pytest.raises(JournalError, match="row 2"):
        journal.read()


def test_verify_empty_journal_is_ok(journal: Journal, db: Path) -> None:
    report = verify_journal(db)
    assert (report.ok, report.rows, report.exit_code) == (True, 0, 0)


def test_verify_unusable_inputs_exit_2_and_create_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "journal.db"
    report = verify_journal(missing)
    assert (report.ok, report.first_bad_seq, report.exit_code) == (False, None, 2)
    assert "no such file" in report.reason
    assert not missing.parent.exists()

    assert verify_journal(tmp_path).exit_code == 2  # a directory

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\x00garbage" * 512)
    report = verify_journal(junk)
    assert (report.exit_code, junk.read_bytes()) == (2, b"\x00garbage" * 512)
    assert "not a readable journal" in report.reason

    other = tmp_path / "other.db"
    raw(other, "CREATE TABLE cards (number TEXT)")
    report = verify_journal(other)
    assert report.exit_code == 2
    assert "not a warding journal" in report.reason


def test_verify_reads_a_live_journal_without_writing_it(journal: Journal, db: Path) -> None:
    fill(journal, 25)  # still open: the rows are in the WAL, not yet in the main file
    before = db.read_bytes()
    report = verify_journal(db)
    assert (report.ok, report.rows) == (True, 25)
    assert db.read_bytes() == before
    journal.append("door.state", door="a")  # the writer is not disturbed by the reader
    assert verify_journal(db).rows == 26


# --------------------------------------------------------------------------- JournalWriter


class CountingJournal(Journal):
    """A real journal that remembers the size of every batch it committed."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        super().__init__(path, conn)
        self.batches: list[int] = []

    def append_many(self, records: Sequence[Record]) -> list[Entry]:
        entries = super().append_many(records)
        self.batches.append(len(records))
        return entries


class FlakyJournal(Journal):
    """A real journal whose next ``failures`` writes fail the way a full disk does."""

    failures = 0
    attempts = 0

    def append_many(self, records: Sequence[Record]) -> list[Entry]:
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return super().append_many(records)


class GatedJournal(Journal):
    """A real journal whose writes wait (in the worker thread) until the gate opens."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        super().__init__(path, conn)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def append_many(self, records: Sequence[Record]) -> list[Entry]:
        self.entered.set()
        assert self.gate.wait(timeout=5)
        return super().append_many(records)


@pytest.fixture
async def writer(db: Path) -> AsyncIterator[JournalWriter]:
    w = JournalWriter(Journal.open(db))
    task = asyncio.create_task(w.run())
    yield w
    await w.close()
    await asyncio.wait_for(task, 2)


async def test_record_many_then_flush_keeps_order(writer: JournalWriter, db: Path) -> None:
    for i in range(300):
        writer.record("door.state", door=f"d{i % 4}", i=i, state="locked")
    assert writer.backlog == 300
    await writer.flush()
    assert writer.backlog == 0
    entries = await writer.read(limit=1000)
    assert [e.seq for e in entries] == list(range(1, 301))
    assert [e.data["i"] for e in entries] == list(range(300))
    assert entries[5].door == "d1"
    assert writer.recorded_seq == 300
    assert verify_journal(db).rows == 300


async def test_record_many_keeps_order_and_stamps_one_time(writer: JournalWriter) -> None:
    writer.record("door.command", doors=["a", "b", "c"])
    at = format_ts()
    writer.record_many(
        [("door.state", name, None, {"to": "locked"}) for name in "abc"]
        + [("board.fault", None, "tcp1", {"detail": "x"})],
        ts=at,
    )
    writer.record_many([])  # nothing to queue: no error, no row
    writer.record_many([("door.state", "a", None, {"to": "unlocked"})])  # stamped now
    await writer.flush()
    entries = await writer.read(limit=100)
    assert [(e.kind, e.door, e.device) for e in entries] == [
        ("door.command", None, None),
        ("door.state", "a", None),
        ("door.state", "b", None),
        ("door.state", "c", None),
        ("board.fault", None, "tcp1"),
        ("door.state", "a", None),
    ]
    assert {e.ts for e in entries[1:5]} == {at}
    assert entries[5].ts >= at


async def test_flush_hooks_hand_over_held_records_first(writer: JournalWriter) -> None:
    held: list[str] = []

    def hand_over() -> None:
        while held:
            writer.record("door.state", door=held.pop(0))

    writer.add_flush_hook(hand_over)
    held.append("late")
    await writer.flush()  # the hook records "late" before flush picks its target
    assert [e.door for e in await writer.read(limit=10)] == ["late"]


async def test_record_many_after_close_is_logged_not_raised(db: Path) -> None:
    w = JournalWriter(Journal.open(db))
    await w.close()
    with capture_logs() as logs:
        w.record_many([("door.state", "a", None, {"to": "locked"})])
    assert [(log["event"], log["door"]) for log in logs] == [("journal.record_after_close", "a")]


async def test_record_batches_writes(db: Path) -> None:
    journal = CountingJournal.open(db)
    w = JournalWriter(journal, max_batch=100)
    task = asyncio.create_task(w.run())
    w.record("daemon.start")
    await w.flush()
    for i in range(450):
        w.record("door.state", i=i)
    await w.flush()
    await w.close()
    await task
    assert journal.batches[0] == 1  # a lone event is written at once, no linger
    assert sum(journal.batches) == 451
    assert max(journal.batches) <= 100
    assert len(journal.batches) <= 6  # 450 events cost a handful of fsyncs, not 450


async def test_timestamp_is_taken_at_record_time(writer: JournalWriter) -> None:
    before = format_ts()
    writer.record("door.command", door="main", command="unlock")
    await asyncio.sleep(0.02)
    after_record = format_ts()
    await writer.flush()
    (entry,) = await writer.tail(1)
    assert before <= entry.ts < after_record


async def test_record_does_not_wait_for_the_disk(db: Path) -> None:
    journal = GatedJournal.open(db)
    w = JournalWriter(journal)
    task = asyncio.create_task(w.run())
    w.record("door.state", i=0)
    assert await asyncio.to_thread(journal.entered.wait, 5)
    # The first write is stuck in its thread; the loop and record() carry on regardless.
    for i in range(1, 50):
        w.record("door.state", i=i)
        await asyncio.sleep(0)
    assert w.recorded_seq == 0
    assert w.backlog == 50
    journal.gate.set()
    await w.flush()
    assert [e.data["i"] for e in await w.read()] == list(range(50))
    await w.close()
    await task


async def test_subscribers_receive_committed_entries(writer: JournalWriter, db: Path) -> None:
    q = writer.subscribe()
    writer.record("door.alarm", door="main", alarm="forced")
    writer.record("door.state", door="main", state="open")
    first = await asyncio.wait_for(q.get(), 5)
    # Published only after the commit: another connection already sees the row.
    assert raw(db, "SELECT kind FROM events WHERE seq = ?", [first.seq]) == [("door.alarm",)]
    second = await asyncio.wait_for(q.get(), 5)
    assert [first, second] == await writer.read()
    writer.unsubscribe(q)
    writer.unsubscribe(q)  # unknown queues are ignored
    writer.record("door.state", door="main", state="closed")
    await writer.flush()
    assert q.empty()


async def test_slow_subscriber_is_dropped_not_waited_for(writer: JournalWriter) -> None:
    slow = writer.subscribe(maxsize=2)
    fast = writer.subscribe()
    for i in range(5):
        writer.record("door.state", i=i)
    await writer.flush()
    assert writer.recorded_seq == 5
    assert slow.dropped
    assert [(await slow.get()).seq for _ in range(2)] == [1, 2]
    with pytest.raises(JournalError, match="dropped"):
        await slow.get()
    assert [fast.get_nowait().seq for _ in range(5)] == [1, 2, 3, 4, 5]
    assert not fast.dropped


async def test_close_drains_pending_records_without_run(db: Path) -> None:
    w = JournalWriter(Journal.open(db))
    for i in range(20):
        w.record("door.state", i=i)
    await w.close()
    await w.close()  # idempotent
    assert w.journal.closed
    assert w.recorded_seq == 20
    assert verify_journal(db).rows == 20
    assert [r[0] for r in raw(db, "SELECT json_extract(data, '$.i') FROM events")] == list(
        range(20)
    )


async def test_close_makes_run_return(db: Path) -> None:
    w = JournalWriter(Journal.open(db))
    task = asyncio.create_task(w.run())
    w.record("daemon.start")
    await asyncio.gather(w.close(), w.close())
    await asyncio.wait_for(task, 2)
    assert verify_journal(db).rows == 1


async def test_write_failure_keeps_the_batch_and_retries(db: Path) -> None:
    journal = FlakyJournal.open(db)
    journal.failures = 3
    w = JournalWriter(journal, retry_initial_s=0.001, retry_max_s=0.004)
    task = asyncio.create_task(w.run())
    with capture_logs() as logs:
        for i in range(10):
            w.record("door.state", i=i)
        await asyncio.wait_for(w.flush(), 5)
    assert journal.attempts >= 4
    assert [e.data["i"] for e in await w.read()] == list(range(10))
    failed = [e for e in logs if e["event"] == "journal.write_failed"]
    assert len(failed) == 3
    assert failed[0]["error_type"] == "OperationalError"
    assert any(e["event"] == "journal.write_recovered" for e in logs)
    await w.close()
    await task
    assert verify_journal(db).rows == 10


async def test_cancelled_run_mid_write_loses_and_duplicates_nothing(db: Path) -> None:
    journal = GatedJournal.open(db)
    w = JournalWriter(journal)
    task = asyncio.create_task(w.run())
    for i in range(3):
        w.record("door.state", i=i)
    assert await asyncio.to_thread(journal.entered.wait, 5)
    task.cancel()  # the daemon shutting down while a batch is being committed
    with pytest.raises(asyncio.CancelledError):
        await task
    for i in range(3, 5):
        w.record("door.state", i=i)
    journal.gate.set()
    await w.close()
    assert [r[0] for r in raw(db, "SELECT json_extract(data, '$.i') FROM events")] == [
        0,
        1,
        2,
        3,
        4,
    ]
    assert verify_journal(db).rows == 5


async def test_record_after_close_is_logged_not_raised(db: Path) -> None:
    w = JournalWriter(Journal.open(db))
    await w.close()
    with capture_logs() as logs:
        w.record("door.state", door="main", state="open")
    assert [e["event"] for e in logs] == ["journal.record_after_close"]
    assert logs[0]["door"] == "main"
    assert logs[0]["data"] == {"state": "open"}
    assert verify_journal(db).rows == 0


async def test_close_gives_up_on_a_dead_disk_and_logs_the_events(db: Path) -> None:
    journal = FlakyJournal.open(db)
    journal.failures = 10**9
    w = JournalWriter(journal, retry_initial_s=0.001, retry_max_s=0.01)
    w.record("door.alarm", door="main", alarm="forced")
    with capture_logs() as logs:
        await w.close(timeout_s=0.1)
    lost = [e for e in logs if e["event"] == "journal.event_not_recorded"]
    assert len(lost) == 1
    assert (lost[0]["kind"], lost[0]["door"], lost[0]["data"]) == (
        "door.alarm",
        "main",
        {"alarm": "forced"},
    )
    assert journal.closed


async def test_recorded_seq_starts_from_an_existing_journal(db: Path) -> None:
    j = Journal.open(db)
    fill(j, 7)
    j.close()
    w = JournalWriter(Journal.open(db))
    assert w.recorded_seq == 7
    w.record("daemon.start")
    await w.flush()
    assert w.recorded_seq == 8
    await w.close()
    assert verify_journal(db).rows == 8
