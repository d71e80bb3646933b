"""``wardctl``: the technician's CLI; talks to the daemon through its control socket only.

Exit status: 0 success, 1 the daemon refused or could not confirm the command, 2 usage error,
3 the daemon is not reachable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any, TextIO

from controller.api.client import DEFAULT_SOCKET, ControlClient
from controller.errors import CommandError, DaemonNotRunningError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


def build_parser() -> argparse.ArgumentParser:
    """The full ``wardctl`` command line."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--socket",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"control socket (default: $WARDING_SOCKET or {DEFAULT_SOCKET})",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="JSON output"
    )
    parser = argparse.ArgumentParser(
        prog="wardctl", description="warding maintenance CLI", parents=[common]
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    sub.add_parser("status", help="doors, locks, contacts, alarms, board links", parents=[common])

    door = sub.add_parser("door", help="command a door", parents=[common])
    door.add_argument("action", choices=["pulse", "lock", "unlock"])
    door.add_argument("name")
    door.add_argument("--duration", type=float, help="pulse length in seconds (pulse only)")
    door.add_argument(
        "--override",
        action="store_true",
        help="act on a door held by a lockdown (journaled as an override)",
    )

    _management_parsers(sub, common)
    _lockdown_parsers(sub, common)

    events = sub.add_parser("events", help="show journal events", parents=[common])
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    events.add_argument("--limit", "-n", type=int, default=20, help="how many past events")
    events.add_argument("--after", type=int, help="events after this sequence number")
    return parser


ROW_ID_MAX = 2**63 - 1  # the largest id the credential store can hold


def _row_id(text: str) -> int:
    """argparse type: a cardholder or credential id (1 .. 2**63-1)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an id: {text!r}") from None
    if not 1 <= value <= ROW_ID_MAX:
        raise argparse.ArgumentTypeError(f"an id is from 1 to {ROW_ID_MAX} (got {text})")
    return value


def _after_id(text: str) -> int:
    """argparse type: list ids above this one (0 .. 2**63-1)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an id: {text!r}") from None
    if not 0 <= value <= ROW_ID_MAX:
        raise argparse.ArgumentTypeError(f"--after is from 0 to {ROW_ID_MAX} (got {text})")
    return value


def _moment(text: str) -> str:
    """argparse type: a validity bound as the daemon reads it (a date, or a date-time)."""
    stripped = text.strip()
    try:
        if len(stripped) == 10:
            date.fromisoformat(stripped)
        elif "T" in stripped or " " in stripped:
            datetime.fromisoformat(stripped)
        else:
            raise ValueError(stripped)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+HH:MM|Z] (got {text!r})"
        ) from None
    return stripped


