"""``wardctl`` access management against a real daemon, checked at a real (simulated) reader.

One daemon for the module (a subprocess, on a simulated Modbus board and a simulated serial
badge reader on a pty). Every change is made with the ``wardctl`` console script, and its effect
is checked the way a technician would: a card presented at ``r-front``
(``SimSerialReader.present_card``) and the decision read back with ``wardctl events --json``.

Exit status: 0 ok, 1 refused, 2 usage, 3 daemon unreachable (docs/wardctl.md).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from controller.access.csvio import EXPORT_COLUMNS
from simulators.serial_reader import SimSerialReader
from tests.integration.conftest import (
    WARDCTL,
    Daemon,
    Result,
    clean_env,
    running_daemon,
    simulated_site,
    wait_for,
    wardctl,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

READER = "r-front"
DOOR = "tcp1-d0"  # the reader's door
OTHER_DOOR = "tcp1-d1"
ZONE = "Europe/Berlin"

SITE_EXTRA = f"""
[access]
timezone = "{ZONE}"
throttle_denials = 1000

[[schedules]]
name = "office"
intervals = ["daily 00:00-24:00"]

[[reader_buses]]
name = "line1"
driver = "serial"
device = "{{device}}"

[[readers]]
name = "{READER}"
bus = "line1"
door = "{DOOR}"
"""

# Secrets used in this module: none may ever show up in wardctl output or in the journal.
PIN = "73915284"
EVE_PIN = "58203716"
ADA_CARD = "h10301:12:34567"
SECRETS = (
    PIN,
    EVE_PIN,
    "34567",
    "90:900",
    "12:345",
    "04:5e:6f:7a",
    "045e6f7a",
    "c0ffee",
    "number:123",
)


@dataclass
class Rig:
    """The daemon, the reader at ``DOOR``, and everything ``wardctl`` printed so far."""

    daemon: Daemon
    reader: SimSerialReader
    directory: Path
    outputs: list[str] = field(default_factory=list)

    async def ctl(self, *args: str, stdin: str | None = None) -> Result:
        """Run wardctl against the daemon; record its output (for the secrets check)."""
        res = await run_wardctl(self.daemon.socket, args, stdin=stdin)
        self.outputs.append(res.stdout + res.stderr)
        assert "Traceback" not in res.stderr, res.stderr
        return res

    async def ok(self, *args: str, stdin: str | None = None) -> Result:
        """Run wardctl; it must succeed."""
        res = await self.ctl(*args, stdin=stdin)
        assert res.rc == 0, f"wardctl {' '.join(args)}: {res}"
        return res

    async def json(self, *args: str, stdin: str | None = None) -> Any:
        """Run ``wardctl ARGS --json``; the parsed output."""
        return json.loads((await self.ok(*args, "--json", stdin=stdin)).stdout)

    async def refused(self, *args: str, rc: int = 1) -> str:
        """Run wardctl; it must fail with ``rc`` and one ``wardctl:`` line; return that line."""
        res = await self.ctl(*args)
        assert res.rc == rc, f"wardctl {' '.join(args)}: {res}"
        assert res.stdout == "", res
        errors = [line for line in res.err_lines if line.startswith("wardctl:")]
        assert len(errors) == 1, res.stderr
        return errors[0]

    async def events(self, *args: str) -> list[dict[str, Any]]:
        """Journal entries through ``wardctl events --json ARGS`` (not recorded in outputs)."""
        res = await run_wardctl(self.daemon.socket, ["events", "--json", *args])
        assert res.rc == 0, res
        return [json.loads(line) for line in res.lines]

    async def last_seq(self) -> int:
        """The newest committed journal entry."""
        return int((await self.events("-n", "1"))[-1]["seq"])

    async def present(self, card: str) -> dict[str, Any]:
        """Present ``card`` at the reader; the decision's journal data."""
        after = await self.last_seq()
        self.reader.present_card(card)

        async def decision() -> dict[str, Any] | None:
            for e in await self.events("--after", str(after), "-n", "1000"):
                if e["kind"] == "access.decision" and e["data"].get("reader") == READER:
                    assert e["door"] == DOOR
                    data: dict[str, Any] = e["data"]
                    return data
            return None

        found: dict[str, Any] | None = await wait_for(decision, 5.0, what=f"decision {card}")
        assert found is not None
        return found

    async def reason(self, card: str) -> str:
        """Present ``card``; the decision's reason."""
        return str((await self.present(card))["reason"])

    async def add_holder(self, name: str, *extra: str, stdin: str | None = None) -> int:
        """``cardholder add NAME EXTRA --json``; the new id."""
        return int((await self.json("cardholder", "add", name, *extra, stdin=stdin))["id"])

    async def export_rows(self) -> list[list[str]]:
        """``credential export`` to stdout, parsed (header first)."""
        res = await self.ok("credential", "export")
        return list(csv.reader(io.StringIO(res.stdout)))


