"""Load and validate a site TOML file into frozen, typed settings.

Validation happens once, here. Every defect becomes a Problem naming the file, the key path
(``doors[3].relay.coil``) and what was expected; ``load_settings`` raises one ConfigError
carrying all of them, so a technician fixes the whole file in one pass. Numbers and booleans
are strict (``port = "502"`` is an error, not a guess); cross-checks (duplicate names, shared
coils, dangling board references, io beyond a board's count) also run on the entries that
validated when others did not, so one pass reports as much as it can.

``python -m controller.settings --schema`` prints the JSON schema (``config/site.schema.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import re
import reprlib
import select
import stat
import sys
import time
import tomllib
import types
import typing
import zoneinfo
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from controller.access.model import DoorMode, Interval, Schedule
from controller.errors import ConfigError, Problem

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
DEMO_SITE_RESOURCE = "demo-site.toml"
MAX_FILE_BYTES = 4 * 1024 * 1024
UNIX_SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes including the terminating NUL


def _path_text(value: object) -> object:
    """Accept a non-empty path string without NUL (or a Path built in code)."""
    if isinstance(value, Path):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a path string")
    if not value.strip():
        raise ValueError("expected a non-empty path")
    if "\0" in value:
        raise ValueError("a path cannot contain a NUL character")
    return value


def _socket_length(value: Path) -> Path:
    """Reject a Unix socket path the kernel cannot bind."""
    size = len(str(value).encode("utf-8", "surrogatepass"))
    if size > UNIX_SOCKET_PATH_MAX:
        raise PydanticCustomError(
            "socket_path_too_long",
            "a Unix socket path must be at most {max} bytes (got {size})",
            {"max": UNIX_SOCKET_PATH_MAX, "size": size},
        )
    return value


def _no_blank(value: str) -> str:
    """Reject empty strings and strings with spaces or control characters."""
    if not value or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("expected a non-empty value without spaces or control characters")
    return value


def _int_only(value: object) -> object:
    """Refuse booleans and floats where a Literal of integers is expected."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("expected an integer")
    return value


FilePath = Annotated[Path, BeforeValidator(_path_text)]
SocketPath = Annotated[Path, BeforeValidator(_path_text), AfterValidator(_socket_length)]
Token = Annotated[str, AfterValidator(_no_blank)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)


class LockType(StrEnum):
    """Physical lock behaviour without power."""

    FAIL_SAFE = "fail-safe"  # unlocked when unpowered (maglock): relay energised = locked
    FAIL_SECURE = "fail-secure"  # locked when unpowered (strike): relay energised = unlocked


class ControllerSettings(_Model):
    """Identity of this controller and where it keeps its runtime files."""

    id: Name = Field(description="Name of this controller on the site (journal, MQTT topics).")
    socket: SocketPath = Field(
        default=Path("/run/warding/control.sock"),
        description="Unix socket of the control API (at most 107 bytes).",
    )
    journal: FilePath = Field(
        default=Path("/var/lib/warding/journal.db"),
        description="SQLite journal file.",
    )
    log_level: Literal["trace", "debug", "info", "warning", "error"] = Field(
        default="info", description="Lowest level logged."
    )
    watchdog_interval_s: float = Field(
        default=5.0, gt=0, le=300, strict=True, description="Seconds between watchdog pings."
    )
    shutdown_timeout_s: float = Field(
        default=4.0,
        gt=0,
        le=8,
        strict=True,
        description="Seconds allowed for the whole shutdown: doors to their safe state, then "
        "stop (at most 8: below systemd's TimeoutStopSec=10, after which it kills).",
    )


class _BoardBase(_Model):
    name: Name = Field(description="Name that doors use to refer to this board.")
    unit_id: int = Field(
        default=1, ge=0, le=247, strict=True, description="Modbus unit (slave) id."
    )
    coils: int = Field(
        default=16, ge=1, le=1968, strict=True, description="Number of relay outputs (coils)."
    )
    inputs: int = Field(
        default=16, ge=1, le=2000, strict=True, description="Number of discrete inputs."
    )
    timeout_ms: int = Field(
        default=500, ge=10, le=60_000, strict=True, description="Reply timeout per request."
    )
    poll_interval_ms: int = Field(
        default=50, ge=5, le=60_000, strict=True, description="Period of the input poll."
    )
    backoff_initial_ms: int = Field(
        default=100, ge=1, le=60_000, strict=True, description="First reconnect delay."
    )
    backoff_max_ms: int = Field(
        default=5_000,
        ge=1,
        le=600_000,
        strict=True,
        description="Cap of the reconnect delay (>= backoff_initial_ms).",
    )


class TcpBoardSettings(_BoardBase):
    """A Modbus TCP relay/IO board."""

    transport: Literal["tcp"] = Field(description="'tcp' for Modbus TCP.")
    host: Token = Field(description="Host name or IP address of the board.")
    port: int = Field(default=502, ge=1, le=65535, strict=True, description="TCP port.")
    unit_id: int = Field(
        default=1,
        ge=0,
        le=255,
        strict=True,
        description="Modbus unit id (0-255 on TCP; many boards ignore it).",
    )


class RtuBoardSettings(_BoardBase):
    """A Modbus RTU relay/IO board on a serial line (device path or socket://host:port)."""

    transport: Literal["rtu"] = Field(description="'rtu' for Modbus RTU on a serial line.")
    device: Token = Field(description="Serial device path, or socket://host:port.")
    baudrate: int = Field(
        default=19200, ge=300, le=4_000_000, strict=True, description="Line speed in baud."
    )
    parity: Literal["N", "E", "O"] = Field(default="N", description="N(one), E(ven) or O(dd).")
    stop_bits: Annotated[Literal[1, 2], BeforeValidator(_int_only)] = Field(
        default=1, description="Stop bits."
    )
    byte_size: Annotated[Literal[7, 8], BeforeValidator(_int_only)] = Field(
        default=8, description="Data bits."
    )
    unit_id: int = Field(
        default=1,
        ge=1,
        le=247,
        strict=True,
        description="Modbus unit (slave) address on the line (0 is broadcast: not allowed).",
    )


