"""Control-API commands of the facility lockdown: start, status, all-clear, evacuation, fire reset,
threat level, the remote trigger entry point (MQTT/peers), and incident reports.

Every command is attributed: the OS user on the control socket (SO_PEERCRED) plus, where a
person must be authorised (all-clear, end of evacuation), a cardholder id and PIN checked
against the credential store and the cardholder's privileges.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from controller.access.model import PinCheck, Privilege
from controller.access.store import CredentialStore, StoreError
from controller.api.protocol import ProtocolError, Request, arg, ok
from controller.api.server import PEER, Reply
from controller.errors import CommandError
from controller.journal import JournalWriter
from controller.lockdown.model import (
    SITE,
    AllClear,
    EndEvacuation,
    FireReset,
    SetThreatLevel,
    StartEvacuation,
    StartLockdown,
    Trigger,
)
from controller.lockdown.report import REPORT_KINDS  # the report's own list: all it reads
from controller.lockdown.runner import LockdownRunner, refusal

MAX_ID = 2**63 - 1  # the largest id SQLite stores

COMMANDS = (
    "lockdown.start",
    "lockdown.trigger",
    "lockdown.status",
    "lockdown.clear",
    "lockdown.evacuate",
    "lockdown.end-evacuation",
    "threat-level.set",
    "fire.reset",
    "incident.list",
    "incident.report",
)


# bidi overrides and isolates, and the line/paragraph separators some viewers break lines at
_BIDI = (
    frozenset(range(0x2028, 0x202F))
    | frozenset(range(0x2066, 0x206A))
    | frozenset((0x200E, 0x200F, 0x061C))  # direction marks
    | frozenset(range(0xD800, 0xE000))  # lone surrogates: not even encodable as UTF-8
)
REPLY_JOURNAL_WAIT_S = 2.0
"""How long a lockdown command's answer waits for the journal to record it."""
MAX_TEXT = 500
"""Longest reason, who or where kept (longer text is cut, never refused)."""


def clean_text(text: str) -> str:
    """Free text for the journal and the terminals that show it: control and bidi characters
    written as escapes (``\\n``, ``\\x1b``...), of its first MAX_TEXT characters.

    A lockdown is never refused for its wording: the text is made safe instead.
    """
    out = []
    for c in text[:MAX_TEXT]:
        o = ord(c)
        if o < 32 or 127 <= o < 160 or o in _BIDI:
            out.append(c.encode("unicode_escape").decode("ascii") if o < 256 else f"\\u{o:04x}")
        else:
            out.append(c)
    return "".join(out)


