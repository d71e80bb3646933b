"""``warding sim ...``: run the Modbus simulators in the foreground and steer them from a shell."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from controller.errors import ConfigError
from controller.settings import RtuBoardSettings, load_settings
from drivers.errors import WardingError
from simulators.control import (
    DEFAULT_SOCKET,
    DOOR_ACTIONS,
    SimControlServer,
    SimControlUnavailableError,
    control_request,
    default_socket_path,
)
from simulators.modbus_board import SimRtuLine
from simulators.ptyline import PathInUseError
from simulators.site import SimSite

__all__ = ["main", "register", "run"]

PROG = "warding sim"


def _control_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--control",
        metavar="PATH",
        help=f"simulator control socket (default: $WARDING_SIM_SOCKET or {DEFAULT_SOCKET})",
    )


def _switch(text: str) -> bool:
    """Parse on/off for an input value."""
    if text in {"on", "true", "1"}:
        return True
    if text in {"off", "false", "0"}:
        return False
    raise argparse.ArgumentTypeError(f"expected on or off (got {text!r})")


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    """argparse type: an integer ``lo..hi`` (the range the simulator accepts)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer (got {text!r})") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected {lo}..{hi} (got {value})")
        return value

    parse.__name__ = "integer"  # argparse names the type in "invalid ... value"
    return parse


_non_negative = _int_in(0, 65535)  # a coil or input index
_count = _int_in(0, 1_000_000)  # requests to drop or corrupt
_delay_ms = _int_in(0, 600_000)  # up to 10 minutes
_exception_code = _int_in(0, 255)  # 0 = off


