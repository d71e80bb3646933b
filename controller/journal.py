"""Durable, hash-chained event journal: SQLite in WAL mode, fsync before an event counts.

Theory of operation
-------------------
Chain. Every row carries ``prev_hash`` (the previous row's ``hash``; 64 zeros for row 1) and
``hash = sha256(prev_hash + canonical_json([seq, ts, kind, door, device, data])).hexdigest()``,
where ``canonical_json`` is ``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False, allow_nan=False)`` encoded as UTF-8 and ``data`` is the decoded ``data``
column. Editing a row breaks its own hash; re-hashing it breaks the next row's link; deleting a
row leaves a gap in ``seq`` (sequence numbers are contiguous from 1). Only truncation of the
newest rows is invisible to the chain alone: anchor the head hash elsewhere (MQTT, logs).

Durability. The connection runs ``journal_mode=WAL`` with ``synchronous=FULL``, so SQLite fsyncs
the WAL on every COMMIT. ``Journal.append_many`` returns only after its COMMIT, and only then
does an event count as recorded (``JournalWriter.recorded_seq``, ``flush()``, subscribers).

Batching, off the hot path. ``JournalWriter.record`` only timestamps the event and appends it
to an in-memory deque; it never touches the disk and never awaits. One write task at a time
takes the head of the deque (up to ``max_batch`` records), commits it in ONE transaction in a
worker thread (``asyncio.to_thread``) and only then removes those records from the deque.
Records that arrive during a write form the next batch, so a burst costs one fsync, not one per
event, and a lone event is written at once (no linger).

Never lose an event. A failed write (disk full, database locked, I/O error) leaves the batch at
the head of the deque; it is retried with a capped exponential backoff, forever, while new
records keep queueing behind it in order. The write runs as a task that cancellation of its
awaiters does not interrupt (``asyncio.shield``): if ``run()`` is cancelled mid-write, the
commit still lands and ``close()`` collects it, so a batch is never written twice by us. The one
exception is the disk lying to SQLite (a COMMIT that reports failure yet later turns out
durable): the retry then records those events again under new seqs, which keeps the chain valid.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import hashlib
import itertools
import json
import math
import os
import shutil
import signal
import sqlite3
import struct
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import Enum
from pathlib import Path
from typing import Any, Final, NamedTuple, Self

import structlog

from controller.errors import JournalCorruptError, JournalError

__all__ = [
    "GENESIS_HASH",
    "SCHEMA_VERSION",
    "Entry",
    "Journal",
    "JournalWriter",
    "Record",
    "Subscription",
    "VerifyReport",
    "canonical_json",
    "entry_hash",
    "format_ts",
    "verify_journal",
]

log = structlog.get_logger(__name__)

GENESIS_HASH: Final = "0" * 64
"""``prev_hash`` of the first row: there is no previous row."""

SCHEMA_VERSION: Final = 1
"""Value of ``meta.schema_version`` this module reads and writes."""

_DB_FILE_MODE: Final = 0o640
_DIR_MODE: Final = 0o750
_MAX_DATA_DEPTH: Final = 32
CLOSE_GRACE_S: Final = 1.0
"""How long ``close`` lets a write already under way finish after its drain timed out."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq       INTEGER PRIMARY KEY,
    ts        TEXT NOT NULL,
    kind      TEXT NOT NULL,
    door      TEXT,
    device    TEXT,
    data      TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_kind_seq ON events (kind, seq);
