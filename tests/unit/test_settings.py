"""Site configuration: the demo and examples load; every defect is one precise, one-line problem."""

from __future__ import annotations

import copy
import json
import os
import re
import tomllib
import typing
from collections import Counter
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

import controller.settings as settings_mod
from controller.access.model import DoorMode, Interval, Schedule
from controller.errors import ConfigError, Problem
from controller.settings import (
    MAX_FILE_BYTES,
    UNIX_SOCKET_PATH_MAX,
    AccessSettings,
    CoilRef,
    ControllerSettings,
    DoorSettings,
    InputRef,
    InterlockSettings,
    LockType,
    OsdpBusSettings,
    ReaderSettings,
    RtuBoardSettings,
    ScheduleSettings,
    SerialReaderBusSettings,
    Settings,
    TcpBoardSettings,
    ZoneSettings,
    demo_site_text,
    json_schema,
    load_settings,
    main,
    parse_interval,
    parse_settings,
    parse_toml,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
EXAMPLES = sorted((CONFIG / "examples").glob("*.toml"))
FILE = "site.toml"

Doc = dict[str, Any]
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def demo_doc() -> Doc:
    doc: Doc = tomllib.loads(demo_site_text())
    return doc


def problems_of(document: Any, file: str = FILE) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        parse_settings(document, file)
    return info.value.problems


def assert_well_formed(exc: ConfigError, file: str) -> None:
    """Every problem names the file, has a message, and prints as exactly one line."""
    assert exc.problems
    lines = str(exc).split("\n")
    assert lines == [str(p) for p in exc.problems]
    for problem in exc.problems:
        assert problem.file == file
        assert problem.message.strip()
        assert "\n" not in problem.path
        assert "\n" not in problem.message
        assert str(problem).startswith(f"{file}: ")


# --- valid files -------------------------------------------------------------------------------


def test_embedded_demo_site_loads() -> None:
    site = load_settings()
    assert site.controller.id == "demo-hq"
    assert [b.name for b in site.boards] == ["main", "annex"]
    assert isinstance(site.board("main"), TcpBoardSettings)
    assert isinstance(site.board("annex"), RtuBoardSettings)
    assert len(site.doors) == 10
    assert site.door("server-room").rex_unlocks is False
    assert site.door("server-room").tamper == InputRef(board="main", input=10)
    assert site.door("lobby-main").lock is LockType.FAIL_SAFE
    with pytest.raises(KeyError):
        site.door("nope")
    assert site.door("server-room").mode is DoorMode.CARD_AND_PIN
    assert site.access.duress == "last-digit-plus-one"
    assert [s.name for s in site.schedules] == ["business-hours"]
    assert site.zones == (ZoneSettings(name="it", anti_passback="soft"),)
    assert site.interlocks[0].doors == ("annex-entry", "annex-lab")
    serial, osdp = site.reader_buses
    assert isinstance(serial, SerialReaderBusSettings)
    assert (serial.name, serial.framing) == ("lobby-line", "auto")
    assert isinstance(osdp, OsdpBusSettings)
    assert (osdp.name, osdp.baudrate) == ("osdp-1", 115200)
    assert [(r.name, r.bus, r.address, r.door) for r in site.readers] == [
        ("lobby-main-in", "lobby-line", 0, "lobby-main"),
        ("server-room-in", "osdp-1", 1, "server-room"),
        ("annex-entry-in", "osdp-1", 2, "annex-entry"),
    ]
    assert site.readers[1].key_file == Path("/tmp/warding-demo/keys/server-room-in.scbk")


def test_demo_file_in_config_is_the_embedded_one() -> None:
    assert (CONFIG / "demo-site.toml").read_text("utf-8") == demo_site_text()
    assert load_settings(CONFIG / "demo-site.toml") == load_settings()


def test_there_are_examples() -> None:
    names = {p.name for p in EXAMPLES}
    assert len(names) >= 2, names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(path: Path) -> None:
    site = load_settings(path)
    assert site.doors
    assert {d.relay.board for d in site.doors} <= {b.name for b in site.boards}


def test_examples_cover_a_tcp_site_and_a_multidrop_rtu_line() -> None:
    sites = [load_settings(p) for p in EXAMPLES]
    assert any(all(isinstance(b, TcpBoardSettings) for b in s.boards) for s in sites)
    multidrop = False
    for s in sites:
        devices = [b.device for b in s.boards if isinstance(b, RtuBoardSettings)]
        multidrop |= any(devices.count(d) > 1 for d in devices)
    assert multidrop


def test_examples_cover_readers_schedules_zones_and_interlocks() -> None:
    """One example shows an OSDP bus with two readers, a serial reader, a schedule, a zone
    with anti-passback and an interlock, together."""
    for path in EXAMPLES:
        site = load_settings(path)
        osdp = {b.name for b in site.reader_buses if isinstance(b, OsdpBusSettings)}
        serial = {b.name for b in site.reader_buses if isinstance(b, SerialReaderBusSettings)}
        if (
            any(sum(r.bus == bus for r in site.readers) >= 2 for bus in osdp)
            and any(r.bus in serial for r in site.readers)
            and site.schedules
            and any(d.free_schedule for d in site.doors)
            and any(z.anti_passback != "off" for z in site.zones)
            and site.interlocks
        ):
            return
    pytest.fail("no example site with readers, schedules, anti-passback and an interlock")


def test_the_annotated_example_in_the_docs_is_valid() -> None:
    text = (ROOT / "docs" / "config.md").read_text("utf-8")
    example = text.split("## Annotated example", 1)[1].split("```toml\n", 1)[1].split("```")[0]
    site = parse_toml(example, "docs/config.md")
    assert site.readers
    assert site.schedules


def test_defaults_apply() -> None:
    doc = {
        "controller": {"id": "c1"},
        "boards": [{"name": "b", "transport": "tcp", "host": "10.0.0.1"}],
        "doors": [{"name": "d", "lock": "fail-secure", "relay": {"board": "b", "coil": 0}}],
    }
    site = parse_settings(doc)
    assert site.controller.socket == Path("/run/warding/control.sock")
    assert site.controller.journal == Path("/var/lib/warding/journal.db")
    board = site.board("b")
    assert isinstance(board, TcpBoardSettings)
    assert (board.port, board.unit_id, board.coils, board.inputs) == (502, 1, 16, 16)
    door = site.door("d")
    assert (door.zone, door.pulse_s, door.held_open_s, door.rex_unlocks) == (
        "default",
        5.0,
        30.0,
        True,
    )
    assert (door.contact, door.rex, door.tamper) == (None, None, None)
    assert (door.mode, door.free_schedule) == (DoorMode.CARD, None)
    assert site.access == AccessSettings()
    assert (site.access.timezone, site.access.duress, site.access.holidays) == ("UTC", "off", ())
    assert (site.access.pin_timeout_s, site.access.two_person_window_s) == (10.0, 10.0)
    assert (
        site.access.throttle_denials,
        site.access.throttle_window_s,
        site.access.throttle_lockout_s,
    ) == (5, 30.0, 60.0)
    assert (site.schedules, site.zones, site.interlocks) == ((), (), ())
    assert (site.reader_buses, site.readers) == ((), ())
    # the credential store and the site secret live beside the journal by default
    assert site.credentials_db == Path("/var/lib/warding/credentials.db")
    assert site.secret_file == Path("/var/lib/warding/site.secret")


def test_settings_are_frozen() -> None:
    site = load_settings()
    with pytest.raises(ValidationError):
        site.controller.id = "other"
    with pytest.raises(ValidationError):
        site.doors[0].relay.coil = 7
    with pytest.raises(ValidationError):
        site.doors = ()
    assert isinstance(site.doors, tuple)
    assert isinstance(site.boards, tuple)


# --- golden problems ---------------------------------------------------------------------------

Mutation = Callable[[Doc], None]


def setp(*path: str | int, value: Any) -> Mutation:
    def mutate(doc: Doc) -> None:
        node: Any = doc
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    return mutate


def delp(*path: str | int) -> Mutation:
    def mutate(doc: Doc) -> None:
        node: Any = doc
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]

    return mutate


def add(section: str, **fields: Any) -> Mutation:
    def mutate(doc: Doc) -> None:
        doc[section].append(fields)

    return mutate


def add_board(**fields: Any) -> Mutation:
    return add("boards", **fields)


CONTROLLER_KEYS = "id, socket, journal, log_level, watchdog_interval_s, shutdown_timeout_s"
LONG_SOCKET = "/run/" + "s" * (UNIX_SOCKET_PATH_MAX - 4)  # 108 bytes

