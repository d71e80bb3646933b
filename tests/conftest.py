"""Shared test fixtures: hypothesis profiles, free ports, small site files."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def site_toml(
    tmp: Path,
    *,
    tcp_port: int,
    rtu_device: Path | None = None,
    doors_per_board: int = 2,
    poll_ms: int = 20,
    timeout_ms: int = 200,
    backoff_max_ms: int = 400,
    extra_door: str = "",
) -> str:
    """A small site: one TCP board (and optionally one RTU board), doors with contact + REX."""
    lines = [
        "[controller]",
        'id = "test-site"',
        f'socket = "{tmp / "control.sock"}"',
        f'journal = "{tmp / "journal.db"}"',
        "shutdown_timeout_s = 3",
        "",
        "[[boards]]",
        'name = "tcp1"',
        'transport = "tcp"',
        'host = "127.0.0.1"',
        f"port = {tcp_port}",
        "unit_id = 1",
        "coils = 8",
        "inputs = 16",
        f"timeout_ms = {timeout_ms}",
        f"poll_interval_ms = {poll_ms}",
        "backoff_initial_ms = 20",
        f"backoff_max_ms = {backoff_max_ms}",
    ]
    boards = ["tcp1"]
    if rtu_device is not None:
        lines += [
            "",
            "[[boards]]",
            'name = "rtu1"',
            'transport = "rtu"',
            f'device = "{rtu_device}"',
            "baudrate = 38400",
            "unit_id = 7",
            "coils = 8",
            "inputs = 16",
            f"timeout_ms = {timeout_ms}",
            f"poll_interval_ms = {poll_ms}",
            "backoff_initial_ms = 20",
            f"backoff_max_ms = {backoff_max_ms}",
        ]
        boards.append("rtu1")
    for board in boards:
        for i in range(doors_per_board):
            lock = "fail-secure" if i % 2 == 0 else "fail-safe"
            lines += [
                "",
                "[[doors]]",
                f'name = "{board}-d{i}"',
                f'lock = "{lock}"',
                f'relay = {{ board = "{board}", coil = {i} }}',
                f'contact = {{ board = "{board}", input = {2 * i} }}',
                f'rex = {{ board = "{board}", input = {2 * i + 1} }}',
                "pulse_s = 1.0",
                "held_open_s = 1.0",
                "rex_pulse_s = 1.0",
            ]
    return "\n".join(lines) + "\n" + extra_door


@pytest.fixture
def port() -> int:
    """A free TCP port."""
    return free_port()


SiteWriter = Callable[..., Path]


@pytest.fixture
def write_site(tmp_path: Path) -> SiteWriter:
    """Write a small site file into tmp_path and return its path."""

    def write(**kwargs: object) -> Path:
        path = tmp_path / "site.toml"
        path.write_text(site_toml(tmp_path, **kwargs))  # type: ignore[arg-type]
        return path

    return write
