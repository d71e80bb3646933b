"""Facility lockdown end to end: a real ``warding run`` subprocess on simulated boards and reader.

The site: two boards (Modbus TCP ``tcp1`` and RTU ``rtu1``), the four doors of
``tests/conftest.py::site_toml`` plus two egress doors on ``tcp1`` (``exit-safe``, a fail-safe
maglock, and ``exit-secure``, a fail-secure strike), a panic button and a fire-panel contact on
``tcp1`` inputs, a threat level 5 that locks every door, and a serial badge reader (pty) on
``tcp1-d0``. Everything the tests do goes through what a site has: the board inputs, the
reader, ``wardctl``, the control socket and the journal.

Most scenarios share one daemon (module scope); the ``rig`` fixture brings the site back to
normal after each one (fire reset, threat level 0, a two-person all-clear). The crash and
shutdown tests start their own daemons. Nothing sleeps to wait for a condition: every wait
polls with a deadline (the one deliberate sleep is the width of a bouncing contact).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from simulators.serial_reader import SimSerialReader
from tests.integration.conftest import (
    WARDCTL,
    ApiConnection,
    Daemon,
    NotifyListener,
    Result,
    Site,
    clean_env,
    event_matches,
    read_journal,
    running_daemon,
    simulated_site,
    wait_for,
    warding,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

PANIC_INPUT = 12
FIRE_INPUT = 13
DEBOUNCE_MS = 100  # margin over the 20 ms input poll, so a bounce test cannot be flaky
FC_READ_INPUTS = 2
NON_EGRESS = ("tcp1-d0", "tcp1-d1", "rtu1-d0", "rtu1-d1")

EGRESS_DOORS = """
[[doors]]
name = "exit-safe"
lock = "fail-safe"
egress = true
relay = { board = "tcp1", coil = 4 }
contact = { board = "tcp1", input = 8 }
rex = { board = "tcp1", input = 9 }
pulse_s = 1.0
held_open_s = 5.0
rex_pulse_s = 0.5

[[doors]]
name = "exit-secure"
lock = "fail-secure"
egress = true
relay = { board = "tcp1", coil = 5 }
contact = { board = "tcp1", input = 10 }
rex = { board = "tcp1", input = 11 }
pulse_s = 1.0
held_open_s = 5.0
rex_pulse_s = 0.5
"""

LOCKDOWN = f"""
[lockdown]
panic_debounce_ms = {DEBOUNCE_MS}
verify_interval_s = 0.2
all_clear_window_s = 30

[[lockdown.inputs]]
name = "panic1"
kind = "panic"
board = "tcp1"
input = {PANIC_INPUT}

[[lockdown.inputs]]
name = "fire1"
kind = "fire"
board = "tcp1"
input = {FIRE_INPUT}

[[lockdown.levels]]
level = 5
mode = "locked"
"""

READER = """
[[reader_buses]]
name = "line1"
driver = "serial"
device = "{device}"

