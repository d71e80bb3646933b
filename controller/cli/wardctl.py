"""``wardctl``: the technician's CLI; talks to the daemon through its control socket only.

Exit status: 0 success, 1 the daemon refused or could not confirm the command, 2 usage error,
3 the daemon is not reachable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import stat
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any, TextIO

from controller.api.client import DEFAULT_SOCKET, ControlClient
from controller.errors import CommandError, DaemonNotRunningError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

IMPORT_MAX_BYTES = 512 * 1024 * 1024  # the daemon's upload limit (control-api.md, import)
LIST_LIMIT_MAX = 100_000  # --limit of the cardholder and credential lists
PULSE_MAX_S = 3600.0  # the daemon's limit for a pulse (control-api.md, door)
FILE_MODE = 0o640  # files wardctl writes hold personal data: like the daemon's report writer
DIR_MODE = 0o750


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
    door.add_argument(
        "--duration", type=_pulse_s, help="pulse length in seconds, 0 < S <= 3600 (pulse only)"
    )
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


def _list_limit(text: str) -> int:
    """argparse type: --limit of a list (1 .. 100000)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= LIST_LIMIT_MAX:
        raise argparse.ArgumentTypeError(f"must be between 1 and {LIST_LIMIT_MAX} (got {text})")
    return value


def _pulse_s(text: str) -> float:
    """argparse type: a pulse length in seconds, more than 0 and at most 3600."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= PULSE_MAX_S):
        raise argparse.ArgumentTypeError(
            f"--duration must be more than 0 and at most {PULSE_MAX_S:g} seconds (got {text})"
        )
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
    lst.add_argument("--limit", type=_list_limit, default=100, help="at most N rows (default 100)")
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
    lst.add_argument(
        "--limit", type=_list_limit, default=1000, help="at most N rows (default 1000)"
    )
    lst.add_argument("--after", type=_after_id, default=0, help="ids above this (the next page)")
    imp = crs.add_parser("import", help="import a CSV, all or nothing", parents=[common])
    imp.add_argument("file", type=Path)
    exp = crs.add_parser("export", help="export cardholders and masked cards", parents=[common])
    exp.add_argument("file", nargs="?", help="default, or '-': stdout")

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
    rep.add_argument(
        "--format", choices=["md", "json", "html"], help="default: md (json with --json)"
    )
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
    return "\n".join(_printable(line) for line in lines)  # a reason is text from anyone


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
        else:  # the PIN was read before connecting (_prepare)
            reply = client.call(
                f"lockdown.{action}", cardholder=args.cardholder, pin=args.pin, **req
            )
    elif cmd == "threat-level":
        reply = client.call("threat-level.set", level=args.level)
    elif cmd == "fire":
        reply = client.call("fire.reset")
    else:
        return _incident(args, client, out)
    reply.pop("ok", None)
    warning = reply.get("warning")
    if warning and not as_json:  # e.g. a threat level out of range: the lockdown still happened
        print(f"wardctl: warning: {_printable(str(warning))}", file=sys.stderr)
    _emit(out, as_json, reply, _lockdown_text(reply))
    return 0


def _incident(args: argparse.Namespace, client: ControlClient, out: TextIO) -> int:
    as_json = bool(getattr(args, "json", False))
    if args.action == "list":
        rows = client.call("incident.list")["incidents"]
        cols = ["id", "scope", "kind", "drill", "started", "ended", "trigger"]
        _emit(out, as_json, rows, _table(rows, [*cols, "time_to_full_lockdown_s"]))
        return 0
    fmt = args.format or ("json" if as_json else "md")
    reply = client.call("incident.report", incident=args.id, format=fmt)
    text = reply.get("text")
    if not isinstance(text, str):
        raise client.unexpected()
    if args.out is None:
        if not as_json:
            out.write(text if text.endswith("\n") else text + "\n")
        elif fmt == "json":  # the report itself, as one JSON document
            try:
                report = json.loads(text)
            except ValueError:
                raise client.unexpected() from None
            out.write(json.dumps(report, indent=2) + "\n")
        else:  # --json with an explicit other format: the text in a JSON envelope
            out.write(json.dumps({"incident": args.id, "format": fmt, "text": text}) + "\n")
        return 0
    files = {f"incident-{args.id}.{fmt}": text}
    if fmt == "html":
        svg = client.call("incident.report", incident=args.id, format="svg").get("text")
        if not isinstance(svg, str):
            raise client.unexpected()
        files[f"incident-{args.id}.svg"] = svg
    _make_dir(args.out)
    written = []
    for name, body in files.items():
        path = args.out / name
        _write_atomic(path, body if body.endswith("\n") else body + "\n")
        written.append(path)
    if as_json:
        out.write(json.dumps({"written": [str(p) for p in written]}, indent=2) + "\n")
    else:
        out.write("".join(f"wrote {_printable(str(p))}\n" for p in written))
    return 0


class _LocalFileError(Exception):
    """A local file or directory wardctl must write cannot be (exit 2: nothing of the daemon's)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot write {path}: {reason}")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _check_out_dir(path: Path) -> None:
    """_LocalFileError unless ``path`` is, or can be made as, a writable directory."""
    probe = path
    while True:
        try:
            st = os.stat(probe)
        except FileNotFoundError:
            if probe.parent == probe:
                raise _LocalFileError(path, "No such file or directory") from None
            probe = probe.parent
            continue
        except OSError as exc:
            raise _LocalFileError(path, _reason(exc)) from None
        break
    if not stat.S_ISDIR(st.st_mode):
        what = "Not a directory" if probe == path else f"{probe} is not a directory"
        raise _LocalFileError(path, what)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise _LocalFileError(path, "Permission denied")


def _make_dir(path: Path) -> None:
    """Make ``path`` (and missing parents) with mode 0750; _LocalFileError if it cannot be."""
    missing: list[Path] = []
    probe = path
    while not probe.exists() and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    try:
        for directory in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, DIR_MODE)
        if not path.is_dir():
            raise NotADirectoryError(20, "Not a directory")
    except OSError as exc:
        raise _LocalFileError(path, _reason(exc)) from None


