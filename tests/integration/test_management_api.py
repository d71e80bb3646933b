"""Management commands on bad input, and an import whose client goes away (in-process daemon)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import controller.api.management as management
from controller.access import csvio
from controller.access.csvio import import_csv
from controller.access.store import BulkImport
from controller.cli import wardctl
from controller.journal import Journal
from tests.integration.conftest import ApiConnection
from tests.integration.test_access_service import Rig, rig, wait_for

BIG = 2**63  # one above the largest SQLite integer

GARBAGE: list[tuple[str, dict[str, Any], str]] = [
    ("cardholder.add", {"name": "A", "privileges": [["override"]]}, "'privileges'"),
    ("cardholder.add", {"name": "A", "levels": [7]}, "'levels'"),
    ("cardholder.add", {"name": "\ud800"}, "'name'"),
    ("cardholder.add", {"name": "A", "valid_until": "9999-13-31"}, "'valid_until'"),
    ("access-level.add", {"name": "lv", "doors": [{"d": 1}]}, "'doors'"),
    ("credential.revoke", {"credential": 10**30}, "'credential'"),
    ("credential.revoke", {"credential": 0}, "'credential'"),
    ("cardholder.show", {"cardholder": BIG}, "'cardholder'"),
    ("cardholder.set-state", {"cardholder": BIG, "state": "revoked"}, "'cardholder'"),
    ("credential.add", {"cardholder": BIG, "card": "h10301:1:1"}, "'cardholder'"),
    ("credential.list", {"cardholder": -1}, "'cardholder'"),
    ("cardholder.list", {"after": BIG}, "after"),
    ("access-level.grant", {"cardholder": BIG, "name": "x"}, "'cardholder'"),
    ("access-level.revoke", {"cardholder": BIG, "name": "x"}, "'cardholder'"),
    ("access-level.add", {"name": "empty", "doors": []}, "at least one door"),
]


@pytest.mark.parametrize(("cmd", "args", "names"), GARBAGE, ids=[f"{c}-{a}" for c, a, _ in GARBAGE])
async def test_bad_arguments_get_an_error_naming_them_and_the_connection_stays(
    tmp_path: Path, cmd: str, args: dict[str, Any], names: str
) -> None:
    async with rig(tmp_path) as r, await ApiConnection.open(socket_of(r)) as conn:
        reply = await conn.call(cmd, **args)
        assert reply["ok"] is False, reply
        assert names in reply["error"], reply
        assert (await conn.call("ping"))["ok"] is True  # the same connection still serves
        assert r.store.counts()["cardholders"] == 0


async def test_a_lone_surrogate_in_an_import_chunk_is_refused(tmp_path: Path) -> None:
    async with rig(tmp_path) as r, await ApiConnection.open(socket_of(r)) as conn:
        token = (await conn.call("credential.import.begin"))["upload"]
        reply = await conn.call("credential.import.chunk", upload=token, data="name\n\ud800\n")
        assert reply["ok"] is False, reply
        assert "'data'" in reply["error"], reply
        assert (await conn.call("credential.import.abort", upload=token))["ok"] is True


async def test_an_unexpected_failure_is_an_error_reply_not_a_dropped_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig(tmp_path) as r, await ApiConnection.open(socket_of(r)) as conn:

        def broken(*args: Any, **kw: Any) -> Any:
            raise RuntimeError("a bug")

        monkeypatch.setattr(r.store, "find_cardholders", broken)
        reply = await conn.call("cardholder.list")
        assert reply["ok"] is False, reply
        assert "internal error (RuntimeError)" in reply["error"]
        assert (await conn.call("ping"))["ok"] is True


async def test_valid_until_the_last_date_there_is(tmp_path: Path) -> None:
    async with rig(tmp_path) as r, await ApiConnection.open(socket_of(r)) as conn:
        reply = await conn.call("cardholder.add", name="Forever", valid_until="9999-12-31")
        assert reply["ok"] is True, reply
        cid = reply["cardholder"]
        shown = await conn.call("cardholder.show", cardholder=cid)
        until = datetime.fromisoformat(shown["cardholder"]["valid_until"])
        assert (until.year, until.month, until.day, until.hour) == (9999, 12, 31, 23)
        reply = await conn.call(
            "credential.add", cardholder=cid, card="h10301:1:1", valid_until="9999-12-31"
        )
        assert reply["ok"] is True, reply
        r.store.add_level("front", ("tcp1-d0",))
        r.store.grant_level(cid, "front")
        r.card("r1", "h10301:1:1")
        assert (await r.reasons())[-1] == "granted"


def test_csv_import_takes_the_last_date_and_rejects_bad_ones_by_line(tmp_path: Path) -> None:
    from controller.access.store import CredentialStore

    store = CredentialStore.open(tmp_path / "c.db", b"k" * 32)
    try:
        good = tmp_path / "good.csv"
        good.write_text(
            "name,card,valid_until\nAnn,h10301:2:2,2030-01-01\nBob,h10301:2:3,9999-12-31\n"
        )
        assert import_csv(store, good).committed
        bad = tmp_path / "bad.csv"
        bad.write_text(
            "name,card,valid_until\nCy,h10301:2:4,9999-12-32\nDi,h10301:2:5,10000-01-01\n"
        )
        report = import_csv(store, bad)
        assert not report.committed
        assert [(x.line, x.reason.split(" '")[0]) for x in report.rejected] == [
            (2, "bad valid_until"),
            (3, "bad valid_until"),
        ]
    finally:
        store.close()


@pytest.mark.parametrize(
    "argv",
    [
        ["cardholder", "show", str(BIG)],
        ["cardholder", "show", "0"],
        ["credential", "revoke", str(10**30)],
        ["credential", "add", "1", "h10301:1:1", "--valid-until", "9999-13-31"],
        ["cardholder", "add", "X", "--valid-from", "tomorrow"],
        ["cardholder", "list", "--after", "-1"],
        ["access-level", "grant", str(BIG), "front"],
    ],
)
def test_wardctl_usage_errors_exit_2_with_a_message(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        wardctl.main([*argv, "--socket", "/nonexistent/control.sock"])
    assert exited.value.code == wardctl.EXIT_USAGE
    err = capsys.readouterr().err
    assert "error: argument" in err
    assert "Traceback" not in err


# -- an import whose client goes away -----------------------------------------------------------


PEOPLE = "name,card\n" + "".join(f"P{i},h10301:9:{i}\n" for i in range(50))


def hold_imports(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make every import wait (in its thread) until the returned event is set."""
    release = threading.Event()

    def slow_import(*args: Any, **kw: Any) -> Any:
        assert release.wait(10)
        return import_csv(*args, **kw)

    monkeypatch.setattr(management, "import_csv", slow_import)
    return release


