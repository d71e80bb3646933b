"""Journal integrity beyond the chain: canonical stored text, read-only verification, odd rows
and odd records (review findings B, C, H)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import controller.journal as journal_mod
from controller.errors import JournalCorruptError
from controller.journal import (
    Journal,
    JournalWriter,
    Record,
    _held_by_other_process,
    canonical_json,
    verify_journal,
)

REPO = Path(__file__).resolve().parents[2]


def raw(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


# --------------------------------------------------------------------------- canonical stored text

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
json_objects = st.dictionaries(
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=6),
    json_values,
    min_size=1,
    max_size=4,
)


def _reencodings(data: dict[str, Any]) -> dict[str, str]:
    """Texts that decode (with json.loads) to exactly ``data`` but are not its canonical form."""
    canon = canonical_json(data)
    first_key = next(iter(data))
    return {
        "spaces": json.dumps(data, sort_keys=True, ensure_ascii=False),
        "ascii-escapes": json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True),
        "key-order": json.dumps(
            dict(reversed(list(data.items()))), separators=(",", ":"), ensure_ascii=False
        ),
        # json.loads keeps the LAST of duplicate keys, SQLite's json_extract the FIRST
        "duplicate-key": "{" + json.dumps(first_key) + ':"forged",' + canon[1:],
        "trailing-space": canon + " ",
        "leading-newline": "\n" + canon,
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=json_objects, how=st.sampled_from(sorted(_reencodings({"a": 1}))))
def test_an_edit_that_decodes_the_same_is_still_a_bad_row(data: dict[str, Any], how: str) -> None:
    text = _reencodings(data)[how]
    canon = canonical_json(data)
    if text == canon:  # e.g. ascii-escapes of pure-ASCII data, key-order of one key
        return
    assert json.loads(text) == json.loads(canon)  # the edit is invisible to the decoded value
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "journal.db"
        with Journal.open(db) as j:
            j.append("a")
            j.append("access.decision", door="lobby", data=data)
            j.append("b")
        assert verify_journal(db).ok  # what this code wrote verifies
        raw(db, "UPDATE events SET data = ? WHERE seq = 2", (text,))
        report = verify_journal(db)
        assert (report.ok, report.first_bad_seq, report.rows, report.exit_code) == (
            False,
            2,
            1,
            1,
        )
        assert report.reason == "row 2: data is not stored in canonical form"


def test_review_repro_duplicate_key_is_caught(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    with Journal.open(db) as j:
        j.append(
            "access.decision",
            door="lobby",
            data={"reason": "granted-override", "cardholder": "Alice", "cardholder_id": 7},
        )
    forged = (
        '{"cardholder":"Mallory","cardholder":"Alice","cardholder_id":7,'
        '"reason":"granted-override"}'
    )
    raw(db, "UPDATE events SET data = ? WHERE seq = 1", (forged,))
    assert raw(db, "SELECT json_extract(data, '$.cardholder') FROM events") == [("Mallory",)]
    report = verify_journal(db)
    assert (report.first_bad_seq, report.reason) == (
        1,
        "row 1: data is not stored in canonical form",
    )


@pytest.mark.parametrize(
    ("column", "reason"),
    [("data", "data is not text"), ("ts", "ts is not text"), ("kind", "kind is not text")],
)
def test_a_column_stored_as_blob_is_a_bad_row(tmp_path: Path, column: str, reason: str) -> None:
    db = tmp_path / "journal.db"
    with Journal.open(db) as j:
        for i in range(3):
            j.append("door.state", door="d", data={"i": i})
    raw(db, f"UPDATE events SET {column} = CAST({column} AS BLOB) WHERE seq = 2")
    report = verify_journal(db)
    assert (report.first_bad_seq, report.reason, report.exit_code) == (2, f"row 2: {reason}", 1)
    # and a reader (events, incident list/report) gets one error naming the row
    with Journal.open(db) as j, pytest.raises(JournalCorruptError) as info:
        j.read()
    assert info.value.seq == 2
    assert str(info.value) == f"journal row 2: {reason}"


# --------------------------------------------------------------------------- read-only verify


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged reader can traverse (tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="warding-ro-"))
    base.chmod(0o755)
    yield base
    for p in base.rglob("*"):
        if p.is_dir():
            p.chmod(0o755)
    shutil.rmtree(base)


def _verify_as_reader(db: Path) -> dict[str, Any]:
    """verify_journal(db) by someone who can read the journal but not write beside it.

    As root: uid nobody with the journal's group (as a group member reads a 0640 file in a
    0750 directory). Otherwise: the directory made read-only, as on read-only media.
    """
    code = (
        "import json, os, sys\n"
        "from pathlib import Path\n"
        "from controller.journal import verify_journal\n"
        "if os.geteuid() == 0:  # drop to nobody + the journal's group once Python is loaded\n"
        "    os.setgroups([]); os.setgid(int(sys.argv[2])); os.setuid(65534)\n"
        "r = verify_journal(Path(sys.argv[1]))\n"
        "print(json.dumps({'ok': r.ok, 'rows': r.rows, 'head_seq': r.head_seq,"
        " 'head_hash': r.head_hash, 'reason': r.reason}))\n"
    )
    if os.geteuid() != 0:
        db.parent.chmod(0o550)
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, str(db), str(db.stat().st_gid)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"},
        )
    finally:
        db.parent.chmod(0o750)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_a_reader_verifies_a_closed_journal_it_cannot_write_beside(shared_dir: Path) -> None:
    db = shared_dir / "lib" / "journal.db"
    with Journal.open(db) as j:
        entries = [j.append("door.state", door="d", data={"i": i}) for i in range(5)]
    assert sorted(p.name for p in db.parent.iterdir()) == ["journal.db"]
    result = _verify_as_reader(db)
    assert result == {
        "ok": True,
        "rows": 5,
        "head_seq": 5,
        "head_hash": entries[-1].hash,
        "reason": f"5 rows, chain intact (row 5 hash {entries[-1].hash})",
    }
    assert sorted(p.name for p in db.parent.iterdir()) == ["journal.db"]  # nothing written


def test_a_read_only_copy_with_committed_rows_in_its_wal_verifies_them_all(
    shared_dir: Path,
) -> None:
    """A crash leaves rows only in the -wal; an archive copy on read-only media has both."""
    live = shared_dir / "live" / "journal.db"
    writer = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from controller.journal import Journal\n"
        "j = Journal.open(Path(sys.argv[1]))\n"
        "for i in range(9):\n"
        "    j.append('door.state', door='d', data={'i': i})\n"
        "print(j.tail(1)[0].hash)\n"
        "os._exit(0)  # a crash: the WAL is never checkpointed\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", writer, str(live)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    head = out.stdout.strip()
    archive = shared_dir / "archive"
    archive.mkdir(mode=0o750)
    for name in ("journal.db", "journal.db-wal"):  # the -shm is not part of a copy
        shutil.copy2(live.parent / name, archive / name)
        (archive / name).chmod(0o640)
    assert (archive / "journal.db-wal").stat().st_size > 0
    result = _verify_as_reader(archive / "journal.db")
    assert (result["ok"], result["rows"], result["head_seq"], result["head_hash"]) == (
        True,
        9,
        9,
        head,
    )
    assert sorted(p.name for p in archive.iterdir()) == ["journal.db", "journal.db-wal"]


def test_a_read_only_journal_reached_by_a_symlink_verifies_its_wal_rows_too(
    shared_dir: Path,
) -> None:
    live = shared_dir / "live" / "journal.db"
    writer = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from controller.journal import Journal\n"
        "j = Journal.open(Path(sys.argv[1]))\n"
        "for i in range(7):\n"
        "    j.append('door.state', door='d', data={'i': i})\n"
        "os._exit(0)  # a crash: the rows stay in the WAL\n"
    )
    subprocess.run(
        [sys.executable, "-c", writer, str(live)],
        check=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    (live.parent / "journal.db-shm").unlink(missing_ok=True)
    link = shared_dir / "live" / "current.db"
    link.symlink_to(live.name)  # -wal and lock are beside the real file, not the link
    result = _verify_as_reader(link)
    assert (result["ok"], result["rows"], result["head_seq"]) == (True, 7, 7)


def test_a_stop_signal_during_a_private_copy_still_removes_it() -> None:
    """SIGTERM/SIGHUP become SystemExit while the copy exists (so it is cleaned up)."""
    before = signal.getsignal(signal.SIGTERM)

    def stopped_inside() -> None:
        with journal_mod._signals_exit():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # (the signal arrives first)

    with pytest.raises(SystemExit) as info:
        stopped_inside()
    assert info.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before  # handlers put back


def test_an_ignored_hang_up_stays_ignored_during_a_private_copy() -> None:
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with journal_mod._signals_exit():
            os.kill(os.getpid(), signal.SIGHUP)  # ignored: no SystemExit
            time.sleep(0.05)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_another_process_holding_the_journal_is_detected(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    Journal.open(db).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom pathlib import Path\nfrom controller.journal import Journal\n"
            "j = Journal.open(Path(sys.argv[1])); j.last_seq(); print('open', flush=True)\n"
            "sys.stdin.read()\n",
            str(db),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        assert _held_by_other_process(db)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()
    assert not _held_by_other_process(db)


# --------------------------------------------------------------------------- odd records


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


class _BadMapping(dict[str, Any]):
    def items(self) -> Any:
        raise RuntimeError("cannot iterate")


async def test_an_unencodable_record_never_blocks_the_records_behind_it(tmp_path: Path) -> None:
    w = JournalWriter(Journal.open(tmp_path / "j.db"), retry_initial_s=0.01, retry_max_s=0.05)
    task = asyncio.create_task(w.run())
    try:
        w.record("poison", n=10**5000)  # over Python's int -> decimal string limit
        w.record("odd", door="d", obj=_Unprintable())
        w.record_many([("odder", None, None, _BadMapping(x=1))])
        w.record("door.alarm", door="front", alarm="forced")
        await asyncio.wait_for(w.flush(), 5)
        entries = await w.read()
    finally:
        await w.close(timeout_s=2)
        await task
    assert [e.kind for e in entries] == ["poison", "odd", "odder", "door.alarm"]
    assert entries[0].data["n"] == hex(10**5000)
    assert entries[1].data["obj"] == "<unprintable _Unprintable>"
    assert entries[2].data["journal_note"] == "data could not be encoded and was replaced"
    assert entries[3].data == {"alarm": "forced"}
    assert verify_journal(tmp_path / "j.db").ok


def test_prepare_never_raises_on_odd_fields(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.db") as j:
        entries = j.append_many(
            [Record(_Unprintable(), door=_Unprintable(), data={"k": 10**5000})]  # type: ignore[arg-type]
        )
    assert entries[0].kind == "<unprintable _Unprintable>"
    assert verify_journal(tmp_path / "j.db").ok