async def run_wardctl(socket: Path, args: Sequence[str], *, stdin: str | None = None) -> Result:
    """``wardctl --socket SOCKET ARGS`` with ``stdin`` on its standard input."""
    if stdin is None:
        return await wardctl(*args, socket_path=socket)
    proc = await asyncio.create_subprocess_exec(
        *WARDCTL,
        "--socket",
        str(socket),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 30)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    """Daemon + board + serial reader; access levels ``front`` (the reader's door), ``side``."""
    directory = tmp_path_factory.mktemp("access")
    device = directory / "reader.tty"
    # left by an earlier run (an upload never committed): the daemon must remove it
    (directory / "uploads").mkdir(mode=0o700)
    (directory / "uploads" / "import-0123456789abcdef.csv").write_text(f"name,pin\nOld,{PIN}\n")
    extra = SITE_EXTRA.format(device=device)
    async with (
        SimSerialReader(device) as reader,
        simulated_site(directory, rtu=False, extra_door=extra) as site,
        running_daemon(site) as daemon,
    ):
        r = Rig(daemon, reader, directory)

        async def online() -> bool:
            rows = await r.json("reader", "status", READER)
            return bool(rows[0]["online"])

        await wait_for(online, 10.0, what="the reader to be online")
        await r.ok("access-level", "add", "front", "--doors", DOOR)
        await r.ok("access-level", "add", "side", "--doors", OTHER_DOOR)
        yield r


# -- readers ---------------------------------------------------------------------------------


async def test_reader_list_and_status_show_the_serial_reader_online(rig: Rig) -> None:
    rows = await rig.json("reader", "list")
    assert [(r["reader"], r["door"], r["bus"], r["direction"]) for r in rows] == [
        (READER, DOOR, "line1", "in")
    ]
    assert rows[0]["online"] is True
    table = (await rig.ok("reader", "list")).lines
    assert table[0].split() == ["reader", "door", "direction", "bus", "address", "secure_required"]
    assert table[1].split()[:4] == [READER, DOOR, "in", "line1"]

    status = (await rig.ok("reader", "status")).lines
    assert status[0].split()[:5] == ["reader", "door", "direction", "bus", "online"]
    assert status[1].split()[:5] == [READER, DOOR, "in", "line1", "yes"]
    assert (await rig.json("reader", "status", READER))[0]["tamper"] is False
    assert await rig.refused("reader", "status", "r-nowhere") == (
        "wardctl: unknown reader 'r-nowhere'"
    )


async def test_reader_install_is_refused_for_a_serial_reader_and_an_unknown_one(rig: Rig) -> None:
    after = await rig.last_seq()
    error = await rig.refused("reader", "install", READER)
    assert "no install mode" in error, error
    assert await rig.refused("reader", "install", "r-nowhere") == (
        "wardctl: unknown reader 'r-nowhere'"
    )
    assert "5..600 seconds" in await rig.refused("reader", "install", READER, "--window", "1")
    assert not [e for e in await rig.events("--after", str(after)) if e["kind"] == "admin.reader"]


# -- cardholders -----------------------------------------------------------------------------