[[readers]]
name = "r1"
bus = "line1"
door = "tcp1-d0"
"""


@dataclass(frozen=True)
class Person:
    """An enrolled cardholder."""

    id: int
    name: str
    card: str
    pin: str | None

    @property
    def who(self) -> str:
        """How the lockdown layer names this person."""
        return f"#{self.id} {self.name}"


# name, card, PIN, privileges, access levels
PEOPLE: tuple[tuple[str, str, str | None, tuple[str, ...], tuple[str, ...]], ...] = (
    ("Ann", "h10301:1:101", None, (), ("front",)),  # an ordinary employee
    ("Rex", "h10301:1:102", None, ("override",), ()),  # a first responder
    ("Lou", "h10301:1:103", "2468", ("lockdown",), ()),  # may start a lockdown at a reader
    ("Nop", "h10301:1:104", "1357", (), ("front",)),  # no special privilege
    ("Ace", "h10301:1:105", "3690", ("all-clear",), ()),
    ("Bea", "h10301:1:106", "4826", ("all-clear",), ()),
)


# -- helpers ---------------------------------------------------------------------------------


async def wardctl_in(daemon: Daemon, *args: str, stdin: str = "") -> Result:
    """``wardctl --socket S ARGS`` with ``stdin`` (for ``--pin-stdin``)."""
    proc = await asyncio.create_subprocess_exec(
        *WARDCTL,
        "--socket",
        str(daemon.socket),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 15)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


async def lockdown_status(daemon: Daemon) -> dict[str, Any]:
    """The ``lockdown.status`` reply."""
    return await daemon.api("lockdown.status")


async def wait_mode(daemon: Daemon, mode: str, within: float = 5.0) -> dict[str, Any]:
    """Wait until the site is in ``mode``; return the status."""

    async def check() -> dict[str, Any] | None:
        st = await lockdown_status(daemon)
        return st if st["mode"] == mode else None

    result: dict[str, Any] | None = await wait_for(check, within, what=f"site mode {mode}")
    assert result is not None
    return result


async def wait_confirmed(daemon: Daemon, within: float = 5.0) -> dict[str, Any]:
    """Wait until every held door is confirmed secure by readback; return the door counts."""

    async def check() -> dict[str, Any] | None:
        doors = (await lockdown_status(daemon)).get("doors")
        if doors and doors["total"] > 0 and doors["confirmed"] == doors["total"]:
            return dict(doors)
        return None

    result: dict[str, Any] | None = await wait_for(check, within, what="all doors confirmed")
    assert result is not None
    return result


async def incident_of(daemon: Daemon) -> int:
    """The incident number holding the site."""
    incident = (await lockdown_status(daemon))["scopes"]["site"]["incident"]
    assert isinstance(incident, int), incident
    return incident


def secure(site: Site, names: tuple[str, ...] | list[str] | None = None) -> bool:
    """Every door (or ``names``) locked at the simulator by the right relay value."""
    return site.all_locked(names)


def egress_released(site: Site, door: str) -> bool:
    """The egress door's lock is released at the simulator."""
    return not site.sim.door(door).locked


async def decisions(daemon: Daemon, after: int) -> list[dict[str, Any]]:
    """``access.decision`` entries after ``after``."""
    return [e for e in await daemon.events(after) if e["kind"] == "access.decision"]


async def wait_decision(daemon: Daemon, after: int, reason: str) -> dict[str, Any]:
    """The first decision after ``after``, which must have ``reason``."""

    async def first() -> list[dict[str, Any]]:
        return await decisions(daemon, after)

    found: list[dict[str, Any]] = await wait_for(first, 5.0, what="an access decision")
    got = found[0]
    assert got["data"]["reason"] == reason, got
    return got


async def clear(daemon: Daemon, people: dict[str, Person], scope: str = "site") -> None:
    """The two-person all-clear (Ace and Bea) of ``scope`` through the control API."""
    for name in ("Ace", "Bea"):
        p = people[name]
        sc = (await lockdown_status(daemon))["scopes"].get(scope, {})
        if sc.get("mode", "normal") == "normal":
            return
        if sc.get("first_clear") != p.who:  # the same person twice would be refused
            await daemon.api("lockdown.clear", cardholder=p.id, pin=p.pin, scope=scope)


# -- the shared site -------------------------------------------------------------------------


@dataclass
class Rig:
    """The shared daemon, its site, the reader and the people."""

    daemon: Daemon
    site: Site
    reader: SimSerialReader
    people: dict[str, Person] = field(default_factory=dict)

    def badge(self, name: str) -> None:
        """Present ``name``'s card at r1."""
        self.reader.present_card(self.people[name].card)

    def gesture(self, name: str, pin: str | None = None) -> None:
        """The reader gesture: '*', then the card, then the PIN."""
        person = self.people[name]
        self.reader.type_keys("*")
        self.reader.present_card(person.card)
        self.reader.type_keys(f"{pin or person.pin}#")

    async def seq(self) -> int:
        """The newest journal seq."""
        return await self.daemon.seq()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    directory = tmp_path_factory.mktemp("lockdown")
    device = directory / "reader.tty"
    extra = EGRESS_DOORS + READER.format(device=device) + LOCKDOWN
    with SimSerialReader(device) as reader:
        async with (
            simulated_site(directory, extra_door=extra) as site,
            running_daemon(site) as daemon,
        ):
            rig = Rig(daemon, site, reader)
            await daemon.api("access-level.add", name="front", doors=["tcp1-d0"])
            for name, card, pin, privileges, levels in PEOPLE:
                req: dict[str, Any] = {
                    "name": name,
                    "privileges": list(privileges),
                    "levels": list(levels),
                }
                if pin is not None:
                    req["pin"] = pin
                cid = int((await daemon.api("cardholder.add", **req))["cardholder"])
                await daemon.api("credential.add", cardholder=cid, card=card)
                rig.people[name] = Person(cid, name, card, pin)

            async def reader_online() -> bool:
                rows = (await daemon.api("reader.list"))["readers"]
                return any(r["reader"] == "r1" and r["online"] for r in rows)

            await wait_for(reader_online, 5.0, what="reader r1 online")
            yield rig
    verify = await warding("journal", "verify", "--db", str(site.journal))
    assert verify.rc == 0, verify