BoardSettings = Annotated[TcpBoardSettings | RtuBoardSettings, Field(discriminator="transport")]


class CoilRef(_Model):
    """A relay output on a board."""

    board: Name = Field(description="Name of a board in [[boards]].")
    coil: int = Field(ge=0, le=65535, strict=True, description="Coil address, from 0.")


class InputRef(_Model):
    """A discrete input on a board; ``invert`` when the input reads False for 'active'."""

    board: Name = Field(description="Name of a board in [[boards]].")
    input: int = Field(ge=0, le=65535, strict=True, description="Input address, from 0.")
    invert: bool = Field(
        default=False, strict=True, description="True when the input reads off when active."
    )


class DoorSettings(_Model):
    """One door: its lock relay, its inputs and its timing."""

    name: Name = Field(description="Name of the door, unique on the site.")
    zone: Name = Field(default="default", description="Lockdown zone of the door.")
    lock: LockType = Field(description="Physical lock type: 'fail-safe' or 'fail-secure'.")
    relay: CoilRef = Field(description="Relay that drives the lock.")
    contact: InputRef | None = Field(
        default=None, description="Door position switch: active = door open."
    )
    rex: InputRef | None = Field(default=None, description="Request-to-exit: active = pressed.")
    tamper: InputRef | None = Field(default=None, description="Tamper switch: active = tampered.")
    pulse_s: float = Field(
        default=5.0, gt=0, le=3600, strict=True, description="Unlock time after a grant."
    )
    held_open_s: float = Field(
        default=30.0,
        gt=0,
        le=86_400,
        strict=True,
        description="Time the door may stay open before a held-open alarm.",
    )
    rex_unlocks: bool = Field(
        default=True, strict=True, description="Whether REX releases the lock (free egress)."
    )
    rex_pulse_s: float = Field(
        default=5.0, gt=0, le=3600, strict=True, description="Unlock time after a REX."
    )
    mode: DoorMode = Field(
        default=DoorMode.CARD,
        description="What a credential must present: card, card+pin, pin, two-person, "
        "free or locked.",
    )
    free_schedule: Name | None = Field(
        default=None,
        description="Name of a [[schedules]] entry during which the door is unlocked.",
    )
    egress: bool = Field(
        default=False,
        strict=True,
        description="On an egress route: REX releases it in every state, lockdown included; "
        "a fire alarm releases it if it is fail-safe; evacuation unlocks it.",
    )


WEEKDAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
_HOLIDAY = 7  # Interval.day of holiday intervals (as policy.HOLIDAY)
_INTERVAL = re.compile(
    r"^[ \t]*(?P<days>[a-z]+(?:-[a-z]+)?(?:,[a-z]+(?:-[a-z]+)?)*)[ \t]+"
    r"(?P<h1>[0-9]{1,2}):(?P<m1>[0-9]{2})-(?P<h2>[0-9]{1,2}):(?P<m2>[0-9]{2})[ \t]*\Z"
)


def parse_interval(text: str) -> tuple[Interval, ...]:
    """Parse ``"mon-fri 08:00-18:00"`` (also ``daily``, ``holiday``, ``sat,sun``) into intervals.

    Days: a comma list (no spaces) of ``mon``..``sun``, ranges ``a-b`` (``fri-mon`` wraps over
    the weekend), ``daily`` (mon..sun) and ``holiday``; then ``HH:MM-HH:MM``, start before end,
    end at most ``24:00``. A ValueError names what is wrong (the caller shows the text).
    """
    m = _INTERVAL.match(text.lower())
    if m is None:
        raise ValueError("expected days and a time range, e.g. 'mon-fri 08:00-18:00'")
    start = int(m["h1"]) * 60 + int(m["m1"])
    end = int(m["h2"]) * 60 + int(m["m2"])
    if int(m["m1"]) > 59 or int(m["m2"]) > 59 or start > 1440 or end > 1440 or start >= end:
        raise ValueError("expected a time range within 00:00-24:00 with start before end")
    days: list[int] = []
    for part in m["days"].split(","):
        if part == "daily":
            days.extend(range(7))
        elif part == "holiday":
            days.append(_HOLIDAY)
        elif "-" in part:
            a, b = part.split("-")
            for day in (a, b):
                if day not in WEEKDAYS:
                    raise ValueError(f"unknown day {day!r} in a range; use mon..sun")
            lo, hi = WEEKDAYS[a], WEEKDAYS[b]
            days.extend(range(lo, hi + 1) if lo <= hi else [*range(lo, 7), *range(0, hi + 1)])
        elif part in WEEKDAYS:
            days.append(WEEKDAYS[part])
        else:
            raise ValueError(f"unknown day {part!r}; use mon..sun, daily or holiday")
    return tuple(Interval(d, start, end) for d in sorted(set(days)))


def _interval_text(value: str) -> str:
    parse_interval(value)
    return value


class ScheduleSettings(_Model):
    """A named weekly schedule, used by doors (free access) and access levels."""

    name: Name = Field(description="Name of the schedule.")
    intervals: tuple[Annotated[str, AfterValidator(_interval_text)], ...] = Field(
        min_length=1,
        description="Intervals such as 'mon-fri 08:00-18:00', 'sat,sun 10:00-14:00', "
        "'holiday 09:00-12:00', 'daily 00:00-24:00'.",
    )

    def schedule(self) -> Schedule:
        """The policy's view of this schedule."""
        return Schedule(self.name, tuple(i for t in self.intervals for i in parse_interval(t)))