@dataclass
class LockdownApi:
    """Handlers for the lockdown commands."""

    runner: LockdownRunner
    store: CredentialStore
    journal: JournalWriter
    zones: frozenset[str]

    async def handle(self, req: Request, reply: Reply) -> bool:
        """Serve ``req`` if it is a lockdown command; False if it is not one."""
        handler: Callable[[Request, Reply], Awaitable[None]] | None = {
            "lockdown.start": self._start,
            "lockdown.trigger": self._trigger,
            "lockdown.status": self._status,
            "lockdown.clear": self._clear,
            "lockdown.evacuate": self._evacuate,
            "lockdown.end-evacuation": self._end_evacuation,
            "threat-level.set": self._threat_level,
            "fire.reset": self._fire_reset,
            "incident.list": self._incident_list,
            "incident.report": self._incident_report,
        }.get(req.cmd)
        if handler is None:
            return False
        await handler(req, reply)
        return True

    def _scope(self, req: Request) -> str:
        scope = str(arg(req, "scope", str, required=False, default=SITE))
        if scope != SITE and scope not in self.zones:
            raise CommandError(
                f"unknown zone {scope!r}; zones: {', '.join(sorted(self.zones)) or '(none)'}"
            )
        return scope

    def _level(self, req: Request) -> tuple[int | None, dict[str, str]]:
        """The level to set with a lockdown, and a warning if it is out of range.

        A bad level never refuses the lockdown itself: the machine locks down, keeps the
        current level and journals why (``lockdown.refused``); the reply carries a warning.
        """
        level: int | None = arg(req, "level", int, required=False)
        if level is not None and not 0 <= level <= 7:
            return level, {"warning": f"threat level must be 0..7 (got {level}); not changed"}
        return level, {}

    async def _submit(self, event: Any, reply: Reply, req: Request, **extra: Any) -> None:
        effects = await self.runner.submit(event)
        # an acknowledged lockdown, all-clear or fire reset is on disk: state and records -
        # unless the disk stalls: the answer must not wait on it (the doors already acted)
        try:
            await asyncio.wait_for(self.journal.flush(), REPLY_JOURNAL_WAIT_S)
        except TimeoutError:
            late = "done, but the journal has not recorded it yet"
            earlier = extra.get("warning")  # (e.g. a threat level that was not changed)
            extra = {**extra, "warning": f"{earlier}; {late}" if earlier else late}
        refused = refusal(effects)
        if refused is not None:
            raise CommandError(refused)
        await reply(ok(req.id, **self.runner.status(), **extra))

    async def _start(self, req: Request, reply: Reply) -> None:
        reason = arg(req, "reason", str)
        if not reason.strip():
            raise ProtocolError("a lockdown needs a reason")
        trigger = Trigger("operator", PEER.get(), "control socket", clean_text(reason.strip()))
        level, warning = self._level(req)
        event = StartLockdown(
            self._scope(req),
            trigger,
            self.runner.wall(),
            level=level,
            drill=bool(arg(req, "drill", bool, required=False, default=False)),
        )
        await self._submit(event, reply, req, **warning)

    async def _trigger(self, req: Request, reply: Reply) -> None:
        """The entry point for remote and peer-controller triggers (MQTT bridge, peers)."""
        source = arg(req, "source", str)
        if source not in ("remote", "peer"):
            raise ProtocolError("source must be 'remote' or 'peer'")
        trigger = Trigger(
            source,
            clean_text(arg(req, "who", str)),
            clean_text(arg(req, "where", str)),
            clean_text(str(arg(req, "reason", str, required=False, default=""))),
        )
        level, warning = self._level(req)
        event = StartLockdown(
            self._scope(req),
            trigger,
            self.runner.wall(),
            level=level,
            drill=bool(arg(req, "drill", bool, required=False, default=False)),
        )
        await self._submit(event, reply, req, **warning)

    async def _status(self, req: Request, reply: Reply) -> None:
        await reply(ok(req.id, **self.runner.status()))

    def _person(self, req: Request, privilege: Privilege, event: str) -> tuple[str, bool]:
        cid = arg(req, "cardholder", int)
        pin = arg(req, "pin", str)
        if not 1 <= cid <= MAX_ID:
            self._refused(event, f"cardholder id must be 1..{MAX_ID} (got {cid})")
        try:
            holder = self.store.get_cardholder(cid)
            check = self.store.check_pin(cid, pin)
        except StoreError as exc:
            self._refused(event, str(exc))
        authorised = (
            check is PinCheck.OK
            and privilege in holder.privileges
            and holder.state.value == "active"
        )
        # the person is the cardholder alone: two wardctl calls by one person are one person
        return f"#{holder.id} {holder.name}", authorised

    def _refused(self, event: str, reason: str) -> NoReturn:
        """Journal a request refused before it reached the machine, and refuse it."""
        self.runner.recorder.record("lockdown.refused", event=event, reason=reason, peer=PEER.get())
        raise CommandError(reason)

    async def _clear(self, req: Request, reply: Reply) -> None:
        person, authorised = self._person(req, Privilege.ALL_CLEAR, "AllClear")
        via = f"operator {PEER.get()}"
        event = AllClear(self._scope(req), person, authorised, via, self.runner.wall())
        await self._submit(event, reply, req)

    async def _evacuate(self, req: Request, reply: Reply) -> None:
        reason = clean_text(arg(req, "reason", str))
        trigger = Trigger("operator", PEER.get(), "control socket", reason)
        event = StartEvacuation(
            self._scope(req),
            trigger,
            self.runner.wall(),
            drill=bool(arg(req, "drill", bool, required=False, default=False)),
        )
        await self._submit(event, reply, req)

    async def _end_evacuation(self, req: Request, reply: Reply) -> None:
        person, authorised = self._person(req, Privilege.ALL_CLEAR, "EndEvacuation")
        # an unauthorised person is refused by the machine, journaled like an all-clear's
        event = EndEvacuation(self._scope(req), person, self.runner.wall(), authorised)
        await self._submit(event, reply, req)

    async def _threat_level(self, req: Request, reply: Reply) -> None:
        level = arg(req, "level", int)
        await self._submit(SetThreatLevel(level, PEER.get(), self.runner.wall()), reply, req)

    async def _fire_reset(self, req: Request, reply: Reply) -> None:
        event = FireReset(
            PEER.get(),
            self.runner.fire_inputs_active(),
            self.runner.wall(),
            inputs_unknown=tuple(self.runner.fire_inputs_unknown()),
        )
        await self._submit(event, reply, req)

    async def _incident_list(self, req: Request, reply: Reply) -> None:
        from controller.lockdown import report

        entries = await self._entries()
        items = [_summary_json(s) for s in report.list_incidents(entries)]
        await reply(ok(req.id, incidents=items))

    async def _incident_report(self, req: Request, reply: Reply) -> None:
        from controller.lockdown import report

        incident_id = arg(req, "incident", int)
        fmt = str(arg(req, "format", str, required=False, default="json"))
        if fmt not in ("json", "md", "html", "svg"):
            raise ProtocolError("format must be json, md, html or svg")
        entries = await self._entries()
        try:
            incident = report.build_incident(entries, incident_id)
        except KeyError as exc:
            raise CommandError(str(exc.args[0]) if exc.args else "unknown incident") from None
        renderers = {
            "json": report.render_json,
            "md": report.render_markdown,
            "html": report.render_html,
            "svg": report.render_svg_plot,
        }
        text = renderers[fmt](incident)
        await reply(ok(req.id, incident=incident_id, format=fmt, text=text))

    async def _entries(self) -> list[Any]:
        await self.journal.flush()
        out: list[Any] = []
        after = 0
        while True:
            batch = await self.journal.read(after, 10_000, REPORT_KINDS)
            if not batch:
                return out
            out.extend(batch)
            after = batch[-1].seq


def _summary_json(summary: Any) -> dict[str, Any]:
    """JSON row of an incident summary."""
    data = dataclasses.asdict(summary)
    trigger = data.get("trigger")
    if isinstance(trigger, dict):
        data["trigger"] = f"{trigger.get('source')}: {trigger.get('who')} at {trigger.get('where')}"
    return {k: v for k, v in data.items() if not isinstance(v, list | tuple) or len(v) < 50}
