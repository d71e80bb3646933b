"""Benchmarks run and report well-formed figures (never asserts on time: see DESIGN.md 6)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench._common import percentile, summarize
from bench.door_fanout import Options, parse_args, site_files
from controller.settings import parse_toml

ROOT = Path(__file__).resolve().parents[2]

FLOAT_KEYS = (
    "p50_ms",
    "p99_ms",
    "floor_ms",
    "floor_p50_ms",
    "rtt_ms",
    "ratio_p99",
    "driver_p50_ms",
    "driver_p99_ms",
    "ratio_driver_p99",
)
INT_KEYS = ("n", "doors", "boards", "poll_interval_ms", "failures", "driver_failures")


def test_percentile_is_nearest_rank() -> None:
    samples = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile(samples, 100) == 100.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize("q", [0, -1, 101])
def test_percentile_rejects_bad_q(q: float) -> None:
    with pytest.raises(ValueError, match="q must be"):
        percentile([1.0], q)


def test_percentile_rejects_empty() -> None:
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)


def test_summarize_converts_seconds_to_ms() -> None:
    s = summarize([0.001, 0.002, 0.003])
    assert s.n == 3
    assert s.p50_ms == pytest.approx(2.0)
    assert s.max_ms == pytest.approx(3.0)
    assert set(s.to_json("floor_")) == {
        "floor_p50_ms",
        "floor_p99_ms",
        "floor_min_ms",
        "floor_max_ms",
        "floor_mean_ms",
    }


def test_site_files_are_valid_and_share_the_doors(tmp_path: Path) -> None:
    opts = Options(doors=8, boards=2)
    daemon_toml, sim_toml, driver_toml = site_files(
        tmp_path, [15001, 15002], [15003, 15004], opts, [15005, 15006]
    )
    daemon = parse_toml(daemon_toml)
    sim = parse_toml(sim_toml)
    driver = parse_toml(driver_toml)
    assert [b.name for b in daemon.boards] == ["w00", "w01"]
    assert [b.name for b in sim.boards] == ["w00", "w01", "r00", "r01", "x00", "x01"]
    assert [(b.name, getattr(b, "port", None)) for b in driver.boards] == [
        ("x00", 15005),
        ("x01", 15006),
    ]
    assert {(d.relay.board, d.relay.coil) for d in driver.doors} == {
        (f"x{b:02d}", c) for b in range(2) for c in range(4)
    }
    assert daemon.doors == sim.doors
    assert {(d.relay.board, d.relay.coil) for d in daemon.doors} == {
        (f"w{b:02d}", c) for b in range(2) for c in range(4)
    }
    assert all(b.coils == 4 for b in sim.boards)


def test_parse_args_rejects_uneven_doors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--doors", "5", "--boards", "2"])
    assert "multiple of --boards" in capsys.readouterr().err


def test_door_fanout_runs_and_prints_one_json_object() -> None:
    rounds = 3
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.door_fanout",
            "--json",
            "--rounds",
            str(rounds),
            "--warmup",
            "1",
            "--doors",
            "4",
            "--boards",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout  # stdout is the JSON object and nothing else
    result = json.loads(lines[0])
    for key in FLOAT_KEYS:
        assert isinstance(result[key], float), key
        assert result[key] > 0, key
    for key in INT_KEYS:
        assert isinstance(result[key], int), key
        assert not isinstance(result[key], bool), key
    assert result["doors"] == 4
    assert result["boards"] == 2
    assert result["poll_interval_ms"] == 50
    assert 0 <= result["failures"] <= rounds
    assert result["n"] + result["failures"] == rounds
    assert isinstance(result["target_met"], bool)