class ZoneSettings(_Model):
    """Per-zone access rules."""

    name: Name = Field(description="A zone named by doors' 'zone'.")
    anti_passback: Literal["off", "soft", "hard"] = Field(
        default="off",
        description="off; soft = grant and alarm; hard = deny a second entry without exit.",
    )


class InterlockSettings(_Model):
    """A group of doors of which at most one may be unlocked or open (a mantrap)."""

    name: Name = Field(description="Name of the interlock group.")
    doors: tuple[Name, ...] = Field(min_length=2, description="Doors of the group.")


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _date_only(value: object) -> object:
    """A calendar date: a TOML date (``2025-12-25``) or its text; not a number or date-time."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError("expected a date YYYY-MM-DD")


def _timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            "unknown time zone; expected an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from None
    return value


class AccessSettings(_Model):
    """Site-wide access-control policy."""

    timezone: Annotated[str, AfterValidator(_timezone)] = Field(
        default="UTC", description="IANA time zone for schedules and validity windows."
    )
    credentials_db: FilePath | None = Field(
        default=None,
        description="SQLite credential store (default: credentials.db beside the journal).",
    )
    secret_file: FilePath | None = Field(
        default=None,
        description="Site secret for keyed hashes of card numbers and PINs, mode 0600, created "
        "on first start (default: site.secret beside the journal).",
    )
    pin_timeout_s: float = Field(
        default=10.0, gt=0, le=120, strict=True, description="Time to enter a PIN after a card."
    )
    two_person_window_s: float = Field(
        default=10.0, gt=0, le=300, strict=True, description="Window for the second person."
    )
    throttle_denials: int = Field(
        default=5, ge=1, le=1000, strict=True, description="Denied reads that trip the throttle."
    )
    throttle_window_s: float = Field(
        default=30.0, gt=0, le=3600, strict=True, description="Window of the denied reads."
    )
    throttle_lockout_s: float = Field(
        default=60.0, gt=0, le=86_400, strict=True, description="How long a reader is ignored."
    )
    duress: Literal["off", "last-digit-plus-one"] = Field(
        default="off",
        description="Duress PIN scheme: the PIN with its last digit plus one (9 -> 0) grants "
        "as usual and raises a silent duress alarm.",
    )
    holidays: tuple[Annotated[date, BeforeValidator(_date_only)], ...] = Field(
        default=(), description="Holiday dates (YYYY-MM-DD)."
    )


class LockdownInputSettings(_Model):
    """A hard-wired panic button or fire-alarm contact on a board input."""

    name: Name = Field(description="Name of the input (journaled as the trigger's 'where').")
    kind: Literal["panic", "fire"] = Field(
        description="'panic' starts a lockdown; 'fire' releases."
    )
    board: Name = Field(description="Name of a board in [[boards]].")
    input: int = Field(ge=0, le=65535, strict=True, description="Input address, from 0.")
    invert: bool = Field(default=False, strict=True, description="True if active reads False.")
    zone: Name | None = Field(
        default=None, description="Panic only: lock down this zone instead of the whole site."
    )


class ThreatLevelSettings(_Model):
    """The door policy in force from a threat level upwards."""

    level: int = Field(ge=1, le=7, strict=True, description="Threat level 1..7.")
    mode: DoorMode = Field(
        description="Door mode at this level and above: card+pin, locked (responders only)..."
    )


class LockdownSettings(_Model):
    """Facility lockdown: triggers, verification, all-clear, persistence."""

    panic_debounce_ms: int = Field(
        default=50,
        ge=0,
        le=10_000,
        strict=True,
        description="A panic input must stay active this long to trigger.",
    )
    verify_interval_s: float = Field(
        default=1.0, gt=0, le=10, strict=True, description="Re-check and re-assert period."
    )
    all_clear_window_s: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        strict=True,
        description="Time for the second all-clear person after the first.",
    )
    auto_revert_s: float = Field(
        default=0.0,
        ge=0,
        le=86_400,
        strict=True,
        description="End a lockdown automatically after this long; 0 = never (default).",
    )
    duress_action: Literal["alarm", "alarm+lockdown"] = Field(
        default="alarm", description="What a duress PIN does besides granting."
    )
    state_file: FilePath | None = Field(
        default=None, description="Durable lockdown state (default: lockdown.json by the journal)."
    )
    inputs: tuple[LockdownInputSettings, ...] = Field(
        default=(), description="Panic buttons and fire-alarm contacts."
    )
    levels: tuple[ThreatLevelSettings, ...] = Field(
        default=(), description="Door policy per threat level."
    )


class OsdpBusSettings(_Model):
    """An OSDP RS-485 line with one or more readers (warding is the control panel)."""

    driver: Literal["osdp"] = Field(description="'osdp'.")
    name: Name = Field(description="Name that readers use to refer to this bus.")
    device: Token = Field(description="Serial device path.")
    baudrate: int = Field(default=115200, ge=9600, le=230400, strict=True, description="Baud rate.")


class SerialReaderBusSettings(_Model):
    """A Wiegand-to-serial / ASCII converter: one reader, one line of text per card."""

    driver: Literal["serial"] = Field(description="'serial'.")
    name: Name = Field(description="Name that readers use to refer to this line.")
    device: Token = Field(description="Serial device path, or socket://host:port.")
    baudrate: int = Field(default=9600, ge=300, le=230400, strict=True, description="Baud rate.")
    framing: Literal["auto", "wiegand-hex", "decimal", "uid-hex", "em4100-stx"] = Field(
        default="auto", description="How the converter prints a card (docs/readers.md)."
    )


ReaderBusSettings = Annotated[
    OsdpBusSettings | SerialReaderBusSettings, Field(discriminator="driver")
]


class ReaderSettings(_Model):
    """A credential reader at a door."""

    name: Name = Field(description="Name of the reader, unique on the site.")
    bus: Name = Field(description="Name of a [[reader_buses]] entry.")
    door: Name = Field(description="Door this reader opens.")
    direction: Literal["in", "out"] = Field(
        default="in", description="'in' enters the door's zone, 'out' leaves it."
    )
    address: int = Field(default=0, ge=0, le=126, strict=True, description="OSDP PD address.")
    key_file: FilePath | None = Field(
        default=None, description="OSDP Secure Channel base key file (32 hex digits)."
    )
    secure_channel: bool = Field(
        default=True, strict=True, description="Require OSDP Secure Channel (alarm without)."
    )


class Settings(_Model):
    """The whole site file."""

    @property
    def credentials_db(self) -> Path:
        """Where the credential store lives."""
        return self.access.credentials_db or self.controller.journal.with_name("credentials.db")

    @property
    def secret_file(self) -> Path:
        """Where the site secret lives."""
        return self.access.secret_file or self.controller.journal.with_name("site.secret")

    controller: ControllerSettings = Field(description="This controller.")
    boards: tuple[BoardSettings, ...] = Field(min_length=1, description="Modbus relay/IO boards.")
    doors: tuple[DoorSettings, ...] = Field(min_length=1, description="Doors.")
    access: AccessSettings = Field(default_factory=AccessSettings, description="Access policy.")
    schedules: tuple[ScheduleSettings, ...] = Field(default=(), description="Weekly schedules.")
    zones: tuple[ZoneSettings, ...] = Field(default=(), description="Per-zone rules.")
    interlocks: tuple[InterlockSettings, ...] = Field(default=(), description="Interlocks.")
    reader_buses: tuple[ReaderBusSettings, ...] = Field(default=(), description="Reader lines.")
    readers: tuple[ReaderSettings, ...] = Field(default=(), description="Credential readers.")
    lockdown: LockdownSettings = Field(
        default_factory=LockdownSettings, description="Facility lockdown."
    )

    @property
    def lockdown_state_file(self) -> Path:
        """Where the durable lockdown state lives."""
        return self.lockdown.state_file or self.controller.journal.with_name("lockdown.json")

    def board(self, name: str) -> TcpBoardSettings | RtuBoardSettings:
        """Return the board called ``name`` (KeyError if absent)."""
        for b in self.boards:
            if b.name == name:
                return b
        raise KeyError(name)

    def door(self, name: str) -> DoorSettings:
        """Return the door called ``name`` (KeyError if absent)."""
        for d in self.doors:
            if d.name == name:
                return d
        raise KeyError(name)


_Board = TcpBoardSettings | RtuBoardSettings
_BOARD_ADAPTER: TypeAdapter[_Board] = TypeAdapter(BoardSettings)
_SECTIONS = (
    "controller",
    "boards",
    "doors",
    "access",
    "schedules",
    "zones",
    "interlocks",
    "reader_buses",
    "readers",
    "lockdown",
)

_SHOW = reprlib.Repr()
_SHOW.maxstring = 40
_SHOW.maxother = 40
_SHOW.maxlevel = 2
_SHOW.maxlist = 4
_SHOW.maxtuple = 4
_SHOW.maxdict = 4
_SHOW.maxlong = 40

_KIND_MESSAGES = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
    "dict_type": "expected a table",
    "tuple_type": "expected an array",
    "list_type": "expected an array",
    "string_too_short": "expected a non-empty string",
}
_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _field_models(tp: Any) -> tuple[list[type[BaseModel]], str | None]:
    """The models a field annotation holds (through Annotated, unions, tuples, Optional), and
    the name of their tag field when they are a discriminated union (``transport``, ``driver``).
    """
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp], None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Annotated:
        models, tag = _field_models(args[0])
        for meta in args[1:]:
            discriminator = getattr(meta, "discriminator", None)
            if isinstance(discriminator, str):
                tag = discriminator
        return models, tag
    if origin in (typing.Union, types.UnionType, tuple, list):
        found = [_field_models(a) for a in args if a is not Ellipsis]
        tags = {t for _, t in found if t is not None}
        return [m for ms, _ in found for m in ms], tags.pop() if len(tags) == 1 else None
    return [], None


def _tag_values(model: type[BaseModel], tag: str) -> tuple[object, ...]:
    field = model.model_fields.get(tag)
    return typing.get_args(field.annotation) if field is not None else ()


def _walk(
    loc: Sequence[int | str],
) -> tuple[list[bool], list[type[BaseModel]], str | None]:
    """Follow a pydantic location through the settings models.

    Returns, for each part, whether it is the tag pydantic puts after the index of a
    discriminated union entry (``boards.1.tcp.port``); then the models the location ends in
    (several at a union itself) and the union's tag field, if it ends at one. Parts beyond the
    models (an unknown key, an item of a plain array) are never tags.
    """
    models: list[type[BaseModel]] = [Settings]
    tag: str | None = None
    is_tag: list[bool] = []
    for part in loc:
        if isinstance(part, int) or not models:
            is_tag.append(False)
            continue
        if tag is not None:
            is_tag.append(True)
            models = [m for m in models if part in _tag_values(m, tag)]
            tag = None
            continue
        is_tag.append(False)
        if len(models) == 1 and part in models[0].model_fields:
            models, tag = _field_models(models[0].model_fields[part].annotation)
        else:
            models, tag = [], None
    return is_tag, models, tag


def _format_loc(loc: Sequence[int | str]) -> str:
    """Render a pydantic location as ``doors[3].relay.coil`` (dropping union tags).

    A key that is not a bare TOML key is quoted (``controller."a b"``), so a path is one line.
    Only a tag where the models put one is dropped: an unknown key ``serial`` in a reader is
    still ``readers[0].serial``.
    """
    out = ""
    for part, is_tag in zip(loc, _walk(loc)[0], strict=True):
        if isinstance(part, int):
            out += f"[{part}]"
        elif not is_tag:
            key = str(part)
            if not _BARE_KEY.fullmatch(key):
                key = json.dumps(key)
            out += f".{key}" if out else key
    return out


def _model_at(loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model that a pydantic location (without its last part) points into."""
    _, models, _ = _walk(loc)
    return models[0] if len(models) == 1 else None