def _write_atomic(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a temp file beside it, then rename), mode 0640."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise _LocalFileError(path, _reason(exc)) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _LocalFileError(path, _reason(exc)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _out_plan(path: Path) -> tuple[Path, bool]:
    """Where to write the output file ``path`` and whether atomically; _LocalFileError if it
    cannot be written (checked before anything is sent, and again when writing).

    A file (or one to be made) is written atomically, mode 0640, through a symlink to its
    target; a special file (a FIFO, /dev/stdout) in place, and so is an existing file in a
    directory we may not write (its own mode is kept).
    """
    try:
        st = os.stat(path)  # (follows a symlink)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise _LocalFileError(path, _reason(exc)) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise _LocalFileError(path, "Is a directory")
    if (st is not None and not stat.S_ISREG(st.st_mode)) or _through_proc(path):
        # a special file, or an open file named through /proc (/dev/stdout redirected to a
        # file): written in place, through the name as given
        if not os.access(path, os.W_OK):
            raise _LocalFileError(path, "Permission denied")
        return path, False
    target = path.resolve() if path.is_symlink() else path
    parent = target.parent
    try:
        pst = os.stat(parent)
    except OSError as exc:
        raise _LocalFileError(path, _reason(exc)) from None
    if not stat.S_ISDIR(pst.st_mode):
        raise _LocalFileError(path, "Not a directory")
    if os.access(parent, os.W_OK | os.X_OK):
        return target, True
    if st is not None and os.access(path, os.W_OK):
        return path, False
    raise _LocalFileError(path, "Permission denied")


def _through_proc(path: Path) -> bool:
    """Whether ``path`` names a file through /proc or /dev/fd (its link text is not a path
    to write to: ``/proc/self/fd/1`` may read ``/tmp/out.csv (deleted)``)."""
    hop = path
    for _ in range(40):  # (the kernel's own limit on a chain of links)
        if str(hop).startswith(("/proc/", "/dev/fd/")):
            return True
        if not hop.is_symlink():
            return False
        link = Path(os.readlink(hop))
        hop = link if link.is_absolute() else hop.parent / link
    return True


def _check_out_file(path: Path) -> None:
    """_LocalFileError unless ``path`` can be written (checked before anything is sent)."""
    _out_plan(path)


def _own_fd(path: Path) -> int | None:
    """The descriptor of ours that ``path`` names (/dev/stdout, /dev/fd/N, /proc/self/fd/N)."""
    text = str(path)
    named = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}
    if text in named:
        return named[text]
    for prefix in ("/dev/fd/", "/proc/self/fd/", f"/proc/{os.getpid()}/fd/"):
        if text.startswith(prefix) and text[len(prefix) :].isdigit():
            return int(text[len(prefix) :])
    return None


