"""Site configuration: the demo and examples load; every defect is one precise, one-line problem."""

from __future__ import annotations

import copy
import json
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

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


def add_board(**fields: Any) -> Mutation:
    def mutate(doc: Doc) -> None:
        doc["boards"].append(fields)

    return mutate


CONTROLLER_KEYS = "id, socket, journal, log_level, watchdog_interval_s, shutdown_timeout_s"
LONG_SOCKET = "/run/" + "s" * (UNIX_SOCKET_PATH_MAX - 4)  # 108 bytes

GOLDEN: list[tuple[str, Mutation, str, str]] = [
    # unknown keys, at every level
    (
        "unknown-top",
        setp("bogus", value=1),
        "bogus",
        "unknown key; expected one of: controller, boards, doors, access, schedules, zones, "
        "interlocks, reader_buses, readers",
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
        add_board(name="annex2", transport="rtu", device="/tmp/warding-demo/annex.tty", unit_id=8),
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
    assert {o["title"] for o in objects} >= {
        "ControllerSettings",
        "TcpBoardSettings",
        "RtuBoardSettings",
        "DoorSettings",
        "CoilRef",
        "InputRef",
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


def model_for(doc: Doc, table: Path_) -> type[BaseModel]:
    """The settings model that validates the table at ``table`` in the demo document."""
    if table == ():
        return Settings
    if table == ("controller",):
        return ControllerSettings
    if table[0] == "boards":
        return TcpBoardSettings if get(doc, table)["transport"] == "tcp" else RtuBoardSettings
    if table == ("access",):
        return AccessSettings
    if table[0] == "reader_buses":
        return (
            OsdpBusSettings
            if get(doc, table).get("driver") == "osdp"
            else (SerialReaderBusSettings)
        )
    simple = {
        "schedules": ScheduleSettings,
        "zones": ZoneSettings,
        "interlocks": InterlockSettings,
        "readers": ReaderSettings,
    }
    if table[0] in simple:
        return simple[str(table[0])]
    if len(table) == 2:
        return DoorSettings
    return CoilRef if table[2] == "relay" else InputRef


@st.composite
def mutations(draw: st.DrawFn, doc: Doc) -> tuple[str, Path_]:
    """Apply one mutation to ``doc`` in place; return its kind and location.

    Only mutations that the (possibly already mutated) document still allows are drawn.
    """
    keyed = [p for p in paths_in(doc) if isinstance(p[-1], str)]
    doors = doc.get("doors")
    door_list = doors if isinstance(doors, list) else []
    door_tables = [i for i, d in enumerate(door_list) if isinstance(d, dict)]
    kinds = ["unknown"]
    kinds += ["delete", "retype"] if keyed else []
    kinds += ["duplicate-door"] if door_list else []
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
    elif kind == "duplicate-door":
        i = draw(st.integers(0, len(door_list) - 1))
        door_list.append(copy.deepcopy(door_list[i]))
        path = ("doors", len(door_list) - 1, "name")
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


@FUZZ
@given(st.data())
def test_single_mutation_of_demo(data: st.DataObject) -> None:
    doc = demo_doc()
    required = set(required_keys(doc))
    kind, path = data.draw(mutations(doc), label="mutation")
    outcome = parse_or_problems(doc)
    where = render(path)
    if kind == "unknown":
        assert isinstance(outcome, ConfigError)
        assert any(
            p.path == where and p.message.startswith("unknown key") for p in outcome.problems
        )
    elif kind == "delete" and path in required:
        assert isinstance(outcome, ConfigError)
        assert any(
            p.path == where and p.message.startswith("required key is missing")
            for p in outcome.problems
        ), outcome.problems
    elif kind == "duplicate-door":
        assert isinstance(outcome, ConfigError)
        assert any(
            p.path == where and p.message.startswith("duplicate door name")
            for p in outcome.problems
        )
    elif kind == "delete":  # an optional key: the default takes its place
        assert isinstance(outcome, Settings)
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


def test_every_required_key_of_the_demo_when_deleted_is_reported_at_its_path() -> None:
    paths = required_keys(demo_doc())
    assert ("boards", 1, "transport") in paths
    assert ("doors", 9, "relay", "coil") in paths
    for path in paths:
        doc = demo_doc()
        del get(doc, path[:-1])[path[-1]]
        problems = problems_of(doc)
        assert render(path) in [p.path for p in problems], (path, problems)
        assert problems[0].message.startswith("required key is missing"), problems


def test_every_optional_key_of_the_demo_may_be_deleted() -> None:
    doc = demo_doc()
    required = set(required_keys(doc))
    optional = [p for p in paths_in(doc) if isinstance(p[-1], str) and p not in required]
    assert len(optional) > 50
    for path in optional:
        doc = demo_doc()
        del get(doc, path[:-1])[path[-1]]
        parse_settings(doc, FILE)


def test_an_unknown_key_in_every_table_is_reported_at_its_path() -> None:
    tables = tables_in(demo_doc())
    assert len(tables) == 1 + 1 + 2 + 10 + 10 + 10 + 10 + 1  # root, controller, boards, ...
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
        doors.append(door)
    return {"controller": controller, "boards": boards, "doors": doors}


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