def _union_at(loc: Sequence[int | str], ctx: Mapping[str, Any]) -> tuple[str, str]:
    """The tag field of the discriminated union at ``loc`` and its values (``'tcp' or 'rtu'``)."""
    _, models, tag = _walk(loc)
    if tag is not None:
        values = [repr(v) for m in models for v in _tag_values(m, tag)]
        return tag, " or ".join(values)
    # not reached for Settings' own errors; pydantic's context is the fallback
    tag = str(ctx.get("discriminator", "'type'")).strip("'")
    return tag, str(ctx.get("expected_tags", "?")).replace(", ", " or ")


def _unknown_key(loc: Sequence[int | str]) -> str:
    model = _model_at(loc[:-1])
    if model is None:
        return "unknown key"
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key; expected one of: {', '.join(allowed)}"


def _describe(err: Mapping[str, Any]) -> str:
    """One human message for one pydantic error: what was expected, and what was found."""
    kind = str(err.get("type", ""))
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    show_input = True
    if kind == "extra_forbidden":
        return _unknown_key(err["loc"])
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_not_found":
        return f"required key is missing; expected {_tags(err['loc'], ctx)}"
    if kind == "socket_path_too_long":
        return str(err.get("msg"))
    if kind == "union_tag_invalid":
        # pydantic's ctx has the tag as text ('5' for 5): show the value as written
        found = err.get("input")
        field = _union_at(err["loc"], ctx)[0]
        tag = found[field] if isinstance(found, Mapping) and field in found else ctx.get("tag")
        msg = f"expected {_tags(err['loc'], ctx)} (got {_shown(tag)})"
        show_input = False
    elif kind == "string_pattern_mismatch":
        msg = "expected a name: 1-63 of a-z 0-9 '-' '_' '.', starting with a letter or digit"
    elif kind in _KIND_MESSAGES:
        msg = _KIND_MESSAGES[kind]
    elif kind in _BOUNDS:
        key, op = _BOUNDS[kind]
        msg = f"expected a value {op} {_number(ctx.get(key))}"
    elif kind == "too_short":
        n = int(ctx.get("min_length", 1))
        msg = "expected at least one entry" if n == 1 else f"expected at least {n} entries"
    else:
        msg = str(err.get("msg", "invalid value"))
        msg = msg.removeprefix("Value error, ")
        if msg.startswith("Input should be "):
            msg = "expected " + msg[len("Input should be ") :]
    if show_input and "input" in err:
        msg = f"{msg} (got {_shown(err['input'])})"
    return msg


