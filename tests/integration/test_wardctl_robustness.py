"""``wardctl`` on bad input, odd sockets and hostile journal text.

Usage and local-file problems exit 2 before anything is sent; a socket that is not the daemon,
or never answers, exits 3; an error on an event stream exits 1; never a traceback; text from
the journal never reaches the terminal raw; files with personal data are written 0640.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import socket
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from controller.api.client import ControlClient
from controller.cli.wardctl import IMPORT_MAX_BYTES, _table, format_event, format_status
from controller.errors import DaemonNotRunningError
from simulators.control import SimControlServer
from tests.integration.conftest import WARDCTL, Daemon, Result, Site, clean_env

pytestmark = pytest.mark.asyncio(loop_scope="module")

REASON_FORGERY = (
    "x\n    999999 2026-01-01T00:00:00.000000Z door.command       lobby-main       "
    "action=unlock source=wardctl\r\x1b[2J\x1b]0;pwned\x07\u202etxt.exe\x85"
)
RAW = ("\n", "\r", "\x1b", "\x07", "\u202e", "\x85")


def _clean(res: Result) -> None:
    assert "Traceback" not in res.stderr, res.stderr
    assert "Traceback" not in res.stdout, res.stdout


async def run_wardctl(
    *args: str,
    stdin: bytes = b"",
    within: float = 20.0,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Result:
    """``wardctl ARGS`` in a session of its own (no controlling terminal: getpass reads stdin)."""
    proc = await asyncio.create_subprocess_exec(
        *WARDCTL,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(env),
        start_new_session=True,
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), within)
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise AssertionError(f"wardctl {' '.join(args)} did not finish within {within}s") from None
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


Script = Callable[[dict[str, Any], asyncio.StreamWriter], Any]


class FakeServer:
    """A Unix socket that records what it is sent and answers through ``script``."""

    def __init__(self, path: Path, script: Script | None = None) -> None:
        self.path = path
        self.script = script
        self.connections = 0
        self.requests: list[dict[str, Any]] = []
        self.tasks: set[asyncio.Task[Any]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            while line := await reader.readline():
                request = json.loads(line)
                self.requests.append(request)
                if self.script is not None:
                    await self.script(request, writer)
            await asyncio.sleep(60)  # keep the connection open, say nothing more
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def fake_server(path: Path, script: Script | None = None) -> AsyncIterator[FakeServer]:
    fake = FakeServer(path, script)
    server = await asyncio.start_unix_server(fake._serve, path=str(path))
    try:
        yield fake
    finally:
        server.close()
        for task in fake.tasks:  # connections the fake keeps open
            task.cancel()
        await asyncio.gather(*fake.tasks, return_exceptions=True)
        await server.wait_closed()
        os.unlink(path)


def send(writer: asyncio.StreamWriter, obj: object) -> None:
    writer.write(json.dumps(obj).encode() + b"\n")


# -- usage found before anything is sent (exit 2) --------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["cardholder", "add", "Eve", "--pin-prompt"],
        ["lockdown", "clear", "--cardholder", "2", "--pin-prompt"],
        ["lockdown", "end-evacuation", "--cardholder", "2", "--pin-prompt"],
        ["cardholder", "add", "Eve", "--pin-stdin"],
        ["lockdown", "clear", "--cardholder", "2", "--pin-stdin"],
    ],
    ids=["add-prompt", "clear-prompt", "end-evac-prompt", "add-stdin", "clear-stdin"],
)
async def test_end_of_input_instead_of_a_pin_is_a_usage_error(
    tmp_path: Path, args: list[str]
) -> None:
    sock = tmp_path / "d.sock"
    async with fake_server(sock) as fake:
        res = await run_wardctl("--socket", str(sock), *args, stdin=b"")
    assert res.rc == 2, res
    _clean(res)
    assert res.err_lines[-1].startswith("wardctl: error: no PIN given"), res
    assert fake.connections == 0  # nothing was sent


@pytest.mark.parametrize(
    "args",
    [
        ["door", "pulse", "d1", "--duration", "-1"],
        ["door", "pulse", "d1", "--duration", "0"],
        ["door", "pulse", "d1", "--duration", "nan"],
        ["door", "pulse", "d1", "--duration", "inf"],
        ["door", "pulse", "d1", "--duration", "3601"],
        ["cardholder", "list", "--limit", "0"],
        ["cardholder", "list", "--limit", "100001"],
        ["credential", "list", "--limit", "0"],
        ["credential", "import", "/nonexistent/people.csv"],
        ["lockdown", "clear", "--cardholder", "2"],
        ["lockdown", "end-evacuation", "--cardholder", "2"],
    ],
    ids=lambda a: "-".join(a[:2] + a[-1:]),
)
async def test_bad_values_exit_2_before_connecting(tmp_path: Path, args: list[str]) -> None:
    # no daemon at all: a check made after connecting would answer 3
    res = await run_wardctl("--socket", str(tmp_path / "absent.sock"), *args)
    assert res.rc == 2, res
    _clean(res)
    assert res.err_lines[-1].startswith("wardctl"), res
    assert "error:" in res.err_lines[-1], res
    assert res.stdout == ""


@pytest.mark.parametrize("kind", ["device", "fifo", "directory", "huge"])
async def test_import_reads_only_a_regular_file_within_the_upload_limit(
    tmp_path: Path, kind: str
) -> None:
    if kind == "device":
        path, expect = Path("/dev/zero"), "cannot read /dev/zero: not a regular file"
    elif kind == "fifo":
        path = tmp_path / "people.fifo"
        os.mkfifo(path)
        expect = f"cannot read {path}: not a regular file"
    elif kind == "directory":
        path, expect = tmp_path, f"cannot read {tmp_path}: Is a directory"
    else:
        path = tmp_path / "huge.csv"
        with path.open("wb") as f:  # sparse: no disk space used
            f.truncate(IMPORT_MAX_BYTES + 1)
        expect = f"{path} is larger than 512 MiB (the import limit)"
    sock = tmp_path / "d.sock"
    async with fake_server(sock) as fake:
        res = await run_wardctl("--socket", str(sock), "credential", "import", str(path), within=15)
    assert res.rc == 2, res
    _clean(res)
    assert res.err_lines[-1] == f"wardctl: error: {expect}", res
    assert fake.connections == 0


async def test_import_limit_is_the_daemons_upload_limit() -> None:
    from controller.api.management import UPLOAD_MAX_BYTES

    assert IMPORT_MAX_BYTES == UPLOAD_MAX_BYTES


async def test_a_bad_local_path_is_a_usage_error_not_a_lost_daemon(tmp_path: Path) -> None:
    regular = tmp_path / "site.toml"
    regular.write_text("x")
    absent = str(tmp_path / "absent.sock")
    cases = [
        (["incident", "report", "1", "--out", str(regular)], f"{regular}: Not a directory"),
        (
            ["incident", "report", "1", "--out", str(regular / "sub")],
            f"{regular / 'sub'}: Not a directory",
        ),
        (["credential", "export", str(tmp_path)], f"{tmp_path}: Is a directory"),
        (
            ["credential", "export", str(tmp_path / "no" / "x.csv")],
            f"{tmp_path / 'no' / 'x.csv'}: No such file or directory",
        ),
    ]
    for args, reason in cases:
        res = await run_wardctl("--socket", absent, *args)
        assert res.rc == 2, (args, res)
        _clean(res)
        assert res.err_lines == [f"wardctl: cannot write {reason}"], res
    assert regular.read_text() == "x"


# -- sockets that are not the daemon (exit 3) ------------------------------------------------


async def test_a_simulator_control_socket_is_not_the_daemon(
    shared_site: Site, tmp_path: Path
) -> None:
    sock = tmp_path / "sim.sock"
    async with SimControlServer(shared_site.sim, sock):
        for args in (["status"], ["status", "--json"]):
            res = await run_wardctl("--socket", str(sock), *args)
            assert res.rc == 3, res
            _clean(res)
            assert res.err_lines == [
                f"wardctl: unexpected reply from {sock} (not a warding control socket?)"
            ], res
            assert res.stdout == ""


@pytest.mark.parametrize("reply", [b"hello\n", b"[1, 2]\n", b'{"ok": true, "result": 7}\n'])
async def test_garbage_replies_exit_3(tmp_path: Path, reply: bytes) -> None:
    async def script(request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        writer.write(reply)

    sock = tmp_path / "g.sock"
    async with fake_server(sock, script):
        res = await run_wardctl("--socket", str(sock), "door", "pulse", "d1")
    assert res.rc == 3, res
    _clean(res)
    assert res.err_lines == [
        f"wardctl: unexpected reply from {sock} (not a warding control socket?)"
    ], res


async def test_stream_keeps_the_timeout_until_the_first_reply(tmp_path: Path) -> None:
    sock = tmp_path / "silent.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(sock))
        listener.listen(4)  # connections complete in the backlog; nobody ever answers
        with (
            ControlClient(sock, timeout_s=0.3) as client,
            pytest.raises(DaemonNotRunningError, match=r"no reply from .* within 0.3s"),
        ):
            next(client.stream("events", follow=True, limit=1))


async def test_events_follow_gives_up_on_a_socket_that_never_answers(tmp_path: Path) -> None:
    sock = tmp_path / "silent.sock"
    async with fake_server(sock) as fake:
        res = await run_wardctl("--socket", str(sock), "events", "-f", within=30)
    assert fake.requests
    assert fake.requests[0]["cmd"] == "events"
    assert res.rc == 3, res
    _clean(res)
    assert res.err_lines == [f"wardctl: no reply from {sock} within 10s"], res


async def test_a_socket_path_too_long_says_so(tmp_path: Path) -> None:
    long = Path("/tmp") / ("x" * 120)
    res = await run_wardctl("--socket", str(long), "status")
    assert res.rc == 3, res
    _clean(res)
    assert res.err_lines == [
        f"wardctl: cannot connect to {long}: the path is longer than 107 bytes"
    ], res


async def test_an_error_on_the_event_stream_ends_follow_with_1(tmp_path: Path) -> None:
    event = {"seq": 7, "ts": "2026-01-01T00:00:00Z", "kind": "door.state", "door": "d1"}

    async def script(request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        send(writer, {"ok": True, "following": True})
        send(writer, {"event": {**event, "data": {"to": "open"}}})
        send(writer, {"ok": False, "error": "journal read failed: disk I/O error"})
        # ... and the connection stays open: a client that skips the error waits forever

    sock = tmp_path / "e.sock"
    async with fake_server(sock, script):
        res = await run_wardctl("--socket", str(sock), "events", "-f", within=8)
        res_json = await run_wardctl("--socket", str(sock), "events", "-f", "--json", within=8)
    assert res.rc == 1, res
    _clean(res)
    assert " door.state " in res.stdout
    assert res.err_lines == ["wardctl: events: journal read failed: disk I/O error"], res
    assert res_json.rc == 1, res_json
    assert json.loads(res_json.stdout)["seq"] == 7


# -- hostile journal text --------------------------------------------------------------------


async def test_format_event_escapes_control_and_bidi_characters() -> None:
    line = format_event(
        {
            "seq": 5,
            "ts": "2026-01-01T00:00:00Z",
            "kind": "lockdown.start",
            "door": "d\x1b[31m1",
            "data": {"reason": REASON_FORGERY, "tab": "a\tb", "del": "\x7f"},
        }
    )
    assert "\n" not in line
    for raw in RAW:
        assert raw not in line, repr(raw)
    assert "reason=x\\n    999999" in line
    assert "\\r\\x1b[2J\\x1b]0;pwned\\x07\\u202etxt.exe\\x85" in line
    assert "d\\x1b[31m1" in line
    assert "tab=a\\tb" in line
    assert "del=\\x7f" in line


async def test_a_lone_surrogate_is_escaped_so_the_line_can_be_printed() -> None:
    line = format_event(
        {"seq": 6, "ts": "2026-01-01T00:00:00Z", "kind": "lockdown.trigger",
         "door": None, "data": {"reason": "shots fired \ud83d"}}
    )  # fmt: skip
    assert "reason=shots fired \\ud83d" in line
    line.encode("utf-8")  # printable on a UTF-8 terminal: no UnicodeEncodeError


async def test_format_status_escapes_cells() -> None:
    status = {
        "controller": "c\x1b]0;x\x07",
        "doors": [
            {
                "door": "d\n1",
                "zone": "z",
                "state": "locked",
                "lock": "locked",
                "contact": "closed",
                "board": "b",
                "link": "up",
            }
        ],
        "boards": [
            {"board": "b", "link": "down", "endpoint": "e\r", "unit_id": 1, "error": "\x1b"}
        ],
    }
    text = format_status(status)
    for raw in ("\x1b", "\r", "\x07"):
        assert raw not in text
    assert "d\\n1" in text


async def test_table_cells_are_escaped() -> None:
    rows = [{"id": 1, "name": "Mallory\x1b[2J\u202eTXT", "levels": ["a\nb", "c"]}]
    text = _table(rows, ["id", "name", "levels"])
    assert len(text.splitlines()) == 2
    assert "\x1b" not in text
    assert "\u202e" not in text
    assert "Mallory\\x1b[2J\\u202eTXT" in text
    assert "a\\nb,c" in text


async def test_journal_text_cannot_forge_lines_or_reach_the_terminal(
    shared_daemon: Daemon,
) -> None:
    # a lockdown reason is journaled and shown by events and lockdown status
    res = await run_wardctl(
        "--socket", str(shared_daemon.socket), "lockdown", "start", "--reason", REASON_FORGERY
    )
    assert res.rc == 0, res
    for args in (["events", "-n", "200"], ["lockdown", "status"], ["status"]):
        res = await run_wardctl("--socket", str(shared_daemon.socket), *args)
        assert res.rc == 0, res
        for raw in RAW[1:]:
            assert raw not in res.stdout, (args, repr(raw))
        assert not any(line.lstrip().startswith("999999") for line in res.lines), res.stdout
        assert "x\\n    999999" in res.stdout, (args, res.stdout)


# -- lockdown warnings and incident reports (the daemon is in lockdown from here on) ---------


async def test_lockdown_level_out_of_range_warns_on_stderr(shared_daemon: Daemon) -> None:
    res = await run_wardctl(
        "--socket", str(shared_daemon.socket), "lockdown", "start", "--reason", "t", "--level", "99"
    )
    assert res.rc == 0, res
    _clean(res)
    assert res.err_lines == ["wardctl: warning: threat level must be 0..7 (got 99); not changed"], (
        res
    )
    assert res.lines[0].startswith("site: LOCKDOWN"), res


async def _incident(daemon: Daemon) -> int:
    reply = await daemon.api("incident.list")
    assert reply["incidents"], reply
    return int(reply["incidents"][-1]["id"])


async def test_incident_report_json(shared_daemon: Daemon) -> None:
    incident = await _incident(shared_daemon)
    sock = str(shared_daemon.socket)
    for args in (["--json"], ["--json", "--format", "json"]):
        res = await run_wardctl("--socket", sock, "incident", "report", str(incident), *args)
        assert res.rc == 0, res
        assert json.loads(res.stdout)["id"] == incident
    res = await run_wardctl(
        "--socket", sock, "--json", "incident", "report", str(incident), "--format", "md"
    )
    assert res.rc == 0, res
    doc = json.loads(res.stdout)
    assert doc["format"] == "md"
    assert doc["incident"] == incident
    assert doc["text"].startswith("#")
    res = await run_wardctl("--socket", sock, "incident", "report", str(incident))
    assert res.rc == 0, res
    assert res.stdout.startswith("#")  # without --json: Markdown as before


async def test_incident_report_out_is_private_and_atomic(
    shared_daemon: Daemon, tmp_path: Path
) -> None:
    incident = await _incident(shared_daemon)
    out = tmp_path / "reports" / "2026"
    old = os.umask(0o002)  # a permissive umask must not widen the modes
    try:
        res = await run_wardctl(
            "--socket",
            str(shared_daemon.socket),
            "--json",
            "incident",
            "report",
            str(incident),
            "--format",
            "html",
            "--out",
            str(out),
        )
    finally:
        os.umask(old)
    assert res.rc == 0, res
    written = [Path(p) for p in json.loads(res.stdout)["written"]]
    assert written == [out / f"incident-{incident}.html", out / f"incident-{incident}.svg"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "reports").stat().st_mode) == 0o750
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)  # no temps
    res = await run_wardctl(
        "--socket",
        str(shared_daemon.socket),
        "incident",
        "report",
        str(incident),
        "--out",
        str(out),
    )
    assert res.rc == 0, res
    assert res.lines == [f"wrote {out / f'incident-{incident}.md'}"]
    assert stat.S_IMODE((out / f"incident-{incident}.md").stat().st_mode) == 0o640


async def test_a_connection_closed_mid_command_is_exit_3_not_silence(tmp_path: Path) -> None:
    async def script(request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        send(writer, {"ok": True, "upload": "u1", "chunk_max": 1000, "id": request.get("id")})
        await writer.drain()
        writer.transport.abort()  # the daemon goes away after the first answer

    people = tmp_path / "people.csv"
    people.write_text("name,card\n" + "".join(f"P{i},h10301:9:{i}\n" for i in range(2000)))
    sock = tmp_path / "c.sock"
    async with fake_server(sock, script):
        res = await run_wardctl("--socket", str(sock), "credential", "import", str(people))
    assert res.rc == 3, res
    _clean(res)
    assert len(res.err_lines) == 1, res
    assert "daemon" in res.err_lines[0], res


async def _export_script(request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
    send(writer, {"ok": True, "streaming": True})
    send(writer, {"data": "name,card\nAnn,****3333\n"})
    send(writer, {"done": True})


async def test_export_to_a_special_file_through_a_symlink_is_written_in_place(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "e.sock"
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    link = tmp_path / "stdout-like"
    link.symlink_to(fifo)  # as /dev/stdout -> /proc/self/fd/1 -> a pipe
    got: list[bytes] = []

    def drain() -> None:
        with fifo.open("rb") as f:
            got.append(f.read())

    reader = asyncio.get_running_loop().run_in_executor(None, drain)
    async with fake_server(sock, _export_script):
        res = await run_wardctl("--socket", str(sock), "credential", "export", str(link))
    await asyncio.wait_for(reader, 10)
    assert res.rc == 0, res
    assert got == [b"name,card\nAnn,****3333\n"]
    assert link.is_symlink()  # not replaced by a file


async def test_export_through_a_dangling_symlink_makes_its_target_private(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "e.sock"
    link = tmp_path / "people.csv"
    link.symlink_to(tmp_path / "target.csv")
    async with fake_server(sock, _export_script):
        res = await run_wardctl("--socket", str(sock), "credential", "export", str(link))
    assert res.rc == 0, res
    target = tmp_path / "target.csv"
    assert target.read_text() == "name,card\nAnn,****3333\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert link.is_symlink()


async def test_export_to_dot_slash_dash_is_a_file_named_dash(tmp_path: Path) -> None:
    sock = tmp_path / "e.sock"
    async with fake_server(sock, _export_script):
        res = await run_wardctl("--socket", str(sock), "credential", "export", "./-", cwd=tmp_path)
    assert res.rc == 0, res
    assert res.stdout == ""
    assert (tmp_path / "-").read_text() == "name,card\nAnn,****3333\n"


async def test_export_to_dev_stdout_writes_to_the_pipe(tmp_path: Path) -> None:
    sock = tmp_path / "e.sock"
    async with fake_server(sock, _export_script):  # stdout is a pipe here, as in `| cat`
        res = await run_wardctl("--socket", str(sock), "credential", "export", "/dev/stdout")
    assert res.rc == 0, res
    assert res.stdout == "name,card\nAnn,****3333\n"


async def test_export_to_dev_stdout_redirected_to_a_file_writes_that_open_file(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "e.sock"
    out = tmp_path / "group.txt"
    script = (
        f"{{ echo BEFORE; {' '.join(shlex.quote(a) for a in WARDCTL)} --socket "
        f"{shlex.quote(str(sock))} credential export /dev/stdout; echo AFTER; }} "
        f"> {shlex.quote(str(out))}"
    )
    async with fake_server(sock, _export_script):
        proc = await asyncio.create_subprocess_exec("bash", "-c", script, env=clean_env(None))
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    # written in place into the file the shell opened: nothing before or after it lost
    assert out.read_text() == "BEFORE\nname,card\nAnn,****3333\nAFTER\n"
    assert os.listdir(tmp_path) == ["group.txt"]  # no stray copy beside it
