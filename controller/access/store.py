"""The credential store: cardholders, cards, PINs and access levels in SQLite, keyed by HMAC.

Theory of operation
-------------------
Secrets. No card number and no PIN is ever written in clear. A card is stored as
``key_hash = HMAC-SHA256(secret, b"card:" + key.encode())`` where ``key`` is the canonical
credential key of ``controller.access.formats`` (``h10301:12:34567``, ``uid:04A1B2C3``...), and
a PIN as ``pin_hash = HMAC-SHA256(secret, b"pin:" + pin.encode())``. The secret is the site
secret (``controller.access.secret``); its fingerprint is recorded in ``meta`` and a store
refuses to open with another secret, since every lookup would then silently miss.

PINs are unique on the site. PIN-only doors must find the cardholder from the PIN alone, so a
PIN identifies one person: ``pins`` maps each PIN hash to its cardholder (one indexed query per
keypad entry). With the duress scheme ``last-digit-plus-one``, the PIN with its last digit plus
one (9 -> 0) grants as usual and raises a silent alarm; that duress PIN is reserved in ``pins``
too (``duress = 1``), whether or not the scheme is switched on, so no PIN can ever be another
person's duress PIN and the scheme can be switched on later without re-enrolment. The price:
two PINs that differ only by one in the last digit cannot coexist, which halves the PIN space
(use 6-8 digits on large sites), and enrolling a PIN that is taken fails with "in use" (the
error never says by whom).

Hot path. ``lookup(key)`` is one HMAC and one prepared SELECT on the unique index of
``credentials.key_hash``, joined to the cardholder and its level ids; levels are resolved from
an in-memory map of all access levels (a few hundred at most) that is reloaded whenever the
database changed (``PRAGMA data_version``, one cheap statement). Nothing about cardholders or
credentials is cached, so a revocation committed by any connection or process is seen by the
very next lookup.

Threads. Three connections, so that a lookup never waits for an fsync: reads (``lookup``,
``get_*``, ``list_*``) share one read-only connection under one lock; writes share another
under a second lock (each write is one short ``BEGIN IMMEDIATE`` transaction ending in an
fsync); a bulk import (``bulk_import``) opens its own connection for its single long
transaction. Every method may be called from any thread. Lookups are cheap enough for the
event loop (tens of microseconds); call writes through ``asyncio.to_thread``. While an import
runs, other writers wait up to ``busy_timeout_s`` and then fail with StoreError; readers
never wait (WAL) and see the store as it was before the import until it commits.

Schedules. An access level names a weekly schedule of the site file; ``schedules`` maps those
names to ``Schedule`` objects. A name that is not in the map resolves to an empty schedule
that never matches (fail closed), except ``always``, which is ``model.ALWAYS`` unless the site
defines its own ``always``.
"""

from __future__ import annotations

import array
import contextlib
import functools
import hmac
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple, Self

from controller.access.formats import CardFormat, CardNumberError, parse_card
from controller.access.model import (
    ALWAYS,
    AccessLevel,
    Cardholder,
    CardholderState,
    Credential,
    PinCheck,
    Privilege,
    Schedule,
)
from controller.access.secret import SECRET_BYTES, secret_fingerprint
from controller.errors import WardingError

__all__ = [
    "DURESS_SCHEMES",
    "PIN_CREDENTIAL_ID",
    "SCHEMA_VERSION",
    "UNSET",
    "BulkImport",
    "CardEntry",
    "ConflictError",
    "CredentialInfo",
    "CredentialStore",
    "DuressScheme",
    "ImportRow",
    "InvalidValueError",
    "NotFoundError",
    "PinMatch",
    "StoreError",
    "card_entry",
    "card_format",
    "check_key",
    "check_pin_format",
    "duress_pin",
    "mask_key",
]

SCHEMA_VERSION: Final = 1
"""Value of ``meta.schema_version`` this module reads and writes."""

PIN_CREDENTIAL_ID: Final = 0
"""``Credential.id`` of the view ``lookup_pin`` returns: the cardholder was found by PIN."""

DuressScheme = Literal["off", "last-digit-plus-one"]
DURESS_SCHEMES: Final[tuple[DuressScheme, ...]] = ("off", "last-digit-plus-one")

