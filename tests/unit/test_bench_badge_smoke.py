"""bench.badge_to_relay runs end to end and prints well-formed figures.

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

from bench.badge_to_relay import (
    DOOR,
    READER,
    Options,
    StoreFiles,
    credential_store,
    daemon_site_toml,
    parse_args,
    sim_site_toml,
)
from controller.settings import parse_toml

ROOT = Path(__file__).resolve().parents[2]

DURATION_KEYS = ("p50_ms", "p99_ms", "floor_p99_ms", "p99_1k_ms")
FLOAT_KEYS = (*DURATION_KEYS, "overhead_p99_ms", "ratio_1m_1k")


def test_site_files_parse(tmp_path: Path) -> None:
    opts = Options(pulse_s=0.02)
    store = StoreFiles(tmp_path / "c.db", tmp_path / "s.secret", 10, 0.0)
    daemon = parse_toml(
        daemon_site_toml(
            tmp_path,
            opts,
            port=15020,
            store=store,
            device=tmp_path / "a.tty",
            key_file=tmp_path / "a.scbk",
        )
    )
    assert [d.name for d in daemon.doors] == [DOOR]
    assert daemon.doors[0].lock.value == "fail-secure"
    assert daemon.doors[0].contact is None
    assert [(r.name, r.door, r.secure_channel) for r in daemon.readers] == [(READER, DOOR, True)]
    assert daemon.credentials_db == store.db
    sim = parse_toml(sim_site_toml(tmp_path, opts))
    assert [b.name for b in sim.boards] == ["w", "raw"]
    assert sim.doors == daemon.doors


def test_credential_store_is_built_once_and_cached(tmp_path: Path) -> None:
    first = credential_store(20, tmp_path)
    assert first.db.exists()
    assert first.credentials == 20
    again = credential_store(20, tmp_path)
    assert again.db == first.db
    assert again.built_s == 0.0  # came from the cache


def test_parse_args_defaults_match_the_issue() -> None:
    opts, json_only = parse_args(["--json"])
    assert json_only
    assert opts.n == 1000
    assert opts.credentials == 1_000_000
    assert opts.small == 1000


@pytest.mark.timeout(30)  # ~3 s on an idle machine
def test_badge_to_relay_runs_and_prints_one_json_object(tmp_path: Path) -> None:
    n = 10
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.badge_to_relay",
            "--json",
            "--n",
            str(n),
            "--credentials",
            "1000",
            "--small",
            "100",
            "--warmup",
            "1",
            "--unknown-rate",
            "0.3",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=25,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout  # stdout is the JSON object and nothing else
    result = json.loads(lines[0])
    for key in FLOAT_KEYS:
        assert isinstance(result[key], float), key
        assert math.isfinite(result[key]), key
    for key in DURATION_KEYS:
        assert result[key] > 0, key  # a duration; not a claim about speed
    assert isinstance(result["n"], int)
    assert not isinstance(result["n"], bool)
    assert result["n"] + result["failures"]["1m"] == n
    assert result["credentials"] == 1000
    assert result["credentials_1k"] == 100
    assert result["floor_definition"] == "floor_osdp_p99_ms + floor_modbus_p99_ms"
    assert isinstance(result["floor_osdp_p99_ms"], float)
    assert isinstance(result["floor_modbus_p99_ms"], float)
    assert set(result["target_met"]) == set(result["targets"])
    assert all(isinstance(v, bool) for v in result["target_met"].values())
    assert isinstance(result["stray_grants"], int)