"""
_EVENT_COLUMNS: Final = ("seq", "ts", "kind", "door", "device", "data", "prev_hash", "hash")
_SELECT_EVENTS: Final = f"SELECT {', '.join(_EVENT_COLUMNS)} FROM events"  # noqa: S608


# --------------------------------------------------------------------------- encoding and hashing


_ts_second: tuple[int, str] = (-1, "")  # (epoch second, its prefix): one strftime a second


def format_ts(moment: datetime | None = None) -> str:
    """Return ``moment`` (default: now) as ISO-8601 UTC with microseconds and a ``Z``."""
    global _ts_second  # noqa: PLW0603 - a cache replaced whole (atomic), never mutated
    if moment is None:
        # the hot path (every record): format the second once, then only the microseconds
        sec, us = divmod(time.time_ns() // 1000, 1_000_000)
        cached = _ts_second
        if cached[0] != sec:
            cached = _ts_second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
        return f"{cached[1]}.{us:06d}Z"
    if moment.tzinfo is None:
        raise ValueError("journal timestamps need an aware datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: Any) -> str:
    """Encode ``value`` the one way the hash chain uses (sorted keys, no spaces, raw UTF-8)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def entry_hash(
    prev_hash: str,
    *,
    seq: int,
    ts: str,
    kind: str,
    door: str | None,
    device: str | None,
    data: Mapping[str, Any],
) -> str:
    """Return the chain hash of one row: sha256 hex of ``prev_hash`` + canonical JSON of the row."""
    payload = prev_hash + canonical_json([seq, ts, kind, door, device, data])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _clean_str(text: str) -> str:
    """Return ``text`` with anything UTF-8 cannot carry (lone surrogates) backslash-escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _jsonable(value: Any, depth: int = 0) -> Any:
    """Return a JSON-safe copy of ``value``; unknown objects become strings, never an error."""
    if depth > _MAX_DATA_DEPTH:
        return "<nested too deep>"
    if isinstance(value, Enum):
        return _jsonable(value.value, depth + 1)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        try:
            json.dumps(value)
        except ValueError:  # beyond Python's int->decimal limit (4300 digits): hex has none
            return hex(value)
        return int(value)  # an int subclass (IntFlag...) as a plain int
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return _clean_str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {
            _clean_str(k if isinstance(k, str) else str(_jsonable(k, depth + 1))): _jsonable(
                v, depth + 1
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v, depth + 1) for v in value]
    try:
        return _clean_str(str(value))
    except Exception:  # noqa: BLE001 - a __str__ that raises: name the type instead
        return f"<unprintable {type(value).__name__}>"


def _loggable(data: object) -> Any:
    """``data`` in a form every log renderer can print (an unwritten record's details)."""
    try:
        return _jsonable(data)
    except Exception:  # noqa: BLE001 - logging must not fail on odd data
        return f"<unprintable {type(data).__name__}>"


@dataclass(frozen=True, slots=True)
class _Prepared:
    ts: str
    kind: str
    door: str | None
    device: str | None
    data: dict[str, Any]
    data_json: str


def _prepare_strict(record: Record) -> _Prepared | None:
    """Return the record as stored and hashed, or None if it needs coercing first."""
    fields = (record.ts, record.kind, record.door, record.device)
    if not isinstance(record.ts, str) or not isinstance(record.kind, str):
        return None
    if not all(f is None or isinstance(f, str) for f in fields):
        return None
    try:
        # dumps -> loads -> dumps: the stored text is canonical even for non-str keys.
        data = json.loads(canonical_json(record.data))
        if not isinstance(data, dict):
            return None
        data_json = canonical_json(data)
        # UTF-8 cannot carry lone surrogates; SQLite could not store them either.
        canonical_json(list(fields)).encode()
        data_json.encode()
    except Exception:  # noqa: BLE001 - anything odd (huge ints, bad keys...): coerce instead
        return None
    return _Prepared(record.ts, record.kind, record.door, record.device, data, data_json)


def _safe_text(value: object) -> str:
    """``str(value)`` as UTF-8-safe text; a type name if even that fails."""
    try:
        return _clean_str(value if isinstance(value, str) else str(value))
    except Exception:  # noqa: BLE001 - a __str__ that raises
        return f"<unprintable {type(value).__name__}>"


def _prepare(record: Record) -> _Prepared:
    """Normalise a record to exactly what is stored and hashed; never raises.

    Odd values are coerced to a readable form (``_jsonable``); if even that fails, the data is
    replaced by a note saying so, so that one bad record never blocks the records behind it.
    """
    prepared = _prepare_strict(record)
    if prepared is not None:
        return prepared
    ts = _safe_text(record.ts)
    kind = _safe_text(record.kind)
    door = None if record.door is None else _safe_text(record.door)
    device = None if record.device is None else _safe_text(record.device)
    try:
        raw = record.data if isinstance(record.data, Mapping) else {"value": record.data}
        data = json.loads(canonical_json(_jsonable(raw)))
        if not isinstance(data, dict):  # pragma: no cover - _jsonable keeps a mapping a dict
            raise TypeError("data is not an object")
        data_json = canonical_json(data)
        data_json.encode()
    except Exception as exc:  # noqa: BLE001 - replace what cannot be encoded, never block
        data = {
            "journal_note": "data could not be encoded and was replaced",
            "data_type": type(record.data).__name__,
            "error": _safe_text(exc)[:200],
        }
        data_json = canonical_json(data)
        log.error("journal.data_replaced", kind=kind, door=door, error=data["error"])
    else:
        log.warning("journal.data_coerced", kind=kind, door=door)
    return _Prepared(ts=ts, kind=kind, door=door, device=device, data=data, data_json=data_json)


# --------------------------------------------------------------------------- records and entries


class Record(NamedTuple):
    """An event to be journaled; ``ts`` is when it happened, not when it is written.

    A NamedTuple: the writer queues one per event, hundreds in a lock-all. An empty ``ts``
    is stamped when the record is written (for direct ``Journal`` callers).
    """

    kind: str
    door: str | None = None
    device: str | None = None
    data: Mapping[str, Any] = {}  # shared default: records are never mutated
    ts: str = ""


@dataclass(frozen=True, slots=True)
class Entry:
    """A committed journal row, exactly as stored and hashed."""

    seq: int
    ts: str
    kind: str
    door: str | None
    device: str | None
    data: dict[str, Any]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        """Return the entry as a JSON-ready dict (for the control API and MQTT)."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "kind": self.kind,
            "door": self.door,
            "device": self.device,
            "data": self.data,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def _entry_from_row(row: Sequence[Any]) -> Entry:
    """Build an Entry from an ``events`` row; raise JournalCorruptError if it cannot be decoded."""
    seq, ts, kind, door, device, data_json, prev_hash, hash_ = row
    for name, value, nullable in (
        ("ts", ts, False),
        ("kind", kind, False),
        ("door", door, True),
        ("device", device, True),
        ("prev_hash", prev_hash, False),
        ("hash", hash_, False),
    ):
        if not (isinstance(value, str) or (nullable and value is None)):
            raise JournalCorruptError(seq, f"{name} is not text")
    if not isinstance(data_json, str):
        raise JournalCorruptError(seq, "data is not text")
    try:
        data = json.loads(data_json)
    except (ValueError, RecursionError) as exc:
        raise JournalCorruptError(seq, "data is not valid JSON") from exc
    if not isinstance(data, dict):
        raise JournalCorruptError(seq, "data is not a JSON object")
    return Entry(seq, ts, kind, door, device, data, prev_hash, hash_)


# --------------------------------------------------------------------------- the journal


class Journal:
    """Synchronous access to one journal file; every call is serialised by an internal lock.

    Safe to call from any thread (the writer uses worker threads); a call may block for an
    fsync, so from the event loop use ``JournalWriter`` or ``asyncio.to_thread``.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        """Wrap an open, initialised connection; use ``Journal.open`` instead."""
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> Self:
        """Open or create the journal at ``path`` (WAL, synchronous=FULL); raise JournalError."""
        try:
            path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _DB_FILE_MODE))
        except OSError as exc:
            raise JournalError(f"cannot create journal {path}: {exc.strerror or exc}") from exc
        try:
            conn = sqlite3.connect(
                path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal {path}: {exc}") from exc
        try:
            _initialise(conn, path)
        except BaseException:
            conn.close()
            raise
        return cls(path, conn)

    def append(
        self,
        kind: str,
        *,
        door: str | None = None,
        device: str | None = None,
        data: Mapping[str, Any] | None = None,
        ts: datetime | str | None = None,
    ) -> Entry:
        """Commit one event (fsync) and return it; ``ts`` defaults to now."""
        stamp = ts if isinstance(ts, str) else format_ts(ts)
        record = Record(kind, door, device, {} if data is None else data, stamp)
        return self.append_many([record])[0]

    def append_many(self, records: Sequence[Record]) -> list[Entry]:
        """Commit ``records`` in one transaction (fsync), continuing the chain; return them."""
        if not records:
            return []
        now = format_ts()
        prepared = [_prepare(r if r.ts else r._replace(ts=now)) for r in records]
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                seq, prev = _head(conn)
                entries: list[Entry] = []
                for p in prepared:
                    seq += 1
                    digest = entry_hash(
                        prev,
                        seq=seq,
                        ts=p.ts,
                        kind=p.kind,
                        door=p.door,
                        device=p.device,
                        data=p.data,
                    )
                    entries.append(Entry(seq, p.ts, p.kind, p.door, p.device, p.data, prev, digest))
                    prev = digest
                conn.executemany(
                    "INSERT INTO events (seq, ts, kind, door, device, data, prev_hash, hash)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (e.seq, e.ts, e.kind, e.door, e.device, p.data_json, e.prev_hash, e.hash)
                        for e, p in zip(entries, prepared, strict=True)
                    ],
                )
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise JournalError(f"journal write failed ({self.path}): {exc}") from exc
            except BaseException:
                _rollback(conn)
                raise
        return entries

    def read(
        self, after_seq: int = 0, limit: int = 1000, kinds: AbstractSet[str] | None = None
    ) -> list[Entry]:
        """Return up to ``limit`` entries with seq > ``after_seq``, oldest first, of ``kinds``."""
        if limit < 0:
            raise ValueError("limit must be >= 0")
        if limit == 0 or (kinds is not None and not kinds):
            return []
        sql = f"{_SELECT_EVENTS} WHERE seq > ?"
        params: list[Any] = [after_seq]
        if kinds is not None:
            ordered = sorted(kinds)
            sql += f" AND kind IN ({', '.join('?' * len(ordered))})"
            params.extend(ordered)
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit)
        return self._query(sql, params)

    def tail(self, n: int) -> list[Entry]:
        """Return the newest ``n`` entries, oldest first."""
        if n <= 0:
            return []
        rows = self._query(f"{_SELECT_EVENTS} ORDER BY seq DESC LIMIT ?", [n])
        rows.reverse()
        return rows

    def last_seq(self) -> int:
        """Return the highest committed seq (0 for an empty journal)."""
        with self._lock:
            try:
                return _head(self._connection())[0]
            except sqlite3.Error as exc:
                raise JournalError(f"journal read failed ({self.path}): {exc}") from exc

    def close(self) -> None:
        """Close the file (SQLite checkpoints the WAL); idempotent."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    @property
    def closed(self) -> bool:
        """True once ``close()`` has run."""
        return self._conn is None

    def __enter__(self) -> Self:
        """Use the journal as a context manager that closes it."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the journal."""
        self.close()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise JournalError(f"journal {self.path} is closed")
        return self._conn

    def _query(self, sql: str, params: Iterable[Any]) -> list[Entry]:
        with self._lock:
            try:
                rows = self._connection().execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise JournalError(f"journal read failed ({self.path}): {exc}") from exc
        return [_entry_from_row(r) for r in rows]