@pytest_asyncio.fixture(loop_scope="module")
async def rig(shared: Rig) -> AsyncIterator[Rig]:
    """The shared rig, back to normal afterwards: no fire, threat level 0, all clear."""
    board = shared.site.sim.board("tcp1")
    yield shared
    daemon = shared.daemon
    board.set_input(PANIC_INPUT, False)
    board.set_input(FIRE_INPUT, False)
    for name in ("exit-safe", "exit-secure", *NON_EGRESS):
        shared.site.sim.door(name).close()
        shared.site.sim.door(name).release_rex()
    st = await lockdown_status(daemon)
    if st["threat_level"]:
        await daemon.api("threat-level.set", level=0)
    if st["fire"]:

        async def fire_inputs_quiet() -> bool:
            return not (await lockdown_status(daemon))["fire_inputs_active"]

        await wait_for(fire_inputs_quiet, 3.0, what="fire inputs inactive")
        await daemon.api("fire.reset")
    for scope, sc in st["scopes"].items():
        if sc["mode"] != "normal":
            await clear(daemon, shared.people, scope)
    await wait_mode(daemon, "normal")
    await wait_for(lambda: secure(shared.site), 5.0, what="every door locked again")


# -- 1. panic input --------------------------------------------------------------------------


async def test_panic_input_secures_and_confirms_every_door_a_bounce_does_not(rig: Rig) -> None:
    daemon, site = rig.daemon, rig.site
    board = site.sim.board("tcp1")
    # doors held released before the panic, so that securing them is visible at the boards
    for door in ("tcp1-d0", "tcp1-d1", "rtu1-d1", "exit-safe"):
        res = await daemon.wardctl("door", "unlock", door)
        assert res.rc == 0, res
    assert not any(site.sim.door(d).locked for d in ("tcp1-d0", "tcp1-d1", "rtu1-d1"))
    after = await rig.seq()

    # a bounce: active for about two input polls, well under the debounce time
    polls = board.requests[FC_READ_INPUTS]
    started = time.monotonic()
    board.set_input(PANIC_INPUT, True)
    await wait_for(
        lambda: board.requests[FC_READ_INPUTS] >= polls + 2, 1.0, what="two polls", interval=0.002
    )
    board.set_input(PANIC_INPUT, False)
    width = time.monotonic() - started
    assert width < DEBOUNCE_MS / 1000 * 0.6, f"the test loop stalled: bounce {width:.3f}s"
    await daemon.wait_event(after, kind="lockdown.input", input="panic1", bounced=True)
    assert (await lockdown_status(daemon))["mode"] == "normal"
    events = await daemon.events(after)
    assert not [e for e in events if e["kind"] == "lockdown.trigger"], events
    assert not any(site.sim.door(d).locked for d in ("tcp1-d0", "tcp1-d1", "rtu1-d1"))

    # a real press: held past the debounce
    after = await rig.seq()
    pressed = time.monotonic()
    board.set_input(PANIC_INPUT, True)
    await wait_for(lambda: secure(site), 2.0, what="every relay secure at the boards")
    secured_s = time.monotonic() - pressed
    relays = site.relays()
    for d in site.settings.doors:
        # fail-secure de-energised, fail-safe energised
        assert relays[d.name] is (d.lock.value == "fail-safe"), (d.name, relays)
    counts = await wait_confirmed(daemon, within=2.0)
    assert counts["total"] == len(site.settings.doors)
    board.set_input(PANIC_INPUT, False)

    res = await daemon.wardctl("lockdown", "status", "--json")
    assert res.rc == 0, res
    st = json.loads(res.stdout)
    assert st["mode"] == "lockdown"
    assert st["doors"]["confirmed"] == st["doors"]["total"] == len(site.settings.doors)
    assert st["doors"]["failed"] == []
    assert st["doors"]["propped"] == []
    assert st["scopes"]["site"]["trigger"]["source"] == "panic"

    events = await daemon.events(after)
    triggers = [e for e in events if e["kind"] == "lockdown.trigger"]
    assert len(triggers) == 1, triggers
    assert event_matches(triggers[0], source="panic", where="panic1", scope="site", drill=False)
    statuses = [e["data"] for e in events if e["kind"] == "lockdown.status"]
    assert statuses, events
    assert statuses[-1]["confirmed"] == statuses[-1]["total"] == 6, statuses
    assert secured_s < 2.0
    # held doors refuse ordinary commands
    res = await daemon.wardctl("door", "unlock", "tcp1-d0")
    assert res.rc == 1, res
    assert site.sim.door("tcp1-d0").locked