async def test_cardholder_add_list_show_disable_enable(rig: Rig) -> None:
    first_output = len(rig.outputs)
    after = await rig.last_seq()
    res = await rig.ok(
        "cardholder",
        "add",
        "Ada Lovelace",
        "--pin-stdin",
        "--privilege",
        "override",
        "--privilege",
        "all-clear",
        "--level",
        "front",
        "--valid-from",
        "2020-01-01T08:00",
        "--valid-until",
        "2099-12-31",
        stdin=PIN + "\n",
    )
    words = res.lines[0].split()
    assert [words[0], words[2]] == ["cardholder", "added"], res
    ada = int(words[1])

    expected = {
        "id": ada,
        "name": "Ada Lovelace",
        "state": "active",
        # no offset given: local time in [access] timezone; a date alone is the whole day
        "valid_from": "2020-01-01T08:00:00+01:00",
        "valid_until": "2100-01-01T00:00:00+01:00",
        "privileges": ["all-clear", "override"],
        "has_pin": True,
        "levels": ["front"],
    }
    listed = await rig.json("cardholder", "list", "--name", "lovelace")
    assert listed == [expected]
    shown = await rig.json("cardholder", "show", str(ada))
    assert shown == {"cardholder": expected, "credentials": []}
    table = (await rig.ok("cardholder", "list", "--name", "Lovelace")).lines
    assert table[0].split() == ["id", "name", "state", "levels", "privileges", "valid_until"]
    assert table[1].split()[:5] == [str(ada), "Ada", "Lovelace", "active", "front"]

    added = await rig.json("credential", "add", str(ada), ADA_CARD)
    assert added["card"] == "h10301:12:***67"
    shown = await rig.json("cardholder", "show", str(ada))
    assert [(c["id"], c["card"], c["state"]) for c in shown["credentials"]] == [
        (added["id"], "h10301:12:***67", "active")
    ]
    text = (await rig.ok("cardholder", "show", str(ada))).stdout
    assert "has_pin: yes" in text
    assert "h10301:12:***67" in text

    granted = await rig.present(ADA_CARD)
    assert granted["reason"] == "granted"
    assert granted["cardholder"] == "Ada Lovelace"
    assert granted["card"] == "h10301:12:***67"

    assert (await rig.ok("cardholder", "disable", str(ada))).lines == [
        f"cardholder {ada}: disabled"
    ]
    assert (await rig.json("cardholder", "show", str(ada)))["cardholder"]["state"] == "disabled"
    assert await rig.reason(ADA_CARD) == "denied-disabled"
    await rig.ok("cardholder", "set-state", str(ada), "lost")
    assert await rig.reason(ADA_CARD) == "denied-lost"
    assert await rig.json("cardholder", "enable", str(ada)) == {"id": ada, "state": "active"}
    assert await rig.reason(ADA_CARD) == "granted"

    # every change was journaled, with its source, and no PIN or card number anywhere
    admin = [
        e
        for e in await rig.events("--after", str(after), "-n", "100")
        if e["kind"].startswith("admin.")
    ]
    assert [(e["kind"], e["data"]["action"]) for e in admin] == [
        ("admin.cardholder", "add"),
        ("admin.credential", "add"),
        ("admin.cardholder", "set-state"),
        ("admin.cardholder", "set-state"),
        ("admin.cardholder", "set-state"),
    ]
    assert all(e["data"]["source"] == "wardctl" for e in admin)
    assert admin[1]["data"]["card"] == "h10301:12:***67"
    assert_no_secrets(rig.outputs[first_output:], await journal_texts(rig, "100"))


async def test_cardholder_add_refusals_leave_nothing_behind(rig: Rig) -> None:
    before = await rig.json("cardholder", "list", "--limit", "100000")
    error = await rig.refused("cardholder", "add", "Mallory", "--privilege", "root")
    assert error.startswith("wardctl: unknown privilege 'root'; expected override"), error
    error = await rig.refused("cardholder", "add", "Mallory", "--level", "front", "--level", "x9")
    assert error == "wardctl: no access level 'x9'"
    # a malformed date is a usage error: wardctl says so itself (exit 2), nothing is sent
    res = await rig.ctl("cardholder", "add", "Mallory", "--valid-from", "next monday")
    assert res.rc == 2, res
    assert "argument --valid-from: expected YYYY-MM-DD" in res.stderr, res
    error = await rig.refused(
        "cardholder", "add", "Mallory", "--valid-from", "2030-01-02", "--valid-until", "2030-01-01"
    )
    assert "valid_until" in error, error
    res = await rig.ctl("cardholder", "add", "Mallory", "--pin-stdin", stdin="12ab\n")
    assert res.rc == 1, res
    assert res.err_lines == ["wardctl: PIN must be 4 to 8 digits"]
    # a PIN in use (or one digit off it: the duress scheme) is refused without naming anyone
    res = await rig.ctl("cardholder", "add", "Mallory", "--pin-stdin", stdin=PIN + "\n")
    assert res.rc == 1, res
    assert "in use" in res.stderr, res
    assert "Ada" not in res.stderr, res
    assert await rig.json("cardholder", "list", "--limit", "100000") == before
    # argparse checks the state names before anything is sent
    res = await rig.ctl("cardholder", "set-state", "1", "gone")
    assert res.rc == 2, res
    assert "invalid choice" in res.stderr, res
    assert await rig.refused("cardholder", "show", "999999") == "wardctl: no cardholder 999999"
    assert await rig.refused("cardholder", "disable", "999999") == "wardctl: no cardholder 999999"


