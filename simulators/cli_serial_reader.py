"""``warding sim serial-reader``: a simulated serial badge reader steered by commands on stdin.

One command per line (``help`` lists them); a reply per command on stdout. End of input or
``quit`` stops the simulator and removes its device symlink; so does Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from drivers.errors import WardingError
from drivers.serial_reader.codec import Em4100Frame, Framing, NumberFrame, WiegandFrame
from simulators.ptyline import PathInUseError
from simulators.serial_reader import KeyStyle, SimSerialReader

__all__ = ["COMMANDS", "execute", "main", "register", "run"]

PROG = "warding sim serial-reader"

COMMANDS = """\
commands (one per line):
  card TEXT            present a card: h10301:12:345, c1000:..., uid:04A1B2C3, number:9334109
  uid HEX              present a UID (04A1B2C3, 04:a1:b2:c3) printed per --framing
  number DIGITS        send a decimal card number line (0009334109)
  wiegand BITS HEX     send raw Wiegand bits, e.g. 'wiegand 26 2020002'
  em HEX10             send an RDM6300 STX frame for 5 bytes, e.g. 'em 06008E6D5D'
  keys KEYS [STYLE]    type keys (0-9 * #); STYLE line (K:1234#), wiegand4 or wiegand8
  garbage              send one malformed line
  raw HEX              send raw bytes (e.g. 'raw 0d0a' or 'raw 02 41 03')
  unplug | replug      pull / reinsert the USB adapter
  sleep SECONDS        pause (for scripts)
  status               show the line
  help                 this list
  quit                 stop
lines starting with # are ignored"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serial-reader`` command to the ``warding sim`` subparsers."""
    p = subparsers.add_parser(
        "serial-reader",
        help="simulate a Wiegand-to-serial / ASCII badge reader on a pty (commands on stdin)",
        description="Simulate a serial badge reader on a pty; read commands from stdin.",
        epilog=COMMANDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--device",
        metavar="PATH",
        help="make a symlink to the pty here (the reader's device in the site file)",
    )
    p.add_argument(
        "--framing",
        choices=[f.value for f in Framing],
        default=Framing.AUTO.value,
        help="how this converter prints cards (default: auto = wiegand-hex / uid-hex / decimal)",
    )
    p.add_argument(
        "--line-end",
        choices=("crlf", "cr", "lf"),
        default="crlf",
        help="line terminator the converter sends (default: crlf)",
    )
    p.set_defaults(sim_run=run)


_LINE_ENDS = {"crlf": b"\r\n", "cr": b"\r", "lf": b"\n"}


def run(args: argparse.Namespace) -> int:
    """Run the simulator until end of input, ``quit`` or a signal; return the exit status."""
    try:
        sim = SimSerialReader(args.device, framing=args.framing, line_end=_LINE_ENDS[args.line_end])
        sim.start()
    except PathInUseError as exc:  # a file at --device: never replaced
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    try:
        where = f"{sim.device} -> {sim.pty_name}" if sim.device else sim.pty_name
        print(f"serial-reader: {where} framing {sim.framing.value} ('help' for commands)")
        sys.stdout.flush()
        return asyncio.run(_serve(sim, sys.stdin, sys.stdout))
    finally:
        sim.stop()


async def _serve(sim: SimSerialReader, stdin: TextIO, stdout: TextIO) -> int:
    """Execute stdin lines until EOF, ``quit``, SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    feeder = _stdin_feeder(loop, stdin, lines)
    try:
        while not stop.is_set():
            line_task = asyncio.ensure_future(lines.get())
            stop_task = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({line_task, stop_task}, return_when="FIRST_COMPLETED")
            for task in (line_task, stop_task):
                if task not in done:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if line_task not in done:
                break
            line = line_task.result()
            if line is None:
                break
            words = line.split()
            if words and words[0].lower() == "sleep":
                await _sleep(words, stop, stdout)
                continue
            reply, done_ = execute(sim, line)
            if reply:
                print(reply, file=stdout, flush=True)
            if done_:
                break
    finally:
        feeder()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(RuntimeError):
                loop.remove_signal_handler(sig)
    return 0


async def _sleep(words: list[str], stop: asyncio.Event, stdout: TextIO) -> None:
    try:
        seconds = float(words[1]) if len(words) == 2 else -1.0
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 3600:
        print("error: sleep SECONDS (0..3600)", file=stdout, flush=True)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _stdin_feeder(
    loop: asyncio.AbstractEventLoop, stdin: TextIO, lines: asyncio.Queue[str | None]
) -> Callable[[], None]:
    """Queue stdin lines (None at EOF); returns a function that stops reading."""
    try:
        fd = stdin.fileno()
    except (OSError, ValueError):
        fd = -1
    if fd >= 0:
        buffer = bytearray()

        def readable() -> None:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                return
            if not chunk:
                loop.remove_reader(fd)
                if buffer:
                    lines.put_nowait(buffer.decode(errors="replace"))
                    buffer.clear()
                lines.put_nowait(None)
                return
            buffer.extend(chunk)
            while (i := buffer.find(b"\n")) >= 0:
                lines.put_nowait(buffer[:i].decode(errors="replace"))
                del buffer[: i + 1]

        try:
            loop.add_reader(fd, readable)
        except (OSError, ValueError):  # a regular file cannot be polled: read it at once
            pass
        else:

            def stop_reading() -> None:
                loop.remove_reader(fd)

            return stop_reading
    for text in stdin:
        lines.put_nowait(text.rstrip("\n"))
    lines.put_nowait(None)
    return lambda: None


def execute(sim: SimSerialReader, line: str) -> tuple[str, bool]:
    """Run one command line against ``sim``; return (reply, stop)."""
    words = line.split()
    if not words or words[0].startswith("#"):
        return "", False
    cmd, rest = words[0].lower(), words[1:]
    try:
        return _dispatch(sim, cmd, rest)
    except (WardingError, ValueError, RuntimeError, OSError) as exc:
        return f"error: {exc}", False


def _dispatch(sim: SimSerialReader, cmd: str, rest: list[str]) -> tuple[str, bool]:
    if cmd in ("quit", "exit"):
        return "bye", True
    if cmd == "help":
        return COMMANDS, False
    if cmd == "status":
        state = f"plugged {sim.pty_name}" if sim.plugged else "unplugged"
        return f"{sim.path or '-'}: {state}, framing {sim.framing.value}, sent {sim.sent}", False
    if cmd == "unplug":
        sim.unplug()
        return "unplugged", False
    if cmd == "replug":
        sim.replug()
        return f"plugged {sim.pty_name}", False
    if cmd == "garbage" and not rest:
        return _sent(sim.garbage()), False
    if cmd == "keys" and 1 <= len(rest) <= 2:
        style = rest[1] if len(rest) == 2 else "line"
        if style not in ("line", "wiegand4", "wiegand8"):
            raise ValueError("STYLE is line, wiegand4 or wiegand8")
        styled: KeyStyle = style  # type: ignore[assignment]
        return _sent(sim.type_keys(rest[0], style=styled)), False
    if cmd == "raw" and rest:
        data = bytes.fromhex("".join(rest))
        return f"sent {sim.send_raw(data)} bytes", False
    if len(rest) == 1:
        arg = rest[0]
        if cmd == "card":
            return _sent(sim.present_card(arg)), False
        if cmd == "number":
            if not arg.isascii() or not arg.isdigit():
                raise ValueError("number DIGITS")
            return _sent(sim.send_frame(NumberFrame(arg))), False
        if cmd == "em":
            return _sent(sim.send_frame(Em4100Frame(bytes.fromhex(arg)))), False
    if cmd == "wiegand" and len(rest) == 2:
        bits = int(rest[0])
        if not 1 <= bits <= 256:
            raise ValueError("BITS is 1..256")
        value = int(rest[1], 16)
        nbytes = (bits + 7) // 8
        if value >> bits:
            raise ValueError(f"{rest[1]} does not fit in {bits} bits")
        data = (value << (nbytes * 8 - bits)).to_bytes(nbytes, "big")
        return _sent(sim.send_frame(WiegandFrame(bits, data))), False
    if cmd == "uid" and rest:  # "uid 04A1B2C3", "uid 04:a1:b2:c3" or "uid 04 A1 B2 C3"
        return _sent(sim.present_card(f"uid:{''.join(rest)}")), False
    return f"error: unknown command {' '.join([cmd, *rest])!r} ('help' for commands)", False


def _sent(data: bytes) -> str:
    return f"sent {data!r}"


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m simulators.cli_serial_reader [--device PATH] ...``."""
    parser = argparse.ArgumentParser(prog="warding sim")
    register(parser.add_subparsers(dest="sim_command", metavar="COMMAND", required=True))
    args = parser.parse_args(["serial-reader", *(sys.argv[1:] if argv is None else argv)])
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
