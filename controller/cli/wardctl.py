"""``wardctl``: the technician's CLI; talks to the daemon through its control socket only.

Exit status: 0 success, 1 the daemon refused or could not confirm the command, 2 usage error,
3 the daemon is not reachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
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

    events = sub.add_parser("events", help="show journal events", parents=[common])
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    events.add_argument("--limit", "-n", type=int, default=20, help="how many past events")
    events.add_argument("--after", type=int, help="events after this sequence number")
    return parser


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
        f"{e.get('seq', ''):>7} {e.get('ts', '')} {e.get('kind', ''):<14} {subject:<16} {details}"
    )


def format_status(status: dict[str, Any]) -> str:
    """The status table."""
    lines = [
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
    lines.append("")
    for b in status.get("boards", []):
        err = f"  ({b['error']})" if b.get("error") and b.get("link") != "up" else ""
        lines.append(
            f"board {b['board']:<10} {b['link']:<12} {b['endpoint']} unit {b['unit_id']}{err}"
        )
    return "\n".join(lines)


def _run(args: argparse.Namespace, out: TextIO) -> int:
    as_json = bool(getattr(args, "json", False))
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