async def test_cardholder_validity_window_is_applied(rig: Rig) -> None:
    future = await rig.add_holder("Fay Future", "--level", "front", "--valid-from", "2999-01-01")
    past = await rig.add_holder("Pat Past", "--level", "front", "--valid-until", "2000-01-01")
    await rig.ok("credential", "add", str(future), "h10301:61:6101")
    await rig.ok("credential", "add", str(past), "h10301:61:6102")
    holder = (await rig.json("cardholder", "show", str(past)))["cardholder"]
    assert holder["valid_until"] == "2000-01-02T00:00:00+01:00"
    assert await rig.reason("h10301:61:6101") == "denied-not-yet-valid"
    assert await rig.reason("h10301:61:6102") == "denied-expired"


# -- credentials -----------------------------------------------------------------------------


async def test_credential_add_in_every_syntax_lists_masked_cards_only(rig: Rig) -> None:
    bob = await rig.add_holder("Bob Syntax", "--level", "front")
    res = await rig.ok("credential", "add", str(bob), "h10301:12:345")
    assert res.lines[0].endswith("(h10301:12:***) added"), res
    first = int(res.lines[0].split()[1])
    # the same card in its 26-bit alias: a duplicate, refused with the masked card only
    error = await rig.refused("credential", "add", str(bob), "26:12:345")
    assert error == (
        f"wardctl: card h10301:12:*** is already enrolled (credential {first}, cardholder {bob})"
    )
    uid = await rig.json("credential", "add", str(bob), "uid:04:5E:6F:7A")
    assert uid["card"] == "uid:04…7A"
    number = await rig.json(
        "credential", "add", str(bob), "number:123", "--valid-until", "2099-06-30"
    )
    assert number["card"] == "number:***"
    error = await rig.refused("credential", "add", str(bob), "uid:045e6f7a")
    assert "uid:04…7A is already enrolled" in error, error

    rows = await rig.json("credential", "list", "--cardholder", str(bob))
    assert [(r["id"], r["cardholder_id"], r["format"], r["card"], r["state"]) for r in rows] == [
        (first, bob, "h10301", "h10301:12:***", "active"),
        (uid["id"], bob, "uid", "uid:04…7A", "active"),
        (number["id"], bob, "number", "number:***", "active"),
    ]
    assert rows[2]["valid_until"] == "2099-07-01T00:00:00+02:00"
    table = (await rig.ok("credential", "list", "--cardholder", str(bob))).lines
    assert table[0].split() == ["id", "cardholder_id", "card", "format", "state", "valid_until"]
    assert [line.split()[2] for line in table[1:]] == ["h10301:12:***", "uid:04…7A", "number:***"]
    every = await rig.json("credential", "list")
    assert {r["id"] for r in rows} <= {r["id"] for r in every}
    assert all("*" in r["card"] or "…" in r["card"] for r in every)
    # paging: --limit rows with ids above --after; a full page says how to get the next
    page1 = await rig.json("credential", "list", "--cardholder", str(bob), "--limit", "2")
    assert [r["id"] for r in page1] == [first, uid["id"]]
    page2 = await rig.json(
        "credential", "list", "--cardholder", str(bob), "--limit", "2", "--after", str(uid["id"])
    )
    assert [r["id"] for r in page2] == [number["id"]]
    paged = (await rig.ok("credential", "list", "--cardholder", str(bob), "--limit", "2")).lines
    assert paged[-1] == f"(first 2 shown; the next page: --after {uid['id']})"
    assert "--after" not in (await rig.ok("credential", "list", "--cardholder", str(bob))).stdout
    # a bad --limit is a usage error found before anything is sent (exit 2), not a refusal
    for limit in ("0", "100001"):
        res = await rig.ctl("credential", "list", "--limit", limit)
        assert res.rc == 2, res
        assert res.err_lines[-1] == (
            "wardctl credential list: error: argument --limit: "
            f"must be between 1 and 100000 (got {limit})"
        ), res

    assert await rig.reason("h10301:12:345") == "granted"
    assert await rig.reason("uid:045E6F7A") == "granted"
    assert await rig.refused("credential", "add", "999999", "h10301:62:6201") == (
        "wardctl: no cardholder 999999"
    )


