"""Control-API commands that manage people and readers: cardholders, credentials, access levels.

Store writes run in a worker thread so the event loop (and every door) keeps moving; each
change is journaled with who asked (the ``source`` field wardctl sends) and never shows a
full card number or a PIN. Revocation is immediate: the next read at any reader sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from controller.access.csvio import ImportReport, export_csv, import_csv, parse_validity
from controller.access.formats import parse_card
from controller.access.model import Cardholder, CardholderState, Privilege
from controller.access.service import AccessService
from controller.access.store import CredentialInfo, CredentialStore, StoreError
from controller.api.protocol import ProtocolError, Request, arg, ok
from controller.api.server import Reply
from controller.doors.service import Recorder
from controller.errors import CommandError, WardingError

log = structlog.get_logger(__name__)

UPLOAD_CHUNK_MAX = 48 * 1024
UPLOAD_MAX_BYTES = 512 * 1024 * 1024
UPLOAD_IDLE_S = 600.0
"""An import upload with no chunk for this long is abandoned: its file is deleted."""
LIST_LIMIT_MAX = 100_000
"""The most rows one page of ``cardholder.list`` / ``credential.list`` may ask for."""
ROW_ID_MAX = 2**63 - 1
"""The largest row id SQLite can hold: a larger one names no row (and cannot be bound)."""


def _page(req: Request, *, default_limit: int) -> tuple[int, int]:
    """(limit, after) of a list request: at most ``limit`` rows with ids above ``after``."""
    limit = int(arg(req, "limit", int, required=False, default=default_limit))
    after = int(arg(req, "after", int, required=False, default=0))
    if not 1 <= limit <= LIST_LIMIT_MAX:
        raise CommandError(f"limit must be between 1 and {LIST_LIMIT_MAX} (got {limit})")
    if not 0 <= after <= ROW_ID_MAX:
        raise CommandError(f"after must be a row id, 0 or more (got {after})")
    return limit, after


def _row_id(req: Request, name: str) -> int:
    """An id argument (cardholder, credential): an int from 1 to ``ROW_ID_MAX``."""
    value = _optional_row_id(req, name)
    if value is None:
        raise ProtocolError(f"'{req.cmd}' needs argument '{name}'")
    return value


def _optional_row_id(req: Request, name: str) -> int | None:
    """An optional id argument (None if absent or null), range-checked as ``_row_id``."""
    value = arg(req, name, int, required=False)
    if value is None:
        return None
    if not 1 <= value <= ROW_ID_MAX:
        raise ProtocolError(f"argument '{name}' must be an id from 1 to {ROW_ID_MAX}")
    return int(value)


def _strings(req: Request, name: str, *, required: bool = True) -> list[str]:
    """A list-of-strings argument; a list holding anything else is refused, naming it."""
    value = arg(req, name, list, required=required, default=[])
    if not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"argument '{name}' must be a list of strings")
    return list(value)


def _bad_text(value: Any, path: str) -> str | None:
    """The first argument (path) whose text cannot be encoded (a lone surrogate), if any."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _bad_text(item, f"{path}[{i}]")
            if found is not None:
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            found = _bad_text(key, path) or _bad_text(item, f"{path}.{key}")
            if found is not None:
                return found
    return None


def _when(value: str | None, name: str, timezone: str, *, end: bool) -> datetime | None:
    """A validity bound read as the CSV import reads it (``csvio.parse_validity``).

    Without an offset it is local time in the site's zone; a date alone is 00:00 that day, or
    for ``valid_until`` (``end``) 00:00 the day after: the whole day is included.
    """
    if value is None:
        return None
    try:
        return parse_validity(value, ZoneInfo(timezone), end=end)
    except (ValueError, OverflowError):
        raise ProtocolError(
            f"'{name}' must be an ISO-8601 date or date-time, e.g. 2026-12-01 or "
            f"2026-12-01T08:00 (got {value!r})"
        ) from None