GOLDEN: list[tuple[str, Mutation, str, str]] = [
    # unknown keys, at every level
    (
        "unknown-top",
        setp("bogus", value=1),
        "bogus",
        f"unknown key; expected one of: {', '.join(Settings.model_fields)}",
    ),
    (
        "unknown-controller",
        setp("controller", "bogus", value=1),
        "controller.bogus",
        f"unknown key; expected one of: {CONTROLLER_KEYS}",
    ),
    (
        "unknown-relay",
        setp("doors", 2, "relay", "bogus", value=True),
        "doors[2].relay.bogus",
        "unknown key; expected one of: board, coil",
    ),
    (
        "unknown-contact-typo",
        setp("doors", 2, "contact", "invertt", value=True),
        "doors[2].contact.invertt",
        "unknown key (did you mean 'invert'?)",
    ),
    (
        "unknown-door-typo",
        setp("doors", 4, "pulse", value=3),
        "doors[4].pulse",
        "unknown key (did you mean 'pulse_s'?)",
    ),
    (
        "unknown-tcp-board",
        setp("boards", 0, "device", value="/dev/ttyS0"),
        "boards[0].device",
        "unknown key; expected one of: name, unit_id, coils, inputs, timeout_ms, "
        "poll_interval_ms, backoff_initial_ms, backoff_max_ms, transport, host, port",
    ),
    (
        "unknown-rtu-board-typo",
        setp("boards", 1, "baud", value=9600),
        "boards[1].baud",
        "unknown key (did you mean 'baudrate'?)",
    ),
    (
        "unknown-quoted-key",
        setp("controller", "log level", value="info"),
        'controller."log level"',
        "unknown key (did you mean 'log_level'?)",
    ),
    # cross-checks
    (
        "two-doors-one-coil",
        setp("doors", 3, "relay", "coil", value=1),
        "doors[3].relay.coil",
        "coil 1 on board 'main' is already used by door 'lobby-side'",
    ),
    (
        "undefined-board-relay",
        setp("doors", 3, "relay", "board", value="basement"),
        "doors[3].relay.board",
        "undefined board 'basement' (boards: 'main', 'annex')",
    ),
    (
        "undefined-board-input",
        setp("doors", 6, "rex", "board", value="basement"),
        "doors[6].rex.board",
        "undefined board 'basement' (boards: 'main', 'annex')",
    ),
    (
        "coil-beyond-board",
        setp("doors", 3, "relay", "coil", value=8),
        "doors[3].relay.coil",
        "board 'main' has coils 0..7 (got 8)",
    ),
    (
        "input-beyond-board",
        setp("doors", 3, "contact", "input", value=16),
        "doors[3].contact.input",
        "board 'main' has inputs 0..15 (got 16)",
    ),
    (
        "input-shared",
        setp("doors", 7, "contact", "input", value=2),
        "doors[7].contact.input",
        "input 2 on board 'annex' is already used by door 'annex-lab' contact",
    ),
    (
        "duplicate-door-name",
        setp("doors", 3, "name", value="lobby-main"),
        "doors[3].name",
        "duplicate door name 'lobby-main' (first at doors[0])",
    ),
    (
        "duplicate-board-name",
        add_board(name="main", transport="tcp", host="10.0.0.9"),
        "boards[2].name",
        "duplicate board name 'main'",
    ),
    (
        "same-endpoint",
        add_board(name="again", transport="tcp", host="127.0.0.1", port=15020),
        "boards[2].unit_id",
        "same address and unit id as board 'main'",
    ),
    (
        "rtu-line-mismatch",
        add_board(
            name="annex2",
            transport="rtu",
            device="/tmp/warding-demo/annex.tty",
            unit_id=8,
            timeout_ms=300,
        ),
        "boards[2]",
        "serial settings differ from board 'annex' on /tmp/warding-demo/annex.tty",
    ),
    (
        "backoff-inverted",
        setp("boards", 0, "backoff_max_ms", value=50),
        "boards[0].backoff_max_ms",
        "expected a value >= backoff_initial_ms (100) (got 50)",
    ),
    (
        "socket-is-journal",
        setp("controller", "journal", value="/tmp/warding-demo/control.sock"),
        "controller.journal",
        "must differ from controller.socket",
    ),
    # impossible values
    (
        "pulse-zero",
        setp("doors", 0, "pulse_s", value=0),
        "doors[0].pulse_s",
        "expected a value > 0 (got 0)",
    ),
    (
        "pulse-negative",
        setp("doors", 0, "pulse_s", value=-1.5),
        "doors[0].pulse_s",
        "expected a value > 0 (got -1.5)",
    ),
    (
        "pulse-nan",
        setp("doors", 0, "pulse_s", value=float("nan")),
        "doors[0].pulse_s",
        "expected a finite number (got nan)",
    ),
    (
        "held-open-huge",
        setp("doors", 0, "held_open_s", value=100_000),
        "doors[0].held_open_s",
        "expected a value <= 86400 (got 100000)",
    ),
    (
        "port-zero",
        setp("boards", 0, "port", value=0),
        "boards[0].port",
        "expected a value >= 1 (got 0)",
    ),
    (
        "port-too-big",
        setp("boards", 0, "port", value=70000),
        "boards[0].port",
        "expected a value <= 65535 (got 70000)",
    ),
    (
        "rtu-broadcast-unit",
        setp("boards", 1, "unit_id", value=0),
        "boards[1].unit_id",
        "expected a value >= 1 (got 0)",
    ),
    (
        "coils-zero",
        setp("boards", 1, "coils", value=0),
        "boards[1].coils",
        "expected a value >= 1 (got 0)",
    ),
    (
        "bad-lock-type",
        setp("doors", 1, "lock", value="maglock"),
        "doors[1].lock",
        "expected 'fail-safe' or 'fail-secure' (got 'maglock')",
    ),
    (
        "bad-transport",
        setp("boards", 0, "transport", value="udp"),
        "boards[0].transport",
        "expected transport = 'tcp' or 'rtu' (got 'udp')",
    ),
    (
        "bad-parity",
        setp("boards", 1, "parity", value="even"),
        "boards[1].parity",
        "expected 'N', 'E' or 'O' (got 'even')",
    ),
    (
        "bad-stop-bits",
        setp("boards", 1, "stop_bits", value=3),
        "boards[1].stop_bits",
        "expected 1 or 2 (got 3)",
    ),
    (
        "bad-log-level",
        setp("controller", "log_level", value="loud"),
        "controller.log_level",
        "expected 'trace', 'debug', 'info', 'warning' or 'error' (got 'loud')",
    ),
    (
        "bad-name",
        setp("doors", 0, "name", value="Lobby Main"),
        "doors[0].name",
        "expected a name: 1-63 of a-z 0-9 '-' '_' '.', starting with a letter or digit "
        "(got 'Lobby Main')",
    ),
    (
        "host-with-space",
        setp("boards", 0, "host", value="10.0.0.1 "),
        "boards[0].host",
        "expected a non-empty value without spaces or control characters (got '10.0.0.1 ')",
    ),
    (
        "empty-journal",
        setp("controller", "journal", value=""),
        "controller.journal",
        "expected a non-empty path (got '')",
    ),
    (
        "socket-too-long",
        setp("controller", "socket", value=LONG_SOCKET),
        "controller.socket",
        f"a Unix socket path must be at most {UNIX_SOCKET_PATH_MAX} bytes (got 108)",
    ),
    (
        "no-doors",
        setp("doors", value=[]),
        "doors",
        "expected at least one entry (got [])",
    ),
    # missing required keys
    (
        "missing-controller",
        delp("controller"),
        "controller",
        "required key is missing",
    ),
    ("missing-id", delp("controller", "id"), "controller.id", "required key is missing"),
    ("missing-host", delp("boards", 0, "host"), "boards[0].host", "required key is missing"),
    ("missing-device", delp("boards", 1, "device"), "boards[1].device", "required key is missing"),
    (
        "missing-transport",
        delp("boards", 0, "transport"),
        "boards[0].transport",
        "required key is missing; expected transport = 'tcp' or 'rtu'",
    ),
    ("missing-lock", delp("doors", 5, "lock"), "doors[5].lock", "required key is missing"),
    (
        "missing-coil",
        delp("doors", 5, "relay", "coil"),
        "doors[5].relay.coil",
        "required key is missing",
    ),
    # wrong types
    (
        "string-for-int",
        setp("boards", 0, "port", value="502"),
        "boards[0].port",
        "expected an integer (got '502')",
    ),
    (
        "float-for-int",
        setp("boards", 0, "coils", value=8.0),
        "boards[0].coils",
        "expected an integer (got 8.0)",
    ),
    (
        "bool-for-int",
        setp("doors", 0, "relay", "coil", value=True),
        "doors[0].relay.coil",
        "expected an integer (got True)",
    ),
    (
        "bool-for-literal-int",
        setp("boards", 1, "stop_bits", value=True),
        "boards[1].stop_bits",
        "expected an integer (got True)",
    ),
    (
        "string-for-float",
        setp("doors", 0, "pulse_s", value="5"),
        "doors[0].pulse_s",
        "expected a number (got '5')",
    ),
    (
        "string-for-bool",
        setp("doors", 4, "rex_unlocks", value="false"),
        "doors[4].rex_unlocks",
        "expected true or false (got 'false')",
    ),
    (
        "int-for-bool",
        setp("doors", 4, "contact", "invert", value=1),
        "doors[4].contact.invert",
        "expected true or false (got 1)",
    ),
    (
        "int-for-path",
        setp("controller", "socket", value=5),
        "controller.socket",
        "expected a path string (got 5)",
    ),
    (
        "string-for-table",
        setp("doors", 0, "relay", value="main:0"),
        "doors[0].relay",
        "expected a table (got 'main:0')",
    ),
    (
        "table-for-array",
        setp("boards", value={"name": "main"}),
        "boards",
        "expected an array (got {'name': 'main'})",
    ),
    # access control: schedules, zones, interlocks, reader buses and readers
    (
        "bad-interval-text",
        setp("schedules", 0, "intervals", value=["mon-fri 8-18"]),
        "schedules[0].intervals[0]",
        "expected days and a time range, e.g. 'mon-fri 08:00-18:00' (got 'mon-fri 8-18')",
    ),
    (
        "bad-interval-day",
        setp("schedules", 0, "intervals", value=["mon-fri 07:00-19:00", "weekend 10:00-14:00"]),
        "schedules[0].intervals[1]",
        "unknown day 'weekend'; use mon..sun, daily or holiday (got 'weekend 10:00-14:00')",
    ),
    (
        "bad-interval-range-day",
        setp("schedules", 0, "intervals", value=["mon-fry 07:00-19:00"]),
        "schedules[0].intervals[0]",
        "unknown day 'fry' in a range; use mon..sun (got 'mon-fry 07:00-19:00')",
    ),
    (
        "interval-over-midnight",
        setp("schedules", 0, "intervals", value=["mon-fri 22:00-06:00"]),
        "schedules[0].intervals[0]",
        "expected a time range within 00:00-24:00 with start before end "
        "(got 'mon-fri 22:00-06:00')",
    ),
    (
        "no-intervals",
        setp("schedules", 0, "intervals", value=[]),
        "schedules[0].intervals",
        "expected at least one entry (got [])",
    ),
    (
        "interval-not-an-array",
        setp("schedules", 0, "intervals", value="mon-fri 07:00-19:00"),
        "schedules[0].intervals",
        "expected an array (got 'mon-fri 07:00-19:00')",
    ),
    (
        "unknown-timezone",
        setp("access", "timezone", value="Europe/Springfield"),
        "access.timezone",
        "unknown time zone; expected an IANA name such as 'Europe/Berlin' or 'UTC' "
        "(got 'Europe/Springfield')",
    ),
    (
        "timezone-path",
        setp("access", "timezone", value="../../etc/passwd"),
        "access.timezone",
        "unknown time zone; expected an IANA name such as 'Europe/Berlin' or 'UTC' "
        "(got '../../etc/passwd')",
    ),
    (
        "unknown-access-typo",
        setp("access", "time_zone", value="UTC"),
        "access.time_zone",
        "unknown key (did you mean 'timezone'?)",
    ),
    (
        "bad-duress",
        setp("access", "duress", value="on"),
        "access.duress",
        "expected 'off' or 'last-digit-plus-one' (got 'on')",
    ),
    (
        "pin-timeout-zero",
        setp("access", "pin_timeout_s", value=0),
        "access.pin_timeout_s",
        "expected a value > 0 (got 0)",
    ),
    (
        "throttle-denials-float",
        setp("access", "throttle_denials", value=5.0),
        "access.throttle_denials",
        "expected an integer (got 5.0)",
    ),
    (
        "undefined-free-schedule",
        setp("doors", 2, "free_schedule", value="nights"),
        "doors[2].free_schedule",
        "undefined schedule 'nights'; defined: business-hours",
    ),
    (
        "bad-door-mode",
        setp("doors", 4, "mode", value="card-pin"),
        "doors[4].mode",
        "expected 'card', 'card+pin', 'pin', 'two-person', 'free' or 'locked' (got 'card-pin')",
    ),
    (
        "bad-anti-passback",
        setp("zones", 0, "anti_passback", value=True),
        "zones[0].anti_passback",
        "expected 'off', 'soft' or 'hard' (got True)",
    ),
    (
        "duplicate-schedule",
        add("schedules", name="business-hours", intervals=["daily 00:00-24:00"]),
        "schedules[1].name",
        "duplicate schedule name 'business-hours'",
    ),
    (
        "duplicate-zone",
        add("zones", name="it"),
        "zones[1].name",
        "duplicate zone name 'it'",
    ),
    (
        "zone-no-door-is-in",
        add("zones", name="i-t", anti_passback="hard"),
        "zones[1].name",
        "no door is in zone 'i-t'; door zones: annex, it, lobby, offices",
    ),
    (
        "interlock-undefined-door",
        setp("interlocks", 0, "doors", value=["annex-entry", "annex-labs"]),
        "interlocks[0].doors[1]",
        "undefined door 'annex-labs'",
    ),
    (
        "interlock-one-door",
        setp("interlocks", 0, "doors", value=["annex-entry"]),
        "interlocks[0].doors",
        "expected at least 2 entries (got ['annex-entry'])",
    ),
    (
        "interlock-door-twice",
        setp("interlocks", 0, "doors", value=["annex-entry", "annex-entry"]),
        "interlocks[0].doors",
        "a door is listed twice",
    ),
    (
        "bad-reader-bus-driver",
        setp("reader_buses", 0, "driver", value="wiegand"),
        "reader_buses[0].driver",
        "expected driver = 'osdp' or 'serial' (got 'wiegand')",
    ),
    (  # the tag as written, not pydantic's text of it ('1')
        "reader-bus-driver-not-a-string",
        setp("reader_buses", 1, "driver", value=1),
        "reader_buses[1].driver",
        "expected driver = 'osdp' or 'serial' (got 1)",
    ),
    (
        "missing-reader-bus-driver",
        delp("reader_buses", 1, "driver"),
        "reader_buses[1].driver",
        "required key is missing; expected driver = 'osdp' or 'serial'",
    ),
    (
        "missing-osdp-device",
        delp("reader_buses", 1, "device"),
        "reader_buses[1].device",
        "required key is missing",
    ),
    (
        "missing-serial-device",
        delp("reader_buses", 0, "device"),
        "reader_buses[0].device",
        "required key is missing",
    ),
    (
        "framing-on-an-osdp-bus",
        setp("reader_buses", 1, "framing", value="auto"),
        "reader_buses[1].framing",
        "unknown key; expected one of: driver, name, device, baudrate",
    ),
    (
        "unknown-serial-bus-typo",
        setp("reader_buses", 0, "framming", value="auto"),
        "reader_buses[0].framming",
        "unknown key (did you mean 'framing'?)",
    ),
    (
        "bad-framing",
        setp("reader_buses", 0, "framing", value="hex"),
        "reader_buses[0].framing",
        "expected 'auto', 'wiegand-hex', 'decimal', 'uid-hex' or 'em4100-stx' (got 'hex')",
    ),
    (
        "osdp-baudrate-too-low",
        setp("reader_buses", 1, "baudrate", value=4800),
        "reader_buses[1].baudrate",
        "expected a value >= 9600 (got 4800)",
    ),
    (
        "duplicate-reader-bus",
        add("reader_buses", name="osdp-1", driver="osdp", device="/dev/ttyS9"),
        "reader_buses[2].name",
        "duplicate reader bus name 'osdp-1'",
    ),
    (  # a key spelled like a union tag is still a key (not dropped from the path)
        "unknown-key-named-like-a-tag",
        setp("readers", 0, "serial", value=True),
        "readers[0].serial",
        "unknown key; expected one of: name, bus, door, direction, address, key_file, "
        "secure_channel",
    ),
    (
        "unknown-board-key-named-like-a-tag",
        setp("boards", 1, "tcp", value=True),
        "boards[1].tcp",
        "unknown key; expected one of: name, unit_id, coils, inputs, timeout_ms, "
        "poll_interval_ms, backoff_initial_ms, backoff_max_ms, transport, device, baudrate, "
        "parity, stop_bits, byte_size",
    ),
    (
        "reader-undefined-bus",
        setp("readers", 0, "bus", value="lobby-wire"),
        "readers[0].bus",
        "undefined reader bus 'lobby-wire'",
    ),
    (
        "reader-undefined-door",
        setp("readers", 2, "door", value="annex-entrance"),
        "readers[2].door",
        "undefined door 'annex-entrance'",
    ),
    (
        "duplicate-osdp-address",
        setp("readers", 2, "address", value=1),
        "readers[2].address",
        "address 1 on bus 'osdp-1' is already used by reader 'server-room-in'",
    ),
    (
        "second-reader-on-a-serial-line",
        add("readers", name="lobby-main-out", bus="lobby-line", door="lobby-main", direction="out"),
        "readers[3].bus",
        "serial line 'lobby-line' carries one reader only",
    ),
    (
        "secure-channel-without-key-file",
        delp("readers", 1, "key_file"),
        "readers[1].key_file",
        "required when secure_channel = true (the reader's SCBK file)",
    ),
    (
        "duplicate-reader",
        add(
            "readers",
            name="server-room-in",
            bus="osdp-1",
            address=3,
            door="server-room",
            secure_channel=False,
        ),
        "readers[3].name",
        "duplicate reader name 'server-room-in'",
    ),
    (
        "lockdown-input-used-twice",
        setp(
            "lockdown",
            "inputs",
            1,
            value={"name": "fire-2", "kind": "fire", "board": "main", "input": 12},
        ),
        "lockdown.inputs[1].input",
        "input is already used by lockdown input 'panic-reception'",
    ),
    (
        "socket-is-the-credentials-db",
        setp("controller", "socket", value="/tmp/warding-demo/credentials.db"),
        "access.credentials_db",
        "must differ from controller.socket (/tmp/warding-demo/credentials.db)",
    ),
    (
        "journal-is-the-socket-lock",
        setp("controller", "journal", value="/tmp/warding-demo/control.sock.lock"),
        "controller.journal",
        "must differ from controller.socket (its lock file) (/tmp/warding-demo/control.sock.lock)",
    ),
    (
        "state-file-is-the-journal",
        setp("lockdown", "state_file", value="/tmp/warding-demo/journal.db"),
        "lockdown.state_file",
        "must differ from controller.journal (/tmp/warding-demo/journal.db)",
    ),
    (
        "shutdown-beyond-systemd-stop-timeout",
        setp("controller", "shutdown_timeout_s", value=9.0),
        "controller.shutdown_timeout_s",
        "expected a value <= 8 (got 9.0)",
    ),
    (
        "rtu-line-with-two-timeouts",
        add_board(
            name="annex-2",
            transport="rtu",
            device="/tmp/warding-demo/annex.tty",
            unit_id=9,
            baudrate=38400,
            timeout_ms=500,
        ),
        "boards[2].timeout_ms",
        "must equal timeout_ms of board 'annex' on the same line /tmp/warding-demo/annex.tty "
        "(300) (got 500)",
    ),
    (
        "osdp-address-too-big",
        setp("readers", 1, "address", value=127),
        "readers[1].address",
        "expected a value <= 126 (got 127)",
    ),
    (
        "bad-direction",
        setp("readers", 0, "direction", value="both"),
        "readers[0].direction",
        "expected 'in' or 'out' (got 'both')",
    ),
    (
        "string-for-secure-channel",
        setp("readers", 1, "secure_channel", value="yes"),
        "readers[1].secure_channel",
        "expected true or false (got 'yes')",
    ),
    (
        "empty-key-file",
        setp("readers", 1, "key_file", value=" "),
        "readers[1].key_file",
        "expected a non-empty path (got ' ')",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "path", "message"),
    [pytest.param(m, p, msg, id=name) for name, m, p, msg in GOLDEN],
)
def test_golden_problem(mutate: Mutation, path: str, message: str) -> None:
    doc = demo_doc()
    mutate(doc)
    with pytest.raises(ConfigError) as info:
        parse_settings(doc, FILE)
    assert_well_formed(info.value, FILE)
    assert [(p.path, p.message) for p in info.value.problems] == [(path, message)]
    assert str(info.value) == f"{FILE}: {path}: {message}"