@pytest.mark.parametrize(
    ("card", "message"),
    [
        ("h10301:256:1", "bad card: h10301 facility code must be 0..255"),
        ("h10301:12:65536", "bad card: h10301 card number must be 0..65535"),
        ("h10301:12", "a h10301 card has a facility and a number"),
        ("12345", "bad card: expected '<format>:<facility>:<number>'"),
        ("w99:1:2", "bad card: unknown card format; use uid, number or one of:"),
        ("uid:0G", "bad card: a uid must be hex bytes"),
        ("number:12x", "bad card: a card number must be a decimal number"),
    ],
)
async def test_bad_card_syntax_is_refused_with_the_parsers_message(
    rig: Rig, card: str, message: str
) -> None:
    error = await rig.refused("credential", "add", "1", card)
    assert message in error, error
    assert error.startswith("wardctl: bad card: "), error


async def test_revoke_by_id_and_by_card_denies_the_next_read(rig: Rig) -> None:
    cy = await rig.add_holder("Cy Revoke", "--level", "front")
    wiegand = await rig.json("credential", "add", str(cy), "h10301:40:4001")
    uid = await rig.json("credential", "add", str(cy), "uid:04:c0:ff:ee:01")
    assert await rig.reason("h10301:40:4001") == "granted"
    assert await rig.reason("uid:04C0FFEE01") == "granted"

    assert (await rig.ok("credential", "revoke", str(wiegand["id"]))).lines == ["revoked"]
    assert await rig.reason("h10301:40:4001") == "denied-revoked"
    assert await rig.reason("uid:04C0FFEE01") == "granted"  # the other card still works
    # by card, in another spelling of the same UID than at enrolment
    assert await rig.json("credential", "revoke", "--card", "UID:04C0FFEE01") == {"revoked": True}
    assert await rig.reason("uid:04C0FFEE01") == "denied-revoked"

    rows = await rig.json("credential", "list", "--cardholder", str(cy))
    assert {r["id"]: r["state"] for r in rows} == {wiegand["id"]: "revoked", uid["id"]: "revoked"}
    revokes = [
        e["data"]
        for e in await rig.events("-n", "100")
        if e["kind"] == "admin.credential" and e["data"]["action"] == "revoke"
    ]
    assert revokes[-2]["credential_id"] == wiegand["id"]
    assert revokes[-1]["card"] == "uid:04…01"


async def test_revoke_refusals(rig: Rig) -> None:
    assert await rig.refused("credential", "revoke", "999999") == "wardctl: no credential 999999"
    error = await rig.refused("credential", "revoke", "--card", "h10301:41:4101")
    assert error == "wardctl: no credential for card h10301:41:***01"
    error = await rig.refused("credential", "revoke", "--card", "h10301:999:1")
    assert error == "wardctl: bad card: h10301 facility code must be 0..255"
    both = await rig.ctl("credential", "revoke", "1", "--card", "h10301:41:4101")
    neither = await rig.ctl("credential", "revoke")
    for res in (both, neither):
        assert res.rc == 2, res
        assert res.err_lines[-1] == "wardctl: error: give a credential id or --card, not both"


# -- access levels ---------------------------------------------------------------------------


