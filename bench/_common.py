"""Helpers shared by the benchmarks: percentiles, JSON output, simulator subprocesses, ports.

Every benchmark prints one JSON object on stdout (``emit_json``) and nothing else there; logs
go to stderr. Percentiles are nearest-rank (the value at rank ``ceil(q/100 * n)`` of the
sorted samples), so a p99 is always a time that was actually measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

__all__ = [
    "SimulatorError",
    "SimulatorProcess",
    "Summary",
    "emit_json",
    "free_ports",
    "percentile",
    "quiet_logs",
    "summarize",
    "temp_dir",
    "wait_for_ports",
]

LOCALHOST = "127.0.0.1"


# -- statistics -----------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank ``q``-th percentile (0 < q <= 100) of a non-empty sample."""
    if not samples:
        raise ValueError("percentile of an empty sample")
    if not 0 < q <= 100:
        raise ValueError(f"q must be in (0, 100] (got {q})")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Summary:
    """Figures of one series of timings, in milliseconds."""

    n: int
    p50_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float

    def to_json(self, prefix: str = "", digits: int = 3) -> dict[str, float | int]:
        """The figures as JSON keys, each named ``<prefix><figure>`` (``n`` left out)."""
        return {
            f"{prefix}p50_ms": round(self.p50_ms, digits),
            f"{prefix}p99_ms": round(self.p99_ms, digits),
            f"{prefix}min_ms": round(self.min_ms, digits),
            f"{prefix}max_ms": round(self.max_ms, digits),
            f"{prefix}mean_ms": round(self.mean_ms, digits),
        }


def summarize(seconds: Sequence[float]) -> Summary:
    """Summarise durations given in seconds (non-empty)."""
    ms = [s * 1000.0 for s in seconds]
    if not ms:
        raise ValueError("no samples")
    return Summary(
        n=len(ms),
        p50_ms=percentile(ms, 50),
        p99_ms=percentile(ms, 99),
        min_ms=min(ms),
        max_ms=max(ms),
        mean_ms=sum(ms) / len(ms),
    )


# -- output ---------------------------------------------------------------------------------


def emit_json(obj: dict[str, Any], stream: IO[str] | None = None) -> None:
    """Write one JSON object on one line (stdout by default) and flush."""
    out = stream or sys.stdout
    out.write(json.dumps(obj) + "\n")
    out.flush()


def quiet_logs(level: str = "warning") -> None:
    """Send structlog (the daemon's logs) to stderr at ``level``, so stdout stays clean JSON."""
    from controller import logging as wlog

    wlog.configure(level, stream=sys.stderr)


# -- ports ----------------------------------------------------------------------------------


def free_ports(count: int, host: str = LOCALHOST) -> list[int]:
    """``count`` distinct TCP ports that were free a moment ago (bound together, then closed)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            s = stack.enter_context(socket.socket())
            s.bind((host, 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for_ports(
    ports: Iterable[int],
    *,
    host: str = LOCALHOST,
    timeout_s: float = 15.0,
    alive: subprocess.Popen[bytes] | None = None,
) -> None:
    """Block until every port accepts a connection; raise SimulatorError on timeout or exit.

    With ``alive``, stop waiting as soon as that process has exited.
    """
    waiting = list(ports)
    deadline = time.monotonic() + timeout_s
    while waiting:
        waiting = [p for p in waiting if not _accepts(host, p)]
        if not waiting:
            return
        if alive is not None and alive.poll() is not None:
            raise SimulatorError(f"simulator exited with status {alive.returncode}")
        if time.monotonic() > deadline:
            raise SimulatorError(f"ports {waiting} did not open within {timeout_s} s")
        time.sleep(0.05)


# -- simulators in their own process --------------------------------------------------------


class SimulatorError(RuntimeError):
    """The simulator process did not start or serve as expected."""


class SimulatorProcess:
    """``warding sim modbus --config FILE`` in a subprocess, until ``stop()`` (or ``with``).

    Its stdout and stderr go to a log file (``log_path``) so a full pipe never blocks it;
    ``start()`` waits until every port in ``ports`` accepts connections and includes the
    tail of that log in the error if it does not.
    """

    def __init__(
        self,
        config: Path,
        ports: Sequence[int],
        *,
        workdir: Path | None = None,
        start_timeout_s: float = 20.0,
    ) -> None:
        self.config = config
        self.ports = list(ports)
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="warding-sim-"))
        self.control = self.workdir / "sim-control.sock"
        self.log_path = self.workdir / "sim.log"
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The argv that runs the simulators."""
        return [
            sys.executable,
            "-m",
            "controller.cli.warding",
            "sim",
            "modbus",
            "--config",
            str(self.config),
            "--control",
            str(self.control),
        ]

    def start(self) -> None:
        """Spawn the simulators and wait until all ports accept connections."""
        if self.proc is not None:
            return
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            wait_for_ports(self.ports, timeout_s=self.start_timeout_s, alive=self.proc)
        except SimulatorError as exc:
            self.stop()
            raise SimulatorError(f"{exc}; simulator log:\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the simulator printed."""
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; return the exit status; idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory (short path: Unix sockets live in it), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix, dir="/tmp") as d:
        yield Path(d)


# -- site files and arguments shared by the benchmarks -----------------------------------------


def board_lines(
    name: str,
    port: int,
    *,
    coils: int,
    poll_interval_ms: int,
    inputs: int = 16,
    timeout_ms: int = 500,
    host: str = LOCALHOST,
    unit_id: int = 1,
) -> list[str]:
    """A ``[[boards]]`` entry for a simulated Modbus TCP board."""
    return [
        "[[boards]]",
        f'name = "{name}"',
        'transport = "tcp"',
        f'host = "{host}"',
        f"port = {port}",
        f"unit_id = {unit_id}",
        f"coils = {coils}",
        f"inputs = {inputs}",
        f"timeout_ms = {timeout_ms}",
        f"poll_interval_ms = {poll_interval_ms}",
        "backoff_initial_ms = 50",
        "backoff_max_ms = 500",
        "",
    ]


def twin_site_sections(
    workdir: Path,
    controller_id: str,
    warding_ports: Sequence[int],
    raw_ports: Sequence[int],
    board: Callable[[str, int], list[str]],
) -> tuple[list[str], list[str], list[str]]:
    """(``[controller]`` lines, the daemon's boards w00.., their twins r00.. for the floor)."""
    head = [
        "[controller]",
        f'id = "{controller_id}"',
        f'socket = "{workdir / "control.sock"}"',
        f'journal = "{workdir / "journal.db"}"',
        'log_level = "warning"',
        "",
    ]
    boards = [line for b, port in enumerate(warding_ports) for line in board(f"w{b:02d}", port)]
    twins = [line for b, port in enumerate(raw_ports) for line in board(f"r{b:02d}", port)]
    return head, boards, twins


def keep_error(errors: list[str], error: str, most: int = 5) -> None:
    """Keep the first few distinct errors of a run for its report."""
    if error not in errors and len(errors) < most:
        errors.append(error)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer (got {text!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 (got {value})")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return 0 if text.strip() == "0" else positive_int(text)