def test_duplicated_door_reports_name_coil_and_inputs() -> None:
    doc = demo_doc()
    doc["doors"].append(copy.deepcopy(doc["doors"][4]))
    problems = problems_of(doc)
    assert [(p.path, p.message) for p in problems] == [
        ("doors[10].name", "duplicate door name 'server-room' (first at doors[4])"),
        ("doors[10].relay.coil", "coil 4 on board 'main' is already used by door 'server-room'"),
        (
            "doors[10].contact.input",
            "input 8 on board 'main' is already used by door 'server-room' contact",
        ),
        (
            "doors[10].rex.input",
            "input 9 on board 'main' is already used by door 'server-room' rex",
        ),
        (
            "doors[10].tamper.input",
            "input 10 on board 'main' is already used by door 'server-room' tamper",
        ),
    ]


def test_top_level_array() -> None:
    problems = problems_of([{"controller": {"id": "x"}}])
    assert [(p.path, p.message) for p in problems] == [
        ("", "expected a table at the top level (got list)")
    ]
    assert str(problems[0]) == f"{FILE}: expected a table at the top level (got list)"


def test_tcp_unit_id_may_be_zero_or_255_but_not_more() -> None:
    for unit in (0, 255):
        doc = demo_doc()
        doc["boards"][0]["unit_id"] = unit
        assert parse_settings(doc).board("main").unit_id == unit
    doc = demo_doc()
    doc["boards"][0]["unit_id"] = 256
    assert [(p.path, p.message) for p in problems_of(doc)] == [
        ("boards[0].unit_id", "expected a value <= 255 (got 256)")
    ]


