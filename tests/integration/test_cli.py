"""``warding`` as a user runs it: config check, run on a bad file, journal verify, demo, usage.

Exit status: 0 success, 1 failure (broken journal, another daemon), 2 usage or configuration
error; never a traceback for an expected problem.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import socket
import sqlite3
from pathlib import Path

import pytest

from controller import __version__
from controller.journal import Journal
from tests.integration.conftest import PYTHON, Result, run, wait_for, warding

REPO = Path(__file__).resolve().parents[2]
DEMO_SITE = REPO / "config" / "demo-site.toml"
DEMO_DIR = Path("/tmp/warding-demo")  # fixed by the embedded demo site
DEMO_PORT = 15020
DEMO_LOCK = Path("/tmp/warding-demo.pytest.lock")  # shared by concurrent sessions

USAGE_ERROR = re.compile(r"warding( [a-z]+)*: error: \S")

BAD_SITE = """\
[controller]
id = "Bad Site"

[[boards]]
name = "b1"
transport = "tcp"
host = "127.0.0.1"
port = 70000

[[doors]]
name = "front"
lock = "fail-secure"
relay = { board = "b1", coil = "zero" }
colour = "red"

[[doors]]
name = "back"
lock = "fail-sometimes"
relay = { board = "b2", coil = 1 }
"""
BAD_PATHS = [
    "controller.id",
    "boards[0].port",
    "doors[0].relay.coil",
    "doors[0].colour",
    "doors[1].lock",
    "doors[1].relay.board",
]


def _clean(res: Result) -> None:
    assert "Traceback" not in res.stderr, res.stderr
    assert "Traceback" not in res.stdout, res.stdout


def _problems(res: Result, path: Path) -> list[str]:
    """The stderr lines, each checked to start with the file name."""
    lines = res.err_lines
    assert lines, res
    for line in lines:
        assert line.startswith(f"{path}: "), line
    return lines


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- config ----------------------------------------------------------------------------------


async def test_config_check_demo_site() -> None:
    res = await warding("config", "check", str(DEMO_SITE))
    assert res.rc == 0, res
    assert res.lines == [f"{DEMO_SITE}: OK (2 boards, 10 doors, controller demo-hq)"]
    assert res.stderr == ""


async def test_config_check_bad_file_lists_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD_SITE)
    res = await warding("config", "check", str(bad))
    assert res.rc == 2, res
    _clean(res)
    assert res.stdout == ""
    lines = _problems(res, bad)
    for key in BAD_PATHS:
        matching = [line for line in lines if line.startswith(f"{bad}: {key}: ")]
        assert len(matching) == 1, (key, lines)
    assert any("did you mean" in line or "unknown key" in line for line in lines)
    assert len(lines) == len(BAD_PATHS), lines


async def test_run_with_bad_file_exits_2_before_doing_anything(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD_SITE)
    check = await warding("config", "check", str(bad))
    res = await run([PYTHON, "-m", "controller.cli.warding", "run", "--config", str(bad)])
    assert res.rc == 2, res
    _clean(res)
    assert res.err_lines == check.err_lines  # the same one line per problem
    assert _names(tmp_path) == ["bad.toml"]  # no journal, no socket


@pytest.mark.parametrize("where", ["a-file", "under-a-file", "too-long"])
async def test_run_with_an_unusable_socket_path_exits_2_touching_nothing(
    tmp_path: Path, where: str
) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    sock = {
        "a-file": precious,
        "under-a-file": precious / "control.sock",
        "too-long": tmp_path / ("s" * 120),
    }[where]
    res = await run(
        [
            *[PYTHON, "-m", "controller.cli.warding", "run"],
            *["--socket", str(sock), "--journal", str(tmp_path / "journal.db")],
        ]
    )
    assert res.rc == 2, res
    _clean(res)
    assert len(res.err_lines) == 1, res.stderr
    assert res.err_lines[0].startswith("warding: controller.socket: "), res.stderr
    assert precious.read_text() == "keep me"
    assert _names(tmp_path) == ["precious.txt"]  # no journal, no lock file, no socket


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        pytest.param(b"[controller\nid = 1\n", "not valid TOML", id="syntax"),
        pytest.param(b"\xff\xfe\x00garbage", "not UTF-8", id="binary"),
        pytest.param(b"", "no settings", id="empty"),
    ],
)
async def test_config_check_unreadable_file(tmp_path: Path, content: bytes, expect: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(content)
    res = await warding("config", "check", str(bad))
    assert res.rc == 2, res
    _clean(res)
    lines = _problems(res, bad)
    assert len(lines) == 1, lines
    assert expect in lines[0]


async def test_config_check_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    for argv in (["config", "check", str(missing)], ["run", "--config", str(missing)]):
        res = await warding(*argv)
        assert res.rc == 2, res
        _clean(res)
        assert _problems(res, missing) == [
            f"{missing}: cannot read file: No such file or directory"
        ]


# -- journal verify --------------------------------------------------------------------------


def _make_journal(path: Path, rows: int = 4) -> None:
    with Journal.open(path) as journal:
        for i in range(rows):
            journal.append("door.command", door=f"d{i}", data={"action": "pulse", "n": i})


def _tamper(path: Path, sql: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(sql)


async def test_journal_verify_intact(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    _make_journal(db)
    with Journal.open(db) as journal:
        head = journal.tail(1)[0]
    res = await warding("journal", "verify", "--db", str(db))
    assert res.rc == 0, res
    # the head seq and hash are the anchor against truncation: the OK line must carry them
    assert res.lines == [f"{db}: OK, 4 rows, hash chain intact, head seq 4 hash {head.hash}"]


async def test_journal_verify_empty(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    Journal.open(db).close()
    res = await warding("journal", "verify", "--db", str(db))
    assert res.rc == 0, res
    assert res.lines == [f"{db}: OK, 0 rows (journal is empty)"]


async def test_journal_verify_config_names_the_file_it_verifies(tmp_path: Path) -> None:
    db = tmp_path / "site-journal.db"
    _make_journal(db, rows=2)
    site = tmp_path / "site.toml"
    site.write_text(
        DEMO_SITE.read_text().replace(
            'journal = "/tmp/warding-demo/journal.db"', f'journal = "{db}"'
        )
    )
    res = await warding("journal", "verify", "--config", str(site))
    assert res.rc == 0, res
    assert len(res.lines) == 1
    assert res.lines[0].startswith(f"{db}: OK, 2 rows, hash chain intact, head seq 2 hash ")


async def test_journal_verify_default_is_the_journal_warding_run_uses() -> None:
    from controller.settings import load_settings

    demo_journal = load_settings(None).controller.journal  # `warding run` without --config
    res = await warding("journal", "verify")
    _clean(res)
    assert res.rc in (0, 1, 2), res
    assert len(res.lines + res.err_lines) == 1, res
    assert (res.lines + res.err_lines)[0].startswith(f"{demo_journal}: "), res


async def test_journal_verify_db_and_config_together_is_a_usage_error(tmp_path: Path) -> None:
    res = await warding(
        "journal", "verify", "--db", str(tmp_path / "j.db"), "--config", str(DEMO_SITE)
    )
    assert res.rc == 2, res
    _clean(res)
    assert USAGE_ERROR.match(res.err_lines[-1]), res.stderr


@pytest.mark.parametrize(
    ("sql", "expect"),
    [
        pytest.param(
            """UPDATE events SET data = '{"action":"unlock","n":1}' WHERE seq = 2""",
            "row 2: hash does not match its contents",
            id="edited",
        ),
        pytest.param("DELETE FROM events WHERE seq = 3", "row 3 missing", id="deleted"),
        pytest.param(
            "UPDATE events SET prev_hash = hash WHERE seq = 4",
            "row 4: previous-hash link broken",
            id="relinked",
        ),
    ],
)
async def test_journal_verify_tampered(tmp_path: Path, sql: str, expect: str) -> None:
    db = tmp_path / "journal.db"
    _make_journal(db)
    _tamper(db, sql)
    res = await warding("journal", "verify", "--db", str(db))
    assert res.rc == 1, res
    _clean(res)
    assert res.stdout == ""
    assert len(res.err_lines) == 1, res
    assert res.err_lines[0].startswith(f"{db}: ")
    assert expect in res.err_lines[0]


@pytest.mark.parametrize("kind", ["missing", "not-a-database"])
async def test_journal_verify_unusable_file(tmp_path: Path, kind: str) -> None:
    db = tmp_path / "journal.db"
    if kind == "not-a-database":
        db.write_bytes(b"this is not sqlite" * 100)
    res = await warding("journal", "verify", "--db", str(db))
    assert res.rc == 2, res
    _clean(res)
    assert len(res.err_lines) == 1, res
    assert res.err_lines[0].startswith(f"{db}: ")
    assert res.err_lines[0].count(str(db)) == 1, res  # the path once, not twice
    if kind == "missing":
        assert res.err_lines[0] == f"{db}: no such file"


# -- version and usage -----------------------------------------------------------------------


async def test_version() -> None:
    res = await warding("--version")
    assert res.rc == 0, res
    assert res.lines == [f"warding {__version__}"]


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="nothing"),
        pytest.param(["frobnicate"], id="unknown-command"),
        pytest.param(["run", "--no-such-option"], id="unknown-option"),
        pytest.param(["config", "check"], id="check-no-file"),
        pytest.param(["journal", "verify", "--db"], id="db-no-value"),
        pytest.param(["demo", "--duration", "0"], id="demo-zero-duration"),
        pytest.param(["demo", "--script"], id="script-needs-duration"),
    ],
)
async def test_garbage_arguments_exit_2(argv: list[str]) -> None:
    res = await warding(*argv, within=10)
    assert res.rc == 2, res
    _clean(res)
    assert res.err_lines
    assert USAGE_ERROR.match(res.err_lines[-1]), res.stderr


# -- the demo --------------------------------------------------------------------------------


def _try_lock(stack: contextlib.ExitStack) -> bool:
    """Take the demo lock (released when ``stack`` closes) if no other session holds it."""
    fd = os.open(DEMO_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    stack.callback(os.close, fd)
    return True


def _demo_resources_busy() -> str:
    """Why the demo's fixed port or socket is unavailable, or ''."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", DEMO_PORT))
        except OSError:
            return f"TCP port {DEMO_PORT} is in use"
    sock = DEMO_DIR / "control.sock"
    if sock.exists():
        with socket.socket(socket.AF_UNIX) as s, contextlib.suppress(OSError):
            s.connect(str(sock))
            return f"a daemon answers on {sock}"
    return ""