def _management_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """cardholder, credential, access-level and reader commands."""
    ch = sub.add_parser("cardholder", help="manage cardholders", parents=[common])
    chs = ch.add_subparsers(dest="action", metavar="ACTION")
    chs.required = True
    add = chs.add_parser("add", help="add a cardholder", parents=[common])
    add.add_argument("name")
    pin = add.add_mutually_exclusive_group()
    pin.add_argument("--pin-prompt", action="store_true", help="ask for a PIN (not echoed)")
    pin.add_argument("--pin-stdin", action="store_true", help="read the PIN from stdin")
    add.add_argument("--privilege", action="append", default=[], help="override, lockdown, ...")
    add.add_argument("--level", action="append", default=[], help="access level to grant")
    add.add_argument("--valid-from", type=_moment, help="ISO-8601 date-time, e.g. 2026-12-01T08:00")
    add.add_argument("--valid-until", type=_moment, help="ISO-8601 date or date-time")
    lst = chs.add_parser("list", help="list cardholders", parents=[common])
    lst.add_argument("--name", help="name contains")
    lst.add_argument("--limit", type=int, default=100, help="at most N rows (default 100)")
    lst.add_argument("--after", type=_after_id, default=0, help="ids above this (the next page)")
    show = chs.add_parser("show", help="one cardholder with credentials", parents=[common])
    show.add_argument("id", type=_row_id)
    for action, text in (("disable", "disable"), ("enable", "re-enable")):
        p = chs.add_parser(action, help=f"{text} a cardholder", parents=[common])
        p.add_argument("id", type=_row_id)
    st = chs.add_parser("set-state", help="active, disabled, lost or revoked", parents=[common])
    st.add_argument("id", type=_row_id)
    st.add_argument("state", choices=["active", "disabled", "lost", "revoked"])

    cr = sub.add_parser("credential", help="manage credentials", parents=[common])
    crs = cr.add_subparsers(dest="action", metavar="ACTION")
    crs.required = True
    add = crs.add_parser("add", help="enrol a card for a cardholder", parents=[common])
    add.add_argument("cardholder", type=_row_id)
    add.add_argument("card", help="h10301:FC:NUM, h10304:FC:NUM, uid:HEX, number:DIGITS ...")
    add.add_argument("--valid-from", type=_moment)
    add.add_argument("--valid-until", type=_moment)
    rev = crs.add_parser("revoke", help="revoke a credential (immediate)", parents=[common])
    rev.add_argument("id", type=_row_id, nargs="?")
    rev.add_argument("--card", help="revoke by card instead of id")
    lst = crs.add_parser("list", help="list credentials (masked)", parents=[common])
    lst.add_argument("--cardholder", type=_row_id)
    lst.add_argument("--limit", type=int, default=1000, help="at most N rows (default 1000)")
    lst.add_argument("--after", type=_after_id, default=0, help="ids above this (the next page)")
    imp = crs.add_parser("import", help="import a CSV, all or nothing", parents=[common])
    imp.add_argument("file", type=Path)
    exp = crs.add_parser("export", help="export cardholders and masked cards", parents=[common])
    exp.add_argument("file", type=Path, nargs="?", help="default: stdout")

    lv = sub.add_parser("access-level", help="manage access levels", parents=[common])
    lvs = lv.add_subparsers(dest="action", metavar="ACTION")
    lvs.required = True
    add = lvs.add_parser("add", help="door group x schedule", parents=[common])
    add.add_argument("name")
    add.add_argument("--doors", required=True, help="comma-separated door names")
    add.add_argument("--schedule", default="always", help="a [[schedules]] name, or 'always'")
    lvs.add_parser("list", help="list access levels", parents=[common])
    rm = lvs.add_parser("remove", help="delete an access level", parents=[common])
    rm.add_argument("name")
    for action in ("grant", "revoke"):
        p = lvs.add_parser(action, help=f"{action} a level to/from a cardholder", parents=[common])
        p.add_argument("cardholder", type=_row_id)
        p.add_argument("name")

    rd = sub.add_parser("reader", help="readers", parents=[common])
    rds = rd.add_subparsers(dest="action", metavar="ACTION")
    rds.required = True
    rds.add_parser("list", help="configured readers", parents=[common])
    stt = rds.add_parser("status", help="online, tamper, secure channel", parents=[common])
    stt.add_argument("name", nargs="?")
    ins = rds.add_parser(
        "install", help="time-boxed OSDP install mode (new Secure Channel key)", parents=[common]
    )
    ins.add_argument("name")
    ins.add_argument("--window", type=float, default=60.0, help="seconds (5..600)")