async def test_access_level_add_refuses_unknown_doors_and_schedules(rig: Rig) -> None:
    error = await rig.refused("access-level", "add", "lab", "--doors", f"{DOOR},nowhere,attic")
    assert error == "wardctl: unknown door(s): nowhere, attic"
    error = await rig.refused("access-level", "add", "lab", "--doors", DOOR, "--schedule", "nite")
    assert error == "wardctl: unknown schedule 'nite'; defined in the site file: office"
    assert "lab" not in {lv["name"] for lv in await rig.json("access-level", "list")}

    await rig.ok(
        "access-level", "add", "lab", "--doors", f"{OTHER_DOOR}, {DOOR}", "--schedule", "office"
    )
    levels = {lv["name"]: lv for lv in await rig.json("access-level", "list")}
    assert levels["lab"] == {"name": "lab", "doors": [DOOR, OTHER_DOOR], "schedule": "office"}
    assert levels["front"] == {"name": "front", "doors": [DOOR], "schedule": "always"}
    table = (await rig.ok("access-level", "list")).lines
    assert table[0].split() == ["name", "doors", "schedule"]
    assert f"lab {DOOR},{OTHER_DOOR} office".split() in [line.split() for line in table]
    error = await rig.refused("access-level", "add", "lab", "--doors", DOOR)
    assert error == "wardctl: access level 'lab' already exists"
    assert (await rig.ok("access-level", "remove", "lab")).lines == ["access level lab removed"]
    assert await rig.refused("access-level", "remove", "lab") == "wardctl: no access level 'lab'"


async def test_grant_and_revoke_change_the_decision(rig: Rig) -> None:
    dee = await rig.add_holder("Dee Level")
    await rig.ok("credential", "add", str(dee), "h10301:50:5005")
    assert await rig.reason("h10301:50:5005") == "denied-no-access"
    await rig.ok("access-level", "grant", str(dee), "side")  # another door
    assert await rig.reason("h10301:50:5005") == "denied-no-access"
    assert (await rig.ok("access-level", "grant", str(dee), "front")).lines == [
        f"granted front for {dee}"
    ]
    assert await rig.reason("h10301:50:5005") == "granted"
    assert (await rig.ok("access-level", "revoke", str(dee), "front")).lines == [
        f"revoked front for {dee}"
    ]
    assert await rig.reason("h10301:50:5005") == "denied-no-access"
    assert (await rig.json("cardholder", "show", str(dee)))["cardholder"]["levels"] == ["side"]

    assert await rig.refused("access-level", "revoke", str(dee), "front") == (
        f"wardctl: cardholder {dee} does not have level 'front'"
    )
    assert await rig.refused("access-level", "grant", str(dee), "x9") == (
        "wardctl: no access level 'x9'"
    )
    assert await rig.refused("access-level", "grant", "999999", "front") == (
        "wardctl: no cardholder 999999"
    )
    # removing a level takes it from everyone who had it, at once
    await rig.ok("access-level", "add", "temp", "--doors", DOOR)
    await rig.ok("access-level", "grant", str(dee), "temp")
    assert await rig.reason("h10301:50:5005") == "granted"
    await rig.ok("access-level", "remove", "temp")
    assert await rig.reason("h10301:50:5005") == "denied-no-access"


# -- import and export -----------------------------------------------------------------------


def write_csv(path: Path, rows: Sequence[Sequence[str]]) -> Path:
    """A CSV file (header first), standard quoting."""
    with path.open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    return path


async def test_import_5000_rows(rig: Rig) -> None:
    before = len(await rig.export_rows())
    # non-ASCII names and quoted fields: JSON escapes make the upload much longer on the wire
    rows = [["name", "card", "levels", "privileges"]]
    rows += [
        [f"Мария Иванова-Ørsted, {i:04d}", f"h10301:77:{i}", "front" if i % 2 else "", ""]
        for i in range(5000)
    ]
    path = write_csv(rig.directory / "people.csv", rows)
    res = await rig.ok("credential", "import", str(path))
    assert len(res.lines) == 1, res
    assert res.lines[0].startswith("imported 5000 rows: 5000 cardholders, 5000 credentials in ")
    assert len(await rig.export_rows()) == before + 5000

    found = await rig.json("cardholder", "list", "--name", "Ørsted, 4999")
    assert [(h["name"], h["levels"]) for h in found] == [("Мария Иванова-Ørsted, 4999", ["front"])]
    assert await rig.reason("h10301:77:4999") == "granted"
    assert await rig.reason("h10301:77:4998") == "denied-no-access"
    imports = [e for e in await rig.events("-n", "100") if e["kind"] == "admin.import"]
    assert imports[-1]["data"]["rows"] == 5000
    assert imports[-1]["data"]["committed"] is True
    # the uploaded file (card numbers in clear) is gone, and so is one of an earlier run
    assert list((rig.directory / "uploads").glob("*")) == []