def _tags(loc: Sequence[int | str], ctx: Mapping[str, Any]) -> str:
    tag, values = _union_at(loc, ctx)
    return f"{tag} = {values}"


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _shown(value: object) -> str:
    try:
        return _SHOW.repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__ must not hide the real problem
        return f"a {type(value).__name__}"


def _order(problem: Problem) -> tuple[int, int]:
    """Sort key: document order by section, then by array index."""
    m = re.match(r"([^.\[]*)(?:\[(\d+)\])?", problem.path)
    head, index = (m.group(1), m.group(2)) if m else ("", None)
    if not problem.path:
        rank = -1
    elif head in _SECTIONS:
        rank = _SECTIONS.index(head)
    else:
        rank = len(_SECTIONS)
    return rank, int(index) if index is not None else -1


def _cross_check(
    controller: ControllerSettings | None,
    boards: Sequence[tuple[int, _Board]],
    doors: Sequence[tuple[int, DoorSettings]],
    file: str,
    broken_boards: frozenset[str] | None = frozenset(),
) -> list[Problem]:
    """Problems no single field can see: duplicates, dangling references, out-of-range io.

    ``boards`` and ``doors`` are the entries that validated, with their index in the file;
    references to ``broken_boards`` (present but invalid) are neither dangling nor checked,
    and ``None`` means the board names are unknown, so no reference is called dangling.
    """
    problems: list[Problem] = []
    if controller is not None and controller.socket == controller.journal:
        problems.append(Problem("controller.journal", "must differ from controller.socket", file))
    by_name: dict[str, _Board] = {}
    endpoints: dict[str, str] = {}
    for i, b in boards:
        if b.name in by_name:
            problems.append(Problem(f"boards[{i}].name", f"duplicate board name {b.name!r}", file))
        by_name.setdefault(b.name, b)
        if isinstance(b, TcpBoardSettings):
            endpoint = f"tcp:{b.host}:{b.port}:{b.unit_id}"
        else:
            endpoint = f"rtu:{b.device}:{b.unit_id}"
        if endpoint in endpoints:
            problems.append(
                Problem(
                    f"boards[{i}].unit_id",
                    f"same address and unit id as board {endpoints[endpoint]!r}",
                    file,
                )
            )
        endpoints.setdefault(endpoint, b.name)
        if b.backoff_max_ms < b.backoff_initial_ms:
            problems.append(
                Problem(
                    f"boards[{i}].backoff_max_ms",
                    f"expected a value >= backoff_initial_ms ({b.backoff_initial_ms}) "
                    f"(got {b.backoff_max_ms})",
                    file,
                )
            )
    rtu_lines: dict[str, RtuBoardSettings] = {}
    for i, b in boards:
        if isinstance(b, RtuBoardSettings):
            first = rtu_lines.setdefault(b.device, b)
            if first.timeout_ms != b.timeout_ms:
                # one line, one transaction at a time: the line has a single reply timeout
                problems.append(
                    Problem(
                        f"boards[{i}].timeout_ms",
                        f"must equal timeout_ms of board {first.name!r} on the same line "
                        f"{b.device} ({first.timeout_ms}) (got {b.timeout_ms})",
                        file,
                    )
                )
            if (first.baudrate, first.parity, first.stop_bits, first.byte_size) != (
                b.baudrate,
                b.parity,
                b.stop_bits,
                b.byte_size,
            ):
                problems.append(
                    Problem(
                        f"boards[{i}]",
                        f"serial settings differ from board {first.name!r} on {b.device}",
                        file,
                    )
                )
    known = [*by_name, *sorted(set(broken_boards or ()) - set(by_name))]
    names: dict[str, int] = {}
    coils: dict[tuple[str, int], str] = {}
    inputs: dict[tuple[str, int], str] = {}
    for i, d in doors:
        if d.name in names:
            problems.append(
                Problem(
                    f"doors[{i}].name",
                    f"duplicate door name {d.name!r} (first at doors[{names[d.name]}])",
                    file,
                )
            )
        names.setdefault(d.name, i)
        board = by_name.get(d.relay.board)
        if board is None and broken_boards is not None and d.relay.board not in broken_boards:
            problems.append(
                Problem(f"doors[{i}].relay.board", _undefined(d.relay.board, known), file)
            )
        else:  # a valid board, or one present but invalid: sharing is a conflict all the same
            if board is not None and d.relay.coil >= board.coils:
                problems.append(
                    Problem(
                        f"doors[{i}].relay.coil",
                        f"board {board.name!r} has coils 0..{board.coils - 1} (got {d.relay.coil})",
                        file,
                    )
                )
            key = (d.relay.board, d.relay.coil)
            if key in coils:
                problems.append(
                    Problem(
                        f"doors[{i}].relay.coil",
                        f"coil {d.relay.coil} on board {d.relay.board!r} is already used by "
                        f"door {coils[key]!r}",
                        file,
                    )
                )
            coils.setdefault(key, d.name)
        for field in ("contact", "rex", "tamper"):
            ref: InputRef | None = getattr(d, field)
            if ref is None:
                continue
            rb = by_name.get(ref.board)
            if rb is None and broken_boards is not None and ref.board not in broken_boards:
                problems.append(
                    Problem(f"doors[{i}].{field}.board", _undefined(ref.board, known), file)
                )
                continue
            if rb is not None and ref.input >= rb.inputs:
                problems.append(
                    Problem(
                        f"doors[{i}].{field}.input",
                        f"board {rb.name!r} has inputs 0..{rb.inputs - 1} (got {ref.input})",
                        file,
                    )
                )
            ikey = (ref.board, ref.input)
            if ikey in inputs:
                problems.append(
                    Problem(
                        f"doors[{i}].{field}.input",
                        f"input {ref.input} on board {ref.board!r} is already used by "
                        f"{inputs[ikey]}",
                        file,
                    )
                )
            inputs.setdefault(ikey, f"door {d.name!r} {field}")
    return problems