def test_socket_path_at_the_kernel_limit_is_accepted() -> None:
    doc = demo_doc()
    doc["controller"]["socket"] = LONG_SOCKET[:-1]
    assert len(str(parse_settings(doc).controller.socket)) == UNIX_SOCKET_PATH_MAX


def test_multidrop_rtu_line_with_distinct_unit_ids_is_valid() -> None:
    doc = demo_doc()
    doc["boards"].append({**doc["boards"][1], "name": "annex-2", "unit_id": 8})
    doc["doors"][9]["relay"] = {"board": "annex-2", "coil": 0}
    assert parse_settings(doc).door("fire-exit").relay == CoilRef(board="annex-2", coil=0)


# --- schedules and readers ---------------------------------------------------------------------

MON, TUE, WED, THU, FRI, SAT, SUN, HOLIDAY = range(8)


@pytest.mark.parametrize(
    ("text", "days", "start", "end"),
    [
        ("mon-fri 08:00-18:00", [MON, TUE, WED, THU, FRI], 480, 1080),
        ("sat,sun 10:00-14:00", [SAT, SUN], 600, 840),
        ("fri-mon 22:00-24:00", [MON, FRI, SAT, SUN], 1320, 1440),  # a range wraps the week
        ("sun-tue 00:00-06:00", [MON, TUE, SUN], 0, 360),
        ("thu-thu 09:00-10:00", [THU], 540, 600),
        ("daily 00:00-24:00", [MON, TUE, WED, THU, FRI, SAT, SUN], 0, 1440),
        ("holiday 09:00-12:00", [HOLIDAY], 540, 720),
        ("daily,holiday 06:30-07:00", list(range(8)), 390, 420),
        ("mon,mon-tue,tue 8:05-9:00", [MON, TUE], 485, 540),  # one hour digit; repeats merge
        ("  Mon-Fri\t08:00-18:00 ", [MON, TUE, WED, THU, FRI], 480, 1080),  # case, spacing
        ("wed 23:59-24:00", [WED], 1439, 1440),
    ],
)
def test_parse_interval(text: str, days: list[int], start: int, end: int) -> None:
    assert parse_interval(text) == tuple(Interval(d, start, end) for d in days)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected days and a time range, e.g. 'mon-fri 08:00-18:00'"),
        ("mon-fri", "expected days and a time range"),
        ("08:00-18:00", "expected days and a time range"),
        ("mon-fri 08:00", "expected days and a time range"),
        ("mon-fri 8-18", "expected days and a time range"),
        ("mon - fri 08:00-18:00", "expected days and a time range"),
        ("mon, tue 08:00-18:00", "expected days and a time range"),  # no spaces in the list
        ("mon-tue-wed 08:00-18:00", "expected days and a time range"),
        ("mon-fri 08:00-18:00\n", "expected days and a time range"),
        ("mon-fri 08:00-18:00 daily", "expected days and a time range"),
        ("mon-fri 0\u0668:00-18:00", "expected days and a time range"),  # ASCII digits only
        ("mon-fri 08:00-08:00", "expected a time range within 00:00-24:00 with start before end"),
        ("mon-fri 18:00-08:00", "start before end"),
        ("mon-fri 22:00-06:00", "start before end"),  # crossing midnight: two intervals
        ("mon-fri 00:00-24:01", "within 00:00-24:00"),
        ("mon-fri 24:00-24:00", "within 00:00-24:00"),
        ("mon-fri 08:60-09:00", "within 00:00-24:00"),
        ("mon-fri 25:00-26:00", "within 00:00-24:00"),
        ("weekdays 08:00-18:00", "unknown day 'weekdays'; use mon..sun, daily or holiday"),
        ("monday 08:00-18:00", "unknown day 'monday'"),
        ("mon-fry 08:00-18:00", "unknown day 'fry' in a range; use mon..sun"),
        ("daily-holiday 08:00-18:00", "unknown day 'daily' in a range"),
        ("mon-holiday 08:00-18:00", "unknown day 'holiday' in a range"),
    ],
)
def test_parse_interval_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_interval(text)


DAY_NAMES = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


@FUZZ
@given(
    days=st.lists(st.sampled_from([*DAY_NAMES, "holiday"]), min_size=1, max_size=4),
    times=st.lists(st.integers(0, 1440), min_size=2, max_size=2, unique=True).map(sorted),
)
def test_parse_interval_of_any_day_list(days: list[str], times: list[int]) -> None:
    start, end = times
    text = f"{','.join(days)} {start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"
    expected = sorted({DAY_NAMES.index(d) if d in DAY_NAMES else HOLIDAY for d in days})
    assert parse_interval(text) == tuple(Interval(d, start, end) for d in expected)