def _initialise(conn: sqlite3.Connection, path: Path) -> None:
    """Set the durability PRAGMAs and create or check the schema; raise JournalError."""
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise JournalError(f"{path} is an SQLite database but not a warding journal")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise JournalError(f"journal {path}: cannot enable WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('created', ?)", (format_ts(),)
        )
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if version is None or version[0] != str(SCHEMA_VERSION):
            conn.execute("ROLLBACK")
            found = None if version is None else version[0]
            raise JournalError(f"journal {path}: unsupported schema_version {found!r}")
        columns = tuple(r[1] for r in conn.execute("PRAGMA table_info(events)"))
        if columns != _EVENT_COLUMNS:
            conn.execute("ROLLBACK")
            raise JournalError(f"journal {path}: unexpected events columns {columns}")
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _rollback(conn)
        raise JournalError(f"cannot open journal {path}: {exc}") from exc


def _head(conn: sqlite3.Connection) -> tuple[int, str]:
    """Return (seq, hash) of the newest row, or (0, GENESIS_HASH) for an empty journal."""
    row = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back an open transaction, ignoring a connection that is already unusable."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Outcome of ``verify_journal``.

    ``rows`` counts the rows that verified before the first problem; ``first_bad_seq`` is the
    first row that is wrong or missing (None when the chain is intact or the file is unusable);
    ``head_hash`` and ``head_seq`` are the hash and seq of the last good row, to compare with an
    external anchor. ``reason`` never repeats the file's path (the caller knows it).
    """

    ok: bool
    rows: int
    first_bad_seq: int | None
    reason: str
    head_hash: str | None = None
    head_seq: int | None = None

    @property
    def exit_code(self) -> int:
        """Exit status for ``warding journal verify``: 0 intact, 1 chain broken, 2 unusable file."""
        if self.ok:
            return 0
        return 1 if self.first_bad_seq is not None else 2


class _ReadOnlyStorage(Exception):
    """SQLite cannot read the WAL-mode file in place without writing its ``-shm`` side file."""


_SQLITE_READONLY: Final = 8
_SQLITE_CANTOPEN: Final = 14
# SQLite's lock bytes on the database file: every open connection of a WAL-mode database holds
# a read lock in the SHARED range while it is open (see SQLite's os_unix.c).
_SQLITE_PENDING_BYTE: Final = 0x40000000
_SQLITE_LOCK_SPAN: Final = 512


def verify_journal(path: Path) -> VerifyReport:
    """Check every hash, link and seq of the journal at ``path``, read-only; never raises.

    Opens the file read-only (``mode=ro``). Where SQLite cannot do that because it may not
    create or write the ``-shm`` side file (read-only media, a reader with read access only
    after the daemon stopped), and no other process has the journal open, it reads the file as
    immutable, or a private copy of the file and its ``-wal`` when that holds committed rows.
    """
    if not path.exists():
        return VerifyReport(False, 0, None, "no such file")
    if not path.is_file():
        return VerifyReport(False, 0, None, "not a regular file")
    path = path.resolve()  # a symlink: the -wal and the lock are beside the real file
    uri = path.as_uri()
    try:
        return _verify_uri(f"{uri}?mode=ro")
    except _ReadOnlyStorage as exc:
        first_error = str(exc)
    if _held_by_other_process(path):
        return VerifyReport(
            False,
            0,
            None,
            f"cannot read it read-only while another process has it open ({first_error});"
            " run as the journal's owner, or verify a copy",
        )
    wal = path.with_name(path.name + "-wal")
    try:
        wal_size = wal.stat().st_size if wal.exists() else 0
    except OSError as exc:
        return VerifyReport(False, 0, None, f"cannot read {wal.name}: {exc.strerror or exc}")
    try:
        if wal_size == 0:
            # nothing in a WAL to recover: the database file alone is the journal
            return _verify_uri(f"{uri}?mode=ro&immutable=1")
        # the copy holds the whole journal (card data): it must go even if we are stopped
        with _signals_exit(), tempfile.TemporaryDirectory(prefix="warding-verify-") as tmp:
            copy = Path(tmp) / "journal.db"
            shutil.copyfile(path, copy)
            shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
            return _verify_uri(f"{copy.as_uri()}?mode=ro")
    except _ReadOnlyStorage as exc:
        return VerifyReport(False, 0, None, f"not a readable journal: {exc}")
    except OSError as exc:
        return VerifyReport(False, 0, None, f"cannot read it: {exc.strerror or exc}")


@contextlib.contextmanager
def _signals_exit() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise SystemExit (so cleanup runs), main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum: int, frame: object) -> None:
        del frame
        raise SystemExit(128 + signum)

    # a signal that is ignored (nohup) stays ignored
    signals = [s for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) != signal.SIG_IGN]
    saved = {sig: signal.signal(sig, leave) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _held_by_other_process(path: Path) -> bool:
    """True if another process holds SQLite's lock bytes of ``path`` (has the journal open)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        layout = "hhqqi"  # struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid
        probe = struct.pack(
            layout, fcntl.F_WRLCK, os.SEEK_SET, _SQLITE_PENDING_BYTE, _SQLITE_LOCK_SPAN, 0
        )
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, probe)
        return int(struct.unpack(layout, answer)[0]) != fcntl.F_UNLCK
    except OSError:
        return False
    finally:
        os.close(fd)


