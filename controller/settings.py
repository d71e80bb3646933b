"""Load and validate a site TOML file into frozen, typed settings.

Validation happens once, here. Every defect becomes a Problem naming the file, the key path
(``doors[3].relay.coil``) and what was expected; ``load_settings`` raises one ConfigError
carrying all of them, so a technician fixes the whole file in one pass.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from controller.errors import ConfigError, Problem

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
DEMO_SITE_RESOURCE = "demo-site.toml"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class LockType(StrEnum):
    """Physical lock behaviour without power."""

    FAIL_SAFE = "fail-safe"  # unlocked when unpowered (maglock): relay energised = locked
    FAIL_SECURE = "fail-secure"  # locked when unpowered (strike): relay energised = unlocked


class ControllerSettings(_Model):
    """Identity of this controller and where it keeps its runtime files."""

    id: Name
    socket: Path = Path("/run/warding/control.sock")
    journal: Path = Path("/var/lib/warding/journal.db")
    log_level: Literal["trace", "debug", "info", "warning", "error"] = "info"
    watchdog_interval_s: float = Field(default=5.0, gt=0, le=300)
    shutdown_timeout_s: float = Field(default=4.0, gt=0, le=60)


class _BoardBase(_Model):
    name: Name
    unit_id: int = Field(default=1, ge=0, le=247)
    coils: int = Field(default=16, ge=1, le=1968)
    inputs: int = Field(default=16, ge=1, le=2000)
    timeout_ms: int = Field(default=500, ge=10, le=60_000)
    poll_interval_ms: int = Field(default=50, ge=5, le=60_000)
    backoff_initial_ms: int = Field(default=100, ge=1, le=60_000)
    backoff_max_ms: int = Field(default=5_000, ge=1, le=600_000)


class TcpBoardSettings(_BoardBase):
    """A Modbus TCP relay/IO board."""

    transport: Literal["tcp"]
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)


class RtuBoardSettings(_BoardBase):
    """A Modbus RTU relay/IO board on a serial line (device path or socket://host:port)."""

    transport: Literal["rtu"]
    device: str = Field(min_length=1)
    baudrate: int = Field(default=19200, ge=300, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    stop_bits: Literal[1, 2] = 1
    byte_size: Literal[7, 8] = 8


BoardSettings = Annotated[TcpBoardSettings | RtuBoardSettings, Field(discriminator="transport")]


class CoilRef(_Model):
    """A relay output on a board."""

    board: Name
    coil: int = Field(ge=0, le=65535)


class InputRef(_Model):
    """A discrete input on a board; ``invert`` when the input reads False for 'active'."""

    board: Name
    input: int = Field(ge=0, le=65535)
    invert: bool = False


class DoorSettings(_Model):
    """One door: its lock relay, its inputs and its timing."""

    name: Name
    zone: Name = "default"
    lock: LockType
    relay: CoilRef
    contact: InputRef | None = None
    rex: InputRef | None = None
    tamper: InputRef | None = None
    pulse_s: float = Field(default=5.0, gt=0, le=3600)
    held_open_s: float = Field(default=30.0, gt=0, le=86_400)
    rex_unlocks: bool = True
    rex_pulse_s: float = Field(default=5.0, gt=0, le=3600)

    @field_validator("lock", mode="before")
    @classmethod
    def _lock_names(cls, value: object) -> object:
        if isinstance(value, str) and value not in {t.value for t in LockType}:
            raise ValueError("expected 'fail-safe' or 'fail-secure'")
        return value


class Settings(_Model):
    """The whole site file."""

    controller: ControllerSettings
    boards: tuple[BoardSettings, ...] = Field(min_length=1)
    doors: tuple[DoorSettings, ...] = Field(min_length=1)

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


def _format_loc(loc: Sequence[int | str], discriminated: frozenset[str]) -> str:
    """Render a pydantic location as ``doors[3].relay.coil`` (dropping union tags)."""
    out = ""
    prev: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(prev, int) and part in discriminated:
            pass  # the tag of a discriminated union, e.g. boards[1].tcp.port
        else:
            out += f".{part}" if out else str(part)
        prev = part
    return out


def _describe(err: Mapping[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "string_pattern_mismatch":
        return (
            "expected a name of lowercase letters, digits, '-', '_' or '.' "
            f"(got {err.get('input')!r})"
        )
    msg = str(err.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if "input" in err and kind not in {"union_tag_invalid", "model_type"}:
        shown = repr(err["input"])
        if len(shown) > 40:
            shown = shown[:37] + "..."
        msg = f"{msg} (got {shown})"
    return msg


def _cross_check(settings: Settings, file: str) -> list[Problem]:
    """Problems no single field can see: duplicates, dangling references, out-of-range io."""
    problems: list[Problem] = []
    boards: dict[str, TcpBoardSettings | RtuBoardSettings] = {}
    endpoints: dict[str, str] = {}
    for i, b in enumerate(settings.boards):
        if b.name in boards:
            problems.append(Problem(f"boards[{i}].name", f"duplicate board name {b.name!r}", file))
        boards[b.name] = b
        if isinstance(b, TcpBoardSettings):
            endpoint = f"tcp:{b.host}:{b.port}:{b.unit_id}"
        else:
            endpoint = f"rtu:{b.device}:{b.unit_id}"
        if endpoint in endpoints:
            problems.append(
                Problem(
                    f"boards[{i}]",
                    f"same address and unit id as board {endpoints[endpoint]!r}",
                    file,
                )
            )
        endpoints.setdefault(endpoint, b.name)
        if b.backoff_max_ms < b.backoff_initial_ms:
            problems.append(
                Problem(f"boards[{i}].backoff_max_ms", "must be >= backoff_initial_ms", file)
            )
    rtu_lines: dict[str, RtuBoardSettings] = {}
    for i, b in enumerate(settings.boards):
        if isinstance(b, RtuBoardSettings):
            first = rtu_lines.setdefault(b.device, b)
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
    names: set[str] = set()
    coils: dict[tuple[str, int], str] = {}
    inputs: dict[tuple[str, int], str] = {}
    for i, d in enumerate(settings.doors):
        if d.name in names:
            problems.append(Problem(f"doors[{i}].name", f"duplicate door name {d.name!r}", file))
        names.add(d.name)
        board = boards.get(d.relay.board)
        if board is None:
            problems.append(
                Problem(f"doors[{i}].relay.board", f"undefined board {d.relay.board!r}", file)
            )
        else:
            if d.relay.coil >= board.coils:
                problems.append(
                    Problem(
                        f"doors[{i}].relay.coil",
                        f"board {board.name!r} has coils 0..{board.coils - 1} "
                        f"(got {d.relay.coil})",
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
            rb = boards.get(ref.board)
            if rb is None:
                problems.append(
                    Problem(f"doors[{i}].{field}.board", f"undefined board {ref.board!r}", file)
                )
                continue
            if ref.input >= rb.inputs:
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


def parse_settings(document: Mapping[str, Any], file: str = "<config>") -> Settings:
    """Validate an already-parsed document; raise ConfigError listing every problem."""
    if not isinstance(document, Mapping):
        raise ConfigError([Problem("", "expected a table at the top level", file)])
    try:
        settings = Settings.model_validate(document)
    except ValidationError as exc:
        tags = frozenset({"tcp", "rtu"})
        errors = exc.errors(include_url=False)
        locs = [tuple(e["loc"]) for e in errors]
        problems = [
            Problem(_format_loc(err["loc"], tags), _describe(err), file)
            for err in errors
            # a list whose items failed also reports itself "too short": keep the item errors
            if not (
                err["type"] == "too_short"
                and any(len(o) > len(err["loc"]) and o[: len(err["loc"])] == err["loc"]
                        for o in locs)
            )
        ]
        raise ConfigError(problems) from None
    problems = _cross_check(settings, file)
    if problems:
        raise ConfigError(problems)
    return settings


def parse_toml(text: str, file: str = "<config>") -> Settings:
    """Parse and validate TOML text."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem("", f"not valid TOML: {exc}", file)]) from None
    return parse_settings(document, file)


def load_settings(path: Path | str | None = None) -> Settings:
    """Load a site file; ``None`` loads the embedded demo site."""
    if path is None:
        return parse_toml(demo_site_text(), f"<embedded {DEMO_SITE_RESOURCE}>")
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem("", f"cannot read file: {exc.strerror}", str(p))]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [Problem("", f"not UTF-8 text (byte {exc.start})", str(p))]
        ) from None
    return parse_toml(text, str(p))


def demo_site_text() -> str:
    """Return the embedded demo site TOML."""
    return (resources.files("controller") / "data" / DEMO_SITE_RESOURCE).read_text("utf-8")