# -- 4. responder override and the incident report -------------------------------------------


async def test_responder_card_opens_a_door_in_lockdown_and_is_reported(
    rig: Rig, tmp_path: Path
) -> None:
    daemon, site = rig.daemon, rig.site
    res = await daemon.wardctl("lockdown", "start", "--reason", "armed intruder")
    assert res.rc == 0, res
    incident = await incident_of(daemon)
    await wait_confirmed(daemon)
    door = site.sim.door("tcp1-d0")

    after = await rig.seq()
    rig.badge("Ann")
    await wait_decision(daemon, after, "denied-lockdown")
    assert door.locked
    assert not door.open()

    after = await rig.seq()
    rig.badge("Rex")
    decision = await wait_decision(daemon, after, "granted-override")
    assert decision["data"]["cardholder"] == "Rex"
    await wait_for(lambda: not door.locked, 3.0, what="tcp1-d0 released for the responder")
    assert door.open()
    door.close()
    await wait_for(lambda: door.locked, 3.0, what="tcp1-d0 relocked after the responder")
    override = await daemon.wait_event(after, kind="lockdown.override", door="tcp1-d0")
    assert event_matches(override[0], cardholder="Rex", incident=incident, drill=False)
    assert (await lockdown_status(daemon))["mode"] == "lockdown"
    # the door goes back to secured, not to drift
    await wait_confirmed(daemon)

    res = await daemon.wardctl("incident", "report", str(incident), "--format", "md")
    assert res.rc == 0, res
    md = res.stdout
    assert f"# Incident {incident}: site lockdown" in md
    assert "operator:" in md
    assert "armed intruder" in md
    overrides = md.split("## Responder overrides", 1)[1].split("##", 1)[0]
    for text in ("Rex", "tcp1-d0", "r1"):
        assert text in overrides, overrides
    denied = md.split("## Denied attempts (1)", 1)[1].split("##", 1)[0]
    assert "Ann" in denied, md

    out = tmp_path / "report"
    res = await daemon.wardctl(
        "incident", "report", str(incident), "--format", "html", "--out", str(out)
    )
    assert res.rc == 0, res
    html = (out / f"incident-{incident}.html").read_text(encoding="utf-8")
    svg = (out / f"incident-{incident}.svg").read_text(encoding="utf-8")
    assert "<svg" in html
    assert "Rex" in html
    assert svg.lstrip().startswith("<svg")
    assert svg.rstrip().endswith("</svg>")

    res = await daemon.wardctl("incident", "report", str(incident), "--format", "json")
    report = json.loads(res.stdout)
    assert [o["cardholder"] for o in report["overrides"]] == ["Rex"]
    assert report["triggers"][0]["source"] == "operator"
    assert report["time_to_full_lockdown_s"] is not None

    res = await daemon.wardctl("incident", "list", "--json")
    assert res.rc == 0, res
    assert incident in [row["id"] for row in json.loads(res.stdout)]
    res = await daemon.wardctl("incident", "report", "999")
    assert res.rc == 1, res
    assert "no incident 999" in res.stderr, res


# -- 5. two-person all-clear -----------------------------------------------------------------