def _verify_uri(uri: str) -> VerifyReport:
    """Verify the journal SQLite opens at ``uri``; raise _ReadOnlyStorage (see verify_journal)."""
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=10.0)
    except sqlite3.Error as exc:
        if _is_readonly_storage(exc):
            raise _ReadOnlyStorage(str(exc)) from exc
        return VerifyReport(False, 0, None, f"cannot open: {exc}")
    try:
        return _verify(conn)
    finally:
        conn.close()


def _is_readonly_storage(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (_SQLITE_READONLY, _SQLITE_CANTOPEN)


def _verify(conn: sqlite3.Connection) -> VerifyReport:
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"meta", "events"} <= tables:
            return VerifyReport(False, 0, None, "not a warding journal (tables missing)")
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if version is None or version[0] != str(SCHEMA_VERSION):
            found = None if version is None else version[0]
            return VerifyReport(False, 0, None, f"unsupported schema_version {found!r}")
        cursor = conn.execute(f"{_SELECT_EVENTS} ORDER BY seq")
    except sqlite3.Error as exc:
        if _is_readonly_storage(exc):
            raise _ReadOnlyStorage(str(exc)) from exc
        return VerifyReport(False, 0, None, f"not a readable journal: {exc}")

    good = 0
    prev_seq, prev_hash = 0, GENESIS_HASH

    def broken(seq: int, reason: str) -> VerifyReport:
        head = prev_hash if good else None
        return VerifyReport(False, good, seq, reason, head, prev_seq if good else None)

    try:
        for row in cursor:
            seq, ts, kind, door, device, data_json, stored_prev, stored_hash = row
            if seq < 1:  # rows come in ascending seq order, so only the first can be < 1
                return broken(seq, f"row {seq}: sequence numbers start at 1")
            if seq != prev_seq + 1:
                missing = (
                    f"row {prev_seq + 1} missing"
                    if seq == prev_seq + 2
                    else f"rows {prev_seq + 1}-{seq - 1} missing"
                )
                jump = f"seq jumps {prev_seq} -> {seq}" if prev_seq else f"seq starts at {seq}"
                return broken(prev_seq + 1, f"{missing} ({jump})")
            if stored_prev != prev_hash:
                return broken(seq, f"row {seq}: previous-hash link broken")
            try:
                entry = _entry_from_row(row)
                # The hash covers the decoded data; the stored text must be exactly its
                # canonical encoding, or an edit that decodes the same (a duplicate key, other
                # key order, spaces, \u escapes) would still verify while other readers (SQLite's
                # own JSON functions take the first of duplicate keys) see something else.
                if canonical_json(entry.data) != data_json:
                    return broken(seq, f"row {seq}: data is not stored in canonical form")
                expected: str | None = entry_hash(
                    prev_hash,
                    seq=seq,
                    ts=ts,
                    kind=kind,
                    door=door,
                    device=device,
                    data=entry.data,
                )
            except JournalCorruptError as exc:  # not JSON, or a column that is not TEXT
                return broken(seq, f"row {seq}: {exc.reason}")
            except (TypeError, ValueError, RecursionError):
                expected = None
            if expected is None or expected != stored_hash:
                return broken(seq, f"row {seq}: hash does not match its contents")
            good += 1
            prev_seq, prev_hash = seq, stored_hash
    except sqlite3.Error as exc:
        return broken(prev_seq + 1, f"row {prev_seq + 1}: database error while reading: {exc}")
    if good == 0:
        return VerifyReport(True, 0, None, "journal is empty", None, None)
    return VerifyReport(
        True,
        good,
        None,
        f"{good} rows, chain intact (row {prev_seq} hash {prev_hash})",
        prev_hash,
        prev_seq,
    )