def _hold_s(text: str) -> float:
    """argparse type: how long REX is held, 0..60 seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (got {text!r})") from None
    if not 0.0 <= value <= 60.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected 0..60 seconds (got {text})")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``sim`` command group to a CLI's subparsers."""
    sim = subparsers.add_parser(
        "sim",
        help="run and steer device simulators",
        description="Run the Modbus board simulators for a site file and steer them.",
    )
    sim.set_defaults(sim_run=run)
    cmds = sim.add_subparsers(dest="sim_command", metavar="COMMAND", required=True)

    modbus = cmds.add_parser(
        "modbus",
        help="simulate every Modbus board of a site file (foreground, until Ctrl-C)",
        description="Simulate every Modbus board of the site file in the foreground.",
    )
    modbus.add_argument(
        "--config", metavar="FILE", help="site file (default: the embedded demo site)"
    )
    _control_option(modbus)

    door = cmds.add_parser("door", help="act on a simulated door")
    door.add_argument("action", choices=DOOR_ACTIONS, help="what a person does")
    door.add_argument("name", help="door name")
    door.add_argument(
        "--hold-s", type=_hold_s, default=0.5, metavar="S", help="how long rex holds the button"
    )
    _control_option(door)

    board = cmds.add_parser("board", help="inject faults into a simulated board")
    actions = board.add_subparsers(dest="board_action", metavar="ACTION", required=True)
    for name, text in (
        ("offline", "take the board off the bus (TCP: stop listening)"),
        ("online", "put the board back on the bus"),
        ("clear", "remove every fault and bring the board online"),
    ):
        p = actions.add_parser(name, help=text)
        p.add_argument("name", help="board name")
        _control_option(p)
    p = actions.add_parser("delay", help="delay every reply")
    p.add_argument("name", help="board name")
    p.add_argument("ms", type=_delay_ms, help="delay in milliseconds, 0..600000 (0 = none)")
    _control_option(p)
    for name, text in (
        ("drop", "send no reply to the next N requests"),
        ("corrupt", "corrupt the next N replies on the wire"),
    ):
        p = actions.add_parser(name, help=text)
        p.add_argument("name", help="board name")
        p.add_argument("n", type=_count, help="how many (0..1000000)")
        _control_option(p)
    p = actions.add_parser("exception", help="answer every request with a Modbus exception")
    p.add_argument("name", help="board name")
    p.add_argument("code", type=_exception_code, help="exception code 1..255, e.g. 4; 0 = stop")
    _control_option(p)
    p = actions.add_parser("stuck", help="weld a relay on or off, or release it")
    p.add_argument("name", help="board name")
    p.add_argument("coil", type=_non_negative, help="coil index")
    p.add_argument("state", choices=("on", "off", "release"))
    _control_option(p)
    p = actions.add_parser("garbage", help="write raw bytes onto the line now")
    p.add_argument("name", help="board name")
    p.add_argument("hex", help="bytes in hex, e.g. deadbeef")
    _control_option(p)
    p = actions.add_parser("input", help="drive a discrete input (e.g. a fire alarm contact)")
    p.add_argument("name", help="board name")
    p.add_argument("input", type=_non_negative, help="input index")
    p.add_argument("value", type=_switch, help="on or off")
    _control_option(p)

    reader = cmds.add_parser("reader", help="a person at a simulated badge reader")
    ractions = reader.add_subparsers(dest="reader_action", metavar="ACTION", required=True)
    p = ractions.add_parser("card", help="present a card (h10301:12:345, uid:04A1B2C3, ...)")
    p.add_argument("name", help="reader name")
    p.add_argument("card")
    _control_option(p)
    p = ractions.add_parser("keys", help="type on the reader's keypad (e.g. 1234#)")
    p.add_argument("name", help="reader name")
    p.add_argument("keys")
    _control_option(p)

    status = cmds.add_parser("status", help="show doors and boards")
    status.add_argument("--json", action="store_true", help="print the raw JSON status")
    _control_option(status)

    from simulators import cli_serial_reader

    cli_serial_reader.register(cmds)
    try:
        from simulators import cli_osdp
    except ImportError:  # libosdp missing: the OSDP simulator is unavailable, the rest works
        pass
    else:
        cli_osdp.register(cmds)


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``sim`` command; return the exit status."""
    command = getattr(args, "sim_command", None)
    if command == "modbus":
        return _run_modbus(args)
    if command == "serial-reader":
        from simulators import cli_serial_reader

        return cli_serial_reader.run(args)
    if command == "osdp":
        from simulators import cli_osdp

        return cli_osdp.run(args)
    request = _request_for(args)
    if request is None:
        print(f"{PROG}: unknown command {command!r}", file=sys.stderr)
        return 2
    path = args.control or default_socket_path()
    try:
        reply = asyncio.run(control_request(path, request))
    except SimControlUnavailableError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"{PROG}: {reply.get('error', 'request failed')}", file=sys.stderr)
        return 1
    if command == "status":
        print(json.dumps(reply, indent=2) if args.json else _format_status(reply))
        return 0
    if command == "door":
        return _report_door(args, reply)
    if command == "reader":
        print(f"reader {args.name}: {args.reader_action} sent")
        return 0
    board = reply.get("board", {})
    state = "online" if board.get("online") else "offline"
    print(f"board {args.name}: {state}, {_faults_text(board.get('faults') or {}) or 'no faults'}")
    return 0


def _faults_text(faults: dict[str, Any]) -> str:
    """Render a board's active faults for people: ``delay 150 ms, coil 3 stuck on``."""
    parts: list[str] = []
    for key, value in faults.items():
        if key == "offline":
            continue
        if key == "delay_s":
            parts.append(f"delay {round(float(value) * 1000)} ms")
        elif key == "drop_next":
            parts.append(f"drop next {value}")
        elif key == "corrupt_next":
            parts.append(f"corrupt next {value}")
        elif key == "exception_code":
            parts.append(f"exception {value}")
        elif key == "stuck" and isinstance(value, dict):
            parts += [f"coil {i} stuck {'on' if on else 'off'}" for i, on in value.items()]
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def _request_for(args: argparse.Namespace) -> dict[str, Any] | None:
    command = getattr(args, "sim_command", None)
    if command == "status":
        return {"cmd": "status"}
    if command == "reader":
        action = args.reader_action
        value = {"card": getattr(args, "card", None), "keys": getattr(args, "keys", None)}
        return {"cmd": "reader", "action": action, "name": args.name, action: value[action]}
    if command == "door":
        req: dict[str, Any] = {"cmd": "door", "action": args.action, "name": args.name}
        if args.action == "rex":
            req["hold_s"] = args.hold_s
        return req
    if command != "board":
        return None
    action = args.board_action
    req = {"cmd": "board", "action": action, "name": args.name}
    if action == "delay":
        req["ms"] = args.ms
    elif action in {"drop", "corrupt"}:
        req["n"] = args.n
    elif action == "exception":
        req["code"] = args.code or None
    elif action == "stuck":
        req["coil"] = args.coil
        if args.state == "release":
            req["action"] = "unstuck"
        else:
            req["value"] = args.state == "on"
    elif action == "garbage":
        req["hex"] = args.hex
    elif action == "input":
        req["input"] = args.input
        req["value"] = args.value
    return req