@FUZZ
@given(a=st.sampled_from(DAY_NAMES), b=st.sampled_from(DAY_NAMES))
def test_a_day_range_runs_forward_through_the_week(a: str, b: str) -> None:
    first, last = DAY_NAMES.index(a), DAY_NAMES.index(b)
    span = (last - first) % 7 + 1
    expected = sorted((first + k) % 7 for k in range(span))
    assert [i.day for i in parse_interval(f"{a}-{b} 01:00-02:00")] == expected


def test_schedule_settings_give_the_policy_schedule() -> None:
    settings_ = ScheduleSettings(name="s", intervals=("sat,sun 10:00-14:00", "holiday 09:00-12:00"))
    assert settings_.schedule() == Schedule(
        "s", (Interval(SAT, 600, 840), Interval(SUN, 600, 840), Interval(HOLIDAY, 540, 720))
    )
    assert load_settings().schedules[0].schedule().intervals == tuple(
        Interval(d, 420, 1140) for d in (MON, TUE, WED, THU, FRI)
    )


def test_holidays_are_dates() -> None:
    doc = demo_doc()
    doc["access"]["holidays"] = [date(2025, 12, 25), "2025-12-26"]  # a TOML date, or its text
    assert parse_settings(doc).access.holidays == (date(2025, 12, 25), date(2025, 12, 26))
    for bad in ["christmas", "2025-02-30", "20251225", 20251225, 0, True, datetime(2025, 12, 25)]:
        doc["access"]["holidays"] = [bad]
        assert [(p.path, p.message) for p in problems_of(doc)] == [
            ("access.holidays[0]", f"expected a date YYYY-MM-DD (got {bad!r})")
        ]


def test_credentials_db_and_secret_file_follow_the_journal_unless_set() -> None:
    doc = demo_doc()
    site = parse_settings(doc)
    assert site.credentials_db == Path("/tmp/warding-demo/credentials.db")
    assert site.secret_file == Path("/tmp/warding-demo/site.secret")
    doc["access"] |= {"credentials_db": "/srv/cards.db", "secret_file": "/etc/warding/secret"}
    site = parse_settings(doc)
    assert site.credentials_db == Path("/srv/cards.db")
    assert site.secret_file == Path("/etc/warding/secret")


def test_a_timezone_is_an_iana_name() -> None:
    doc = demo_doc()
    for name in ("UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires"):
        doc["access"]["timezone"] = name
        assert parse_settings(doc).access.timezone == name
    for name in ("", "utc+1", "Europe", "Europe/", "/etc/localtime", "UTC\0"):
        doc["access"]["timezone"] = name
        assert [p.path for p in problems_of(doc)] == ["access.timezone"], name


def test_secure_channel_needs_a_key_file_only_on_osdp() -> None:
    doc = demo_doc()
    del doc["readers"][1]["key_file"]
    doc["readers"][1]["secure_channel"] = False  # a legacy reader in clear text: no key
    assert parse_settings(doc).readers[1].key_file is None
    doc = demo_doc()  # the serial reader has secure_channel = true (the default), no key file
    assert "key_file" not in doc["readers"][0]
    assert parse_settings(doc).readers[0].secure_channel is True


def test_osdp_addresses_are_per_bus() -> None:
    doc = demo_doc()
    doc["reader_buses"].append({"name": "osdp-2", "driver": "osdp", "device": "/dev/ttyS2"})
    doc["readers"][2] |= {"bus": "osdp-2", "address": 1}  # address 1 is also used on osdp-1
    assert [r.address for r in parse_settings(doc).readers] == [0, 1, 1]
    doc["readers"][0]["address"] = 5  # meaningless on a serial line, and harmless
    parse_settings(doc)


def test_two_readers_at_one_door_in_and_out() -> None:
    doc = demo_doc()
    out = {**doc["readers"][1], "name": "server-room-out", "address": 3, "direction": "out"}
    doc["readers"].append(out)
    site = parse_settings(doc)
    assert [(r.door, r.direction) for r in site.readers[1::2]] == [
        ("server-room", "in"),
        ("server-room", "out"),
    ]


def test_access_cross_checks_are_all_reported_in_document_order() -> None:
    doc = demo_doc()
    doc["doors"][1]["free_schedule"] = "nights"
    doc["schedules"].append({"name": "business-hours", "intervals": ["daily 00:00-24:00"]})
    doc["interlocks"][0]["doors"] = ["annex-lab", "annex-lobby", "annex-lab"]
    doc["readers"][0]["door"] = "lobby"
    doc["readers"][1]["bus"] = "osdp-2"
    doc["readers"][2] |= {"address": 1, "bus": "osdp-1"}
    del doc["readers"][2]["key_file"]
    doc["readers"].append({"name": "lobby-main-out", "bus": "lobby-line", "door": "lobby-main"})
    problems = problems_of(doc)
    assert [(p.path, p.message) for p in problems] == [
        ("doors[1].free_schedule", "undefined schedule 'nights'; defined: business-hours"),
        ("schedules[1].name", "duplicate schedule name 'business-hours'"),
        ("interlocks[0].doors[1]", "undefined door 'annex-lobby'"),
        ("interlocks[0].doors", "a door is listed twice"),
        ("readers[0].door", "undefined door 'lobby'"),
        ("readers[1].bus", "undefined reader bus 'osdp-2'"),
        ("readers[2].key_file", "required when secure_channel = true (the reader's SCBK file)"),
        ("readers[3].bus", "serial line 'lobby-line' carries one reader only"),
    ]


def test_top_level_sections_in_file_order() -> None:
    assert list(Settings.model_fields)[:9] == [
        "controller",
        "boards",
        "doors",
        "access",
        "schedules",
        "zones",
        "interlocks",
        "reader_buses",
        "readers",
    ]


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (delp("reader_buses", 1, "device"), "reader_buses[1].device"),
        (delp("reader_buses", 0, "device"), "reader_buses[0].device"),
        (setp("reader_buses", 1, "device", value=""), "reader_buses[1].device"),
        (setp("reader_buses", 0, "baudrate", value="fast"), "reader_buses[0].baudrate"),
        (setp("reader_buses", 1, "serial", value=1), "reader_buses[1].serial"),
        (setp("reader_buses", 1, "osdp", value=1), "reader_buses[1].osdp"),
        (setp("reader_buses", 0, "driver", value=None), "reader_buses[0].driver"),
        (setp("reader_buses", 0, value="lobby-line"), "reader_buses[0]"),
        (setp("boards", 0, "rtu", value=1), "boards[0].rtu"),
        (setp("doors", 0, "relay", "tcp", value=1), "doors[0].relay.tcp"),
        (setp("access", "osdp", value=1), "access.osdp"),
    ],
)
def test_paths_inside_discriminated_unions(mutate: Mutation, path: str) -> None:
    """pydantic puts the union tag in its location (reader_buses.1.osdp.device); the path
    drops exactly that, and keeps a key that merely looks like a tag."""
    doc = demo_doc()
    mutate(doc)
    assert [p.path for p in problems_of(doc)] == [path]


# --- several problems at once ------------------------------------------------------------------

MANY_PROBLEMS = """\
[controller]
id = "site"
colour = "blue"

[[boards]]
name = "b1"
transport = "tcp"
host = "10.0.0.5"
port = 70000
coils = 4

[[doors]]
name = "front"
lock = "fail-secure"
relay = { board = "b1", coil = 0 }

[[doors]]
name = "back"
lock = "fail-secure"
relay = { board = "b1", coil = 0 }

[[doors]]
name = "side"
lock = "fail-safe"
relay = { board = "b2", coil = 1 }
pulse_s = -1
"""


def test_every_problem_is_reported_one_per_line_in_document_order(tmp_path: Path) -> None:
    path = tmp_path / "many.toml"
    path.write_text(MANY_PROBLEMS)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert_well_formed(info.value, str(path))
    assert str(info.value).split("\n") == [
        f"{path}: controller.colour: unknown key; expected one of: {CONTROLLER_KEYS}",
        f"{path}: boards[0].port: expected a value <= 65535 (got 70000)",
        f"{path}: doors[1].relay.coil: coil 0 on board 'b1' is already used by door 'front'",
        f"{path}: doors[2].pulse_s: expected a value > 0 (got -1)",
        f"{path}: doors[2].relay.board: undefined board 'b2' (boards: 'b1')",
    ]


def test_cross_checks_run_beside_field_errors_without_noise() -> None:
    doc = demo_doc()
    doc["controller"]["bogus"] = 1
    doc["boards"][1]["baudrate"] = "fast"  # annex is invalid: doors on it are not "undefined"
    doc["doors"][1]["relay"]["coil"] = 0  # still caught: a valid board, a valid door
    doc["doors"][6]["pulse_s"] = 0  # an invalid door on an invalid board...
    doc["doors"][6]["relay"]["coil"] = 0  # ...still may not share a coil
    doc["doors"][8]["relay"]["coil"] = "3"  # an unreadable relay: no cross-check noise
    problems = problems_of(doc)
    assert [(p.path, p.message) for p in problems] == [
        ("controller.bogus", f"unknown key; expected one of: {CONTROLLER_KEYS}"),
        ("boards[1].baudrate", "expected an integer (got 'fast')"),
        ("doors[1].relay.coil", "coil 0 on board 'main' is already used by door 'lobby-main'"),
        ("doors[6].pulse_s", "expected a value > 0 (got 0)"),
        ("doors[6].relay.coil", "coil 0 on board 'annex' is already used by door 'annex-entry'"),
        ("doors[8].relay.coil", "expected an integer (got '3')"),
    ]