async def test_demo_headless_script(tmp_path: Path) -> None:
    # The demo runs on fixed paths (/tmp/warding-demo, port 15020): one at a time across every
    # concurrent pytest session on this machine (a lock file), and only when nothing else is
    # using them.
    with contextlib.ExitStack() as stack:
        await wait_for(lambda: _try_lock(stack), 30, what=f"the demo lock {DEMO_LOCK}")
        busy = _demo_resources_busy()
        if busy:
            pytest.skip(f"cannot run the demo: {busy}")
        res = await warding("demo", "--duration", "3", "--script", within=40, cwd=tmp_path)
    assert res.rc == 0, res
    _clean(res)
    out = res.stdout
    assert out.splitlines()[0].startswith("warding demo: 10 doors on 2 simulated boards")
    assert "warding demo: daemon exited with status 0" in out
    commands = [line for line in res.lines if " door.command " in line]
    assert any("source=demo-script" in line for line in commands), out
    assert any("alarm=forced-open" in line and "active=True" in line for line in res.lines), out


# -- a second demo on the same site ----------------------------------------------------------


def _private_demo_site(runtime: Path) -> Path:
    """The embedded demo site with its runtime under ``runtime`` and a free TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = DEMO_SITE.read_text(encoding="utf-8")
    text = text.replace(str(DEMO_DIR), str(runtime)).replace(
        f"port = {DEMO_PORT}", f"port = {port}"
    )
    config = runtime.parent / "site.toml"
    config.write_text(text, encoding="utf-8")
    return config


async def test_second_demo_leaves_the_running_demo_alone(tmp_path: Path) -> None:
    import asyncio
    import signal

    runtime = tmp_path / "rt"
    config = _private_demo_site(runtime)
    links = [runtime / "lobby-reader.tty", runtime / "osdp-1.tty", runtime / "annex.tty"]
    first = await asyncio.create_subprocess_exec(
        *[PYTHON, "-m", "controller.cli.warding"],
        "demo",
        "--config",
        str(config),
        "--duration",
        "60",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert first.stdout is not None
        async with asyncio.timeout(30):
            line = await first.stdout.readline()
        assert line.startswith(b"warding demo: 10 doors"), line
        before = {p: os.readlink(p) for p in links}
        site_copy = (runtime / "site.toml").read_bytes()

        res = await warding("demo", "--config", str(config), "--duration", "1", within=30)
        # the running demo's device links, site copy and sockets are untouched
        assert {p: os.readlink(p) if p.is_symlink() else None for p in links} == before
        assert (runtime / "site.toml").read_bytes() == site_copy
        assert (runtime / "sim.sock").is_socket()
        assert first.returncode is None
        assert res.rc == 1, res
        _clean(res)
        assert res.err_lines == [
            f"warding demo: another warding demo is running in {runtime} "
            f"(lock {runtime / 'demo.lock'} is held)"
        ], res
    finally:
        if first.returncode is None:
            first.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(first.communicate(), 20)
        except TimeoutError:
            first.kill()
            await first.communicate()


async def test_the_demo_reads_its_site_from_a_pipe_once(tmp_path: Path) -> None:
    runtime = tmp_path / "rt"
    config = _private_demo_site(runtime)
    demo = " ".join(shlex.quote(a) for a in [PYTHON, "-m", "controller.cli.warding", "demo"])
    cmd = f"{demo} --config <(cat {shlex.quote(str(config))}) --duration 2"
    res = await run(["bash", "-c", cmd], within=60, cwd=REPO)
    assert res.rc == 0, res
    # the daemon ran on the site that came through the pipe, not on an empty copy of it
    assert (runtime / "site.toml").read_text(encoding="utf-8") == config.read_text("utf-8")
    assert res.stdout.splitlines()[0].startswith("warding demo: 10 doors on 2 simulated boards")