def _report_door(args: argparse.Namespace, reply: dict[str, Any]) -> int:
    door = reply.get("door", {})
    if args.action in {"open", "force"} and not reply.get("opened"):
        print(f"{PROG}: door {args.name} is locked: not opened (use 'force')", file=sys.stderr)
        return 1
    print(f"door {args.name}: {_door_line(door)}")
    return 0


def _door_line(door: dict[str, Any]) -> str:
    parts = [
        "locked" if door.get("locked") else "unlocked",
        "open" if door.get("open") else "closed",
        f"relay {'on' if door.get('relay') else 'off'}",
    ]
    if door.get("rex"):
        parts.append("rex pressed")
    if door.get("tamper"):
        parts.append("TAMPER")
    if door.get("forced"):
        parts.append(f"forced x{door['forced']}")
    return ", ".join(parts)


def _format_status(reply: dict[str, Any]) -> str:
    lines = ["boards:"]
    for name, b in reply.get("boards", {}).items():
        faults = _faults_text(b.get("faults") or {})
        state = "online" if b.get("online") else "OFFLINE"
        lines.append(
            f"  {name:<16} {b.get('transport', '?')} {b.get('address', '?')} "
            f"unit {b.get('unit_id', '?')}  {state}" + (f"  [{faults}]" if faults else "")
        )
    lines.append("doors:")
    for name, d in reply.get("doors", {}).items():
        lines.append(f"  {name:<16} {_door_line(d)}")
    return "\n".join(lines)


def _run_modbus(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:  # one line per problem, each naming the file and the key
        for problem in exc.problems:
            print(str(problem), file=sys.stderr)
        return 2
    except WardingError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    control = args.control or default_socket_path()
    try:
        return asyncio.run(_serve(SimSite(settings), Path(control)))
    except PathInUseError as exc:  # a file where a socket or device link must go: never replaced
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


async def _serve(site: SimSite, control: Path) -> int:
    """Run ``site`` and its control socket until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = SimControlServer(site, control)
    try:
        await server.start()  # first: refuses to run beside a live simulator on the same socket
        await site.start()
        for name, board in site.boards.items():
            bus = site.bus(name)
            settings = site.settings.board(name)
            where = f"tcp {site.address(name)}"
            if isinstance(bus, SimRtuLine) and isinstance(settings, RtuBoardSettings):
                where = f"rtu {bus.path} -> {bus.pty_name}"
            print(
                f"{name}: modbus {where} unit {board.unit_id} "
                f"({len(board.coils)} coils, {len(board.inputs)} inputs)",
                flush=True,
            )
        print(f"control: {control}  (Ctrl-C to stop)", flush=True)
        await stop.wait()
    finally:
        await server.stop()
        await site.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(RuntimeError):
                loop.remove_signal_handler(sig)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m simulators.cli sim ...``."""
    parser = argparse.ArgumentParser(prog="warding")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