def _undefined(name: str, boards: Sequence[str]) -> str:
    known = ", ".join(repr(n) for n in boards) or "none"
    return f"undefined board {name!r} (boards: {known})"


def _salvage(
    document: Mapping[str, Any],
) -> tuple[
    ControllerSettings | None,
    list[tuple[int, _Board]],
    list[tuple[int, DoorSettings]],
    frozenset[str] | None,
]:
    """Validate each entry on its own, so cross-checks can run beside field errors."""
    controller: ControllerSettings | None = None
    with contextlib.suppress(ValidationError):
        controller = ControllerSettings.model_validate(document.get("controller"))
    boards: list[tuple[int, _Board]] = []
    broken: set[str] | None = set()
    raw_boards = document.get("boards")
    if not isinstance(raw_boards, list | tuple):
        broken = None
    else:
        for i, item in enumerate(raw_boards):
            try:
                boards.append((i, _BOARD_ADAPTER.validate_python(item)))
            except ValidationError:
                if isinstance(item, Mapping) and isinstance(item.get("name"), str):
                    if broken is not None:
                        broken.add(item["name"])
                else:
                    broken = None  # a board whose name is unreadable: any name may be it
    doors: list[tuple[int, DoorSettings]] = []
    raw_doors = document.get("doors")
    if isinstance(raw_doors, list | tuple):
        for i, item in enumerate(raw_doors):
            try:
                doors.append((i, DoorSettings.model_validate(item)))
            except ValidationError:
                sketch = _door_sketch(item)
                if sketch is not None:
                    doors.append((i, sketch))
    return controller, boards, doors, None if broken is None else frozenset(broken)


def _door_sketch(item: object) -> DoorSettings | None:
    """The name and io references of an invalid door, if they are readable (for cross-checks)."""
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
        return None
    try:
        relay = CoilRef.model_validate(item.get("relay"))
    except ValidationError:
        return None
    refs: dict[str, InputRef | None] = {}
    for role in ("contact", "rex", "tamper"):
        try:
            refs[role] = InputRef.model_validate(item.get(role))
        except ValidationError:
            refs[role] = None
    return DoorSettings.model_construct(
        name=item["name"],
        lock=LockType.FAIL_SECURE,
        relay=relay,
        contact=refs["contact"],
        rex=refs["rex"],
        tamper=refs["tamper"],
    )