async def test_all_clear_needs_two_distinct_authorised_persons(rig: Rig) -> None:
    daemon, people = rig.daemon, rig.people
    await daemon.api("lockdown.start", reason="all-clear test")
    incident = await incident_of(daemon)

    async def clear_as(name: str, pin: str | None = None) -> Result:
        p = people[name]
        return await wardctl_in(
            daemon,
            "lockdown",
            "clear",
            "--cardholder",
            str(p.id),
            "--pin-stdin",
            stdin=f"{pin or p.pin}\n",
        )

    # no all-clear privilege: refused, nothing changes
    res = await clear_as("Nop")
    assert res.rc == 1, res
    assert "may not give the all-clear" in res.stderr, res
    assert (await lockdown_status(daemon))["mode"] == "lockdown"
    # the right person with a wrong PIN: refused
    res = await clear_as("Bea", pin="0000")
    assert res.rc == 1, res
    assert (await lockdown_status(daemon))["mode"] == "lockdown"

    # the first person, at the reader: '*', card, PIN
    after = await rig.seq()
    rig.gesture("Ace")
    st = await wait_mode(daemon, "all-clear-pending")
    assert st["scopes"]["site"]["first_clear"] == people["Ace"].who
    await daemon.wait_event(after, kind="access.gesture", step="accepted", gesture="all-clear")
    assert secure(rig.site), "one all-clear person released doors"

    # the same person again, now through wardctl: refused
    res = await clear_as("Ace")
    assert res.rc == 1, res
    assert "second, different person" in res.stderr, res
    st = await lockdown_status(daemon)
    assert st["mode"] == "all-clear-pending"
    assert st["scopes"]["site"]["first_clear"] == people["Ace"].who
    # unauthorised while pending: refused, still pending
    res = await clear_as("Nop")
    assert res.rc == 1, res
    assert (await lockdown_status(daemon))["mode"] == "all-clear-pending"

    # a second, distinct authorised person ends it
    after = await rig.seq()
    res = await clear_as("Bea")
    assert res.rc == 0, res
    assert (await lockdown_status(daemon))["mode"] == "normal"
    ends = await daemon.wait_event(after, kind="lockdown.end")
    assert event_matches(
        ends[0], incident=incident, how="all-clear", by=[people["Ace"].who, people["Bea"].who]
    )
    refused = [
        e["data"]["reason"]
        for e in await daemon.events()
        if e["kind"] == "lockdown.refused" and e["data"].get("incident") == incident
    ]
    assert len(refused) == 4, refused


async def test_zone_lockdown_all_clear_at_a_reader_clears_the_zone(rig: Rig) -> None:
    daemon, people = rig.daemon, rig.people
    res = await daemon.wardctl("lockdown", "start", "--zone", "default", "--reason", "zone test")
    assert res.rc == 0, res
    st = await lockdown_status(daemon)
    assert st["mode"] == "normal"  # the site itself is not locked down, the zone is
    assert st["scopes"]["default"]["mode"] == "lockdown"
    await wait_confirmed(daemon)

    after = await rig.seq()
    rig.gesture("Ace")  # r1's door is in the held zone: an all-clear for that zone
    await daemon.wait_event(after, kind="lockdown.allclear", scope="default", n=1)
    st = await lockdown_status(daemon)
    assert st["scopes"]["default"]["mode"] == "all-clear-pending"
    assert st["scopes"]["default"]["first_clear"] == people["Ace"].who
    bea = people["Bea"]
    await daemon.api("lockdown.clear", cardholder=bea.id, pin=bea.pin, scope="default")
    st = await lockdown_status(daemon)
    assert "default" not in st["scopes"], st
    assert not [e for e in await daemon.events(after) if e["kind"] == "lockdown.refused"]


async def test_a_responder_entry_is_reported_by_every_incident_that_holds_the_door(
    rig: Rig,
) -> None:
    daemon, site = rig.daemon, rig.site
    res = await daemon.wardctl("lockdown", "start", "--zone", "default", "--reason", "zone")
    assert res.rc == 0, res
    zone_incident = (await lockdown_status(daemon))["scopes"]["default"]["incident"]
    res = await daemon.wardctl("lockdown", "start", "--reason", "site")
    assert res.rc == 0, res
    site_incident = await incident_of(daemon)
    assert site_incident != zone_incident
    await wait_confirmed(daemon)

    after = await rig.seq()
    rig.badge("Rex")
    await wait_decision(daemon, after, "granted-override")
    door = site.sim.door("tcp1-d0")
    await wait_for(lambda: not door.locked, 3.0, what="tcp1-d0 released for the responder")

    async def both() -> list[dict[str, Any]]:
        found = [
            e
            for e in await daemon.events(after)
            if e["kind"] == "lockdown.override" and e["door"] == "tcp1-d0"
        ]
        return found if len(found) >= 2 else []

    overrides = await wait_for(both, 5.0, what="an override record per incident")
    assert sorted(e["data"]["incident"] for e in overrides) == sorted(
        [zone_incident, site_incident]
    )
    await wait_for(lambda: door.locked, 5.0, what="tcp1-d0 relocked after the pulse")