def _write_out_file(path: Path, text: str) -> None:
    """Write ``path`` as ``_out_plan`` says: atomically (mode 0640) or in place."""
    target, atomic = _out_plan(path)
    if atomic:
        _write_atomic(target, text)
        return
    fd = _own_fd(path)
    try:
        if fd is not None:  # through our own descriptor: at its offset, as a shell expects
            with os.fdopen(os.dup(fd), "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
            return
        with target.open("w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    except OSError as exc:
        raise _LocalFileError(path, _reason(exc)) from None


def _read_pin(args: argparse.Namespace) -> str | None:
    """The PIN from the terminal or stdin as asked; None if neither was asked.

    End of input, or an empty PIN, when a PIN was asked for is a usage error.
    """
    if getattr(args, "pin_prompt", False):
        import getpass

        try:
            with warnings.catch_warnings():
                # without a terminal getpass reads stdin and says so itself, in one line
                warnings.simplefilter("ignore", getpass.GetPassWarning)
                first = getpass.getpass("PIN: ")
                if not first:
                    raise _Usage("no PIN given")
                again = getpass.getpass("PIN again: ")
        except EOFError:
            if sys.stderr.isatty():
                sys.stderr.write("\n")  # end the prompt's line
            raise _Usage("no PIN given (end of input at the PIN prompt)") from None
        if again != first:
            raise _Usage("the two PINs differ")
        return first
    if getattr(args, "pin_stdin", False):
        pin = sys.stdin.readline().strip()
        if not pin:
            raise _Usage("no PIN given on standard input")
        return pin
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
        return _printable(",".join(str(v) for v in value)) or "-"
    return _printable(str(value))


# C0 and C1 controls, DEL, line/paragraph separators and bidirectional formatting characters:
# shown escaped, so text from the journal or the store cannot forge a line, move the cursor,
# recolour the terminal or reorder what is shown
_UNSAFE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _printable(text: str) -> str:
    """``text`` safe for a terminal: control and bidi characters escaped (\\n, \\x1b, \\u202e)."""
    return _UNSAFE.sub(_escape, text)


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
            if args.pin is not None:  # read before connecting (_prepare)
                req["pin"] = args.pin
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
            return _import(args.file, args.import_data, client, out, as_json)
        elif action == "export":
            chunks = []
            for msg in _until_done(client.stream("credential.export"), "export"):
                chunks.append(str(msg.get("data", "")))
            text = "".join(chunks)
            if args.file in (None, "-"):  # (the argument as typed: "./-" is a file)
                out.write(text)
            else:  # checked before anything was sent (_prepare); written once all arrived
                _write_out_file(Path(args.file), text)
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


def _read_import(path: Path) -> str:
    """The import file's text: a regular file of at most the daemon's upload limit, UTF-8.

    Read before connecting; anything else is a usage error (a device or FIFO is never read).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _Usage(f"cannot read {path}: {_reason(exc)}") from None
    st = os.fstat(fd)
    problem = ""
    if stat.S_ISDIR(st.st_mode):
        problem = f"cannot read {path}: Is a directory"
    elif not stat.S_ISREG(st.st_mode):
        problem = f"cannot read {path}: not a regular file"
    too_big = f"{path} is larger than {IMPORT_MAX_BYTES // 2**20} MiB (the import limit)"
    if not problem and st.st_size > IMPORT_MAX_BYTES:
        problem = too_big
    if problem:
        os.close(fd)
        raise _Usage(problem)
    with os.fdopen(fd, "rb") as f:
        try:
            raw = f.read(IMPORT_MAX_BYTES + 1)
        except OSError as exc:
            raise _Usage(f"cannot read {path}: {_reason(exc)}") from None
    if len(raw) > IMPORT_MAX_BYTES:  # it grew while we read it
        raise _Usage(too_big)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Usage(f"{path} is not UTF-8 (byte {exc.start})") from None


def _import(path: Path, data: str, client: ControlClient, out: TextIO, as_json: bool) -> int:
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
            out.write(f"{path}:{r['line']}: {_printable(str(r['reason']))}\n")
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
    """One human line per journal entry, control characters escaped (it is one line)."""
    data = e.get("data") or {}
    if not isinstance(data, dict):
        data = {"data": data}
    subject = str(e.get("door") or e.get("device") or "")
    details = " ".join(f"{k}={v}" for k, v in data.items() if v is not None and v != "")
    line = (
        f"{e.get('seq', '')!s:>7} {e.get('ts', '')} {e.get('kind', '')!s:<18} {subject:<16} "
        f"{details}"
    )
    return _printable(line)


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
        _printable(
            f"controller {status.get('controller')}  version {status.get('version')}  "
            f"uptime {status.get('uptime_s')}s  journal #{status.get('journal_seq')}"
        ),
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
    cells = [[_printable(str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
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
        rcells = [[_printable(str(c)) for c in x] for x in rrows]
        rw = [max(len(x[i]) for x in rcells) for i in range(len(rcells[0]))]
        for rrow in rcells:
            lines.append("  ".join(c.ljust(w) for c, w in zip(rrow, rw, strict=True)).rstrip())
    lines.append("")
    for b in status.get("boards", []):
        err = f"  ({b['error']})" if b.get("error") and b.get("link") != "up" else ""
        lines.append(
            _printable(
                f"board {b['board']!s:<10} {b['link']!s:<12} {b['endpoint']} "
                f"unit {b['unit_id']}{err}"
            )
        )
    return "\n".join(lines)


def check_status(reply: dict[str, Any]) -> bool:
    """True if ``reply`` has the shape of the daemon's ``status`` reply (lists of objects)."""
    doors, boards = reply.get("doors"), reply.get("boards")
    readers, lockdown = reply.get("readers", []), reply.get("lockdown")
    door_keys = ("door", "zone", "state", "lock", "contact", "board", "link")
    board_keys = ("board", "link", "endpoint", "unit_id")
    return (
        isinstance(doors, list)
        and all(isinstance(d, dict) and all(k in d for k in door_keys) for d in doors)
        and isinstance(boards, list)
        and all(isinstance(b, dict) and all(k in b for k in board_keys) for b in boards)
        and isinstance(readers, list)
        and all(isinstance(r, dict) for r in readers)
        and (lockdown is None or (isinstance(lockdown, dict) and "mode" in lockdown))
    )


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
    if (
        args.command == "lockdown"
        and args.action in ("clear", "end-evacuation")
        and not (args.pin_prompt or args.pin_stdin)
    ):
        raise _Usage("give the PIN with --pin-prompt or --pin-stdin")


def _prepare(args: argparse.Namespace) -> None:
    """Everything local, before connecting: usage, PINs, files to read and places to write.

    A problem found here is a usage error (exit 2) and nothing is sent to the daemon.
    """
    _check_usage(args)
    if args.command == "cardholder" and args.action == "add":
        args.pin = _read_pin(args)
    if args.command == "lockdown" and args.action in ("clear", "end-evacuation"):
        args.pin = _read_pin(args)
    if args.command == "credential" and args.action == "import":
        args.import_data = _read_import(args.file)
    exporting = args.command == "credential" and args.action == "export"
    if exporting and args.file not in (None, "-"):  # ("-": stdout, as without FILE)
        _check_out_file(Path(args.file))
    if args.command == "incident" and args.action == "report" and args.out is not None:
        _check_out_dir(args.out)


def _run(args: argparse.Namespace, out: TextIO) -> int:
    as_json = bool(getattr(args, "json", False))
    _prepare(args)
    with ControlClient(_socket(args)) as client:
        if args.command == "status":
            reply = client.call("status")
            reply.pop("ok", None)
            if not check_status(reply):
                raise client.unexpected()
            out.write(
                json.dumps(reply, indent=2) + "\n" if as_json else format_status(reply) + "\n"
            )
            return 0
        if args.command == "door":
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
                    _printable(
                        f"{result['door']}: {result['action']} {verdict}; now {result['phase']}"
                    )
                    + "\n"
                )
            return 0 if result["confirmed"] else EXIT_FAILED
        if args.command in ("cardholder", "credential", "access-level", "reader"):
            return _management(args, client, out)
        if args.command in ("lockdown", "threat-level", "fire", "incident"):
            return _lockdown(args, client, out)
        if args.command == "events":
            req = {"limit": args.limit}
            if args.after is not None:
                req["after"] = args.after
            if args.follow:
                return _follow(client, req, out, as_json)
            events = client.call("events", **req)["events"]
            for event in events:
                out.write((json.dumps(event) if as_json else format_event(event)) + "\n")
            return 0
    raise _Usage(f"unknown command {args.command!r}")  # pragma: no cover


def _follow(client: ControlClient, req: dict[str, Any], out: TextIO, as_json: bool) -> int:
    """``events --follow``: print entries until the daemon ends the stream (0) or reports an
    error on it (1, the error on stderr)."""
    for msg in client.stream("events", follow=True, **req):
        if msg.get("ok") is False:
            out.flush()
            error = _printable(str(msg.get("error") or "the event stream failed"))
            print(f"wardctl: events: {error}", file=sys.stderr)
            return EXIT_FAILED
        event = msg.get("event")
        if event is not None:
            if not isinstance(event, dict):
                raise client.unexpected()
            out.write((json.dumps(event) if as_json else format_event(event)) + "\n")
            out.flush()
    return 0


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
        print(f"wardctl: error: {_printable(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except _LocalFileError as exc:
        print(f"wardctl: {_printable(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except DaemonNotRunningError as exc:
        print(f"wardctl: {_printable(str(exc))}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except CommandError as exc:
        print(f"wardctl: {_printable(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except (KeyError, TypeError, AttributeError, IndexError):
        # a reply of the wrong shape: whatever answers on the socket is not the daemon
        socket = _printable(str(_socket(args)))
        print(
            f"wardctl: unexpected reply from {socket} (not a warding control socket?)",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    except (OSError, ValueError) as exc:
        print(f"wardctl: lost the daemon connection: {_printable(str(exc))}", file=sys.stderr)
        return EXIT_UNREACHABLE


if __name__ == "__main__":
    sys.exit(main())