async def test_import_with_bad_rows_imports_nothing(rig: Rig) -> None:
    holder = await rig.add_holder("Gil Enrolled")
    enrolled = (await rig.json("credential", "add", str(holder), "h10301:80:8080"))["id"]
    before = await rig.export_rows()
    rows = [["name", "card", "pin"]]
    rows += [[f"Good {i}", f"h10301:81:{i}", ""] for i in range(12)]
    rows[3] = ["Bad Card", "h10301:300:1", ""]  # line 4
    rows[7] = ["Bad Pin", "h10301:82:1", "12"]  # line 8
    rows[11] = ["Twice", "h10301:80:8080", ""]  # line 12: enrolled already
    path = write_csv(rig.directory / "bad rows.csv", rows)

    res = await rig.ctl("credential", "import", str(path))
    assert res.rc == 1, res
    assert res.lines == [
        "nothing imported: 3 of 12 rows rejected",
        f"{path}:4: bad card: h10301 facility code must be 0..255",
        f"{path}:8: bad PIN: must be 4 to 8 digits",
        f"{path}:12: duplicate card: h10301:80:***80 is already enrolled (credential {enrolled})",
    ]
    report = json.loads((await rig.ctl("credential", "import", str(path), "--json")).stdout)
    assert (report["committed"], report["rows"], report["rejected_count"]) == (False, 12, 3)
    assert (report["cardholders"], report["credentials"]) == (0, 0)
    assert [r["line"] for r in report["rejected"]] == [4, 8, 12]
    assert await rig.export_rows() == before
    assert await rig.reason("h10301:81:1") == "denied-unknown"


async def test_import_refuses_a_file_it_cannot_read_as_a_whole(rig: Rig) -> None:
    before = len(await rig.export_rows())
    latin1 = rig.directory / "latin1.csv"
    latin1.write_bytes(b"name,card\nJos\xe9 Garc\xeda,h10301:83:1\n")
    res = await rig.ctl("credential", "import", str(latin1))
    assert res.rc == 2, res
    assert res.err_lines[-1] == f"wardctl: error: {latin1} is not UTF-8 (byte 13)"
    res = await rig.ctl("credential", "import", str(rig.directory / "absent.csv"))
    assert res.rc == 2, res
    assert res.err_lines[-1].startswith("wardctl: error: cannot read "), res
    # a file-level problem found by the daemon: exit 1 naming the file, never a hang
    header = write_csv(rig.directory / "header.csv", [["name", "badge"], ["Hal", "h10301:83:2"]])
    error = await rig.refused("credential", "import", str(header))
    assert error.startswith(f"wardctl: {header} line 1: unknown column(s) 'badge'"), error
    export = rig.directory / "export.csv"
    await rig.ok("credential", "export", str(export))
    error = await rig.refused("credential", "import", str(export))
    assert error.startswith(f"wardctl: {export} is an export"), error
    assert len(await rig.export_rows()) == before
    assert list((rig.directory / "uploads").glob("*")) == []