# -- 6. fire alarm ---------------------------------------------------------------------------


async def test_fire_releases_fail_safe_egress_doors_latched_until_reset(rig: Rig) -> None:
    daemon, site = rig.daemon, rig.site
    board = site.sim.board("tcp1")
    res = await daemon.wardctl("lockdown", "start", "--reason", "fire test")
    assert res.rc == 0, res
    await wait_confirmed(daemon)
    held = ["exit-secure", *NON_EGRESS]

    after = start = await rig.seq()
    board.set_input(FIRE_INPUT, True)
    await wait_for(lambda: egress_released(site, "exit-safe"), 3.0, what="exit-safe released")
    assert not site.sim.door("exit-safe").relay  # a maglock released: de-energised
    assert secure(site, held), site.relays()
    await daemon.wait_event(after, kind="fire.alarm", where="fire1", latched=False)
    assert site.sim.door("exit-safe").open()
    site.sim.door("exit-safe").close()

    # reset refused while the fire panel still signals
    res = await daemon.wardctl("fire", "reset")
    assert res.rc == 1, res
    assert "still active" in res.stderr, res
    assert egress_released(site, "exit-safe")

    # the fire panel goes quiet: the release stays latched
    after = await rig.seq()
    board.set_input(FIRE_INPUT, False)
    await daemon.wait_event(after, kind="lockdown.input", input="fire1", active=False)
    st = await lockdown_status(daemon)
    assert st["fire"] is True
    assert st["fire_inputs_active"] is False
    assert egress_released(site, "exit-safe")
    assert secure(site, held)

    res = await daemon.wardctl("fire", "reset")
    assert res.rc == 0, res
    await wait_for(lambda: secure(site), 3.0, what="egress doors secured again")

    # the fire release is journaled as such, never as drift; then the door is secured again
    async def exit_safe_statuses() -> list[str] | None:
        got = [
            e["data"]["status"]
            for e in await daemon.events(start)
            if e["kind"] == "lockdown.door" and e["door"] == "exit-safe"
        ]
        since_fire = got[got.index("released") :] if "released" in got else []
        return since_fire if since_fire[-1:] == ["secured"] else None

    statuses = await wait_for(exit_safe_statuses, 3.0, what="exit-safe secured after the reset")
    assert statuses is not None
    assert "drift" not in statuses, statuses
    st = await lockdown_status(daemon)
    assert st["fire"] is False
    assert st["mode"] == "lockdown"
    await wait_confirmed(daemon)


# -- 7. REX in lockdown ----------------------------------------------------------------------


async def test_rex_releases_egress_doors_only_in_lockdown(rig: Rig) -> None:
    daemon, site = rig.daemon, rig.site
    await daemon.api("lockdown.start", reason="rex test")
    await wait_confirmed(daemon)

    after = await rig.seq()
    plain = site.sim.door("tcp1-d0")
    plain.press_rex()
    rex = await daemon.wait_event(after, kind="door.rex", door="tcp1-d0")
    assert rex[0]["data"]["unlocks"] is False
    assert plain.locked
    assert not plain.open()
    plain.release_rex()

    for name in ("exit-secure", "exit-safe"):
        door = site.sim.door(name)
        door.press_rex()
        await wait_for(lambda: not door.locked, 3.0, what=f"{name} released by REX")  # noqa: B023
        assert door.open()
        door.release_rex()
        door.close()
        await wait_for(lambda: door.locked, 3.0, what=f"{name} relocked after REX")  # noqa: B023
    assert plain.locked
    assert (await lockdown_status(daemon))["mode"] == "lockdown"


# -- 8. the reader gesture -------------------------------------------------------------------


async def test_reader_gesture_starts_a_lockdown_only_with_the_privilege(rig: Rig) -> None:
    daemon, people = rig.daemon, rig.people
    after = await rig.seq()
    rig.gesture("Nop")
    refused = await daemon.wait_event(after, kind="access.gesture", step="refused")
    assert refused[0]["data"]["reason"] == "no lockdown privilege", refused
    assert (await lockdown_status(daemon))["mode"] == "normal"
    assert not [e for e in await daemon.events(after) if e["kind"] == "lockdown.trigger"]

    after = await rig.seq()
    rig.gesture("Lou")
    st = await wait_mode(daemon, "lockdown")
    trigger = st["scopes"]["site"]["trigger"]
    assert trigger == {
        "source": "credential",
        "who": people["Lou"].who,
        "where": "r1",
        "reason": "lockdown credential",
    }
    found = await daemon.wait_event(after, kind="lockdown.trigger")
    assert event_matches(found[0], source="credential", who=people["Lou"].who, where="r1")
    await wait_confirmed(daemon)