def _lockdown_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """lockdown, threat-level, fire and incident commands."""
    ld = sub.add_parser("lockdown", help="facility lockdown", parents=[common])
    lds = ld.add_subparsers(dest="action", metavar="ACTION")
    lds.required = True
    start = lds.add_parser("start", help="lock down the site or a zone", parents=[common])
    start.add_argument("--zone", help="lock down one zone (default: the whole site)")
    start.add_argument("--level", type=int, help="also set the threat level (0..7)")
    start.add_argument("--reason", required=True, help="why (journaled)")
    start.add_argument("--drill", action="store_true", help="a drill: flagged in every event")
    lds.add_parser("status", help="lockdown state and door verification", parents=[common])
    for action, text in (
        ("clear", "one all-clear authorisation (two distinct persons end a lockdown)"),
        ("end-evacuation", "end an evacuation (all-clear privilege)"),
    ):
        p = lds.add_parser(action, help=text, parents=[common])
        p.add_argument("--cardholder", type=int, required=True, help="your cardholder id")
        pin = p.add_mutually_exclusive_group()
        pin.add_argument("--pin-prompt", action="store_true", help="ask for the PIN")
        pin.add_argument("--pin-stdin", action="store_true", help="read the PIN from stdin")
        p.add_argument("--zone")
    ev = lds.add_parser("evacuate", help="release egress routes", parents=[common])
    ev.add_argument("--zone")
    ev.add_argument("--reason", required=True)
    ev.add_argument("--drill", action="store_true")

    tl = sub.add_parser("threat-level", help="site threat level", parents=[common])
    tls = tl.add_subparsers(dest="action", metavar="ACTION")
    tls.required = True
    st = tls.add_parser("set", help="set the threat level 0..7", parents=[common])
    st.add_argument("level", type=int, choices=range(8), metavar="N")

    fire = sub.add_parser("fire", help="fire alarm", parents=[common])
    fires = fire.add_subparsers(dest="action", metavar="ACTION")
    fires.required = True
    fires.add_parser("reset", help="reset the latched fire alarm", parents=[common])

    inc = sub.add_parser("incident", help="incident timelines", parents=[common])
    incs = inc.add_subparsers(dest="action", metavar="ACTION")
    incs.required = True
    incs.add_parser("list", help="lockdowns and evacuations so far", parents=[common])
    rep = incs.add_parser("report", help="the timeline of one incident", parents=[common])
    rep.add_argument("id", type=int)
    rep.add_argument("--format", choices=["md", "json", "html"], default="md")
    rep.add_argument("--out", type=Path, help="directory to write the report (and its plot) to")


def _lockdown_text(st: dict[str, Any]) -> str:
    lines = [f"site: {st['mode'].upper()}   threat level {st['threat_level']}"]
    if st.get("fire"):
        lines[0] += "   FIRE ALARM (latched)"
    for name, sc in sorted(st.get("scopes", {}).items()):
        if sc["mode"] == "normal":
            continue
        trig = sc.get("trigger") or {}
        drill = " DRILL" if sc.get("drill") else ""
        lines.append(
            f"  {name}: {sc['mode']}{drill} incident #{sc.get('incident')} by {trig.get('source')}"
            f" ({trig.get('who')} at {trig.get('where')}): {trig.get('reason')}"
        )
        if sc.get("first_clear"):
            lines.append(f"    all-clear 1 of 2: {sc['first_clear']}")
    doors = st.get("doors")
    if doors:
        lines.append(
            f"  doors confirmed secure {doors['confirmed']} of {doors['total']}; "
            f"failed: {', '.join(doors['failed']) or '-'}; "
            f"propped: {', '.join(doors['propped']) or '-'}"
        )
        # held doors that are open on purpose: an override, or a fire release
        lines.append(
            f"  override: {', '.join(doors.get('override', ())) or '-'}; "
            f"released: {', '.join(doors.get('released', ())) or '-'}; "
            f"pending: {', '.join(doors.get('pending', ())) or '-'}"
        )
    if st.get("fire_inputs_unknown"):
        lines.append(f"  fire inputs not readable: {', '.join(st['fire_inputs_unknown'])}")
    if st.get("persist_error"):
        lines.append(f"  ALARM: lockdown state not saved ({st['persist_error']}); retrying")
    return "\n".join(lines)


def _lockdown(args: argparse.Namespace, client: ControlClient, out: TextIO) -> int:
    as_json = bool(getattr(args, "json", False))
    cmd, action = args.command, args.action
    req: dict[str, Any] = {}
    if getattr(args, "zone", None):
        req["scope"] = args.zone
    if cmd == "lockdown":
        if action == "start":
            req["reason"] = args.reason
            req["drill"] = args.drill
            if args.level is not None:
                req["level"] = args.level
            reply = client.call("lockdown.start", **req)
        elif action == "status":
            reply = client.call("lockdown.status")
        elif action == "evacuate":
            reply = client.call("lockdown.evacuate", reason=args.reason, drill=args.drill, **req)
        else:
            pin = _read_pin(args)
            if pin is None:
                raise _Usage("give the PIN with --pin-prompt or --pin-stdin")
            reply = client.call(f"lockdown.{action}", cardholder=args.cardholder, pin=pin, **req)
    elif cmd == "threat-level":
        reply = client.call("threat-level.set", level=args.level)
    elif cmd == "fire":
        reply = client.call("fire.reset")
    else:
        return _incident(args, client, out)
    reply.pop("ok", None)
    _emit(out, as_json, reply, _lockdown_text(reply))
    return 0


