"""CSV import and export of cardholders (docs/credentials.md has the format and the messages).

Import is all-or-nothing: every row is validated, and inserted into one open transaction so
that the store itself finds cards and PINs that are enrolled already or repeated in the file;
if any row is rejected the transaction is rolled back and the report lists the rejected rows
(line number and reasons), else it is committed at once. Memory stays flat whatever the size
of the file: rows are streamed in batches, and duplicates are found by the database (sorted
staged hashes, see ``store.BulkImport``), not by sets in memory.

Export writes what the store knows: cardholders, their states, validity windows, privileges,
levels, whether they have a PIN, and their credentials' masked display forms. Card numbers
and PINs are not in the store (only keyed hashes are), so an export can never be re-imported
to recreate cards; back up the database file (with the site secret) for that.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from datetime import time as dtime
from pathlib import Path
from typing import Final, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from controller.access.formats import CardNumberError, parse_card
from controller.access.model import CardholderState, Privilege
from controller.access.store import (
    CardEntry,
    CredentialInfo,
    CredentialStore,
    ImportRow,
    StoreError,
)

__all__ = [
    "EXPORT_COLUMNS",
    "IMPORT_COLUMNS",
    "ExportReport",
    "ImportFileError",
    "ImportReport",
    "Progress",
    "Rejection",
    "export_csv",
    "import_csv",
    "parse_validity",
]

IMPORT_COLUMNS: Final = (
    "name",
    "card",
    "pin",
    "valid_from",
    "valid_until",
    "state",
    "levels",
    "privileges",
)
"""Columns an import file may have (``name`` is required); any order, header on line 1."""

EXPORT_COLUMNS: Final = (
    "cardholder_id",
    "name",
    "state",
    "valid_from",
    "valid_until",
    "privileges",
    "levels",
    "pin",
    "credential_id",
    "card_masked",
    "card_format",
    "card_state",
    "card_valid_from",
    "card_valid_until",
)
"""Columns of an export: one row per credential (one with empty card fields if none)."""

Progress = Callable[[int, int], None]
"""``progress(done, total)``: rows done so far and the expected total (for a progress bar)."""

_LIST_SEPARATOR: Final = ";"
_MAX_LISTED_DEFAULT: Final = 1000
_BATCH_DEFAULT: Final = 2000
_PIN_RE: Final = re.compile(r"[0-9]{4,8}")
_MAX_NAME: Final = 200
_STATES: Final = ", ".join(s.value for s in CardholderState)
_PRIVILEGES: Final = ", ".join(p.value for p in Privilege)
_DATE_HELP: Final = "expected YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+HH:MM|Z]"
_FILE_MODE: Final = 0o640
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_STATE_BY_NAME: Final = {s.value: s for s in CardholderState}
_PRIVILEGE_BY_NAME: Final = {p.value: p for p in Privilege}


class ImportFileError(StoreError):
    """The file as a whole cannot be imported (unreadable, no header, unknown column...)."""


class ImportCancelledError(StoreError):
    """The import was called off before it committed (the daemon is stopping): nothing changed."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """A rejected row: its line number in the file (the header is line 1) and why."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import did: all rows committed, or nothing and the rejected rows."""

    path: Path
    rows: int  # data rows read
    committed: bool
    cardholders: int  # written (0 unless committed)
    credentials: int  # written (0 unless committed)
    rejected: tuple[Rejection, ...]  # the first ``max_listed`` by line number
    rejected_count: int  # all of them
    elapsed_s: float
    phase_s: Mapping[str, float] = field(default_factory=dict)  # read, add, check, insert...

    @property
    def ok(self) -> bool:
        """True when the import was committed."""
        return self.committed

    def summary(self) -> str:
        """One line for humans."""
        if self.committed:
            return (
                f"imported {self.cardholders} cardholders and {self.credentials} credentials "
                f"from {self.rows} rows in {self.elapsed_s:.1f} s"
            )
        more = self.rejected_count - len(self.rejected)
        tail = f" ({more} more not listed)" if more > 0 else ""
        return (
            f"nothing imported: {self.rejected_count} of {self.rows} rows rejected{tail}; "
            "fix them and import the whole file again"
        )


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What an export wrote."""

    path: Path
    cardholders: int
    credentials: int


# --------------------------------------------------------------------------- import


def import_csv(
    store: CredentialStore,
    path: Path,
    *,
    timezone: tzinfo | str = "UTC",
    progress: Progress | None = None,
    max_listed: int = _MAX_LISTED_DEFAULT,
    batch: int = _BATCH_DEFAULT,
    cancelled: Callable[[], bool] | None = None,
    committing: Callable[[], None] | None = None,
) -> ImportReport:
    """Import cardholders from a CSV file, all or nothing; raise ImportFileError if unreadable.

    ``timezone`` is the site's: date-times without an offset are local times there.
    ``cancelled`` is asked at every batch and before the commit; once it says yes the import
    stops with ImportCancelledError and nothing is imported. ``committing`` is called when
    the commit begins (it can no longer be called off).
    """

    def check() -> None:
        if cancelled is not None and cancelled():
            raise ImportCancelledError(f"import of {path} called off (the daemon is stopping)")

    zone = _zone(timezone)
    started = time.monotonic()
    total = _count_rows(path)
    rejected: list[Rejection] = []
    rejected_count = 0
    rows = 0

    def reject(items: Iterable[tuple[int, str]]) -> None:
        nonlocal rejected_count
        for line, reason in items:
            rejected_count += 1
            rejected.append(Rejection(line, reason))
        if len(rejected) > 2 * max_listed:
            rejected.sort(key=lambda r: r.line)
            del rejected[max_listed:]

    with _open(path) as stream, store.bulk_import() as bulk:
        parser = _RowParser(path, stream, frozenset(bulk.levels), zone)
        pending: list[ImportRow] = []
        for item in parser:
            rows += 1
            if isinstance(item, Rejection):
                reject([(item.line, item.reason)])
            else:
                pending.append(item)
            if len(pending) >= batch:
                check()
                bulk.add(pending)
                pending.clear()
            if progress is not None and rows % batch == 0:
                progress(rows, max(total, rows))
        bulk.add(pending)
        conflict_count, conflicts = bulk.conflicts(max_listed)
        reject(conflicts)
        rejected_count += conflict_count - len(conflicts)
        committed = rejected_count == 0
        if committed:
            check()  # the last moment to call it off: after this, it is imported
            if committing is not None:
                committing()
            bulk.commit()
        if progress is not None:
            progress(rows, rows)
        cardholders, credentials = (bulk.cardholders, bulk.credentials) if committed else (0, 0)
        phases = dict(bulk.phase_s)
    elapsed = time.monotonic() - started
    phases["read"] = max(0.0, elapsed - sum(phases.values()))
    rejected.sort(key=lambda r: r.line)
    return ImportReport(
        path=path,
        rows=rows,
        committed=committed,
        cardholders=cardholders,
        credentials=credentials,
        rejected=tuple(rejected[:max_listed]),
        rejected_count=rejected_count,
        elapsed_s=elapsed,
        phase_s={k: round(v, 3) for k, v in phases.items()},
    )


def parse_validity(text: str, zone: tzinfo, *, end: bool) -> datetime:
    """A validity bound: ISO date-time (offset optional: ``zone``) or a date (``end``: next day).

    A date alone covers the whole day: as ``valid_from`` it is 00:00 that day, as
    ``valid_until`` (``end``) it is 00:00 the day after, when the card stops working.
    """
    text = text.strip()
    if len(text) == 10:
        day = date.fromisoformat(text)
        if end:
            if day == date.max:  # "never expires": the last day there is, all of it
                return datetime.combine(day, dtime.max, tzinfo=zone)
            day += timedelta(days=1)
        return datetime.combine(day, dtime(0, 0), tzinfo=zone)
    if "T" not in text and " " not in text:
        raise ValueError(text)
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


class _RowParser:
    """Iterate over a CSV stream: an ImportRow per valid row, a Rejection per invalid one."""

    def __init__(self, path: Path, stream: TextIO, levels: frozenset[str], zone: tzinfo) -> None:
        self.path = path
        self.reader = csv.reader(stream, strict=True)
        self.levels = levels
        self.zone = zone
        columns = self._header()
        # Position of each import column in a row (-1: absent), in IMPORT_COLUMNS order.
        self.positions = tuple(columns.get(c, -1) for c in IMPORT_COLUMNS)
        self.width = len(columns)

    def _header(self) -> dict[str, int]:
        try:
            header = next(self.reader)
        except StopIteration:
            raise ImportFileError(f"{self.path}: the file is empty (expected a header)") from None
        except csv.Error as exc:
            raise ImportFileError(f"{self.path} line 1: {exc}") from exc
        names = [h.strip().lower() for h in header]
        if "cardholder_id" in names and "card_masked" in names:
            raise ImportFileError(
                f"{self.path} is an export: exports hold masked cards only and cannot be "
                "imported (card numbers and PINs are not stored, by design)"
            )
        unknown = [n for n in names if n not in IMPORT_COLUMNS]
        if unknown:
            raise ImportFileError(
                f"{self.path} line 1: unknown column(s) {', '.join(map(repr, unknown))}; "
                f"columns are {', '.join(IMPORT_COLUMNS)}"
            )
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ImportFileError(f"{self.path} line 1: column(s) {', '.join(doubled)} twice")
        if "name" not in names:
            raise ImportFileError(f"{self.path} line 1: the 'name' column is required")
        return {n: i for i, n in enumerate(names)}

    def __iter__(self) -> Iterator[ImportRow | Rejection]:
        width = self.width
        reader = self.reader
        row = self._row
        line = reader.line_num + 1
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise ImportFileError(f"{self.path} line {reader.line_num}: {exc}") from exc
            start, line = line, reader.line_num + 1
            if len(fields) != width:
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue  # blank line
                yield Rejection(start, f"expected {width} fields, found {len(fields)}")
                continue
            yield row(start, fields)

    def _row(self, line: int, fields: list[str]) -> ImportRow | Rejection:
        """Validate one row; every problem of the row goes into one Rejection."""
        reasons: list[str] = []
        name, card, pin, vf_text, vu_text, st_text, lv_text, pv_text = (
            "" if i < 0 else fields[i].strip() for i in self.positions
        )
        if not name:
            reasons.append("name is empty")
        elif len(name) > _MAX_NAME:
            reasons.append(f"name is longer than {_MAX_NAME} characters")
        elif _CONTROL.search(name):
            reasons.append("name contains control characters")
        cards = _cards(card, reasons) if card else ()
        if pin and not _PIN_RE.fullmatch(pin):
            reasons.append("bad PIN: must be 4 to 8 digits")
        valid_from = self._moment(vf_text, "valid_from", reasons, end=False) if vf_text else None
        valid_until = self._moment(vu_text, "valid_until", reasons, end=True) if vu_text else None
        if valid_from is not None and valid_until is not None and valid_until <= valid_from:
            reasons.append("valid_until is not after valid_from")
        state = _STATE_BY_NAME.get(st_text.lower()) if st_text else CardholderState.ACTIVE
        if state is None:
            reasons.append(f"bad state {_quote(st_text)}: expected {_STATES}")
        levels: tuple[str, ...] = ()
        if lv_text:
            levels = tuple(dict.fromkeys(_split(lv_text)))
            for level in levels:
                if level not in self.levels:
                    reasons.append(
                        f"unknown level {_quote(level)} (create it first: wardctl access-level add)"
                    )
        privileges: frozenset[Privilege] = frozenset()
        if pv_text:
            found: set[Privilege] = set()
            for text in _split(pv_text):
                privilege = _PRIVILEGE_BY_NAME.get(text.lower())
                if privilege is None:
                    reasons.append(f"unknown privilege {_quote(text)}: expected {_PRIVILEGES}")
                else:
                    found.add(privilege)
            privileges = frozenset(found)
        if reasons or state is None:
            return Rejection(line, "; ".join(reasons))
        return ImportRow(
            line, name, cards, pin or None, valid_from, valid_until, state, privileges, levels
        )

    def _moment(self, text: str, what: str, reasons: list[str], *, end: bool) -> datetime | None:
        try:
            return parse_validity(text, self.zone, end=end)
        except (ValueError, OverflowError):
            reasons.append(f"bad {what} {_quote(text)}: {_DATE_HELP}")
            return None


def _cards(text: str, reasons: list[str]) -> tuple[CardEntry, ...]:
    """Parse the ``card`` cell: one or more cards separated by ';'."""
    items = _split(text)
    entries: list[CardEntry] = []
    several = len(items) > 1
    for n, item in enumerate(items, start=1):
        which = f"card {n}" if several else "card"
        if "*" in item or "\u2026" in item:
            reasons.append(
                f"{which} is masked: an export cannot be re-imported (card numbers are not stored)"
            )
            continue
        try:
            card = parse_card(item)
        except CardNumberError as exc:
            reasons.append(f"bad {which}: {exc}")  # the message never repeats the number
            continue
        entry = CardEntry(card.key, card.format.value, card.masked())
        if several and entry in entries:
            reasons.append(f"duplicate card: {entry.masked} is listed twice in the row")
            continue
        entries.append(entry)
    return tuple(entries)


def _split(text: str) -> list[str]:
    if _LIST_SEPARATOR not in text:
        return [text] if text else []
    return [p.strip() for p in text.split(_LIST_SEPARATOR) if p.strip()]


def _quote(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _zone(value: tzinfo | str) -> tzinfo:
    if isinstance(value, tzinfo):
        return value
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ImportFileError(f"unknown time zone {value!r}") from None


@contextlib.contextmanager
def _open(path: Path) -> Iterator[TextIO]:
    try:
        stream = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise ImportFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with stream:
        yield stream


def _count_rows(path: Path) -> int:
    """Physical lines after the header (the progress bar's total); refuse a file not in UTF-8."""
    count = 0
    last = b"\n"
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    line = count + chunk.count(b"\n", 0, exc.start) + 1
                    raise ImportFileError(
                        f"{path} line {line}: not valid UTF-8; save the file as UTF-8"
                    ) from None
                count += chunk.count(b"\n")
                last = chunk[-1:]
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise ImportFileError(
                    f"{path} line {count + 1}: not valid UTF-8; save the file as UTF-8"
                ) from None
    except OSError as exc:
        raise ImportFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if last != b"\n":
        count += 1
    return max(0, count - 1)


# --------------------------------------------------------------------------- export


def export_csv(
    store: CredentialStore, path: Path, *, progress: Progress | None = None
) -> ExportReport:
    """Write every cardholder and credential (masked) to ``path`` atomically (mode 0640)."""
    total = store.counts()["cardholders"]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    holders = creds = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(EXPORT_COLUMNS)
            for holder, credentials in store.iter_export():
                holders += 1
                base = [
                    str(holder.id),
                    holder.name,
                    holder.state.value,
                    _iso(holder.valid_from),
                    _iso(holder.valid_until),
                    _LIST_SEPARATOR.join(sorted(p.value for p in holder.privileges)),
                    _LIST_SEPARATOR.join(level.name for level in holder.levels),
                    "yes" if holder.has_pin else "no",
                ]
                items: list[CredentialInfo | None] = list(credentials) or [None]
                for c in items:
                    writer.writerow(base + _credential_fields(c))
                    creds += c is not None
                if progress is not None and holders % 5000 == 0:
                    progress(holders, max(total, holders))
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if progress is not None:
        progress(holders, holders)
    return ExportReport(path, holders, creds)


def _credential_fields(c: CredentialInfo | None) -> list[str]:
    if c is None:
        return ["", "", "", "", "", ""]
    return [
        str(c.id),
        c.display,
        c.format,
        c.state.value,
        _iso(c.valid_from),
        _iso(c.valid_until),
    ]


def _iso(value: datetime | None) -> str:
    return "" if value is None else value.isoformat()