async def start_import(r: Rig, data: str) -> ApiConnection:
    """Upload ``data`` as people.csv and commit it; the connection, once it is streaming."""
    conn = await ApiConnection.open(socket_of(r))
    token = (await conn.call("credential.import.begin", name="people.csv"))["upload"]
    assert (await conn.call("credential.import.chunk", upload=token, data=data))["ok"]
    await conn.send("credential.import.commit", upload=token)
    assert (await conn.read())["streaming"] is True
    return conn


async def test_an_import_finished_after_the_client_left_is_journaled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = hold_imports(monkeypatch)
    async with rig(tmp_path) as r:
        conn = await start_import(r, PEOPLE)
        conn.close()  # the operator hits Ctrl-C in wardctl
        await asyncio.sleep(0.2)  # the daemon notices the client is gone
        release.set()
        await wait_for(lambda: r.store.counts()["cardholders"] == 50)
        await wait_for_entries(r, "admin.import")
        (entry,) = await r.entries("admin.import")
        assert (entry["committed"], entry["cardholders"], entry["rows"]) == (True, 50, 50)
        uploads = r.daemon.settings.credentials_db.parent / "uploads"
        assert list(uploads.glob("import-*")) == []  # the file (cards in clear) is gone


async def test_a_refused_import_after_the_client_left_is_journaled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = hold_imports(monkeypatch)
    async with rig(tmp_path) as r:
        conn = await start_import(r, "badge\n1\n")
        conn.close()
        await asyncio.sleep(0.2)
        release.set()
        await wait_for_entries(r, "admin.import")
        (entry,) = await r.entries("admin.import")
        assert entry["committed"] is False
        assert entry["error"].startswith("people.csv line 1: unknown column")