def test_unreadable_board_list_gives_no_dangling_reference_noise() -> None:
    doc = demo_doc()
    doc["boards"] = "main"
    assert [p.path for p in problems_of(doc)] == ["boards"]
    doc = demo_doc()
    doc["boards"][0] = 5  # a board without a readable name: any door may be on it
    assert [p.path for p in problems_of(doc)] == ["boards[0]"]


# --- files and TOML ----------------------------------------------------------------------------


def test_invalid_toml_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[controller]\nid = "x"\n[[boards]\nname = "b"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert_well_formed(info.value, str(path))
    (problem,) = info.value.problems
    assert problem.path == ""
    assert problem.message.startswith("not valid TOML: ")
    assert "line 3, column" in problem.message


def test_deeply_nested_toml_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_toml("x = " + "[" * 100_000, FILE)
    assert_well_formed(info.value, FILE)
    assert info.value.problems[0].message.startswith("not valid TOML")


def test_non_utf8_names_the_byte_and_place(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[controller]\nid = "café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert_well_formed(info.value, str(path))
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("", "not UTF-8 text: byte 0xe9 (at line 2, column 10)")
    ]


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + demo_site_text().encode())
    assert load_settings(path) == load_settings()


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert_well_formed(info.value, str(path))
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("", "cannot read file: No such file or directory")
    ]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path)
    assert_well_formed(info.value, str(tmp_path))
    assert info.value.problems[0].message == "cannot read file: Is a directory"


def test_a_fifo_nobody_writes_to_is_empty_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "site.toml"
    os.mkfifo(fifo)  # nobody will ever write to it: a blocking open would wait for ever
    with pytest.raises(ConfigError) as info:
        load_settings(fifo)
    assert_well_formed(info.value, str(fifo))
    assert info.value.problems[0].message == "empty (a pipe nothing was written to)"


def test_a_pipe_whose_writer_never_closes_it_is_an_error_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings_mod, "PIPE_READ_S", 0.2)
    read, write = os.pipe()
    os.write(write, b"[controller]\n")  # ... and the writer stays, never closing it
    try:
        with pytest.raises(ConfigError) as info:
            load_settings(f"/dev/fd/{read}")
    finally:
        os.close(read)
        os.close(write)
    assert info.value.problems[0].message == "the pipe did not end within 0.2 s"


def test_a_pipe_is_read_like_a_file() -> None:
    read, write = os.pipe()  # as <(cat site.toml) or ... | warding config check /dev/stdin
    with os.fdopen(write, "wb") as w:
        w.write(demo_site_text().encode())
    try:
        settings = load_settings(f"/dev/fd/{read}")
    finally:
        os.close(read)
    assert settings.controller.id == "demo-hq"


def test_a_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings("/dev/zero")
    assert info.value.problems[0].message == "not a regular file or a pipe"


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.toml"
    path.write_text(demo_site_text())
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("running as root: permissions do not stop reads")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert_well_formed(info.value, str(path))
    assert info.value.problems[0].message == "cannot read file: Permission denied"


def test_path_with_nul_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings("site\0.toml")
    assert info.value.problems[0].message == "cannot read file: invalid path"


def test_oversized_file(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    path.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.problems[0].message == "file is larger than 4 MiB"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value) == (
        f"{path}: no settings; expected [controller], [[boards]] and [[doors]]"
    )