_DB_FILE_MODE: Final = 0o640
_DIR_MODE: Final = 0o750
_MAX_NAME: Final = 200
_MAX_KEY: Final = 128
_PIN_RE: Final = re.compile(r"[0-9]{4,8}")
_KEY_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(:[A-Za-z0-9_.+-]+)+|[A-Za-z0-9_.+-]+")
_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")  # settings.NAME_PATTERN
_CACHE_LIMIT: Final = 4096
_KNOWN_FORMATS: Final = frozenset(f.value for f in CardFormat)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cardholders (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('active', 'disabled', 'lost', 'revoked')),
    valid_from  TEXT,
    valid_until TEXT,
    privileges  TEXT NOT NULL DEFAULT '',
    pin_hash    BLOB,
    duress_hash BLOB,
    created     TEXT NOT NULL,
    updated     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pins (
    hash          BLOB PRIMARY KEY,
    cardholder_id INTEGER NOT NULL,
    duress        INTEGER NOT NULL CHECK (duress IN (0, 1))
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS credentials (
    id            INTEGER PRIMARY KEY,
    cardholder_id INTEGER NOT NULL REFERENCES cardholders (id) ON DELETE CASCADE,
    key_hash      BLOB NOT NULL UNIQUE,
    format        TEXT NOT NULL,
    masked        TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('active', 'disabled', 'lost', 'revoked')),
    valid_from    TEXT,
    valid_until   TEXT,
    created       TEXT NOT NULL,
    updated       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS credentials_cardholder ON credentials (cardholder_id);
CREATE TABLE IF NOT EXISTS access_levels (
    id       INTEGER PRIMARY KEY,
    name     TEXT NOT NULL UNIQUE,
    schedule TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS access_level_doors (
    level_id INTEGER NOT NULL REFERENCES access_levels (id) ON DELETE CASCADE,
    door     TEXT NOT NULL,
    PRIMARY KEY (level_id, door)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cardholder_levels (
    cardholder_id INTEGER NOT NULL REFERENCES cardholders (id) ON DELETE CASCADE,
    level_id      INTEGER NOT NULL REFERENCES access_levels (id) ON DELETE CASCADE,
    PRIMARY KEY (cardholder_id, level_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cardholder_levels_level ON cardholder_levels (level_id);
"""
_TABLES: Final = frozenset(
    {
        "meta",
        "cardholders",
        "pins",
        "credentials",
        "access_levels",
        "access_level_doors",
        "cardholder_levels",
    }
)

# Columns of a cardholder as ``_cardholder`` reads them (alias ``ch``).
_CH_COLS: Final = (
    "ch.id, ch.name, ch.state, ch.valid_from, ch.valid_until, ch.privileges,"
    " ch.pin_hash IS NOT NULL,"
    " (SELECT group_concat(level_id) FROM cardholder_levels WHERE cardholder_id = ch.id)"
)
_LOOKUP_SQL: Final = (
    "SELECT cr.id, cr.state, cr.valid_from, cr.valid_until, cr.masked, "  # noqa: S608
    + _CH_COLS
    + " FROM credentials AS cr JOIN cardholders AS ch ON ch.id = cr.cardholder_id"
    " WHERE cr.key_hash = ?"
)
_PIN_SQL: Final = (
    "SELECT p.duress, "  # noqa: S608
    + _CH_COLS
    + " FROM pins AS p JOIN cardholders AS ch ON ch.id = p.cardholder_id WHERE p.hash = ?"
)
_CRED_COLS: Final = (
    "id, cardholder_id, format, masked, state, valid_from, valid_until, created, updated"
)


# --------------------------------------------------------------------------- errors


class StoreError(WardingError):
    """The credential store cannot be opened, read or written (I/O, schema, wrong secret)."""


class NotFoundError(StoreError, LookupError):
    """No cardholder, credential or access level with that id or name."""


class ConflictError(StoreError):
    """The change collides with existing data: card already enrolled, PIN in use, name taken."""


class InvalidValueError(StoreError, ValueError):
    """An argument is malformed: bad PIN, naive datetime, empty name, unknown state..."""


# --------------------------------------------------------------------------- records


class _Unset(Enum):
    UNSET = "unset"


UNSET: Final = _Unset.UNSET
"""Default of ``update_*`` arguments: leave the field as it is."""

_UnsetT = Literal[_Unset.UNSET]


@dataclass(frozen=True, slots=True)
class CredentialInfo:
    """A stored credential as management sees it (masked card, no hash)."""

    id: int
    cardholder_id: int
    format: str
    display: str
    state: CardholderState
    valid_from: datetime | None
    valid_until: datetime | None
    created: str
    updated: str


@dataclass(frozen=True, slots=True)
class PinMatch:
    """The cardholder a PIN-only entry belongs to, and whether it was their duress PIN."""

    credential: Credential  # id == PIN_CREDENTIAL_ID, display "pin"
    check: PinCheck  # OK or DURESS


class CardEntry(NamedTuple):
    """A card to enrol: its canonical key, format name and masked display form."""

    key: str
    format: str
    masked: str


class ImportRow(NamedTuple):
    """One validated row of a bulk import: a new cardholder with its cards, PIN and levels."""

    line: int
    name: str
    cards: tuple[CardEntry, ...] = ()
    pin: str | None = None
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    state: CardholderState = CardholderState.ACTIVE
    privileges: frozenset[Privilege] = frozenset()
    levels: tuple[str, ...] = ()  # names of existing access levels


# --------------------------------------------------------------------------- pure helpers


def check_key(key: str) -> str:
    """Return ``key`` if it is a canonical credential key; raise InvalidValueError."""
    card_entry(key)
    return key


def card_entry(key: str) -> CardEntry:
    """Format and masked form of a canonical key (formats.py's, if it knows the format).

    A key that ``formats.parse_card`` reads but writes differently (``uid:04a1``) is refused:
    it would never match what a reader produces. Keys of formats it does not know are taken
    as they are if they look like ``<format>:<value>[:<value>...]``.
    """
    if not isinstance(key, str) or not key:
        raise InvalidValueError("credential key is empty")
    if len(key) > _MAX_KEY or not _KEY_RE.fullmatch(key):
        raise InvalidValueError("credential key is not a canonical key such as 'h10301:12:34567'")
    try:
        card = parse_card(key)
    except CardNumberError as exc:
        if card_format(key) in _KNOWN_FORMATS:
            raise InvalidValueError(f"bad credential key: {exc}") from None
        return CardEntry(key, card_format(key), mask_key(key))
    if card.key != key:
        raise InvalidValueError(
            f"credential key is not in canonical form (that would be {card.masked()}; "
            "use formats.parse_card(...).key)"
        )
    return CardEntry(key, card.format.value, card.masked())


def card_format(key: str) -> str:
    """The format part of a canonical key (``h10301`` of ``h10301:12:34567``; ``raw`` if none)."""
    head, sep, _ = key.partition(":")
    return head if sep else "raw"


def mask_key(key: str) -> str:
    """Display form of a key: format kept, all but the last 2 characters masked (<= 4: all)."""
    head, sep, rest = key.partition(":")
    if not sep:
        head, rest = "", key
    parts = rest.split(":")
    secret_len = sum(len(p) for p in parts)
    keep = 2 if secret_len > 4 else 0
    masked = [
        "*" * len(p) if i < len(parts) - 1 or keep == 0 else "*" * (len(p) - keep) + p[-keep:]
        for i, p in enumerate(parts)
    ]
    if keep and len(parts[-1]) < keep:  # last field shorter than what we keep: mask it all
        masked[-1] = "*" * len(parts[-1])
    return (head + ":" if sep else "") + ":".join(masked)


def check_pin_format(pin: str) -> str:
    """Return ``pin`` if it is 4 to 8 ASCII digits; raise InvalidValueError."""
    if not isinstance(pin, str) or not _PIN_RE.fullmatch(pin):
        raise InvalidValueError("PIN must be 4 to 8 digits")
    return pin


def duress_pin(pin: str) -> str:
    """The duress variant of ``pin``: its last digit plus one, 9 -> 0 (``last-digit-plus-one``)."""
    return pin[:-1] + str((int(pin[-1]) + 1) % 10)


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dt_text(value: datetime | None, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidValueError(f"{what} must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidValueError(f"{what} must be timezone-aware (got {value.isoformat()})")
    return value.isoformat()


@functools.lru_cache(maxsize=_CACHE_LIMIT)
def _parse_dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _dt(text: str | None) -> datetime | None:
    return None if text is None else _parse_dt(text)


def _check_window(valid_from: datetime | None, valid_until: datetime | None) -> None:
    if valid_from is not None and valid_until is not None and valid_until <= valid_from:
        raise InvalidValueError("valid_until must be after valid_from")


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidValueError("name is empty")
    if len(name) > _MAX_NAME:
        raise InvalidValueError(f"name is longer than {_MAX_NAME} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidValueError("name contains control characters")
    return name


def _check_ident(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise InvalidValueError(
            f"{what} {value!r} must be 1-63 of a-z 0-9 _ . - starting with a letter or digit"
        )
    return value


def _state(value: CardholderState | str) -> CardholderState:
    try:
        return CardholderState(value)
    except ValueError:
        choices = ", ".join(s.value for s in CardholderState)
        raise InvalidValueError(f"unknown state {value!r}; expected one of {choices}") from None


def _privileges_text(values: Iterable[Privilege | str]) -> str:
    out: set[str] = set()
    for v in values:
        try:
            out.add(Privilege(v).value)
        except ValueError:
            choices = ", ".join(p.value for p in Privilege)
            raise InvalidValueError(f"unknown privilege {v!r}; expected one of {choices}") from None
    return ",".join(sorted(out))


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _connect(path: Path, *, cache_kib: int, busy_timeout_s: float) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA cache_size = -{int(cache_kib)}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
    except BaseException:
        conn.close()
        raise
    return conn


# --------------------------------------------------------------------------- the store


class CredentialStore:
    """Synchronous, thread-safe access to one credential store file (see the module header)."""

    def __init__(
        self,
        path: Path,
        read: sqlite3.Connection,
        write: sqlite3.Connection,
        *,
        secret: bytes,
        schedules: Mapping[str, Schedule],
        duress: DuressScheme,
        busy_timeout_s: float,
    ) -> None:
        """Wrap open, initialised connections; use ``CredentialStore.open`` instead."""
        self.path = path
        self._read: sqlite3.Connection | None = read
        self._write: sqlite3.Connection | None = write
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._secret = secret
        self._schedules: dict[str, Schedule] = dict(schedules)
        self._duress: DuressScheme = duress
        self._busy_timeout_s = busy_timeout_s
        self._data_version = -1
        self._levels: dict[int, AccessLevel] = {}
        self._level_sets: dict[str | None, tuple[AccessLevel, ...]] = {}
        self._privilege_sets: dict[str, frozenset[Privilege]] = {}

    @classmethod
    def open(
        cls,
        path: Path,
        secret: bytes,
        *,
        schedules: Mapping[str, Schedule] | None = None,
        duress: DuressScheme = "off",
        cache_kib: int = 8192,
        busy_timeout_s: float = 5.0,
    ) -> Self:
        """Open or create the store at ``path`` (WAL, synchronous=FULL, mode 0640)."""
        if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
            raise StoreError(f"the site secret must be {SECRET_BYTES} bytes")
        if duress not in DURESS_SCHEMES:
            raise InvalidValueError(f"unknown duress scheme {duress!r}")
        try:
            path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _DB_FILE_MODE))
        except OSError as exc:
            raise StoreError(f"cannot create credential store {path}: {exc.strerror}") from exc
        conns: list[sqlite3.Connection] = []
        try:
            write = _connect(path, cache_kib=2048, busy_timeout_s=busy_timeout_s)
            conns.append(write)
            _initialise(write, path, secret)
            read = _connect(path, cache_kib=cache_kib, busy_timeout_s=busy_timeout_s)
            conns.append(read)
            read.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            for c in conns:
                c.close()
            raise StoreError(f"cannot open credential store {path}: {exc}") from exc
        except BaseException:
            for c in conns:
                c.close()
            raise
        return cls(
            path,
            read,
            write,
            secret=secret,
            schedules=schedules or {},
            duress=duress,
            busy_timeout_s=busy_timeout_s,
        )

    # -- configuration ---------------------------------------------------------------------

    @property
    def duress(self) -> DuressScheme:
        """The duress PIN scheme in force."""
        return self._duress

    def set_schedules(self, schedules: Mapping[str, Schedule]) -> None:
        """Replace the schedule map (site file reload); levels resolve anew on the next read."""
        with self._read_lock:
            self._schedules = dict(schedules)
            self._data_version = -1

    def card_hash(self, key: str) -> bytes:
        """``HMAC-SHA256(secret, b"card:" + key)``: what the store keeps of a card."""
        return hmac.digest(self._secret, b"card:" + key.encode(), "sha256")

    def pin_hash(self, pin: str) -> bytes:
        """``HMAC-SHA256(secret, b"pin:" + pin)``: what the store keeps of a PIN."""
        return hmac.digest(self._secret, b"pin:" + pin.encode(), "sha256")

    # -- hot path ----------------------------------------------------------------------------

    def lookup(self, key: str) -> Credential | None:
        """The credential for a presented card key with its cardholder and levels, or None."""
        digest = hmac.digest(self._secret, b"card:" + key.encode(), "sha256")
        with self._read_lock:
            conn = self._reader()
            try:
                self._refresh(conn)
                rows = conn.execute(_LOOKUP_SQL, (digest,)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"credential lookup failed ({self.path}): {exc}") from exc
            if not rows:
                return None
            r = rows[0]
            return Credential(
                id=r[0],
                cardholder=self._cardholder(r[5:]),
                state=CardholderState(r[1]),
                valid_from=_dt(r[2]),
                valid_until=_dt(r[3]),
                display=r[4],
            )

    def match_pin(self, pin: str) -> PinMatch | None:
        """The cardholder whose PIN (or, with duress on, duress PIN) ``pin`` is, or None."""
        if not isinstance(pin, str) or not _PIN_RE.fullmatch(pin):
            return None
        digest = self.pin_hash(pin)
        with self._read_lock:
            conn = self._reader()
            try:
                self._refresh(conn)
                rows = conn.execute(_PIN_SQL, (digest,)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"PIN lookup failed ({self.path}): {exc}") from exc
            if not rows:
                return None
            duress = bool(rows[0][0])
            if duress and self._duress == "off":
                return None
            cardholder = self._cardholder(rows[0][1:])
        credential = Credential(PIN_CREDENTIAL_ID, cardholder, display="pin")
        return PinMatch(credential, PinCheck.DURESS if duress else PinCheck.OK)

    def lookup_pin(self, pin: str) -> Credential | None:
        """For PIN-only doors: a view (id ``PIN_CREDENTIAL_ID``) of the PIN's cardholder, or None.

        A duress PIN (with the scheme on) finds its cardholder too; ``match_pin`` or
        ``check_pin`` tells which it was.
        """
        match = self.match_pin(pin)
        return None if match is None else match.credential

    def check_pin(self, cardholder_id: int, pin: str) -> PinCheck:
        """Compare an entered PIN with the cardholder's: OK, DURESS (scheme on) or BAD."""
        if not isinstance(pin, str) or not _PIN_RE.fullmatch(pin):
            return PinCheck.BAD
        digest = self.pin_hash(pin)
        rows = self._query(
            "SELECT pin_hash, duress_hash FROM cardholders WHERE id = ?", (cardholder_id,)
        )
        if not rows or rows[0][0] is None:
            return PinCheck.BAD
        if hmac.compare_digest(digest, rows[0][0]):
            return PinCheck.OK
        if self._duress != "off" and hmac.compare_digest(digest, rows[0][1]):
            return PinCheck.DURESS
        return PinCheck.BAD

    # -- cardholders ---------------------------------------------------------------------------

    def add_cardholder(
        self,
        name: str,
        *,
        pin: str | None = None,
        privileges: Iterable[Privilege | str] = (),
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
        state: CardholderState | str = CardholderState.ACTIVE,
    ) -> int:
        """Create a cardholder and return its id; a PIN in use raises ConflictError."""
        _check_name(name)
        st = _state(state)
        privs = _privileges_text(privileges)
        vf, vu = _dt_text(valid_from, "valid_from"), _dt_text(valid_until, "valid_until")
        _check_window(valid_from, valid_until)
        if pin is not None:
            check_pin_format(pin)
        now = _now_text()
        with self._transaction() as conn:
            cur = conn.execute(
                "INSERT INTO cardholders (name, state, valid_from, valid_until, privileges,"
                " created, updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, st.value, vf, vu, privs, now, now),
            )
            cardholder_id = int(cur.lastrowid or 0)
            if pin is not None:
                self._set_pin(conn, cardholder_id, pin)
        return cardholder_id

    def update_cardholder(
        self,
        cardholder_id: int,
        *,
        name: str | _UnsetT = UNSET,
        pin: str | _UnsetT | None = UNSET,
        privileges: Iterable[Privilege | str] | _UnsetT = UNSET,
        valid_from: datetime | _UnsetT | None = UNSET,
        valid_until: datetime | _UnsetT | None = UNSET,
        state: CardholderState | str | _UnsetT = UNSET,
    ) -> None:
        """Change the given fields (``pin=None`` removes the PIN); others stay as they are."""
        sets: dict[str, Any] = {}
        if name is not UNSET:
            sets["name"] = _check_name(name)
        if privileges is not UNSET:
            sets["privileges"] = _privileges_text(privileges)
        if valid_from is not UNSET:
            sets["valid_from"] = _dt_text(valid_from, "valid_from")
        if valid_until is not UNSET:
            sets["valid_until"] = _dt_text(valid_until, "valid_until")
        if state is not UNSET:
            sets["state"] = _state(state).value
        if pin is not UNSET and pin is not None:
            check_pin_format(pin)
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT valid_from, valid_until FROM cardholders WHERE id = ?", (cardholder_id,)
            ).fetchall()
            if not rows:
                raise NotFoundError(f"no cardholder {cardholder_id}")
            _check_window(
                _dt(sets.get("valid_from", rows[0][0])), _dt(sets.get("valid_until", rows[0][1]))
            )
            sets["updated"] = _now_text()
            assignments = ", ".join(f"{column} = ?" for column in sets)
            conn.execute(
                f"UPDATE cardholders SET {assignments} WHERE id = ?",  # noqa: S608 - fixed names
                (*sets.values(), cardholder_id),
            )
            if pin is not UNSET:
                self._set_pin(conn, cardholder_id, pin)

    def set_cardholder_state(self, cardholder_id: int, state: CardholderState | str) -> None:
        """Set a cardholder's state; effective on the next lookup."""
        self.update_cardholder(cardholder_id, state=state)

    def delete_cardholder(self, cardholder_id: int) -> None:
        """Erase a cardholder with their credentials, PIN and level grants."""
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT pin_hash, duress_hash FROM cardholders WHERE id = ?", (cardholder_id,)
            ).fetchall()
            if not rows:
                raise NotFoundError(f"no cardholder {cardholder_id}")
            conn.execute("DELETE FROM pins WHERE hash IN (?, ?)", rows[0])
            conn.execute("DELETE FROM cardholders WHERE id = ?", (cardholder_id,))

    def get_cardholder(self, cardholder_id: int) -> Cardholder:
        """The cardholder with that id, with its access levels resolved; NotFoundError if none."""
        rows = self._query_cardholders(
            f"SELECT {_CH_COLS} FROM cardholders AS ch WHERE ch.id = ?",  # noqa: S608
            (cardholder_id,),
        )
        if not rows:
            raise NotFoundError(f"no cardholder {cardholder_id}")
        return rows[0]

    def find_cardholders(
        self,
        name_substring: str | None = None,
        *,
        state: CardholderState | str | None = None,
        after_id: int = 0,
        limit: int = 100,
    ) -> list[Cardholder]:
        """Cardholders with id > ``after_id`` (whose name contains the text, any case), by id."""
        where = ["ch.id > ?"]
        params: list[Any] = [after_id]
        if name_substring:
            escaped = name_substring.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("ch.name LIKE ? ESCAPE '\\'")
            params.append(f"%{escaped}%")
        if state is not None:
            where.append("ch.state = ?")
            params.append(_state(state).value)
        params.append(max(0, limit))
        sql = (
            f"SELECT {_CH_COLS} FROM cardholders AS ch WHERE {' AND '.join(where)}"  # noqa: S608
            " ORDER BY ch.id LIMIT ?"
        )
        return self._query_cardholders(sql, params)

    # -- credentials -----------------------------------------------------------------------------

    def add_credential(
        self,
        cardholder_id: int,
        key: str,
        *,
        format: str | None = None,
        masked: str | None = None,
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
        state: CardholderState | str = CardholderState.ACTIVE,
    ) -> int:
        """Enrol a card (canonical key) for a cardholder; an enrolled key raises ConflictError."""
        entry = card_entry(key)
        fmt = format or entry.format
        display = masked or entry.masked
        st = _state(state)
        vf, vu = _dt_text(valid_from, "valid_from"), _dt_text(valid_until, "valid_until")
        _check_window(valid_from, valid_until)
        digest = self.card_hash(key)
        now = _now_text()
        with self._transaction() as conn:
            if not conn.execute(
                "SELECT 1 FROM cardholders WHERE id = ?", (cardholder_id,)
            ).fetchall():
                raise NotFoundError(f"no cardholder {cardholder_id}")
            existing = conn.execute(
                "SELECT id, cardholder_id FROM credentials WHERE key_hash = ?", (digest,)
            ).fetchall()
            if existing:
                raise ConflictError(
                    f"card {display} is already enrolled (credential {existing[0][0]}, "
                    f"cardholder {existing[0][1]})"
                )
            cur = conn.execute(
                "INSERT INTO credentials (cardholder_id, key_hash, format, masked, state,"
                " valid_from, valid_until, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (cardholder_id, digest, fmt, display, st.value, vf, vu, now, now),
            )
            return int(cur.lastrowid or 0)

    def update_credential(
        self,
        credential_id: int,
        *,
        state: CardholderState | str | _UnsetT = UNSET,
        valid_from: datetime | _UnsetT | None = UNSET,
        valid_until: datetime | _UnsetT | None = UNSET,
    ) -> None:
        """Change a credential's state or validity window; effective on the next lookup."""
        sets: dict[str, Any] = {}
        if state is not UNSET:
            sets["state"] = _state(state).value
        if valid_from is not UNSET:
            sets["valid_from"] = _dt_text(valid_from, "valid_from")
        if valid_until is not UNSET:
            sets["valid_until"] = _dt_text(valid_until, "valid_until")
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT valid_from, valid_until FROM credentials WHERE id = ?", (credential_id,)
            ).fetchall()
            if not rows:
                raise NotFoundError(f"no credential {credential_id}")
            _check_window(
                _dt(sets.get("valid_from", rows[0][0])), _dt(sets.get("valid_until", rows[0][1]))
            )
            sets["updated"] = _now_text()
            assignments = ", ".join(f"{column} = ?" for column in sets)
            conn.execute(
                f"UPDATE credentials SET {assignments} WHERE id = ?",  # noqa: S608 - fixed names
                (*sets.values(), credential_id),
            )

    def set_credential_state(self, credential_id: int, state: CardholderState | str) -> None:
        """Set a credential's state (REVOKED, LOST...); effective on the next lookup."""
        self.update_credential(credential_id, state=state)

    def revoke_key(self, key: str) -> bool:
        """Revoke the credential of a card key; False if no such card is enrolled."""
        digest = self.card_hash(key)
        with self._transaction() as conn:
            cur = conn.execute(
                "UPDATE credentials SET state = 'revoked', updated = ? WHERE key_hash = ?",
                (_now_text(), digest),
            )
            return cur.rowcount > 0

    def delete_credential(self, credential_id: int) -> bool:
        """Remove a credential; False if there was none."""
        with self._transaction() as conn:
            cur = conn.execute("DELETE FROM credentials WHERE id = ?", (credential_id,))
            return cur.rowcount > 0

    def get_credential(self, credential_id: int) -> CredentialInfo:
        """One credential by id; NotFoundError if none."""
        rows = self._query(
            f"SELECT {_CRED_COLS} FROM credentials WHERE id = ?",  # noqa: S608
            (credential_id,),
        )
        if not rows:
            raise NotFoundError(f"no credential {credential_id}")
        return _credential_info(rows[0])

    def list_credentials(
        self, cardholder_id: int | None = None, *, after_id: int = 0, limit: int = 1000
    ) -> list[CredentialInfo]:
        """Credentials (of one cardholder, or all) with id > ``after_id``, by id."""
        if cardholder_id is None:
            sql = f"SELECT {_CRED_COLS} FROM credentials WHERE id > ? ORDER BY id LIMIT ?"  # noqa: S608
            params: tuple[Any, ...] = (after_id, max(0, limit))
        else:
            sql = (
                f"SELECT {_CRED_COLS} FROM credentials"  # noqa: S608
                " WHERE cardholder_id = ? AND id > ? ORDER BY id LIMIT ?"
            )
            params = (cardholder_id, after_id, max(0, limit))
        return [_credential_info(r) for r in self._query(sql, params)]

    # -- access levels ---------------------------------------------------------------------------

    def add_level(self, name: str, doors: Iterable[str], schedule: str = "always") -> int:
        """Create an access level (door group x schedule name) and return its id."""
        _check_ident(name, "level name")
        _check_ident(schedule, "schedule name")
        door_set = sorted({_check_ident(d, "door name") for d in doors})
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM access_levels WHERE name = ?", (name,)).fetchall():
                raise ConflictError(f"access level {name!r} already exists")
            cur = conn.execute(
                "INSERT INTO access_levels (name, schedule) VALUES (?, ?)", (name, schedule)
            )
            level_id = int(cur.lastrowid or 0)
            conn.executemany(
                "INSERT INTO access_level_doors (level_id, door) VALUES (?, ?)",
                [(level_id, d) for d in door_set],
            )
        return level_id

    def update_level(
        self, name: str, *, doors: Iterable[str] | None = None, schedule: str | None = None
    ) -> None:
        """Replace a level's doors and/or schedule; grants are kept."""
        door_set = None if doors is None else sorted({_check_ident(d, "door name") for d in doors})
        if schedule is not None:
            _check_ident(schedule, "schedule name")
        with self._transaction() as conn:
            level_id = _level_id(conn, name)
            if schedule is not None:
                conn.execute(
                    "UPDATE access_levels SET schedule = ? WHERE id = ?", (schedule, level_id)
                )
            if door_set is not None:
                conn.execute("DELETE FROM access_level_doors WHERE level_id = ?", (level_id,))
                conn.executemany(
                    "INSERT INTO access_level_doors (level_id, door) VALUES (?, ?)",
                    [(level_id, d) for d in door_set],
                )

    def remove_level(self, name: str) -> bool:
        """Delete an access level and every grant of it; False if there was none."""
        with self._transaction() as conn:
            cur = conn.execute("DELETE FROM access_levels WHERE name = ?", (name,))
            return cur.rowcount > 0

    def list_levels(self) -> list[AccessLevel]:
        """Every access level, with its schedule resolved, by name."""
        with self._read_lock:
            conn = self._reader()
            try:
                self._refresh(conn)
            except sqlite3.Error as exc:
                raise StoreError(f"credential store read failed ({self.path}): {exc}") from exc
            return sorted(self._levels.values(), key=lambda level: level.name)

    def level_schedule_names(self) -> dict[str, str]:
        """Level name -> the schedule name it was given (which may be unknown to the site)."""
        return dict(self._query("SELECT name, schedule FROM access_levels ORDER BY name", ()))

    def grant_level(self, cardholder_id: int, level: str) -> None:
        """Give a cardholder an access level (idempotent)."""
        with self._transaction() as conn:
            level_id = _level_id(conn, level)
            if not conn.execute(
                "SELECT 1 FROM cardholders WHERE id = ?", (cardholder_id,)
            ).fetchall():
                raise NotFoundError(f"no cardholder {cardholder_id}")
            conn.execute(
                "INSERT OR IGNORE INTO cardholder_levels (cardholder_id, level_id) VALUES (?, ?)",
                (cardholder_id, level_id),
            )

    def revoke_level(self, cardholder_id: int, level: str) -> bool:
        """Take an access level from a cardholder; False if they did not have it."""
        with self._transaction() as conn:
            level_id = _level_id(conn, level)
            cur = conn.execute(
                "DELETE FROM cardholder_levels WHERE cardholder_id = ? AND level_id = ?",
                (cardholder_id, level_id),
            )
            return cur.rowcount > 0

    # -- bulk --------------------------------------------------------------------------------------

    def bulk_import(self, *, cache_kib: int = 16384) -> BulkImport:
        """Start an all-or-nothing import on its own connection (``with`` it; see BulkImport)."""
        self._writer()  # raise if closed
        try:
            conn = _connect(self.path, cache_kib=cache_kib, busy_timeout_s=self._busy_timeout_s)
            # The import only references cardholders it inserts itself and levels it read in
            # the same transaction; checking each reference costs a random B-tree probe.
            conn.execute("PRAGMA foreign_keys = OFF")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open credential store {self.path}: {exc}") from exc
        return BulkImport(self, conn)

    def iter_export(self, batch: int = 5000) -> Iterator[tuple[Cardholder, list[CredentialInfo]]]:
        """Every cardholder (levels resolved) with their credentials, by id, as one snapshot.

        Reads on a connection of its own inside one read transaction, so the result is the
        store at one instant and lookups are never held up by a long export.
        """
        self._reader()  # raise if closed
        try:
            conn = _connect(self.path, cache_kib=2048, busy_timeout_s=self._busy_timeout_s)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open credential store {self.path}: {exc}") from exc
        try:
            conn.execute("BEGIN")
            levels: dict[int, AccessLevel] = {}
            doors: dict[int, set[str]] = {}
            for level_id, door in conn.execute(
                "SELECT level_id, door FROM access_level_doors"
            ).fetchall():
                doors.setdefault(level_id, set()).add(door)
            for level_id, name, schedule in conn.execute(
                "SELECT id, name, schedule FROM access_levels"
            ).fetchall():
                levels[level_id] = AccessLevel(
                    name, frozenset(doors.get(level_id, ())), self._schedule(schedule)
                )
            after = 0
            while True:
                rows = conn.execute(
                    f"SELECT {_CH_COLS} FROM cardholders AS ch WHERE ch.id > ?"  # noqa: S608
                    " ORDER BY ch.id LIMIT ?",
                    (after, batch),
                ).fetchall()
                if not rows:
                    return
                lo, hi = rows[0][0], rows[-1][0]
                creds: dict[int, list[CredentialInfo]] = {}
                for row in conn.execute(
                    f"SELECT {_CRED_COLS} FROM credentials"  # noqa: S608
                    " WHERE cardholder_id BETWEEN ? AND ? ORDER BY cardholder_id, id",
                    (lo, hi),
                ).fetchall():
                    info = _credential_info(row)
                    creds.setdefault(info.cardholder_id, []).append(info)
                for r in rows:
                    yield _make_cardholder(r, levels), creds.get(r[0], [])
                after = hi
        except sqlite3.Error as exc:
            raise StoreError(f"credential store read failed ({self.path}): {exc}") from exc
        finally:
            conn.close()

    # -- housekeeping --------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Numbers of cardholders, credentials, PINs (not duress reservations) and levels."""
        row = self._query(
            "SELECT (SELECT count(*) FROM cardholders), (SELECT count(*) FROM credentials),"
            " (SELECT count(*) FROM cardholders WHERE pin_hash IS NOT NULL),"
            " (SELECT count(*) FROM access_levels)",
            (),
        )[0]
        return {"cardholders": row[0], "credentials": row[1], "pins": row[2], "levels": row[3]}

    def close(self) -> None:
        """Close the store's connections; idempotent."""
        with self._write_lock:
            conn, self._write = self._write, None
            if conn is not None:
                conn.close()
        with self._read_lock:
            conn, self._read = self._read, None
            if conn is not None:
                conn.close()

    @property
    def closed(self) -> bool:
        """True once ``close()`` has run."""
        return self._read is None

    def __enter__(self) -> Self:
        """Use the store as a context manager that closes it."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the store."""
        self.close()

    # -- internals -------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        if self._read is None:
            raise StoreError(f"credential store {self.path} is closed")
        return self._read

    def _writer(self) -> sqlite3.Connection:
        if self._write is None:
            raise StoreError(f"credential store {self.path} is closed")
        return self._write

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One BEGIN IMMEDIATE ... COMMIT on the write connection, under the write lock."""
        with self._write_lock:
            conn = self._writer()
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                _rollback(conn)
                raise ConflictError(f"credential store constraint violated: {exc}") from exc
            except sqlite3.OperationalError as exc:
                _rollback(conn)
                if "locked" in str(exc) or "busy" in str(exc):
                    raise StoreError(
                        f"credential store {self.path} is busy (an import running?): {exc}"
                    ) from exc
                raise StoreError(f"credential store write failed ({self.path}): {exc}") from exc
            except sqlite3.Error as exc:
                _rollback(conn)
                raise StoreError(f"credential store write failed ({self.path}): {exc}") from exc
            except BaseException:
                _rollback(conn)
                raise

    def _set_pin(self, conn: sqlite3.Connection, cardholder_id: int, pin: str | None) -> None:
        """Replace the cardholder's PIN and its duress reservation (inside a transaction)."""
        old = conn.execute(
            "SELECT pin_hash, duress_hash FROM cardholders WHERE id = ?", (cardholder_id,)
        ).fetchall()
        if old and old[0][0] is not None:
            conn.execute("DELETE FROM pins WHERE hash IN (?, ?)", old[0])
        if pin is None:
            conn.execute(
                "UPDATE cardholders SET pin_hash = NULL, duress_hash = NULL WHERE id = ?",
                (cardholder_id,),
            )
            return
        hp, hd = self.pin_hash(pin), self.pin_hash(duress_pin(pin))
        taken = conn.execute(
            "SELECT hash, duress FROM pins WHERE hash IN (?, ?)", (hp, hd)
        ).fetchall()
        if taken:
            # Same PIN if our PIN is their PIN or our duress PIN is theirs; else adjacent.
            same = taken[0][0] == (hd if taken[0][1] else hp)
            raise ConflictError(_pin_conflict_text(same=same, where=None))
        conn.executemany(
            "INSERT INTO pins (hash, cardholder_id, duress) VALUES (?, ?, ?)",
            [(hp, cardholder_id, 0), (hd, cardholder_id, 1)],
        )
        conn.execute(
            "UPDATE cardholders SET pin_hash = ?, duress_hash = ? WHERE id = ?",
            (hp, hd, cardholder_id),
        )

    def _refresh(self, conn: sqlite3.Connection) -> None:
        """Reload the level map if the database changed since the last read (lock held)."""
        version = conn.execute("PRAGMA data_version").fetchall()[0][0]
        if version == self._data_version:
            return
        levels: dict[int, tuple[str, str, set[str]]] = {
            r[0]: (r[1], r[2], set())
            for r in conn.execute("SELECT id, name, schedule FROM access_levels").fetchall()
        }
        for level_id, door in conn.execute(
            "SELECT level_id, door FROM access_level_doors"
        ).fetchall():
            if level_id in levels:
                levels[level_id][2].add(door)
        self._levels = {
            i: AccessLevel(name, frozenset(doors), self._schedule(schedule))
            for i, (name, schedule, doors) in levels.items()
        }
        self._level_sets = {}
        self._data_version = version

    def _schedule(self, name: str) -> Schedule:
        found = self._schedules.get(name)
        if found is not None:
            return found
        return ALWAYS if name == ALWAYS.name else Schedule(name, ())

    def _cardholder(self, r: Sequence[Any]) -> Cardholder:
        """Build a Cardholder from the ``_CH_COLS`` columns (read lock held, levels fresh)."""
        level_text: str | None = r[7]
        levels = self._level_sets.get(level_text)
        if levels is None:
            ids = () if level_text is None else (int(i) for i in level_text.split(","))
            levels = tuple(
                sorted(
                    (self._levels[i] for i in ids if i in self._levels),
                    key=lambda level: level.name,
                )
            )
            if len(self._level_sets) >= _CACHE_LIMIT:
                self._level_sets.clear()
            self._level_sets[level_text] = levels
        privilege_text: str = r[5]
        privileges = self._privilege_sets.get(privilege_text)
        if privileges is None:
            privileges = frozenset(Privilege(p) for p in privilege_text.split(",") if p)
            if len(self._privilege_sets) >= _CACHE_LIMIT:
                self._privilege_sets.clear()
            self._privilege_sets[privilege_text] = privileges
        return Cardholder(
            id=r[0],
            name=r[1],
            state=CardholderState(r[2]),
            valid_from=_dt(r[3]),
            valid_until=_dt(r[4]),
            privileges=privileges,
            has_pin=bool(r[6]),
            levels=levels,
        )

    def _query(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Run a read on the read connection and return all rows."""
        with self._read_lock:
            conn = self._reader()
            try:
                return conn.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"credential store read failed ({self.path}): {exc}") from exc

    def _query_cardholders(self, sql: str, params: Sequence[Any]) -> list[Cardholder]:
        """Run a read of ``_CH_COLS`` rows and build Cardholders with fresh levels."""
        with self._read_lock:
            conn = self._reader()
            try:
                self._refresh(conn)
                rows = conn.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"credential store read failed ({self.path}): {exc}") from exc
            return [self._cardholder(r) for r in rows]


# --------------------------------------------------------------------------- bulk import


class BulkImport:
    """One all-or-nothing import in one transaction on a connection of its own.

    ``add(rows)`` inserts the new cardholders (ids in file order, so id order is line order)
    and stages their card hashes in a TEMP table; ``conflicts()`` sorts the staged card
    hashes and the new PIN hashes once (CREATE INDEX) and finds cards and PINs repeated in
    the file or already in the store; ``commit()`` inserts the staged hashes in hash order
    (each B-tree is then filled sequentially instead of at random, which keeps a million rows
    fast with a small page cache) and commits. Leaving the ``with`` block without committing
    rolls everything back. ``phase_s`` holds the time spent in each phase.
    """

    def __init__(self, store: CredentialStore, conn: sqlite3.Connection) -> None:
        """Take the write lock of the file (BEGIN IMMEDIATE); use ``store.bulk_import()``."""
        self._store = store
        self._conn: sqlite3.Connection | None = conn
        self.cardholders = 0
        self.credentials = 0
        self.phase_s: dict[str, float] = dict.fromkeys(
            ("add", "check", "insert", "commit", "checkpoint"), 0.0
        )
        self._checked = False
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._first_id = 1 + int(
                conn.execute("SELECT coalesce(max(id), 0) FROM cardholders").fetchall()[0][0]
            )
            self.levels: dict[str, int] = dict(
                conn.execute("SELECT name, id FROM access_levels").fetchall()
            )
            for statement in filter(str.strip, _STAGE_SCHEMA.split(";")):
                conn.execute(statement)
        except sqlite3.Error as exc:
            _rollback(conn)
            conn.close()
            self._conn = None
            raise StoreError(f"cannot start an import into {store.path}: {exc}") from exc
        self._lines = array.array("q")  # file line of cardholder _first_id + i
        self._now = _now_text()

    def add(self, rows: Iterable[ImportRow]) -> None:
        """Insert validated rows (new cardholders, in file order) into the open transaction."""
        started = time.perf_counter()
        conn = self._connection()
        secret = self._store._secret
        digest = hmac.digest
        now = self._now
        levels = self.levels
        lines = self._lines
        holders: list[tuple[Any, ...]] = []
        cards: list[tuple[int, bytes, str, str]] = []
        grants: list[tuple[int, int]] = []
        cid = self._first_id + len(lines)
        for r in rows:
            hp = hd = None
            if r.pin is not None:
                hp = digest(secret, b"pin:" + r.pin.encode(), "sha256")
                hd = digest(secret, b"pin:" + duress_pin(r.pin).encode(), "sha256")
            holders.append(
                (
                    cid,
                    r.name,
                    r.state.value,
                    None if r.valid_from is None else _dt_text(r.valid_from, "valid_from"),
                    None if r.valid_until is None else _dt_text(r.valid_until, "valid_until"),
                    _privileges_text(r.privileges) if r.privileges else "",
                    hp,
                    hd,
                    now,
                    now,
                )
            )
            for c in r.cards:
                key_hash = digest(secret, b"card:" + c.key.encode(), "sha256")
                cards.append((cid, key_hash, c.format, c.masked))
            grants.extend((cid, levels[name]) for name in r.levels)
            lines.append(r.line)
            cid += 1
        try:
            conn.executemany(
                "INSERT INTO cardholders (id, name, state, valid_from, valid_until, privileges,"
                " pin_hash, duress_hash, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                holders,
            )
            conn.executemany("INSERT INTO temp.stage_cards VALUES (?, ?, ?, ?)", cards)
            conn.executemany(
                "INSERT OR IGNORE INTO cardholder_levels (cardholder_id, level_id) VALUES (?, ?)",
                grants,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"import into {self._store.path} failed: {exc}") from exc
        self.cardholders += len(holders)
        self.credentials += len(cards)
        self.phase_s["add"] += time.perf_counter() - started

    def conflicts(self, limit: int = 1000) -> tuple[int, list[tuple[int, str]]]:
        """Rows whose card or PIN is repeated or enrolled: (how many, the first ``limit``).

        Each listed row is ``(line, reasons joined by "; ")``, by line.
        """
        conn = self._connection()
        started = time.perf_counter()
        try:
            if not self._checked:
                for statement in filter(str.strip, _CHECK_SQL.split(";")):
                    conn.execute(statement, {"first": self._first_id})
                self._checked = True
                self.phase_s["check"] = time.perf_counter() - started
            count = conn.execute("SELECT count(DISTINCT cid) FROM temp.conflicts").fetchall()
            listed = conn.execute(
                "SELECT cid, kind, masked, other FROM temp.conflicts WHERE cid IN"
                " (SELECT DISTINCT cid FROM temp.conflicts ORDER BY cid LIMIT ?)"
                " ORDER BY cid, rowid",
                (max(0, limit),),
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"import into {self._store.path} failed: {exc}") from exc
        reasons: dict[int, list[str]] = {}
        for cid, kind, masked, other in listed:
            text = self._reason(kind, masked, other)
            found = reasons.setdefault(self._line(cid), [])
            if text not in found:
                found.append(text)
        return int(count[0][0]), [(line, "; ".join(texts)) for line, texts in reasons.items()]

    def commit(self) -> None:
        """Insert the staged cards and PINs in hash order and commit (one fsync)."""
        total, _ = self.conflicts(limit=0)
        if total:
            raise ConflictError(f"{total} rows conflict; nothing was imported")
        conn = self._connection()
        t0 = time.perf_counter()
        try:
            conn.execute(
                "INSERT INTO credentials (cardholder_id, key_hash, format, masked, state,"
                " created, updated) SELECT cid, key_hash, format, masked, 'active', ?, ?"
                " FROM temp.stage_cards ORDER BY key_hash",
                (self._now, self._now),
            )
            conn.execute(
                "INSERT INTO pins (hash, cardholder_id, duress)"
                " SELECT hash, cid, duress FROM temp.stage_pins ORDER BY hash"
            )
            for table in ("stage_cards", "stage_pins", "conflicts"):
                conn.execute(f"DROP TABLE temp.{table}")
            t1 = time.perf_counter()
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"import into {self._store.path} failed: {exc}") from exc
        t2 = time.perf_counter()
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        self.close()
        t3 = time.perf_counter()
        self.phase_s.update(insert=t1 - t0, commit=t2 - t1, checkpoint=t3 - t2)

    def close(self) -> None:
        """Roll back unless committed, and close the connection; idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            _rollback(conn)
            conn.close()

    def __enter__(self) -> Self:
        """Use the import as a context manager that rolls back unless committed."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Roll back (if not committed) and close."""
        self.close()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the import is finished")
        return self._conn

    def _line(self, cid: int) -> int:
        return int(self._lines[cid - self._first_id])

    def _reason(self, kind: str, masked: str | None, other: int | None) -> str:
        """The text of one conflict (``other``: a cardholder id of this import or a credential)."""
        if kind == "card-row":
            return f"duplicate card: {masked} is listed twice in the row"
        if kind == "card-file":
            return f"duplicate card: {masked} is the same card as line {self._line(other or 0)}"
        if kind == "card-store":
            return f"duplicate card: {masked} is already enrolled (credential {other})"
        where = f"line {self._line(other)}" if other is not None else None
        return _pin_conflict_text(same=kind.endswith("same"), where=where)


_STAGE_SCHEMA: Final = """
CREATE TEMP TABLE stage_cards (
    cid INTEGER NOT NULL, key_hash BLOB NOT NULL, format TEXT NOT NULL, masked TEXT NOT NULL
);
CREATE TEMP TABLE stage_pins (hash BLOB NOT NULL, cid INTEGER NOT NULL, duress INTEGER NOT NULL);
CREATE TEMP TABLE conflicts (cid INTEGER NOT NULL, kind TEXT NOT NULL, masked TEXT, other INTEGER)
"""

# Sort the staged hashes once (covering indexes), then find every repeated or enrolled one.
# A PIN conflict is "same PIN" when both rows have the same duress flag (pin = pin, or
# duress = duress, which is the same thing), else an adjacent PIN the duress scheme reserves.
_CHECK_SQL: Final = """
INSERT INTO temp.stage_pins (hash, cid, duress)
    SELECT pin_hash, id, 0 FROM main.cardholders WHERE id >= :first AND pin_hash IS NOT NULL
    UNION ALL
    SELECT duress_hash, id, 1 FROM main.cardholders WHERE id >= :first AND pin_hash IS NOT NULL;
CREATE INDEX temp.stage_cards_hash ON stage_cards (key_hash, cid, masked, format);
CREATE INDEX temp.stage_pins_hash ON stage_pins (hash, cid, duress);
INSERT INTO temp.conflicts (cid, kind, masked, other)
    SELECT cid, 'card-row', masked, NULL FROM temp.stage_cards
    GROUP BY key_hash, cid HAVING count(*) > 1;
INSERT INTO temp.conflicts (cid, kind, masked, other)
    SELECT s.cid, 'card-file', s.masked, f.first FROM temp.stage_cards AS s
    JOIN (SELECT key_hash, min(cid) AS first FROM temp.stage_cards
          GROUP BY key_hash HAVING count(*) > 1) AS f ON f.key_hash = s.key_hash
    WHERE s.cid > f.first;
INSERT INTO temp.conflicts (cid, kind, masked, other)
    SELECT s.cid, 'card-store', s.masked, c.id
    FROM temp.stage_cards AS s JOIN main.credentials AS c ON c.key_hash = s.key_hash;
INSERT INTO temp.conflicts (cid, kind, masked, other)
    SELECT DISTINCT s.cid, CASE WHEN s.duress = f.duress THEN 'pin-file-same'
                                ELSE 'pin-file-adjacent' END, NULL, f.first
    FROM temp.stage_pins AS s
    JOIN (SELECT hash, min(cid) AS first, duress FROM temp.stage_pins
          GROUP BY hash HAVING count(*) > 1) AS f ON f.hash = s.hash
    WHERE s.cid > f.first;
INSERT INTO temp.conflicts (cid, kind, masked, other)
    SELECT s.cid, CASE WHEN max(s.duress = p.duress) THEN 'pin-store-same'
                       ELSE 'pin-store-adjacent' END, NULL, NULL
    FROM temp.stage_pins AS s JOIN main.pins AS p ON p.hash = s.hash
    GROUP BY s.cid
"""


def _pin_conflict_text(*, same: bool, where: str | None) -> str:
    """Why a PIN cannot be enrolled, without saying whose it is (unless it is in the same file)."""
    owner = f"the PIN of {where}" if where else "another cardholder's PIN"
    if same:
        return f"PIN in use: same as {owner}"
    return (
        f"PIN in use: it differs from {owner} only by one in the last digit, "
        "which the duress scheme reserves"
    )


def _make_cardholder(r: Sequence[Any], levels: Mapping[int, AccessLevel]) -> Cardholder:
    """Build a Cardholder from ``_CH_COLS`` columns without the store's caches (exports)."""
    ids = () if r[7] is None else (int(i) for i in str(r[7]).split(","))
    return Cardholder(
        id=r[0],
        name=r[1],
        state=CardholderState(r[2]),
        valid_from=_dt(r[3]),
        valid_until=_dt(r[4]),
        privileges=frozenset(Privilege(p) for p in str(r[5]).split(",") if p),
        has_pin=bool(r[6]),
        levels=tuple(sorted((levels[i] for i in ids if i in levels), key=lambda lv: lv.name)),
    )


def _level_id(conn: sqlite3.Connection, name: str) -> int:
    rows = conn.execute("SELECT id FROM access_levels WHERE name = ?", (name,)).fetchall()
    if not rows:
        raise NotFoundError(f"no access level {name!r}")
    return int(rows[0][0])


def _credential_info(r: Sequence[Any]) -> CredentialInfo:
    return CredentialInfo(
        id=r[0],
        cardholder_id=r[1],
        format=r[2],
        display=r[3],
        state=CardholderState(r[4]),
        valid_from=_dt(r[5]),
        valid_until=_dt(r[6]),
        created=r[7],
        updated=r[8],
    )


def _initialise(conn: sqlite3.Connection, path: Path, secret: bytes) -> None:
    """Enable WAL, create or check the schema and the secret's fingerprint; raise StoreError."""
    tables = {
        r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    }
    if tables and "meta" not in tables:
        raise StoreError(f"{path} is an SQLite database but not a warding credential store")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
    if str(mode).lower() != "wal":
        raise StoreError(f"credential store {path}: cannot enable WAL mode (got {mode!r})")
    fingerprint = secret_fingerprint(secret)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)
        for key, value in (
            ("schema_version", str(SCHEMA_VERSION)),
            ("created", _now_text()),
            ("secret_fingerprint", fingerprint),
        ):
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise StoreError(
                f"credential store {path}: unsupported schema_version "
                f"{meta.get('schema_version')!r} (this version reads {SCHEMA_VERSION})"
            )
        if (
            not {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            >= _TABLES
        ):
            raise StoreError(f"credential store {path}: tables are missing")
        if meta.get("secret_fingerprint") != fingerprint:
            raise StoreError(
                f"credential store {path} was built with another site secret (fingerprint "
                f"{meta.get('secret_fingerprint')}, this secret is {fingerprint}): restore "
                "the matching secret file, or rebuild the store (docs/credentials.md)"
            )
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