async def wait_for_entries(r: Rig, kind: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await r.entries(kind):
        assert asyncio.get_running_loop().time() < deadline, f"no {kind} journaled"
        await asyncio.sleep(0.05)


def socket_of(r: Rig) -> Path:
    return r.daemon.settings.controller.socket


def journaled_imports(journal_path: Path) -> list[dict[str, Any]]:
    """The data of every admin.import record in the journal file (the daemon has stopped)."""
    with Journal.open(journal_path) as journal:
        return [dict(e.data) for e in journal.read(0, 10_000) if e.kind == "admin.import"]


async def test_an_import_running_at_shutdown_is_called_off_and_journaled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = hold_imports(monkeypatch)
    async with rig(tmp_path) as r:
        journal_path = r.daemon.settings.controller.journal
        db = r.daemon.settings.credentials_db
        conn = await start_import(r, PEOPLE)
        r.daemon.shutdown.set()  # systemctl stop, mid-import
        mgmt = r.daemon.management
        assert mgmt is not None
        await wait_for(lambda: mgmt._stopping)
        release.set()
        writer = r.daemon.journal
        assert writer is not None
        await wait_for(lambda: writer.closed, 10)
        conn.close()
    imports = journaled_imports(journal_path)
    assert len(imports) == 1
    assert imports[0]["committed"] is False
    assert "called off" in imports[0]["error"]
    with sqlite3.connect(db) as con:  # all or nothing: nothing
        assert con.execute("SELECT count(*) FROM cardholders").fetchone() == (0,)


async def test_an_import_committing_at_shutdown_is_never_silent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_commit = BulkImport.commit
    started = threading.Event()

    def slow_commit(self: BulkImport) -> None:
        started.set()
        time.sleep(2.0)  # a large file's sort, insert and commit
        real_commit(self)

    monkeypatch.setattr(BulkImport, "commit", slow_commit)
    async with rig(tmp_path) as r:
        journal_path = r.daemon.settings.controller.journal
        conn = await start_import(r, PEOPLE)
        await wait_for(started.is_set)  # the commit is under way: it can't be called off
        r.daemon.shutdown.set()  # systemctl stop
        writer = r.daemon.journal
        assert writer is not None
        await wait_for(lambda: writer.closed, 10)
        conn.close()
    imports = journaled_imports(journal_path)
    assert len(imports) == 1, imports
    assert imports[0]["committing"] is True
    assert imports[0]["committed"] is None
    assert "check the store" in imports[0]["error"]


async def test_an_export_answers_before_it_has_written_the_store_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_export = csvio.export_csv

    def slow_export(*args: Any, **kw: Any) -> Any:
        assert release.wait(10)  # a large store: longer than a client waits for a first reply
        return real_export(*args, **kw)

    monkeypatch.setattr(management, "export_csv", slow_export)
    async with rig(tmp_path) as r, await ApiConnection.open(socket_of(r)) as conn:
        r.enrol("Ann", "h10301:3:333", ("tcp1-d0",))
        await conn.send("credential.export", id=1)
        first = await conn.read(within=5)  # while the export is still being written
        assert first == {"ok": True, "streaming": True, "id": 1}
        release.set()
        lines = []
        while not (msg := await conn.read(within=10)).get("done"):
            lines.append(msg["data"])
        assert "Ann" in "".join(lines)