def test_check_entry_point_exit_status_and_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.toml"
    good.write_text(demo_site_text())
    assert main([str(good)]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text(MANY_PROBLEMS)
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 5
    assert all(line.startswith(f"{bad}: ") for line in err)


# --- schema ------------------------------------------------------------------------------------


def test_schema_file_is_fresh() -> None:
    stored = json.loads((CONFIG / "site.schema.json").read_text("utf-8"))
    assert stored == json_schema(), (
        "config/site.schema.json is stale: run "
        "`python -m controller.settings --schema > config/site.schema.json`"
    )


def test_schema_forbids_unknown_keys_everywhere() -> None:
    schema = json_schema()
    objects = [schema, *schema["$defs"].values()]
    objects = [o for o in objects if o.get("type") == "object"]
    assert {o["title"] for o in objects} >= {m.__name__ for m in all_models()} - {"Settings"}
    assert {o["title"] for o in objects} >= {
        "ControllerSettings",
        "TcpBoardSettings",
        "RtuBoardSettings",
        "DoorSettings",
        "CoilRef",
        "InputRef",
        "AccessSettings",
        "ScheduleSettings",
        "ZoneSettings",
        "InterlockSettings",
        "OsdpBusSettings",
        "SerialReaderBusSettings",
        "ReaderSettings",
    }
    assert all(o["additionalProperties"] is False for o in objects)


# --- property tests ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
simple_keys = st.from_regex(r"zz[a-z0-9_]{0,8}", fullmatch=True)
Path_ = tuple[str | int, ...]


def paths_in(node: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every path to a value under ``node`` (not the root itself)."""
    out: list[Path_] = []
    if isinstance(node, dict):
        for key, value in node.items():
            out.append((*prefix, key))
            out += paths_in(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.append((*prefix, i))
            out += paths_in(value, (*prefix, i))
    return out


def tables_in(doc: Doc) -> list[Path_]:
    return [()] + [p for p in paths_in(doc) if isinstance(get(doc, p), dict)]


def get(doc: Doc, path: Path_) -> Any:
    node: Any = doc
    for part in path:
        node = node[part]
    return node


def render(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models a field annotation holds (through Annotated, unions, tuples and Optional)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) if a is not Ellipsis for m in models_in(a)]


def tags_match(model: type[BaseModel], table: Doc) -> bool:
    """Whether ``table`` carries the values of every required Literal (tag) field of ``model``."""
    return all(
        table.get(name) in typing.get_args(field.annotation)
        for name, field in model.model_fields.items()
        if field.is_required() and typing.get_origin(field.annotation) is Literal
    )


def model_for(doc: Doc, table: Path_) -> type[BaseModel]:
    """The settings model that validates the table at ``table`` in a valid document.

    Follows the field annotations from Settings, so every section (and any later one) is
    covered; a discriminated union (boards on ``transport``, reader_buses on ``driver``) is
    resolved by the tag the table carries.
    """
    model: type[BaseModel] = Settings
    candidates: list[type[BaseModel]] = [Settings]
    node: Any = doc
    for part in table:
        node = node[part]
        if isinstance(part, str):
            candidates = models_in(model.model_fields[part].annotation)
        if isinstance(node, dict):
            (model,) = [m for m in candidates if tags_match(m, node)]
    return model


def all_models(model: type[BaseModel] = Settings) -> set[type[BaseModel]]:
    """Every model reachable from ``model`` through its fields."""
    out = {model}
    for field in model.model_fields.values():
        for sub in models_in(field.annotation):
            if sub not in out:
                out |= all_models(sub)
    return out


def named_arrays(doc: Doc) -> list[Path_]:
    """Arrays of named tables (boards, doors, schedules, ..., readers)."""
    return [
        p
        for p in paths_in(doc)
        if isinstance(node := get(doc, p), list)
        and node
        and all(isinstance(item, dict) and isinstance(item.get("name"), str) for item in node)
    ]


# references to names defined elsewhere: (section, key path in an entry); "*" is every item
REFERENCES: list[tuple[str, tuple[str, ...]]] = [
    ("doors", ("relay", "board")),
    ("doors", ("contact", "board")),
    ("doors", ("rex", "board")),
    ("doors", ("tamper", "board")),
    ("doors", ("free_schedule",)),
    ("interlocks", ("doors", "*")),
    ("readers", ("bus",)),
    ("readers", ("door",)),
]


def references_in(doc: Doc) -> list[Path_]:
    """Paths of the name references present in ``doc`` (also in a damaged document)."""
    out: list[Path_] = []

    def follow(node: Any, path: Path_, rest: tuple[str, ...]) -> None:
        if not rest:
            if isinstance(node, str):
                out.append(path)
        elif rest[0] == "*" and isinstance(node, list):
            for i, item in enumerate(node):
                follow(item, (*path, i), rest[1:])
        elif isinstance(node, dict) and rest[0] in node:
            follow(node[rest[0]], (*path, rest[0]), rest[1:])

    for section, keys in REFERENCES:
        entries = doc.get(section)
        if isinstance(entries, list):
            for i, entry in enumerate(entries):
                follow(entry, (section, i), keys)
    return out


undefined_names = st.from_regex(r"zz-[a-z0-9]{1,8}", fullmatch=True)  # no demo name starts so


@st.composite
def mutations(draw: st.DrawFn, doc: Doc) -> tuple[str, Path_]:
    """Apply one mutation to ``doc`` in place; return its kind and location.

    Only mutations that the (possibly already mutated) document still allows are drawn.
    """
    keyed = [p for p in paths_in(doc) if isinstance(p[-1], str)]
    arrays = named_arrays(doc)
    references = references_in(doc)
    doors = doc.get("doors")
    door_list = doors if isinstance(doors, list) else []
    door_tables = [i for i, d in enumerate(door_list) if isinstance(d, dict)]
    kinds = ["unknown"]
    kinds += ["delete", "retype"] if keyed else []
    kinds += ["duplicate"] if arrays else []
    kinds += ["dangle"] if references else []
    kinds += ["repoint"] if door_tables else []
    kind = draw(st.sampled_from(kinds))
    if kind == "delete":
        path = draw(st.sampled_from(keyed))
        del get(doc, path[:-1])[path[-1]]
    elif kind == "unknown":
        table = draw(st.sampled_from(tables_in(doc)))
        key = draw(simple_keys)
        get(doc, table)[key] = draw(json_values)
        path = (*table, key)
    elif kind == "retype":
        path = draw(st.sampled_from(paths_in(doc)))
        old = get(doc, path[:-1])[path[-1]]
        new = draw(json_values.filter(lambda v: type(v) is not type(old)))
        get(doc, path[:-1])[path[-1]] = new
    elif kind == "duplicate":  # a copy of an entry at the end of its array: a duplicate name
        array = draw(st.sampled_from(arrays))
        entries = get(doc, array)
        entries.append(copy.deepcopy(draw(st.sampled_from(entries))))
        path = (*array, len(entries) - 1, "name")
    elif kind == "dangle":  # a reference to a name that nothing defines
        path = draw(st.sampled_from(references))
        get(doc, path[:-1])[path[-1]] = draw(undefined_names)
    else:
        i = draw(st.sampled_from(door_tables))
        board = draw(st.sampled_from(["main", "annex"]) | st.text(max_size=10))
        coil = draw(st.integers(-2, 20) | st.integers())
        door_list[i]["relay"] = {"board": board, "coil": coil}
        path = ("doors", i, "relay")
    return kind, path


def parse_or_problems(doc: Any) -> Settings | ConfigError:
    try:
        return parse_settings(doc, FILE)
    except ConfigError as exc:
        assert_well_formed(exc, FILE)
        return exc


def has_problem(outcome: Settings | ConfigError, path: Path_, start: str) -> bool:
    return isinstance(outcome, ConfigError) and any(
        p.path == render(path) and p.message.startswith(start) for p in outcome.problems
    )


@FUZZ
@given(st.data())
def test_single_mutation_of_demo(data: st.DataObject) -> None:
    doc = demo_doc()
    required = set(required_keys(doc))
    kind, path = data.draw(mutations(doc), label="mutation")
    outcome = parse_or_problems(doc)
    if kind == "unknown":
        assert has_problem(outcome, path, "unknown key"), outcome
    elif kind == "delete" and path in required:
        assert has_problem(outcome, path, "required key is missing"), outcome
    elif kind == "delete":  # an optional key: the default takes its place...
        expected = problems_after_deleting(path)
        if expected:  # ...unless something else depends on it
            assert isinstance(outcome, ConfigError)
            assert [p.path for p in outcome.problems] == expected
        else:
            assert isinstance(outcome, Settings), outcome
    elif kind == "duplicate":
        assert has_problem(outcome, path, "duplicate "), outcome
    elif kind == "dangle":
        assert has_problem(outcome, path, "undefined "), outcome
    if isinstance(outcome, Settings):
        assert outcome == parse_settings(outcome.model_dump(mode="json"))


@FUZZ
@given(st.data(), st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=30))
def test_chained_mutations_never_escape_as_other_errors(data: st.DataObject, file: str) -> None:
    doc = demo_doc()
    for _ in range(data.draw(st.integers(1, 4), label="count")):
        data.draw(mutations(doc))
    try:
        parse_settings(doc, file)
    except ConfigError as exc:
        assert_well_formed(exc, file)


def required_keys(doc: Doc) -> list[Path_]:
    return [
        (*table, name)
        for table in tables_in(doc)
        for name, field in model_for(doc, table).model_fields.items()
        if field.is_required() and name in get(doc, table)
    ]


def optional_keys(doc: Doc) -> list[Path_]:
    required = set(required_keys(doc))
    return [p for p in paths_in(doc) if isinstance(p[-1], str) and p not in required]


def problems_after_deleting(path: Path_) -> list[str]:
    """The problem paths expected once the optional key at ``path`` is deleted from the demo.

    Most optional keys take their default quietly; a few are what a cross-check needs.
    """
    before = demo_doc()
    doc = demo_doc()
    del get(doc, path[:-1])[path[-1]]
    readers = doc.get("readers", [])
    if path == ("reader_buses",):
        return [f"readers[{i}].bus" for i in range(len(readers))]
    if path == ("schedules",):
        return [
            f"doors[{i}].free_schedule" for i, d in enumerate(doc["doors"]) if "free_schedule" in d
        ]
    if path[0] == "doors" and path[-1] == "zone":
        # the door falls back to the default zone: a [[zones]] entry only it was in is unused
        in_use = {d.get("zone", "default") for d in doc["doors"]}
        zones = doc.get("zones", [])
        return [f"zones[{i}].name" for i, z in enumerate(zones) if z["name"] not in in_use]
    if path[0] == "readers" and path[-1] in {"key_file", "secure_channel"}:
        reader = readers[path[1]]
        (bus,) = [b for b in before["reader_buses"] if b["name"] == reader["bus"]]
        if (
            bus["driver"] == "osdp"
            and reader.get("secure_channel", True)
            and "key_file" not in reader
        ):
            return [f"readers[{path[1]}].key_file"]
    return []


def test_the_demo_exercises_every_model() -> None:
    """The exhaustive properties below are only as good as the demo: it has every kind of table."""
    doc = demo_doc()
    counts = Counter(model_for(doc, table) for table in tables_in(doc))
    assert set(counts) == all_models(), "a settings model is missing from the demo site"
    assert {m: counts[m] for m in DEMO_TABLES} == DEMO_TABLES
    for table in tables_in(doc):  # the map is right: each table validates as its model
        model_for(doc, table).model_validate(get(doc, table))


DEMO_TABLES: dict[type[BaseModel], int] = {
    Settings: 1,
    ControllerSettings: 1,
    TcpBoardSettings: 1,
    RtuBoardSettings: 1,
    DoorSettings: 10,
    CoilRef: 10,
    InputRef: 21,  # 10 contacts, 10 REX, 1 tamper
    AccessSettings: 1,
    ScheduleSettings: 1,
    ZoneSettings: 1,
    InterlockSettings: 1,
    SerialReaderBusSettings: 1,
    OsdpBusSettings: 1,
    ReaderSettings: 3,
}


def test_every_required_key_of_the_demo_when_deleted_is_reported_at_its_path() -> None:
    paths = required_keys(demo_doc())
    for expected in [
        ("boards", 1, "transport"),
        ("doors", 9, "relay", "coil"),
        ("schedules", 0, "intervals"),
        ("interlocks", 0, "doors"),
        ("reader_buses", 0, "driver"),
        ("reader_buses", 1, "device"),
        ("readers", 2, "bus"),
    ]:
        assert expected in paths
    for path in paths:
        doc = demo_doc()
        del get(doc, path[:-1])[path[-1]]
        problems = problems_of(doc)
        assert [p.path for p in problems] == [render(path)], (path, problems)
        assert problems[0].message.startswith("required key is missing"), problems


def test_every_optional_key_of_the_demo_may_be_deleted() -> None:
    """Deleting an optional key gives its default, or exactly the cross-check that needs it."""
    optional = optional_keys(demo_doc())
    assert len(optional) > 80
    dependent = sorted(render(p) for p in optional if problems_after_deleting(p))
    it_door = next(i for i, d in enumerate(demo_doc()["doors"]) if d.get("zone") == "it")
    assert dependent == [
        f"doors[{it_door}].zone",
        "reader_buses",
        "readers[1].key_file",
        "readers[2].key_file",
    ]
    for path in optional:
        doc = demo_doc()
        del get(doc, path[:-1])[path[-1]]
        expected = problems_after_deleting(path)
        if expected:
            assert [p.path for p in problems_of(doc)] == expected, path
            continue
        site: Any = parse_settings(doc, FILE)
        for part in path:
            site = site[part] if isinstance(part, int) else getattr(site, part)
        field = model_for(demo_doc(), path[:-1]).model_fields[str(path[-1])]
        assert site == field.get_default(call_default_factory=True), path


def test_an_unknown_key_in_every_table_is_reported_at_its_path() -> None:
    doc = demo_doc()
    tables = tables_in(doc)
    assert {model_for(doc, table) for table in tables} >= set(DEMO_TABLES)
    for table in tables:
        doc = demo_doc()
        get(doc, table)["zz_extra"] = 1
        problems = problems_of(doc)
        assert [p.path for p in problems] == [render((*table, "zz_extra"))]
        assert problems[0].message.startswith("unknown key")


demo_bytes = demo_site_text().encode()


@st.composite
def damaged_demo(draw: st.DrawFn) -> bytes:
    """The demo file with a few random byte-level edits (most stay nearly valid TOML)."""
    data = bytearray(demo_bytes)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        chunk = draw(st.binary(max_size=4) | st.sampled_from([b"=", b"[", b'"', b"\n", b"0"]))
        cut = draw(st.integers(0, 4))
        data[at : at + cut] = chunk
    return bytes(data)


@FUZZ
@given(raw=st.binary() | damaged_demo())
def test_any_bytes_load_or_fail_cleanly(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "site.toml"
    path.write_bytes(raw)
    try:
        site = load_settings(path)
    except ConfigError as exc:
        assert_well_formed(exc, str(path))
    else:
        assert isinstance(site, Settings)


@FUZZ
@given(text=st.text() | damaged_demo().map(lambda b: b.decode("utf-8", "replace")))
def test_any_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        site = parse_toml(text, FILE)
    except ConfigError as exc:
        assert_well_formed(exc, FILE)
    else:
        assert isinstance(site, Settings)


names = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,12}", fullmatch=True)
positive_s = st.floats(min_value=0, max_value=3600, exclude_min=True)


@st.composite
def valid_documents(draw: st.DrawFn) -> Doc:
    """A random valid site document, with optional keys sometimes left to their defaults."""

    def maybe(table: Doc, key: str, strategy: st.SearchStrategy[Any]) -> None:
        if draw(st.booleans()):
            table[key] = draw(strategy)

    controller: Doc = {"id": draw(names)}
    maybe(controller, "socket", st.from_regex(r"/run/[a-z0-9_.-]{1,40}", fullmatch=True))
    maybe(controller, "journal", st.from_regex(r"/var/[a-z0-9_./-]{1,60}", fullmatch=True))
    maybe(controller, "log_level", st.sampled_from(["trace", "debug", "info", "warning"]))
    maybe(controller, "watchdog_interval_s", st.floats(0.001, 300))
    boards: list[Doc] = []
    for unit, name in enumerate(draw(st.lists(names, min_size=1, max_size=3, unique=True)), 1):
        board: Doc = {"name": name, "unit_id": unit}
        if draw(st.booleans()):
            board |= {"transport": "tcp", "host": draw(st.sampled_from(["::1", "io.lan"]))}
            maybe(board, "port", st.integers(1, 65535))
        else:
            board |= {"transport": "rtu", "device": f"/dev/ttyS{unit}"}
            maybe(board, "baudrate", st.integers(300, 4_000_000))
            maybe(board, "parity", st.sampled_from(["N", "E", "O"]))
            maybe(board, "stop_bits", st.sampled_from([1, 2]))
        board["coils"] = draw(st.integers(1, 24))
        board["inputs"] = draw(st.integers(1, 24))
        initial = draw(st.integers(1, 5_000))
        board |= {"backoff_initial_ms": initial}
        maybe(board, "backoff_max_ms", st.integers(initial, 600_000))
        boards.append(board)
    coils = [(b["name"], c) for b in boards for c in range(b["coils"])]
    inputs = [(b["name"], i) for b in boards for i in range(b["inputs"])]
    relays = draw(st.lists(st.sampled_from(coils), min_size=1, max_size=6, unique=True))
    door_names = draw(st.lists(names, min_size=len(relays), max_size=len(relays), unique=True))
    free_inputs = draw(st.permutations(inputs))
    doors: list[Doc] = []
    for name, (board_name, coil) in zip(door_names, relays, strict=True):
        door: Doc = {
            "name": name,
            "lock": draw(st.sampled_from(["fail-safe", "fail-secure"])),
            "relay": {"board": board_name, "coil": coil},
        }
        for role in ("contact", "rex", "tamper"):
            wired: bool = draw(st.booleans())
            if free_inputs and wired:
                b, i = free_inputs.pop()
                door[role] = {"board": b, "input": i}
                maybe(door[role], "invert", st.booleans())
        maybe(door, "zone", names)
        maybe(door, "pulse_s", positive_s)
        maybe(door, "rex_pulse_s", positive_s)
        maybe(door, "held_open_s", st.floats(min_value=0, max_value=86_400, exclude_min=True))
        maybe(door, "rex_unlocks", st.booleans())
        maybe(door, "mode", st.sampled_from([m.value for m in DoorMode]))
        doors.append(door)
    doc: Doc = {"controller": controller, "boards": boards, "doors": doors}
    if draw(st.booleans()):
        door_zones = sorted({door.get("zone", "default") for door in doors})
        doc |= draw(access_sections(door_names, door_zones))
        schedule_names = [schedule["name"] for schedule in doc["schedules"]]
        for door in doors:
            if draw(st.booleans()) and schedule_names:
                door["free_schedule"] = draw(st.sampled_from(schedule_names))
    return doc


intervals = st.builds(
    lambda days, times: (
        f"{days} {times[0] // 60:02d}:{times[0] % 60:02d}-{times[1] // 60:02d}:{times[1] % 60:02d}"
    ),
    st.sampled_from(["mon-fri", "sat,sun", "fri-mon", "daily", "holiday", "wed,holiday"]),
    st.lists(st.integers(0, 1440), min_size=2, max_size=2, unique=True).map(sorted),
)


@st.composite
def access_sections(draw: st.DrawFn, doors: list[str], door_zones: list[str]) -> Doc:
    """Valid [access], [[schedules]], [[zones]], [[interlocks]], [[reader_buses]], [[readers]]."""

    def maybe(table: Doc, key: str, strategy: st.SearchStrategy[Any]) -> None:
        if draw(st.booleans()):
            table[key] = draw(strategy)

    access: Doc = {}
    maybe(access, "timezone", st.sampled_from(["UTC", "Europe/Berlin", "Asia/Kolkata"]))
    # (under /srv: never one of the files beside the journal, which must all differ)
    maybe(access, "credentials_db", st.from_regex(r"/srv/[a-z0-9_-]{1,30}\.db", fullmatch=True))
    maybe(access, "pin_timeout_s", st.floats(min_value=0, max_value=120, exclude_min=True))
    maybe(access, "throttle_denials", st.integers(1, 1000))
    maybe(access, "duress", st.sampled_from(["off", "last-digit-plus-one"]))
    maybe(access, "holidays", st.lists(st.dates(), max_size=3))
    schedules = [
        {"name": name, "intervals": draw(st.lists(intervals, min_size=1, max_size=3))}
        for name in draw(st.lists(names, max_size=2, unique=True))
    ]
    zones = [  # rules for zones that doors are in (a zone no door is in is an error)
        {"name": name, "anti_passback": draw(st.sampled_from(["off", "soft", "hard"]))}
        for name in draw(st.lists(st.sampled_from(door_zones), max_size=2, unique=True))
    ]
    interlocks = []
    if len(doors) >= 2 and draw(st.booleans()):
        group = draw(st.lists(st.sampled_from(doors), min_size=2, max_size=3, unique=True))
        interlocks.append({"name": "mantrap", "doors": group})
    buses: list[Doc] = []
    readers: list[Doc] = []
    for n, driver in enumerate(draw(st.lists(st.sampled_from(["osdp", "serial"]), max_size=3))):
        bus: Doc = {"name": f"bus-{n}", "driver": driver, "device": f"/dev/ttyUSB{n}"}
        if driver == "serial":
            maybe(bus, "framing", st.sampled_from(["auto", "wiegand-hex", "decimal"]))
            addresses = [0]
        else:
            maybe(bus, "baudrate", st.sampled_from([9600, 38400, 115200]))
            addresses = draw(st.lists(st.integers(0, 126), max_size=3, unique=True))
        buses.append(bus)
        for address in addresses:
            reader: Doc = {
                "name": f"reader-{len(readers)}",
                "bus": bus["name"],
                "door": draw(st.sampled_from(doors)),
                "direction": draw(st.sampled_from(["in", "out"])),
                "address": address,
            }
            if driver == "osdp" and draw(st.booleans()):
                reader["secure_channel"] = False
            else:
                reader["key_file"] = f"/etc/warding/keys/{reader['name']}.scbk"
            readers.append(reader)
    return {
        "access": access,
        "schedules": schedules,
        "zones": zones,
        "interlocks": interlocks,
        "reader_buses": buses,
        "readers": readers,
    }


@FUZZ
@given(valid_documents())
def test_valid_settings_round_trip_through_json(doc: Doc) -> None:
    site = parse_settings(doc, FILE)
    dumped = site.model_dump(mode="json")
    again = parse_settings(json.loads(json.dumps(dumped)), FILE)
    assert again == site
    assert again.model_dump(mode="json") == dumped


@pytest.mark.parametrize("path", [CONFIG / "demo-site.toml", *EXAMPLES], ids=lambda p: p.name)
def test_shipped_files_round_trip(path: Path) -> None:
    site = load_settings(path)
    assert parse_settings(site.model_dump(mode="json")) == site