def cardholder_json(c: Cardholder) -> dict[str, Any]:
    """JSON view of a cardholder (no secrets)."""
    return {
        "id": c.id,
        "name": c.name,
        "state": c.state.value,
        "valid_from": c.valid_from.isoformat() if c.valid_from else None,
        "valid_until": c.valid_until.isoformat() if c.valid_until else None,
        "privileges": sorted(p.value for p in c.privileges),
        "has_pin": c.has_pin,
        "levels": [lv.name for lv in c.levels],
    }


def credential_json(c: CredentialInfo) -> dict[str, Any]:
    """JSON view of a credential (masked card only)."""
    return {
        "id": c.id,
        "cardholder_id": c.cardholder_id,
        "format": c.format,
        "card": c.display,
        "state": c.state.value,
        "valid_from": c.valid_from.isoformat() if c.valid_from else None,
        "valid_until": c.valid_until.isoformat() if c.valid_until else None,
    }


@dataclass
class _Upload:
    path: Path
    name: str = "the uploaded file"  # the client's name for it, for messages
    size: int = 0
    touched: float = field(default_factory=time.monotonic)  # last begin or chunk
    timer: asyncio.TimerHandle | None = None


@dataclass
class Management:
    """Handlers for the management commands of the control API."""

    store: CredentialStore
    access: AccessService
    recorder: Recorder
    upload_dir: Path
    timezone: str = "UTC"
    install: Callable[[str, float], None] | None = None
    upload_idle_s: float = UPLOAD_IDLE_S
    _uploads: dict[str, _Upload] = field(default_factory=dict)
    # imports running: the upload's name and source, and whether its commit has begun
    _jobs: dict[asyncio.Future[ImportReport], tuple[str, str, threading.Event]] = field(
        default_factory=dict
    )
    _stopping: bool = False  # the daemon is stopping: imports not yet committed are called off

    def __post_init__(self) -> None:
        # an upload of an earlier run (a client that went away, a crash) holds card numbers
        # and PINs in clear, and its token is gone with that run: never keep one
        for stale in self.upload_dir.glob("import-*.csv"):
            with contextlib.suppress(OSError):
                stale.unlink()

    COMMANDS = (
        "cardholder.add",
        "cardholder.list",
        "cardholder.show",
        "cardholder.set-state",
        "credential.add",
        "credential.revoke",
        "credential.list",
        "credential.import.begin",
        "credential.import.chunk",
        "credential.import.commit",
        "credential.import.abort",
        "credential.export",
        "access-level.add",
        "access-level.list",
        "access-level.remove",
        "access-level.grant",
        "access-level.revoke",
        "reader.list",
        "reader.install",
    )

    async def handle(self, req: Request, reply: Reply) -> bool:
        """Serve ``req`` if it is a management command; return False if it is not one.

        Any failure is answered with an error reply (ProtocolError, CommandError): an
        unexpected exception is logged once with its traceback, and the connection stays up.
        """
        if req.cmd not in self.COMMANDS:
            return False
        name = "_" + req.cmd.replace(".", "_").replace("-", "_")
        handler = getattr(self, name)
        bad = _bad_text(req.args, "args")
        if bad is not None:
            where = bad.removeprefix("args.")
            raise ProtocolError(f"argument '{where}' is not valid text (a lone surrogate)")
        try:
            await handler(req, reply)
        except StoreError as exc:
            raise CommandError(str(exc)) from None
        except (WardingError, ConnectionError):
            raise
        except Exception as exc:
            log.exception("management command failed", cmd=req.cmd)
            raise CommandError(
                f"'{req.cmd}' failed: internal error ({type(exc).__name__}); "
                "nothing was granted; see the daemon log"
            ) from None
        return True

    def _source(self, req: Request) -> str:
        return str(arg(req, "source", str, required=False, default="wardctl"))

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    # -- cardholders -----------------------------------------------------------------------

    async def _cardholder_add(self, req: Request, reply: Reply) -> None:
        name = arg(req, "name", str)
        pin = arg(req, "pin", str, required=False)
        privileges = _strings(req, "privileges", required=False)
        for p in privileges:
            if p not in {x.value for x in Privilege}:
                raise ProtocolError(
                    f"unknown privilege {p!r}; expected {', '.join(x.value for x in Privilege)}"
                )
        levels = _strings(req, "levels", required=False)
        valid_from = _when(
            arg(req, "valid_from", str, required=False), "valid_from", self.timezone, end=False
        )
        valid_until = _when(
            arg(req, "valid_until", str, required=False), "valid_until", self.timezone, end=True
        )

        def add() -> int:
            cid = self.store.add_cardholder(
                name,
                pin=pin,
                privileges=privileges,
                valid_from=valid_from,
                valid_until=valid_until,
            )
            try:
                for level in levels:
                    self.store.grant_level(cid, str(level))
            except StoreError:
                self.store.delete_cardholder(cid)  # all or nothing: no half-made cardholder
                raise
            return cid

        cid = await self._run(add)
        self.recorder.record(
            "admin.cardholder", action="add", cardholder_id=cid, source=self._source(req)
        )
        await reply(ok(req.id, cardholder=cid))

    async def _cardholder_list(self, req: Request, reply: Reply) -> None:
        name = arg(req, "name", str, required=False)
        limit, after = _page(req, default_limit=100)
        rows = await self._run(self.store.find_cardholders, name, after_id=after, limit=limit)
        await reply(ok(req.id, cardholders=[cardholder_json(c) for c in rows]))

    async def _cardholder_show(self, req: Request, reply: Reply) -> None:
        cid = _row_id(req, "cardholder")
        holder = await self._run(self.store.get_cardholder, cid)
        creds = await self._run(self.store.list_credentials, cid)
        await reply(
            ok(
                req.id,
                cardholder=cardholder_json(holder),
                credentials=[credential_json(c) for c in creds],
            )
        )

    async def _cardholder_set_state(self, req: Request, reply: Reply) -> None:
        cid = _row_id(req, "cardholder")
        state = arg(req, "state", str)
        if state not in {s.value for s in CardholderState}:
            raise ProtocolError(
                f"unknown state {state!r}; expected {', '.join(s.value for s in CardholderState)}"
            )
        await self._run(self.store.set_cardholder_state, cid, state)
        self.recorder.record(
            "admin.cardholder",
            action="set-state",
            cardholder_id=cid,
            state=state,
            source=self._source(req),
        )
        await reply(ok(req.id, cardholder=cid, state=state))

    # -- credentials -----------------------------------------------------------------------

    async def _credential_add(self, req: Request, reply: Reply) -> None:
        cid = _row_id(req, "cardholder")
        try:
            card = parse_card(arg(req, "card", str))
        except ValueError as exc:
            raise ProtocolError(f"bad card: {exc}") from None
        valid_from = _when(
            arg(req, "valid_from", str, required=False), "valid_from", self.timezone, end=False
        )
        valid_until = _when(
            arg(req, "valid_until", str, required=False), "valid_until", self.timezone, end=True
        )
        credential_id = await self._run(
            self.store.add_credential,
            cid,
            card.key,
            format=card.format.value,
            masked=card.masked(),
            valid_from=valid_from,
            valid_until=valid_until,
        )
        self.recorder.record(
            "admin.credential",
            action="add",
            credential_id=credential_id,
            cardholder_id=cid,
            card=card.masked(),
            source=self._source(req),
        )
        await reply(ok(req.id, credential=credential_id, card=card.masked()))

    async def _credential_revoke(self, req: Request, reply: Reply) -> None:
        credential_id = _optional_row_id(req, "credential")
        card_text = arg(req, "card", str, required=False)
        if (credential_id is None) == (card_text is None):
            raise ProtocolError("'credential.revoke' needs exactly one of 'credential' or 'card'")
        masked = ""
        if credential_id is not None:
            await self._run(self.store.set_credential_state, credential_id, "revoked")
        else:
            try:
                card = parse_card(card_text)
            except ValueError as exc:
                raise ProtocolError(f"bad card: {exc}") from None
            masked = card.masked()
            if not await self._run(self.store.revoke_key, card.key):
                raise CommandError(f"no credential for card {masked}")
        self.recorder.record(
            "admin.credential",
            action="revoke",
            credential_id=credential_id,
            card=masked or None,
            source=self._source(req),
        )
        await reply(ok(req.id, revoked=True))

    async def _credential_list(self, req: Request, reply: Reply) -> None:
        cid = _optional_row_id(req, "cardholder")
        limit, after = _page(req, default_limit=1000)
        rows = await self._run(self.store.list_credentials, cid, after_id=after, limit=limit)
        await reply(ok(req.id, credentials=[credential_json(c) for c in rows]))

    async def _credential_import_begin(self, req: Request, reply: Reply) -> None:
        self.upload_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        token = secrets.token_hex(8)
        path = self.upload_dir / f"import-{token}.csv"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        name = arg(req, "name", str, required=False, default="the uploaded file")
        upload = self._uploads[token] = _Upload(path, name)
        self._arm_expiry(token, upload, self.upload_idle_s)
        await reply(ok(req.id, upload=token, chunk_max=UPLOAD_CHUNK_MAX))

    def _arm_expiry(self, token: str, upload: _Upload, delay_s: float) -> None:
        upload.timer = asyncio.get_running_loop().call_later(delay_s, self._expire, token)

    def _expire(self, token: str) -> None:
        """Drop an upload its client abandoned: the file holds card numbers and PINs in clear."""
        upload = self._uploads.get(token)
        if upload is None:
            return
        idle = time.monotonic() - upload.touched
        if idle < self.upload_idle_s:
            self._arm_expiry(token, upload, self.upload_idle_s - idle)
            return
        self._discard(token)
        self.recorder.record(
            "admin.import", abandoned=True, name=upload.name, size=upload.size, committed=False
        )
        log.warning("import upload abandoned, removed", name=upload.name, idle_s=round(idle))

    def _discard(self, token: str) -> _Upload | None:
        """Forget an upload and delete its file (before a commit: the import keeps the file)."""
        upload = self._uploads.pop(token, None)
        if upload is not None:
            if upload.timer is not None:
                upload.timer.cancel()
            with contextlib.suppress(FileNotFoundError):
                upload.path.unlink()
        return upload

    def close(self) -> None:
        """Delete every unfinished upload (their tokens end with the daemon)."""
        for token in list(self._uploads):
            self._discard(token)

    async def stop(self, timeout_s: float) -> None:
        """Call off running imports (not yet committed: nothing imported), wait for their
        ``admin.import`` records (up to ``timeout_s``), then ``close``."""
        self._stopping = True
        if self._jobs:
            await asyncio.wait(set(self._jobs), timeout=timeout_s)
        for name, source, committing in self._jobs.values():
            # never silent: a commit under way finishes (the process waits for its thread),
            # but its own record would come after the journal has closed
            log.error("import still running at shutdown", name=name)
            self.recorder.record(
                "admin.import",
                name=name,
                committed=None,
                committing=committing.is_set(),
                error="the daemon stopped while this import was "
                + (
                    "being committed: check the store for its outcome"
                    if committing.is_set()
                    else "running: it is being called off"
                ),
                source=source,
            )
        self.close()

    def _upload(self, req: Request) -> tuple[str, _Upload]:
        token = arg(req, "upload", str)
        upload = self._uploads.get(token)
        if upload is None:
            raise CommandError(f"unknown upload {token!r}")
        return token, upload

    async def _credential_import_chunk(self, req: Request, reply: Reply) -> None:
        _, upload = self._upload(req)
        data = arg(req, "data", str).encode("utf-8")
        if upload.size + len(data) > UPLOAD_MAX_BYTES:
            raise CommandError(f"upload larger than {UPLOAD_MAX_BYTES // 2**20} MiB")
        await self._run(_append, upload.path, data)
        upload.size += len(data)
        upload.touched = time.monotonic()
        await reply(ok(req.id, size=upload.size))

    async def _credential_import_abort(self, req: Request, reply: Reply) -> None:
        token, _ = self._upload(req)
        self._discard(token)
        await reply(ok(req.id))

    async def _credential_import_commit(self, req: Request, reply: Reply) -> None:
        token, upload = self._upload(req)
        del self._uploads[token]
        if upload.timer is not None:
            upload.timer.cancel()
        loop = asyncio.get_running_loop()
        progress_q: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

        def progress(done: int, total: int) -> None:
            loop.call_soon_threadsafe(progress_q.put_nowait, (done, total))

        # the import runs to its end and is journaled whatever happens to the client (it may
        # go away, or this handler be cancelled): the job's outcome is not the client's
        source = self._source(req)
        committing = threading.Event()
        job = asyncio.ensure_future(self._import_job(upload, progress, source, committing))
        self._jobs[job] = (upload.name, source, committing)
        job.add_done_callback(lambda done: self._jobs.pop(done, None))
        job.add_done_callback(_retrieved)  # a client gone: its error is journaled, not lost
        await reply(ok(req.id, streaming=True))
        while not job.done():
            getter = asyncio.ensure_future(progress_q.get())
            try:
                await asyncio.wait({job, getter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not getter.done():
                    getter.cancel()
            if getter.done() and not getter.cancelled():
                done, total = getter.result()
                await reply({"progress": done, "total": total})
        report = job.result()  # raises the job's CommandError, if any
        await reply(
            {
                "done": True,
                "committed": report.committed,
                "rows": report.rows,
                "cardholders": report.cardholders,
                "credentials": report.credentials,
                "rejected_count": report.rejected_count,
                "rejected": [{"line": r.line, "reason": r.reason} for r in report.rejected],
                "elapsed_s": round(report.elapsed_s, 3),
            }
        )

    async def _import_job(
        self,
        upload: _Upload,
        progress: Callable[[int, int], None],
        source: str,
        committing: threading.Event,
    ) -> ImportReport:
        """Run one import to its end, journal its outcome (admin.import), delete the upload."""
        try:
            report: ImportReport = await asyncio.to_thread(
                import_csv,
                self.store,
                upload.path,
                timezone=self.timezone,
                progress=progress,
                cancelled=lambda: self._stopping,
                committing=committing.set,
            )
        except StoreError as exc:  # the file as a whole: name it as the client knows it
            message = str(exc).replace(str(upload.path), upload.name)
            self.recorder.record(
                "admin.import", name=upload.name, committed=False, error=message, source=source
            )
            raise CommandError(message) from None
        except Exception as exc:
            log.exception("import failed", name=upload.name)
            self.recorder.record(
                "admin.import",
                name=upload.name,
                committed=False,
                error=f"internal error ({type(exc).__name__})",
                source=source,
            )
            raise CommandError(
                f"import of {upload.name} failed: internal error ({type(exc).__name__}); "
                "nothing was imported; see the daemon log"
            ) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                upload.path.unlink()
        self.recorder.record(
            "admin.import",
            rows=report.rows,
            committed=report.committed,
            cardholders=report.cardholders,
            credentials=report.credentials,
            rejected=report.rejected_count,
            source=source,
        )
        return report

    async def _credential_export(self, req: Request, reply: Reply) -> None:
        self.upload_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.upload_dir / f"export-{secrets.token_hex(8)}.csv"
        # answered at once: a large store takes longer to write out than a client waits for a
        # first reply (an error meanwhile still reaches it, as an error line in the stream)
        await reply(ok(req.id, streaming=True))
        try:
            await self._run(export_csv, self.store, path)
            with path.open("r", encoding="utf-8") as fh:  # streamed: memory stays flat
                while chunk := await self._run(fh.read, UPLOAD_CHUNK_MAX // 2):
                    await reply({"data": chunk})
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        await reply({"done": True})

    # -- access levels ---------------------------------------------------------------------

    async def _access_level_add(self, req: Request, reply: Reply) -> None:
        name = arg(req, "name", str)
        doors = _strings(req, "doors")
        schedule = arg(req, "schedule", str, required=False, default="always")
        if not doors:
            raise CommandError("an access level needs at least one door")
        known = set(self.access.doors.door_names)
        unknown = [d for d in doors if d not in known]
        if unknown:
            raise CommandError(f"unknown door(s): {', '.join(map(str, unknown))}")
        if schedule != "always" and schedule not in self.access.schedules:
            raise CommandError(
                f"unknown schedule {schedule!r}; defined in the site file: "
                f"{', '.join(sorted(self.access.schedules)) or '(none)'}"
            )
        level_id = await self._run(self.store.add_level, name, doors, schedule)
        self.recorder.record(
            "admin.level", action="add", level=name, doors=doors, source=self._source(req)
        )
        await reply(ok(req.id, level=level_id))

    async def _access_level_list(self, req: Request, reply: Reply) -> None:
        levels = await self._run(self.store.list_levels)
        await reply(
            ok(
                req.id,
                levels=[
                    {"name": lv.name, "doors": sorted(lv.doors), "schedule": lv.schedule.name}
                    for lv in levels
                ],
            )
        )

    async def _access_level_remove(self, req: Request, reply: Reply) -> None:
        name = arg(req, "name", str)
        if not await self._run(self.store.remove_level, name):
            raise CommandError(f"no access level {name!r}")
        self.recorder.record("admin.level", action="remove", level=name, source=self._source(req))
        await reply(ok(req.id))

    async def _access_level_grant(self, req: Request, reply: Reply) -> None:
        cid = _row_id(req, "cardholder")
        name = arg(req, "name", str)
        await self._run(self.store.grant_level, cid, name)
        self.recorder.record(
            "admin.level", action="grant", level=name, cardholder_id=cid, source=self._source(req)
        )
        await reply(ok(req.id))

    async def _access_level_revoke(self, req: Request, reply: Reply) -> None:
        cid = _row_id(req, "cardholder")
        name = arg(req, "name", str)
        if not await self._run(self.store.revoke_level, cid, name):
            raise CommandError(f"cardholder {cid} does not have level {name!r}")
        self.recorder.record(
            "admin.level", action="revoke", level=name, cardholder_id=cid, source=self._source(req)
        )
        await reply(ok(req.id))

    # -- readers ---------------------------------------------------------------------------

    async def _reader_list(self, req: Request, reply: Reply) -> None:
        await reply(ok(req.id, readers=self.access.status()))

    async def _reader_install(self, req: Request, reply: Reply) -> None:
        reader = arg(req, "reader", str)
        window = arg(req, "window_s", float, required=False, default=60.0)
        if reader not in self.access.readers:
            raise CommandError(f"unknown reader {reader!r}")
        if not 5 <= window <= 600:
            raise CommandError("the install window must be 5..600 seconds")
        if self.install is None:
            raise CommandError("install mode is not available for this reader")
        self.install(reader, window)
        self.recorder.record(
            "admin.reader",
            action="install",
            reader=reader,
            window_s=window,
            source=self._source(req),
        )
        await reply(ok(req.id, reader=reader, window_s=window))


def _retrieved(job: asyncio.Future[Any]) -> None:
    """Mark a job's exception as seen (it is journaled and answered where there is a client)."""
    if not job.cancelled():
        job.exception()


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as fh:
        fh.write(data)