def _incident(args: argparse.Namespace, client: ControlClient, out: TextIO) -> int:
    as_json = bool(getattr(args, "json", False))
    if args.action == "list":
        rows = client.call("incident.list")["incidents"]
        cols = ["id", "scope", "kind", "drill", "started", "ended", "trigger"]
        _emit(out, as_json, rows, _table(rows, [*cols, "time_to_full_lockdown_s"]))
        return 0
    fmt = args.format
    reply = client.call("incident.report", incident=args.id, format=fmt)
    text = str(reply["text"])
    if args.out is None:
        out.write(text if text.endswith("\n") else text + "\n")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"incident-{args.id}.{fmt}"
    path.write_text(text, encoding="utf-8")
    written = [path]
    if fmt == "html":
        svg = client.call("incident.report", incident=args.id, format="svg")["text"]
        plot = args.out / f"incident-{args.id}.svg"
        plot.write_text(str(svg), encoding="utf-8")
        written.append(plot)
    out.write("".join(f"wrote {p}\n" for p in written))
    return 0


def _read_pin(args: argparse.Namespace) -> str | None:
    if getattr(args, "pin_prompt", False):
        import getpass

        first = getpass.getpass("PIN: ")
        if getpass.getpass("PIN again: ") != first:
            raise _Usage("the two PINs differ")
        return first
    if getattr(args, "pin_stdin", False):
        return sys.stdin.readline().strip()
    return None


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [columns] + [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def _more(rows: list[dict[str, Any]], limit: int) -> str:
    """A hint under a full page of a list: how to ask for the next one."""
    if rows and len(rows) >= limit:
        return f"\n(first {limit} shown; the next page: --after {rows[-1]['id']})"
    return ""


def _emit(out: TextIO, as_json: bool, payload: Any, text: str) -> None:
    out.write((json.dumps(payload, indent=2) if as_json else text) + "\n")


def _management(args: argparse.Namespace, client: ControlClient, out: TextIO) -> int:
    as_json = bool(getattr(args, "json", False))
    cmd, action = args.command, args.action
    if cmd == "cardholder":
        if action == "add":
            req: dict[str, Any] = {"name": args.name, "privileges": args.privilege}
            if args.level:
                req["levels"] = args.level
            pin = _read_pin(args)
            if pin is not None:
                req["pin"] = pin
            if args.valid_from:
                req["valid_from"] = args.valid_from
            if args.valid_until:
                req["valid_until"] = args.valid_until
            reply = client.call("cardholder.add", **req)
            cid = reply["cardholder"]
            _emit(out, as_json, {"id": cid}, f"cardholder {cid} added")
        elif action == "list":
            req = {"limit": args.limit, "after": args.after}
            if args.name:
                req["name"] = args.name
            rows = client.call("cardholder.list", **req)["cardholders"]
            _emit(
                out,
                as_json,
                rows,
                _table(rows, ["id", "name", "state", "levels", "privileges", "valid_until"])
                + _more(rows, args.limit),
            )
        elif action == "show":
            reply = client.call("cardholder.show", cardholder=args.id)
            holder, creds = reply["cardholder"], reply["credentials"]
            text = "\n".join(f"{k}: {_cell(v)}" for k, v in holder.items())
            text += "\n\n" + _table(creds, ["id", "card", "format", "state", "valid_until"])
            _emit(out, as_json, {"cardholder": holder, "credentials": creds}, text)
        else:
            state = {"disable": "disabled", "enable": "active"}.get(
                action, getattr(args, "state", "")
            )
            client.call("cardholder.set-state", cardholder=args.id, state=state)
            _emit(out, as_json, {"id": args.id, "state": state}, f"cardholder {args.id}: {state}")
        return 0
    if cmd == "credential":
        if action == "add":
            req = {"cardholder": args.cardholder, "card": args.card}
            if args.valid_from:
                req["valid_from"] = args.valid_from
            if args.valid_until:
                req["valid_until"] = args.valid_until
            reply = client.call("credential.add", **req)
            _emit(
                out,
                as_json,
                {"id": reply["credential"], "card": reply["card"]},
                f"credential {reply['credential']} ({reply['card']}) added",
            )
        elif action == "revoke":
            if (args.id is None) == (args.card is None):
                raise _Usage("give a credential id or --card, not both")
            req = {"credential": args.id} if args.id is not None else {"card": args.card}
            client.call("credential.revoke", **req)
            _emit(out, as_json, {"revoked": True}, "revoked")
        elif action == "list":
            req = {"limit": args.limit, "after": args.after}
            if args.cardholder is not None:
                req["cardholder"] = args.cardholder
            rows = client.call("credential.list", **req)["credentials"]
            _emit(
                out,
                as_json,
                rows,
                _table(rows, ["id", "cardholder_id", "card", "format", "state", "valid_until"])
                + _more(rows, args.limit),
            )
        elif action == "import":
            return _import(args.file, client, out, as_json)
        elif action == "export":
            chunks = []
            for msg in _until_done(client.stream("credential.export"), "export"):
                chunks.append(str(msg.get("data", "")))
            text = "".join(chunks)
            if args.file is None:
                out.write(text)
            else:
                args.file.write_text(text, encoding="utf-8")
        return 0
    if cmd == "access-level":
        if action == "add":
            doors = [d.strip() for d in args.doors.split(",") if d.strip()]
            client.call("access-level.add", name=args.name, doors=doors, schedule=args.schedule)
            _emit(out, as_json, {"name": args.name}, f"access level {args.name} added")
        elif action == "list":
            rows = client.call("access-level.list")["levels"]
            _emit(out, as_json, rows, _table(rows, ["name", "doors", "schedule"]))
        elif action == "remove":
            client.call("access-level.remove", name=args.name)
            _emit(out, as_json, {"removed": args.name}, f"access level {args.name} removed")
        else:
            client.call(f"access-level.{action}", cardholder=args.cardholder, name=args.name)
            done = {"grant": "granted", "revoke": "revoked"}[action]
            _emit(out, as_json, {"ok": True}, f"{done} {args.name} for {args.cardholder}")
        return 0
    if cmd == "reader":
        if action == "install":
            reply = client.call("reader.install", reader=args.name, window_s=args.window)
            _emit(
                out,
                as_json,
                reply,
                f"{args.name}: install mode open for {reply['window_s']:g}s - power the reader "
                "with its default key now",
            )
            return 0
        rows = client.call("reader.list")["readers"]
        if action == "status" and args.name:
            rows = [r for r in rows if r["reader"] == args.name]
            if not rows:
                raise CommandError(f"unknown reader {args.name!r}")
        cols = ["reader", "door", "direction", "bus", "online", "secure", "tamper", "last_alarm"]
        if action == "list":
            cols = ["reader", "door", "direction", "bus", "address", "secure_required"]
        _emit(out, as_json, rows, _table(rows, cols))
        return 0
    raise _Usage(f"unknown command {cmd!r}")  # pragma: no cover


def _import(path: Path, client: ControlClient, out: TextIO, as_json: bool) -> int:
    try:
        data = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _Usage(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise _Usage(f"{path} is not UTF-8 (byte {exc.start})") from None
    upload = client.call("credential.import.begin", name=str(path))
    token, chunk = upload["upload"], int(upload["chunk_max"])
    try:
        for piece in _pieces(data, chunk):
            client.call("credential.import.chunk", upload=token, data=piece)
    except CommandError:
        with contextlib.suppress(CommandError, DaemonNotRunningError, OSError, ValueError):
            client.call("credential.import.abort", upload=token)  # no orphaned upload
        raise
    tty = sys.stderr.isatty()
    report: dict[str, Any] = {}
    for msg in _until_done(client.stream("credential.import.commit", upload=token), "import"):
        if "progress" in msg and tty:
            done, total = int(msg["progress"]), max(1, int(msg["total"]))
            bar = "#" * (30 * done // total)
            sys.stderr.write(f"\r[{bar:<30}] {done}/{total} rows")
            sys.stderr.flush()
        if msg.get("done"):
            report = msg
    if tty:
        sys.stderr.write("\n")
    if as_json:
        out.write(json.dumps(report, indent=2) + "\n")
    elif report.get("committed"):
        out.write(
            f"imported {report['rows']} rows: {report['cardholders']} cardholders, "
            f"{report['credentials']} credentials in {report['elapsed_s']}s\n"
        )
    else:
        out.write(
            f"nothing imported: {report.get('rejected_count', 0)} of {report.get('rows', 0)} "
            "rows rejected\n"
        )
        for r in report.get("rejected", []):
            out.write(f"{path}:{r['line']}: {r['reason']}\n")
    return 0 if report.get("committed") else EXIT_FAILED


def _pieces(data: str, limit: int) -> Iterator[str]:
    """``data`` cut into pieces whose JSON encoding is at most ``limit`` bytes.

    The request line is limited in bytes, and JSON escapes a non-ASCII character as up to 12
    bytes (a quote as 2): a piece of ``limit`` characters may be far longer on the wire.
    """
    start = 0
    while start < len(data):
        size = min(limit, len(data) - start)
        while True:
            piece = data[start : start + size]
            encoded = len(json.dumps(piece))
            if encoded <= limit or size == 1:
                break
            size = max(1, size * limit // encoded)
        yield piece
        start += size


def _until_done(messages: Iterator[dict[str, Any]], what: str) -> Iterator[dict[str, Any]]:
    """The lines of a stream up to its ``done`` line (included).

    An error line ends the stream with CommandError (the daemon stays on the connection, so
    waiting for more would hang); a stream that ends without ``done`` lost the daemon.
    """
    for msg in messages:
        if msg.get("ok") is False:
            raise CommandError(str(msg.get("error", f"{what} failed")))
        yield msg
        if msg.get("done"):
            return
    raise DaemonNotRunningError(f"the daemon closed the connection before the {what} ended")


def _socket(args: argparse.Namespace) -> Path:
    path = getattr(args, "socket", None)
    if path is not None:
        return Path(path)
    env = os.environ.get("WARDING_SOCKET")
    return Path(env) if env else DEFAULT_SOCKET


def format_event(e: dict[str, Any]) -> str:
    """One human line per journal entry."""
    data = e.get("data") or {}
    subject = e.get("door") or e.get("device") or ""
    details = " ".join(f"{k}={v}" for k, v in data.items() if v is not None and v != "")
    return (
        f"{e.get('seq', ''):>7} {e.get('ts', '')} {e.get('kind', ''):<18} {subject:<16} {details}"
    )


def format_status(status: dict[str, Any]) -> str:
    """The status table, with the site's lockdown state first and prominent."""
    lines = []
    ld = status.get("lockdown")
    if ld:
        banner = _lockdown_text(ld)
        if ld["mode"] != "normal" or ld.get("fire") or len(banner.splitlines()) > 1:
            width = max(len(x) for x in banner.splitlines()) + 4
            lines += ["#" * width, *(f"# {x}" for x in banner.splitlines()), "#" * width, ""]
        else:
            lines += [banner, ""]
    lines += [
        f"controller {status.get('controller')}  version {status.get('version')}  "
        f"uptime {status.get('uptime_s')}s  journal #{status.get('journal_seq')}",
        "",
    ]
    header = ("DOOR", "ZONE", "STATE", "LOCK", "CONTACT", "ALARMS", "BOARD", "LINK")
    rows = [header]
    for d in status.get("doors", []):
        alarms = ",".join(d.get("alarms", []) + [f"fault:{f}" for f in d.get("faults", [])])
        state = d["state"]
        if d.get("pulse_remaining_s"):
            state += f" ({d['pulse_remaining_s']}s)"
        rows.append(
            (
                d["door"],
                d["zone"],
                state,
                d["lock"],
                d["contact"],
                alarms or "-",
                d["board"],
                d["link"],
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    readers = status.get("readers", [])
    if readers:
        lines.append("")
        rrows = [("READER", "DOOR", "ONLINE", "SECURE", "TAMPER", "LAST ALARM")]
        for r in readers:
            secure = "-" if r.get("secure") is None else ("yes" if r["secure"] else "NO")
            rrows.append(
                (
                    r["reader"],
                    r["door"],
                    "yes" if r.get("online") else "NO",
                    secure,
                    "YES" if r.get("tamper") else "no",
                    r.get("last_alarm") or "-",
                )
            )
        rw = [max(len(str(x[i])) for x in rrows) for i in range(len(rrows[0]))]
        for x in rrows:
            lines.append("  ".join(str(c).ljust(w) for c, w in zip(x, rw, strict=True)).rstrip())
    lines.append("")
    for b in status.get("boards", []):
        err = f"  ({b['error']})" if b.get("error") and b.get("link") != "up" else ""
        lines.append(
            f"board {b['board']:<10} {b['link']:<12} {b['endpoint']} unit {b['unit_id']}{err}"
        )
    return "\n".join(lines)


def _check_usage(args: argparse.Namespace) -> None:
    """Argument combinations argparse cannot check, before any connection is made."""
    if args.command == "door" and args.duration is not None and args.action != "pulse":
        raise _Usage("--duration applies to pulse only")
    if args.command == "events" and not 1 <= args.limit <= 10_000:
        raise _Usage("--limit must be between 1 and 10000")
    if (
        args.command == "credential"
        and args.action == "revoke"
        and (args.id is None) == (args.card is None)
    ):
        raise _Usage("give a credential id or --card, not both")


def _run(args: argparse.Namespace, out: TextIO) -> int:
    as_json = bool(getattr(args, "json", False))
    _check_usage(args)
    with ControlClient(_socket(args)) as client:
        if args.command == "status":
            reply = client.call("status")
            reply.pop("ok", None)
            out.write(
                json.dumps(reply, indent=2) + "\n" if as_json else format_status(reply) + "\n"
            )
            return 0
        if args.command == "door":
            if args.duration is not None and args.action != "pulse":
                raise _Usage("--duration applies to pulse only")
            req: dict[str, Any] = {"action": args.action, "door": args.name}
            if args.duration is not None:
                req["duration_s"] = args.duration
            if args.override:
                req["override"] = True
            result = client.call("door", **req)["result"]
            if as_json:
                out.write(json.dumps(result) + "\n")
            else:
                verdict = (
                    "confirmed" if result["confirmed"] else f"NOT confirmed: {result['error']}"
                )
                out.write(
                    f"{result['door']}: {result['action']} {verdict}; now {result['phase']}\n"
                )
            return 0 if result["confirmed"] else EXIT_FAILED
        if args.command in ("cardholder", "credential", "access-level", "reader"):
            return _management(args, client, out)
        if args.command in ("lockdown", "threat-level", "fire", "incident"):
            return _lockdown(args, client, out)
        if args.command == "events":
            if not 1 <= args.limit <= 10_000:
                raise _Usage("--limit must be between 1 and 10000")
            req = {"limit": args.limit}
            if args.after is not None:
                req["after"] = args.after
            if args.follow:
                for msg in client.stream("events", follow=True, **req):
                    event = msg.get("event")
                    if event is not None:
                        out.write((json.dumps(event) if as_json else format_event(event)) + "\n")
                        out.flush()
                return 0
            events = client.call("events", **req)["events"]
            for event in events:
                out.write((json.dumps(event) if as_json else format_event(event)) + "\n")
            return 0
    raise _Usage(f"unknown command {args.command!r}")  # pragma: no cover


class _Usage(Exception):
    pass


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of the ``wardctl`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args, out or sys.stdout)
    except _Usage as exc:
        parser.print_usage(sys.stderr)
        print(f"wardctl: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DaemonNotRunningError as exc:
        print(f"wardctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except CommandError as exc:
        print(f"wardctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except (OSError, ValueError) as exc:
        print(f"wardctl: lost the daemon connection: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE


if __name__ == "__main__":
    sys.exit(main())