async def test_remote_trigger_entry_point(rig: Rig) -> None:
    daemon = rig.daemon
    async with await ApiConnection.open(daemon.socket) as conn:
        bad = await conn.call("lockdown.trigger", source="panic", who="x", where="y")
    assert bad["ok"] is False, bad
    assert (await lockdown_status(daemon))["mode"] == "normal"
    after = await rig.seq()
    # a bad threat level never costs the lockdown: locked down, level kept, refusal journaled
    reply = await daemon.api(
        "lockdown.trigger",
        source="remote",
        who="mqtt peer-2",
        where="annex",
        reason="shots",
        level=9,
    )
    assert "0..7" in reply["warning"], reply
    st = await lockdown_status(daemon)
    assert st["mode"] == "lockdown"
    assert st["threat_level"] == 0
    refused = await daemon.wait_event(after, kind="lockdown.refused")
    assert "0..7" in refused[0]["data"]["reason"], refused
    assert st["scopes"]["site"]["trigger"] == {
        "source": "remote",
        "who": "mqtt peer-2",
        "where": "annex",
        "reason": "shots",
    }
    found = await daemon.wait_event(after, kind="lockdown.trigger")
    assert event_matches(found[0], source="remote", who="mqtt peer-2", where="annex")
    await wait_confirmed(daemon)


# -- 9. drills -------------------------------------------------------------------------------


async def test_drill_flags_every_record_and_the_report(rig: Rig) -> None:
    daemon = rig.daemon
    res = await daemon.wardctl("lockdown", "start", "--drill", "--reason", "quarterly drill")
    assert res.rc == 0, res
    incident = await incident_of(daemon)
    st = await lockdown_status(daemon)
    assert st["scopes"]["site"]["drill"] is True
    await wait_confirmed(daemon)
    await clear(daemon, rig.people)
    await wait_mode(daemon, "normal")

    records = [
        e
        for e in await daemon.events()
        if e["kind"].startswith("lockdown.") and e["data"].get("incident") == incident
    ]
    kinds = {e["kind"] for e in records}
    assert {"lockdown.trigger", "lockdown.state", "lockdown.door", "lockdown.status"} <= kinds
    assert {"lockdown.allclear", "lockdown.end"} <= kinds
    assert all(e["data"]["drill"] is True for e in records), [
        e for e in records if e["data"]["drill"] is not True
    ]

    res = await daemon.wardctl("incident", "report", str(incident), "--format", "md")
    assert res.rc == 0, res
    assert f"# Incident {incident}: site lockdown (DRILL)" in res.stdout
    assert "> **DRILL**" in res.stdout


# -- 10. threat levels -----------------------------------------------------------------------


async def test_threat_level_locked_admits_responders_only(rig: Rig) -> None:
    daemon, site = rig.daemon, rig.site
    res = await daemon.wardctl("threat-level", "set", "5")
    assert res.rc == 0, res
    st = await lockdown_status(daemon)
    assert st["threat_level"] == 5
    assert st["level_mode"] == "locked"
    assert st["mode"] == "normal"
    door = site.sim.door("tcp1-d0")

    after = await rig.seq()
    rig.badge("Ann")
    await wait_decision(daemon, after, "denied-door-locked")
    assert door.locked

    after = await rig.seq()
    rig.badge("Rex")
    await wait_decision(daemon, after, "granted-override")
    await wait_for(lambda: not door.locked, 3.0, what="tcp1-d0 released for the responder")

    res = await daemon.wardctl("threat-level", "set", "0")
    assert res.rc == 0, res
    await wait_for(lambda: door.locked, 3.0, what="tcp1-d0 relocked")
    after = await rig.seq()
    rig.badge("Ann")
    await wait_decision(daemon, after, "granted")


# -- 2. crash and power loss during a lockdown -----------------------------------------------