def _dupes(items: Sequence[Any], section: str, what: str, file: str) -> list[Problem]:
    seen: set[str] = set()
    out = []
    for i, item in enumerate(items):
        if item.name in seen:
            out.append(
                Problem(f"{section}[{i}].name", f"duplicate {what} name {item.name!r}", file)
            )
        seen.add(item.name)
    return out


def _cross_check_access(settings: Settings, file: str) -> list[Problem]:
    """References between doors, schedules, zones, interlocks, reader buses and readers."""
    problems: list[Problem] = []
    problems += _dupes(settings.schedules, "schedules", "schedule", file)
    problems += _dupes(settings.zones, "zones", "zone", file)
    problems += _dupes(settings.interlocks, "interlocks", "interlock", file)
    problems += _dupes(settings.reader_buses, "reader_buses", "reader bus", file)
    problems += _dupes(settings.readers, "readers", "reader", file)
    doors = {d.name for d in settings.doors}
    schedules = {s.name for s in settings.schedules}
    for i, d in enumerate(settings.doors):
        if d.free_schedule is not None and d.free_schedule not in schedules:
            problems.append(
                Problem(
                    f"doors[{i}].free_schedule",
                    f"undefined schedule {d.free_schedule!r}"
                    + (f"; defined: {', '.join(sorted(schedules))}" if schedules else ""),
                    file,
                )
            )
    for i, il in enumerate(settings.interlocks):
        for j, name in enumerate(il.doors):
            if name not in doors:
                problems.append(
                    Problem(f"interlocks[{i}].doors[{j}]", f"undefined door {name!r}", file)
                )
        if len(set(il.doors)) != len(il.doors):
            problems.append(Problem(f"interlocks[{i}].doors", "a door is listed twice", file))
    board_inputs = {
        (ref.board, ref.input)
        for d in settings.doors
        for ref in (d.contact, d.rex, d.tamper)
        if ref is not None
    }
    boards = {b.name: b for b in settings.boards}
    zones = {d.zone for d in settings.doors}
    for i, z in enumerate(settings.zones):
        if z.name not in zones:  # most likely a misspelt zone: its rules would apply nowhere
            problems.append(
                Problem(
                    f"zones[{i}].name",
                    f"no door is in zone {z.name!r}; door zones: {', '.join(sorted(zones))}",
                    file,
                )
            )
    problems += _dupes(settings.lockdown.inputs, "lockdown.inputs", "lockdown input", file)
    lockdown_inputs: dict[tuple[str, int], str] = {}
    for i, li in enumerate(settings.lockdown.inputs):
        where = f"lockdown.inputs[{i}]"
        b = boards.get(li.board)
        if b is None:
            problems.append(Problem(f"{where}.board", f"undefined board {li.board!r}", file))
        elif li.input >= b.inputs:
            problems.append(
                Problem(
                    f"{where}.input",
                    f"board {b.name!r} has inputs 0..{b.inputs - 1} (got {li.input})",
                    file,
                )
            )
        if (li.board, li.input) in board_inputs:
            problems.append(Problem(f"{where}.input", "input is already used by a door", file))
        other = lockdown_inputs.setdefault((li.board, li.input), li.name)
        if other != li.name:
            # one input, one meaning: a second listener would silently replace the first
            problems.append(
                Problem(
                    f"{where}.input", f"input is already used by lockdown input {other!r}", file
                )
            )
        if li.zone is not None and li.zone not in zones:
            problems.append(Problem(f"{where}.zone", f"no door is in zone {li.zone!r}", file))
        if li.zone is not None and li.kind == "fire":
            problems.append(Problem(f"{where}.zone", "a fire input is always site-wide", file))
    seen_levels: set[int] = set()
    for i, lv in enumerate(settings.lockdown.levels):
        if lv.level in seen_levels:
            problems.append(Problem(f"lockdown.levels[{i}].level", "level listed twice", file))
        seen_levels.add(lv.level)
    buses = {b.name: b for b in settings.reader_buses}
    addresses: dict[tuple[str, int], str] = {}
    per_bus: dict[str, int] = {}
    for i, r in enumerate(settings.readers):
        bus = buses.get(r.bus)
        if r.door not in doors:
            problems.append(Problem(f"readers[{i}].door", f"undefined door {r.door!r}", file))
        if bus is None:
            problems.append(Problem(f"readers[{i}].bus", f"undefined reader bus {r.bus!r}", file))
            continue
        per_bus[r.bus] = per_bus.get(r.bus, 0) + 1
        if isinstance(bus, SerialReaderBusSettings) and per_bus[r.bus] > 1:
            problems.append(
                Problem(f"readers[{i}].bus", f"serial line {r.bus!r} carries one reader only", file)
            )
        if isinstance(bus, OsdpBusSettings):
            key = (r.bus, r.address)
            if key in addresses:
                problems.append(
                    Problem(
                        f"readers[{i}].address",
                        f"address {r.address} on bus {r.bus!r} is already used by reader "
                        f"{addresses[key]!r}",
                        file,
                    )
                )
            addresses.setdefault(key, r.name)
            if r.secure_channel and r.key_file is None:
                problems.append(
                    Problem(
                        f"readers[{i}].key_file",
                        "required when secure_channel = true (the reader's SCBK file)",
                        file,
                    )
                )
    return problems


def _cross_check_files(settings: Settings, file: str) -> list[Problem]:
    """The files the daemon writes must all differ: the control socket replaces what is at
    its path, its lock file is truncated, and two stores in one file corrupt each other."""
    socket = settings.controller.socket
    files = [
        ("controller.socket", socket),
        ("controller.socket (its lock file)", socket.with_name(socket.name + ".lock")),
        ("controller.journal", settings.controller.journal),
        ("access.credentials_db", settings.credentials_db),
        ("access.secret_file", settings.secret_file),
        ("lockdown.state_file", settings.lockdown_state_file),
    ]
    problems: list[Problem] = []
    seen: dict[Path, str] = {}
    for key, path in files:
        first = seen.setdefault(path, key)
        if first != key and not (key == "controller.journal" and first == "controller.socket"):
            problems.append(Problem(key, f"must differ from {first} ({path})", file))
    return problems