# --------------------------------------------------------------------------- the async writer


class Subscription(asyncio.Queue[Entry]):
    """A live follower's queue of committed entries.

    The writer never waits for a follower: if this queue is full when an entry is published,
    the subscription is dropped (``dropped`` becomes True) and, once the entries already queued
    are consumed, ``get()`` raises JournalError. Resume with ``read(after_seq=<last seen>)``
    after subscribing again - ``JournalWriter.follow`` does all of that.
    """

    def __init__(self, maxsize: int) -> None:
        """Create an empty subscription holding at most ``maxsize`` entries."""
        super().__init__(maxsize)
        self.dropped = False

    async def get(self) -> Entry:
        """Return the next committed entry; raise JournalError once dropped and drained."""
        if self.dropped and self.empty():
            raise JournalError("journal subscriber fell behind and was dropped")
        return await super().get()


class JournalWriter:
    """Asyncio service around a Journal: non-blocking ``record``, batched durable writes.

    Run ``run()`` as a task; call ``close()`` at shutdown (after cancelling ``run()`` or not):
    it drains everything recorded, then closes the journal.
    """

    def __init__(
        self,
        journal: Journal,
        *,
        max_batch: int = 1000,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 5.0,
        subscriber_queue_size: int = 1000,
        linger_s: float = 0.0,
    ) -> None:
        """Wrap ``journal`` (reads its last seq, a blocking call: do it at start-up)."""
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._journal = journal
        self._max_batch = max_batch
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._subscriber_queue_size = subscriber_queue_size
        self._linger_s = linger_s
        self._pending: collections.deque[Record] = collections.deque()
        self._enqueued = 0  # records ever accepted by record()
        self._committed = 0  # of those, records committed (always the oldest ones)
        self._recorded_seq = journal.last_seq()
        self._failures = 0  # consecutive failed writes
        self._inflight: asyncio.Task[bool] | None = None
        self._wakeup = asyncio.Event()
        self._subscribers: list[Subscription] = []
        self._flush_hooks: list[Callable[[], None]] = []
        self._closing = False  # close() has begun: run() returns after its current drain
        self._accepting = True  # record() still queues (until close() has drained)
        self._closed = asyncio.Event()

    @property
    def closed(self) -> bool:
        """True once ``close()`` has finished (drained, or given up and logged the rest)."""
        return self._closed.is_set()

    # -- producers ----------------------------------------------------------------------------

    def record(
        self, kind: str, *, door: str | None = None, device: str | None = None, **data: Any
    ) -> None:
        """Queue an event stamped now; never blocks or awaits. Call from the event loop thread.

        ``data`` values must not be mutated afterwards (they are written later, not copied).
        Events recorded while ``close()`` drains are still written; after that they can no
        longer be journaled and are logged at error level instead.
        """
        record = Record(kind, door, device, data, format_ts())
        if not self._accepting:
            self._refuse(record)
            return
        self._pending.append(record)
        self._enqueued += 1
        self._wakeup.set()

    def record_many(
        self,
        events: Iterable[tuple[str, str | None, str | None, Mapping[str, Any]]],
        *,
        ts: str | None = None,
    ) -> None:
        """Queue ``(kind, door, device, data)`` events in order, all stamped ``ts`` (default: now).

        One call for the records of a group command: one timestamp and one wake-up for all.
        ``ts`` (from ``format_ts``) is when they happened, if that was before this call.
        """
        if ts is None:
            ts = format_ts()
        batch = [Record(kind, door, device, data, ts) for kind, door, device, data in events]
        if not batch:
            return
        if not self._accepting:
            for record in batch:
                self._refuse(record)
            return
        self._pending.extend(batch)
        self._enqueued += len(batch)
        self._wakeup.set()

    @staticmethod
    def _refuse(record: Record) -> None:
        """Log a record that arrived after ``close()`` drained (it can no longer be written)."""
        log.error(
            "journal.record_after_close",
            kind=record.kind,
            door=record.door,
            device=record.device,
            ts=record.ts,
            data=_loggable(record.data),
        )

    # -- state --------------------------------------------------------------------------------

    @property
    def recorded_seq(self) -> int:
        """Highest seq committed to disk (fsynced)."""
        return self._recorded_seq

    @property
    def backlog(self) -> int:
        """Records accepted by ``record()`` and not yet committed."""
        return self._enqueued - self._committed

    @property
    def journal(self) -> Journal:
        """The underlying journal (blocking calls: use from a thread)."""
        return self._journal

    # -- consumers ----------------------------------------------------------------------------

    def subscribe(self, maxsize: int | None = None) -> Subscription:
        """Return a queue that receives every entry committed from now on (see Subscription)."""
        queue = Subscription(self._subscriber_queue_size if maxsize is None else maxsize)
        self._subscribers.append(queue)
        return queue

    async def follow(self, after_seq: int = 0, *, page: int = 1000) -> AsyncGenerator[Entry, None]:
        """Yield every committed entry with seq > ``after_seq`` in order, then each new one.

        Never a gap, never a duplicate, and nothing lost to a slow consumer: it subscribes
        first, then reads the journal page by page up to its head, then streams what the
        subscription delivers (seq > the last yielded). If the subscription is dropped (the
        consumer fell behind), it subscribes again and resumes from the journal by seq. Only a
        journal error (a damaged row, a closed journal) ends it, by raising.
        """
        if page < 1:
            raise ValueError("page must be >= 1")
        last = after_seq
        while True:
            sub = self.subscribe()
            try:
                while batch := await self.read(last, page):  # catch up from the journal
                    for entry in batch:
                        yield entry
                        last = entry.seq
                while not (sub.dropped and sub.empty()):  # then live, until dropped
                    entry = await sub.get()
                    if entry.seq > last:
                        yield entry
                        last = entry.seq
                log.warning("journal.follower_resumed", after_seq=last)
            finally:
                self.unsubscribe(sub)

    def unsubscribe(self, queue: asyncio.Queue[Entry]) -> None:
        """Stop publishing to ``queue``; unknown queues are ignored."""
        with contextlib.suppress(ValueError):
            self._subscribers.remove(queue)  # type: ignore[arg-type]

    async def read(
        self, after_seq: int = 0, limit: int = 1000, kinds: AbstractSet[str] | None = None
    ) -> list[Entry]:
        """``Journal.read`` in a worker thread (committed entries only)."""
        return await asyncio.to_thread(self._journal.read, after_seq, limit, kinds)

    async def tail(self, n: int) -> list[Entry]:
        """``Journal.tail`` in a worker thread."""
        return await asyncio.to_thread(self._journal.tail, n)

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Write batches as records arrive until ``close()``; cancellation never loses a record.

        Cancelled mid-write, the write still completes in its thread and ``close()`` collects
        it; records not yet written stay queued for ``close()`` to drain.
        """
        while not self._closing:
            await self._wakeup.wait()
            if self._linger_s > 0:
                # linger: let a burst (a lockdown fan-out) finish before the write thread
                # competes with it for the interpreter; the burst then goes as one batch
                await asyncio.sleep(self._linger_s)
            self._wakeup.clear()
            await self._drain()

    async def flush(self) -> None:
        """Return once every event recorded before this call is committed (retries forever).

        Producers that hold records back (see ``add_flush_hook``) hand them over first.
        """
        for hook in self._flush_hooks:
            hook()
        await self._drain(self._enqueued)

    def add_flush_hook(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` at the start of every ``flush()``: it must record what it holds back."""
        self._flush_hooks.append(hook)

    async def close(self, *, timeout_s: float | None = 10.0) -> None:
        """Drain all queued records, then close the journal; idempotent.

        If the disk still refuses after ``timeout_s``, the unwritten events are logged at error
        level (so they reach the system log) and the journal is left for the OS to close.
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._wakeup.set()  # lets run() notice and return
        try:
            try:
                async with asyncio.timeout(timeout_s):
                    await self._drain()
                self._accepting = False  # no await since the drain saw an empty queue
            except TimeoutError:
                self._accepting = False
                if self._inflight is not None:  # let a write already under way finish
                    await asyncio.wait([self._inflight], timeout=CLOSE_GRACE_S)
                for r in self._pending:
                    log.error(
                        "journal.event_not_recorded",
                        kind=r.kind,
                        door=r.door,
                        device=r.device,
                        ts=r.ts,
                        data=_loggable(r.data),
                    )
            if self._inflight is not None:
                log.error("journal.close_write_stuck", backlog=self.backlog)
            else:
                await asyncio.to_thread(self._journal.close)
        finally:
            self._accepting = False
            self._subscribers.clear()
            self._closed.set()

    # -- internals ----------------------------------------------------------------------------

    async def _drain(self, target: int | None = None) -> None:
        """Write until ``target`` records (default: all queued) are committed, retrying failures."""
        while self._committed < (self._enqueued if target is None else target):
            task = self._inflight
            if task is None:
                batch = list(itertools.islice(self._pending, self._max_batch))
                task = asyncio.create_task(self._write(batch), name="journal-write")
                self._inflight = task
            # Shielded: cancelling this waiter must not abandon a commit in progress.
            if not await asyncio.shield(task):
                delay = min(self._retry_max_s, self._retry_initial_s * 2 ** (self._failures - 1))
                await asyncio.sleep(delay)

    async def _write(self, batch: list[Record]) -> bool:
        """Commit ``batch`` (the head of the queue) in a thread; on success pop and publish it."""
        try:
            entries = await asyncio.to_thread(self._journal.append_many, batch)
        except Exception as exc:  # noqa: BLE001 - any failure: keep the batch and retry
            self._failures += 1
            log.error(
                "journal.write_failed",
                error=str(exc),
                error_type=type(exc).__name__,
                attempt=self._failures,
                backlog=self.backlog,
            )
            return False
        finally:
            self._inflight = None
        if self._failures:
            log.info("journal.write_recovered", attempts=self._failures + 1)
            self._failures = 0
        for _ in batch:
            self._pending.popleft()
        self._committed += len(batch)
        if entries:
            self._recorded_seq = entries[-1].seq
        self._publish(entries)
        return True

    def _publish(self, entries: list[Entry]) -> None:
        """Hand committed entries to every follower; drop followers whose queue is full."""
        for queue in list(self._subscribers):
            for entry in entries:
                try:
                    queue.put_nowait(entry)
                except asyncio.QueueFull:
                    queue.dropped = True
                    self._subscribers.remove(queue)
                    log.warning("journal.subscriber_dropped", at_seq=entry.seq)
                    break
