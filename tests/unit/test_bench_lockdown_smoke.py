"""bench.lockdown runs end to end and prints well-formed figures.

Never asserts on time (DESIGN.md 6): only that it runs, prints one JSON object, and that the
keys are there with sane types.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.lockdown import (
    PANIC_BOARD,
    PANIC_INDEX,
    PANIC_INPUT,
    Options,
    Samples,
    demo_settings,
    panic_request,
    parse_args,
    report,
    site_files,
)
from controller.settings import parse_toml

ROOT = Path(__file__).resolve().parents[2]

REQUIRED_FLOAT_KEYS = ("p50_ms", "p99_ms", "floor_ms", "overhead_p99_ms")
COMPONENT_KEYS = tuple(
    f"{part}_{q}_ms"
    for part in ("raw_fanout", "detect", "debounce", "fanout", "verify", "ctl_rtt")
    for q in ("p50", "p99")
)
INT_KEYS = ("n", "debounce_ms", "poll_interval_ms", "doors", "boards", "failures", "trials")


def test_demo_settings_are_read_from_the_demo_site() -> None:
    debounce, poll = demo_settings()
    assert isinstance(debounce, int)
    assert isinstance(poll, int)
    assert debounce >= 0
    assert poll > 0


def test_demo_settings_fall_back_when_the_file_is_missing(tmp_path: Path) -> None:
    assert demo_settings(tmp_path / "nope.toml") == (50, 50)


def test_site_files_parse_with_a_panic_input_and_a_lock_mix(tmp_path: Path) -> None:
    opts = Options(doors=8, boards=2, debounce_ms=40, poll_interval_ms=30)
    daemon_toml, sim_toml = site_files(tmp_path, [15001, 15002], [15003, 15004], opts)
    daemon = parse_toml(daemon_toml)
    sim = parse_toml(sim_toml)
    assert [b.name for b in daemon.boards] == ["w00", "w01"]
    assert [b.name for b in sim.boards] == ["w00", "w01", "r00", "r01"]
    assert daemon.doors == sim.doors
    assert all(b.poll_interval_ms == 30 for b in sim.boards)
    locks = [d.lock.value for d in daemon.doors]
    assert locks.count("fail-safe") == 2
    assert locks.count("fail-secure") == 6
    assert all(d.egress for d in daemon.doors if d.lock.value == "fail-safe")
    assert daemon.lockdown.panic_debounce_ms == 40
    assert daemon.lockdown_state_file == tmp_path / "lockdown.json"
    [panic] = daemon.lockdown.inputs
    assert (panic.name, panic.kind, panic.board, panic.input) == (
        PANIC_INPUT,
        "panic",
        PANIC_BOARD,
        PANIC_INDEX,
    )


def test_coil_values_follow_each_lock_type() -> None:
    opts = Options(doors=8, boards=2)
    # door 0 (fail-safe) is energised to lock; doors 1-3 (fail-secure) to release
    assert opts.coil_values(0, locked=True) == [True, False, False, False]
    assert opts.coil_values(0, locked=False) == [False, True, True, True]
    assert opts.coil_values(1, locked=True) == [True, False, False, False]


def test_panic_request_drives_the_panic_input() -> None:
    req = panic_request(True)
    assert req == {
        "cmd": "board",
        "action": "input",
        "name": PANIC_BOARD,
        "input": PANIC_INDEX,
        "value": True,
    }
    assert panic_request(False)["value"] is False


def test_parse_args_defaults_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    opts, json_only = parse_args([])
    assert opts.trials >= 100
    assert (opts.doors, opts.boards) == (256, 16)
    assert (opts.debounce_ms, opts.poll_interval_ms) == demo_settings()
    assert json_only is False
    with pytest.raises(SystemExit):
        parse_args(["--doors", "5", "--boards", "2"])
    assert "multiple of --boards" in capsys.readouterr().err


def test_report_of_synthetic_samples_has_the_figures() -> None:
    opts = Options(trials=3, doors=4, boards=2, debounce_ms=50, poll_interval_ms=50)
    ms = [0.001 * v for v in (1.0, 2.0, 3.0)]
    s = Samples(
        total=[0.1, 0.11, 0.12],
        detect=ms,
        debounce=ms,
        fanout=ms,
        verify=ms,
        ctl_rtt=ms,
        raw=[0.002, 0.003, 0.004],
    )
    r = report(opts, s)
    assert r["floor_ms"] == pytest.approx(104.0)
    assert r["overhead_p99_ms"] == pytest.approx(r["p99_ms"] - r["floor_ms"])
    assert r["n"] == 3
    with pytest.raises(RuntimeError, match="no successful trials"):
        report(opts, Samples())


def test_lockdown_bench_runs_and_prints_one_json_object() -> None:
    trials = 3
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.lockdown",
            "--json",
            "--trials",
            str(trials),
            "--warmup",
            "0",
            "--doors",
            "4",
            "--boards",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout  # stdout is the JSON object and nothing else
    result = json.loads(lines[0])
    assert result["bench"] == "lockdown"
    for key in (*REQUIRED_FLOAT_KEYS, *COMPONENT_KEYS):
        assert isinstance(result[key], float), key
        assert math.isfinite(result[key]), key
    for key in ("p50_ms", "p99_ms", "floor_ms", "raw_fanout_p99_ms"):
        assert result[key] > 0, key
    for key in INT_KEYS:
        assert isinstance(result[key], int), key
        assert not isinstance(result[key], bool), key
    assert result["doors"] == 4
    assert result["boards"] == 2
    assert result["trials"] == trials
    assert 0 <= result["failures"] <= trials
    assert result["n"] + result["failures"] == trials
    assert result["overhead_p99_ms"] == pytest.approx(
        result["p99_ms"] - result["floor_ms"], abs=0.01
    )
    assert isinstance(result["target_met"], bool)
