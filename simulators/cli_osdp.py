"""``warding sim osdp``: simulated OSDP readers on a pty, steered from stdin (docs/osdp.md).

Usage::

    warding sim osdp --device /run/warding/ttyOSDP --address 1 --key-file door1.scbk
    warding sim osdp --device /tmp/ttyOSDP --reader 1:door1.scbk --reader 2:door2.scbk

A key file that is missing or empty starts the reader in install mode (it accepts the default
key SCBK-D once); the key the control panel then sets with KEYSET is written back to it.
Commands, one per line (prefix ``@ADDR`` to address one reader of several), are listed in
``HELP`` below and in docs/osdp.md. LED and buzzer commands the control panel sends are
printed as they arrive.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from drivers.errors import WardingError
from simulators.osdp_reader import SimIndication, SimOsdpPd, SimOsdpReader, load_pds
from simulators.ptyline import PathInUseError

__all__ = ["execute", "register", "run"]

PROG = "warding sim osdp"
_LOG_CRIT = 2  # libosdp log levels (syslog numbering)
_LOG_INFO = 6

HELP = """\
  card TEXT        present a card: h10301:12:345, h10304:1:2, c1000:5:6, uid:04A1B2C3
  raw BITS HEX     present raw Wiegand bits (MSB first, left-aligned): raw 26 0600ac80
  keys KEYS        press keys (digits, * and #): keys 1234#
  tamper on|off    trip or restore the tamper switch
  offline|online   stop / resume answering the control panel
  refuse on|off    refuse Secure Channel (a clear-text-only reader)
  wrongkey         restart with a random key the control panel does not know
  reset            factory reset: restart in install mode (SCBK-D only)
  unplug|replug    pull / reinsert the line (like a USB RS-485 adapter)
  status           show each reader's state
  help             this list
  quit             stop
Prefix a command with @ADDR to address one reader of several: @2 card h10301:1:2"""


def _reader_spec(text: str) -> tuple[int, Path | None]:
    """Parse ``ADDR[:KEYFILE]``."""
    addr, _, key = text.partition(":")
    try:
        address = int(addr)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ADDR[:KEYFILE] (got {text!r})") from None
    if not 0 <= address <= 126:
        raise argparse.ArgumentTypeError("an OSDP address is 0..126")
    return address, Path(key) if key else None


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``osdp`` command to a CLI's subparsers (``warding sim``); returns its parser."""
    parser = subparsers.add_parser(
        "osdp",
        help="simulate OSDP readers on a pty (foreground, commands on stdin)",
        description="Simulate OSDP readers (libosdp PDs) on a pty and steer them from stdin.",
        epilog="commands:\n" + HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--device",
        metavar="PATH",
        help="create a symlink to the pty here (the bus's device in the site file)",
    )
    parser.add_argument("--address", type=int, default=1, help="PD address (default 1)")
    parser.add_argument(
        "--key-file",
        metavar="FILE",
        type=Path,
        help="the reader's SCBK (missing/empty: install mode)",
    )
    parser.add_argument(
        "--reader",
        metavar="ADDR[:KEYFILE]",
        type=_reader_spec,
        action="append",
        default=[],
        help="a reader on the line (repeat for several; replaces --address/--key-file)",
    )
    parser.add_argument(
        "--install", action="store_true", help="start every reader in install mode (SCBK-D)"
    )
    parser.add_argument(
        "--refuse-sc", action="store_true", help="readers refuse Secure Channel (clear text only)"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="let libosdp print its own log lines on stderr"
    )
    parser.set_defaults(osdp_run=run)
    return parser


def _switch(word: str) -> bool:
    if word in {"on", "true", "1"}:
        return True
    if word in {"off", "false", "0"}:
        return False
    raise ValueError(f"expected on or off (got {word!r})")


def _status(sim: SimOsdpReader) -> str:
    lines = [f"line {sim.path} ({'plugged' if sim.plugged else 'unplugged'})"]
    for pd in sim.pds:
        state = "secure" if pd.secure else "online" if pd.online else "not polled"
        flags = [
            "install-mode" if pd.install_mode else "",
            "offline" if not pd.answering else "",
            "refusing-sc" if pd.refuse_secure_channel else "",
        ]
        extra = ", ".join(f for f in flags if f)
        lines.append(f"  @{pd.address}: {state}{' (' + extra + ')' if extra else ''}")
    return "\n".join(lines)


def execute(sim: SimOsdpReader, line: str) -> str | None:
    """Run one shell command against ``sim``; return the reply text, None for ``quit``."""
    words = line.split()
    if not words or words[0].startswith("#"):
        return ""
    target: SimOsdpPd | None = None
    if words[0].startswith("@"):
        target = sim.pd(int(words[0][1:]))
        words = words[1:]
        if not words:
            raise ValueError("a command must follow @ADDR")
    cmd, args = words[0].lower(), words[1:]
    if cmd in {"quit", "exit"}:
        return None
    if cmd == "help":
        return HELP
    if cmd == "status":
        return _status(sim)
    if cmd == "unplug":
        sim.unplug()
        return "line unplugged"
    if cmd == "replug":
        sim.replug()
        return f"line plugged in: {sim.path}"
    pd = target or sim.only
    actions: dict[str, Callable[[], Any]] = {
        "card": lambda: pd.present(" ".join(args)),
        "raw": lambda: pd.present_card(int(args[0]), bytes.fromhex(args[1])),
        "keys": lambda: pd.type_keys("".join(args)),
        "tamper": lambda: pd.set_tamper(_switch(args[0])),
        "offline": pd.go_offline,
        "online": pd.go_online,
        "refuse": lambda: setattr(pd, "refuse_secure_channel", _switch(args[0])),
        "wrongkey": pd.wrong_key,
        "reset": lambda: pd.set_key(None),
    }
    action = actions.get(cmd)
    if action is None:
        raise ValueError(f"unknown command {cmd!r} (try: help)")
    try:
        result = action()
    except IndexError:
        raise ValueError(f"{cmd}: missing argument (try: help)") from None
    if result is False:
        return f"@{pd.address} {cmd}: the reader's event queue is full"
    return f"@{pd.address} {cmd}: ok"


def _printer(out: TextIO, pd: SimOsdpPd) -> Callable[[SimIndication], None]:
    def show(indication: SimIndication) -> None:
        if indication.command == "keyset":
            where = f" (stored in {pd.key_file})" if pd.key_file else ""
            print(f"@{pd.address} keyset: the control panel set a new SCBK{where}", file=out)
        else:
            print(f"@{pd.address} {indication}", file=out, flush=True)

    return show


def run(args: argparse.Namespace, stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    """Run the simulator until ``quit`` or end of input; return the exit status."""
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    specs: Sequence[tuple[int, Path | None]] = args.reader or [(args.address, args.key_file)]
    try:
        pds = load_pds(specs)
    except (OSError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    for pd in pds:
        if args.install:
            pd.set_key(None)
        pd.refuse_secure_channel = args.refuse_sc
        pd.on_command = _printer(out, pd)
    level = _LOG_INFO if getattr(args, "verbose", False) else _LOG_CRIT
    sim = SimOsdpReader(*pds, device=args.device, libosdp_log_level=level)
    try:
        sim.start()
    except PathInUseError as exc:  # a file at --device: never replaced
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    try:
        print(
            f"OSDP reader(s) at {', '.join(f'@{pd.address}' for pd in pds)} on {sim.path}"
            f" (pty {sim.pty_name}); type help",
            file=out,
            flush=True,
        )
        for line in stdin:
            try:
                reply = execute(sim, line)
            except (ValueError, KeyError, WardingError) as exc:
                reply = f"error: {exc}"
            if reply is None:
                break
            if reply:
                print(reply, file=out, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0