async def test_kill9_and_power_loss_during_lockdown_restart_locked_down(tmp_path: Path) -> None:
    async with simulated_site(tmp_path, extra_door=EGRESS_DOORS) as site:
        fail_safe = [d.name for d in site.settings.doors if d.lock.value == "fail-safe"]
        async with running_daemon(site) as first:
            res = await first.wardctl("lockdown", "start", "--reason", "before the crash")
            assert res.rc == 0, res
            incident = await incident_of(first)
            await wait_confirmed(first)
            assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
        verify = await warding("journal", "verify", "--db", str(site.journal))
        assert verify.rc == 0, verify
        crashed_at = max(r["seq"] for r in read_journal(site.journal))

        # the power fails while the daemon is dead: every relay drops, maglocks release
        changes: list[tuple[str, int, bool]] = []

        def recorder(board_name: str) -> Callable[[Mapping[int, bool]], None]:
            def record(changed: Mapping[int, bool]) -> None:
                changes.extend((board_name, coil, value) for coil, value in changed.items())

            return record

        for name, board in site.sim.boards.items():
            board.power_cycle()
            board.on_coils_changed = recorder(name)
        assert not any(site.sim.door(d).locked for d in fail_safe)

        listener = NotifyListener(tmp_path / "notify.sock", probe=site.relays)
        try:
            env = {"NOTIFY_SOCKET": str(listener.path)}
            async with running_daemon(site, env=env) as second:
                # the API answers only after the doors were re-asserted
                assert secure(site), site.relays()
                ready = listener.first("READY=1")
                assert ready is not None, listener.messages
                at_ready = ready[1]
                for d in site.settings.doors:
                    assert at_ready[d.name] is (d.lock.value == "fail-safe"), (d.name, at_ready)

                res = await second.wardctl("lockdown", "status", "--json")
                assert res.rc == 0, res
                st = json.loads(res.stdout)
                assert st["mode"] == "lockdown"
                assert st["scopes"]["site"]["incident"] == incident
                assert st["scopes"]["site"]["trigger"]["reason"] == "before the crash"
                await wait_confirmed(second)

                # restored (and the doors commanded secure) before anything else happened
                events = await second.events(crashed_at)
                kinds = [e["kind"] for e in events]
                assert kinds[0] == "lockdown.restored", kinds
                assert kinds.index("daemon.start") < kinds.index("daemon.ready")
                assert events[0]["data"]["incidents"] == [incident]
                assert events[0]["data"]["scopes"] == {"site": "lockdown"}
                # the restart never released anything: maglocks only energised, strikes never
                for board_name, coil, value in changes:
                    door = next(
                        d
                        for d in site.settings.doors
                        if (d.relay.board, d.relay.coil) == (board_name, coil)
                    )
                    assert value is (door.lock.value == "fail-safe"), (door.name, changes)
                assert {(b, c) for b, c, _ in changes} == {
                    (d.relay.board, d.relay.coil)
                    for d in site.settings.doors
                    if d.name in fail_safe
                }
                res = await second.wardctl("door", "pulse", "tcp1-d0")
                assert res.rc == 1, res
        finally:
            listener.close()
    verify = await warding("journal", "verify", "--db", str(site.journal))
    assert verify.rc == 0, verify


# -- 3. graceful stop during a lockdown ------------------------------------------------------


async def test_sigterm_in_lockdown_leaves_held_fail_safe_doors_locked(tmp_path: Path) -> None:
    async with simulated_site(tmp_path, extra_door=EGRESS_DOORS) as site:
        async with running_daemon(site) as daemon:
            await daemon.api("lockdown.start", reason="before the stop")
            await wait_confirmed(daemon)
            assert await daemon.stop(signal.SIGTERM) == 0, daemon.log_text()
        # every door held locked; a maglock stays energised instead of its power-loss release
        assert secure(site), site.relays()
        for d in site.settings.doors:
            assert site.sim.door(d.name).relay is (d.lock.value == "fail-safe"), d.name

        rows = read_journal(site.journal)
        safe = [r for r in rows if r["kind"] == "door.safe"]
        assert sorted(r["door"] for r in safe) == sorted(d.name for d in site.settings.doors)
        held = {"confirmed": True, "held_locked": True, "released": False}
        assert all(r["data"] == held for r in safe), safe

        # and the next start is still locked down
        async with running_daemon(site) as again:
            assert (await lockdown_status(again))["mode"] == "lockdown"
            assert secure(site)