def parse_settings(document: Mapping[str, Any], file: str = "<config>") -> Settings:
    """Validate an already-parsed document; raise ConfigError listing every problem."""
    if not isinstance(document, Mapping):
        raise ConfigError(
            [
                Problem(
                    "",
                    f"expected a table at the top level (got {type(document).__name__})",
                    file,
                )
            ]
        )
    if not document:
        raise ConfigError(
            [Problem("", "no settings; expected [controller], [[boards]] and [[doors]]", file)]
        )
    try:
        settings = Settings.model_validate(dict(document))
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        locs = [tuple(e["loc"]) for e in errors]
        problems = []
        for err in errors:
            loc = tuple(err["loc"])
            # a list whose items failed also reports itself "too short": keep the item errors
            if err["type"] == "too_short" and any(
                len(o) > len(loc) and o[: len(loc)] == loc for o in locs
            ):
                continue
            path = _format_loc(loc)
            if err["type"] in {"union_tag_invalid", "union_tag_not_found"}:
                path += f".{_union_at(loc, err.get('ctx') or {})[0]}"
            problems.append(Problem(path, _describe(err), file))
        controller, boards, doors, broken = _salvage(document)
        problems += _cross_check(controller, boards, doors, file, broken)
        problems.sort(key=_order)
        raise ConfigError(problems) from None
    problems = _cross_check(
        settings.controller, list(enumerate(settings.boards)), list(enumerate(settings.doors)), file
    )
    problems += _cross_check_access(settings, file)
    problems += _cross_check_files(settings, file)
    if problems:
        problems.sort(key=_order)
        raise ConfigError(problems)
    return settings


def parse_toml(text: str, file: str = "<config>") -> Settings:
    """Parse and validate TOML text (a leading byte-order mark is ignored)."""
    try:
        document = tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem("", f"not valid TOML: {exc}", file)]) from None
    except RecursionError:
        raise ConfigError([Problem("", "not valid TOML: nested too deeply", file)]) from None
    return parse_settings(document, file)


def load_settings(path: Path | str | None = None) -> Settings:
    """Load a site file; ``None`` loads the embedded demo site."""
    if path is None:
        return parse_toml(demo_site_text(), f"<embedded {DEMO_SITE_RESOURCE}>")
    return parse_site_bytes(read_site_file(path), str(path))


def read_site_file(path: Path | str) -> bytes:
    """The bytes of a site file or pipe (read once: a pipe cannot be read twice); ConfigError."""
    name = str(path)
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not hang; a file or a pipe is read
        # (``<(...)``, /dev/stdin), a device never
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if stat.S_ISFIFO(mode):
                raw = _read_pipe(fd, name)
            elif stat.S_ISREG(mode):
                raw = fh.read(MAX_FILE_BYTES + 1)
            else:
                raise ConfigError([Problem("", "not a regular file or a pipe", name)])
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([Problem("", f"cannot read file: {reason}", name)]) from None
    except ValueError:  # an embedded NUL in the path
        raise ConfigError([Problem("", "cannot read file: invalid path", name)]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError([Problem("", f"file is larger than {MAX_FILE_BYTES // 2**20} MiB", name)])
    return raw


def parse_site_bytes(raw: bytes, name: str) -> Settings:
    """Validate the bytes of a site file named ``name``; ConfigError listing every problem."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            [
                Problem(
                    "",
                    f"not UTF-8 text: byte 0x{raw[exc.start]:02x} "
                    f"(at line {line}, column {column})",
                    name,
                )
            ]
        ) from None
    return parse_toml(text, name)


PIPE_READ_S = 5.0
"""How long a site file given as a pipe may take to arrive whole (end of file)."""


def _read_pipe(fd: int, name: str) -> bytes:
    """All of a pipe (``<(...)``, /dev/stdin) up to its end, within PIPE_READ_S; a writer
    that never closes it is a ConfigError, never a hang."""
    chunks: list[bytes] = []
    size = 0
    deadline = time.monotonic() + PIPE_READ_S
    while True:
        try:
            chunk = os.read(fd, 65536)  # (no writer at all: end of file at once)
        except BlockingIOError:  # a writer, nothing yet: wait for it, within the deadline
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            if not ready:
                raise ConfigError(
                    [Problem("", f"the pipe did not end within {PIPE_READ_S:g} s", name)]
                ) from None
            continue
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_FILE_BYTES:
            break
    raw = b"".join(chunks)
    if not raw:
        raise ConfigError([Problem("", "empty (a pipe nothing was written to)", name)])
    return raw


def demo_site_text() -> str:
    """Return the embedded demo site TOML."""
    return (resources.files("controller") / "data" / DEMO_SITE_RESOURCE).read_text("utf-8")


def json_schema() -> dict[str, Any]:
    """Return the JSON schema of a site file (as stored in config/site.schema.json)."""
    schema = Settings.model_json_schema()
    schema["title"] = "warding site configuration"
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def main(argv: Sequence[str] | None = None) -> int:
    """``--schema``: print the JSON schema; ``FILE``: check a site file (exit 0 or 2)."""
    parser = argparse.ArgumentParser(prog="python -m controller.settings")
    parser.add_argument("--schema", action="store_true", help="print the JSON schema")
    parser.add_argument("file", nargs="?", help="site file to check")
    args = parser.parse_args(argv)
    if args.schema:
        sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")
        return 0
    if args.file is None:
        parser.error("give FILE or --schema")
    try:
        load_settings(args.file)
    except ConfigError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"{problem}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