async def test_export_has_a_header_masked_cards_and_a_row_per_credential(rig: Rig) -> None:
    eve = await rig.add_holder(
        "Eve Export",
        *("--pin-stdin", "--privilege", "lockdown", "--level", "front", "--level", "side"),
        stdin=f"{EVE_PIN}\n",
    )
    wiegand = await rig.json("credential", "add", str(eve), "h10301:90:9001")
    uid = await rig.json("credential", "add", str(eve), "uid:04:90:90:90:01")
    await rig.ok("credential", "revoke", str(uid["id"]))
    lone = await rig.add_holder("Lone Nocard")

    path = rig.directory / "out" / "people-export.csv"
    path.parent.mkdir()
    res = await rig.ok("credential", "export", str(path))
    assert res.stdout == ""
    text = path.read_text(encoding="utf-8")
    assert text == (await rig.ok("credential", "export")).stdout  # the same on stdout
    assert text.splitlines()[0] == ",".join(EXPORT_COLUMNS)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(text.splitlines()) - 1
    for r in rows:
        assert r["card_masked"] == "" or "*" in r["card_masked"] or "…" in r["card_masked"], r
    # every cardholder, once per credential (or once without any)
    holders = await rig.json("cardholder", "list", "--limit", "100000")
    assert {int(r["cardholder_id"]) for r in rows} == {h["id"] for h in holders}
    pairs = [(r["cardholder_id"], r["credential_id"]) for r in rows]
    assert len(set(pairs)) == len(rows)
    assert [r["card_masked"] for r in rows if r["cardholder_id"] == str(lone)] == [""]
    mine = [r for r in rows if r["cardholder_id"] == str(eve)]
    assert [(r["name"], r["pin"], r["privileges"], r["levels"], r["state"]) for r in mine] == [
        ("Eve Export", "yes", "lockdown", "front;side", "active")
    ] * 2
    assert [(int(r["credential_id"]), r["card_masked"], r["card_state"]) for r in mine] == [
        (wiegand["id"], "h10301:90:***01", "active"),
        (uid["id"], "uid:04…01", "revoked"),
    ]
    # one more card: one more row; the first card of a cardholder replaces the empty row
    await rig.ok("credential", "add", str(eve), "h10301:90:9003")
    assert len(await rig.export_rows()) == 1 + len(rows) + 1
    await rig.ok("credential", "add", str(lone), "h10301:90:9002")
    assert len(await rig.export_rows()) == 1 + len(rows) + 1


# -- no daemon, no secrets -------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["cardholder", "add", "Nobody", "--pin-stdin"],
        ["cardholder", "list"],
        ["cardholder", "show", "1"],
        ["cardholder", "disable", "1"],
        ["cardholder", "set-state", "1", "lost"],
        ["credential", "add", "1", "h10301:1:1"],
        ["credential", "revoke", "--card", "h10301:1:1"],
        ["credential", "list"],
        ["credential", "import", "people.csv"],
        ["credential", "export"],
        ["access-level", "add", "x", "--doors", "d"],
        ["access-level", "list"],
        ["access-level", "remove", "x"],
        ["access-level", "grant", "1", "x"],
        ["access-level", "revoke", "1", "x"],
        ["reader", "list"],
        ["reader", "status"],
        ["reader", "install", "r", "--window", "10"],
    ],
    ids=lambda args: "-".join(args[:2]),
)
async def test_daemon_not_running_exits_3(tmp_path: Path, args: list[str]) -> None:
    absent = tmp_path / "absent.sock"
    people = tmp_path / "people.csv"  # a readable import file: only the daemon is missing
    people.write_text("name,card\nAda,h10301:1:1\n", encoding="utf-8")
    args = [str(people) if a == "people.csv" else a for a in args]
    res = await run_wardctl(absent, args, stdin="1234\n")  # a PIN for --pin-stdin
    assert res.rc == 3, res
    assert res.stdout == ""
    assert res.err_lines == [
        f"wardctl: cannot reach the warding daemon at {absent} (is it running?)"
    ]


async def journal_texts(rig: Rig, limit: str) -> list[str]:
    """The journal's entries as text, without hashes and times (hex and digits by chance)."""
    return [
        json.dumps({k: e[k] for k in ("kind", "door", "device", "data")}, ensure_ascii=False)
        for e in await rig.events("-n", limit)
    ]


def assert_no_secrets(*texts: Sequence[str]) -> None:
    """No PIN, no full card number, in any of ``texts``."""
    for group in texts:
        for text in group:
            for secret in SECRETS:
                assert secret not in text.lower(), f"{secret!r} in {text!r}"


async def test_no_pin_or_card_number_in_any_output_or_the_journal(rig: Rig) -> None:
    assert_no_secrets(rig.outputs, await journal_texts(rig, "10000"))
