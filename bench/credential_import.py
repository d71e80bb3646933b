"""Credential import: 1,000,000 cardholders from CSV, then the daemon's RSS and lookup times.

``python -m bench.credential_import --json`` (``--rows N`` for a smaller run):

1. writes a deterministic CSV of N rows in a temp dir: one cardholder per row, each with one
   card (3 of 5 H10301, 1 of 5 H10304, 1 of 5 a 7-byte UID), an 8-digit PIN (unique, and no
   two differ by one in the last digit), one of three access levels, a validity window on
   one row in ten and a privilege on one in a hundred;
2. times ``import_csv`` into a new store (WAL, synchronous=FULL: the real thing, one
   transaction, including the final checkpoint);
3. in a fresh subprocess that first imports the daemon's modules (``controller.app``), opens
   the store, does 1,000 untimed-for-p99 warm-up lookups (reported as ``lookup_cold_p99_us``),
   then ``--lookups`` random ``lookup()``s of enrolled cards (and as many ``match_pin()``s
   and unknown cards), and reads VmRSS and VmHWM from /proc/self/status.

Targets (issue 3): import <= 60 s, RSS <= 200 MB with 1M credentials, p99 lookup well under
1 ms. Percentiles are nearest-rank (``bench._common.percentile``).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench._common import (
    emit_json,
    percentile,
    positive_int,
    temp_dir,
)

TARGET_IMPORT_S = 60.0
TARGET_RSS_MB = 200.0
LEVELS = ("staff", "lab", "night")
_UID_MULTIPLIER = 0x9E3779B97F4B  # odd: i -> i * M mod 2**48 is a bijection


def card_key(i: int) -> str:
    """The canonical key of row ``i``'s card (distinct for every i < 2**24; 255:x unused)."""
    kind = i % 5
    if kind < 3:
        return f"h10301:{(i >> 16) & 0xFF}:{i & 0xFFFF}"
    if kind == 3:
        return f"h10304:{(i >> 19) & 0xFFFF}:{i & 0x7FFFF}"
    return f"uid:04{(i * _UID_MULTIPLIER) % (1 << 48):012X}"


def pin(i: int) -> str:
    """Row ``i``'s PIN: 8 digits, even last digit, distinct for every i < 5e7."""
    return f"{2 * ((i * 7919) % 50_000_000):08d}"


def rows(n: int) -> Iterator[list[str]]:
    """The CSV rows (without header) of an n-row file."""
    for i in range(n):
        valid_from = valid_until = ""
        if i % 10 == 0:
            valid_from = "2024-01-01T08:00:00+01:00"
            valid_until = f"{2030 + i % 7}-12-31"
        yield [
            f"Person {i:07d}",
            card_key(i),
            pin(i),
            valid_from,
            valid_until,
            "active",
            LEVELS[i % 3],
            "override" if i % 100 == 0 else "",
        ]


def write_csv(path: Path, n: int) -> None:
    """Write the n-row import file."""
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["name", "card", "pin", "valid_from", "valid_until", "state", "levels", "privileges"]
        )
        w.writerows(rows(n))


def _status_mb() -> dict[str, float]:
    """VmRSS and VmHWM of this process, in MB (MiB)."""
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def child(db: Path, secret_file: Path, n_rows: int, lookups: int, seed: int) -> dict[str, Any]:
    """(In the subprocess) open the store like the daemon, time lookups, report RSS."""
    import controller.app  # noqa: F401 - the daemon's modules, for a realistic RSS
    from controller.access.secret import load_secret
    from controller.access.store import CredentialStore

    baseline = _status_mb()["VmRSS"]
    rng = random.Random(seed)
    keys = [card_key(rng.randrange(n_rows)) for _ in range(lookups)]
    pins = [pin(rng.randrange(n_rows)) for _ in range(lookups)]
    unknown = [f"h10301:255:{rng.randrange(65536)}" for _ in range(lookups)]  # > n_rows rows
    store = CredentialStore.open(db, load_secret(secret_file), duress="last-digit-plus-one")
    try:
        cold_ns: list[float] = []
        for _ in range(min(1000, lookups)):  # a running daemon has its hot pages cached
            k = card_key(rng.randrange(n_rows))
            t0 = time.perf_counter_ns()
            store.lookup(k)
            cold_ns.append(time.perf_counter_ns() - t0)
        hit_ns: list[float] = []
        for k in keys:
            t0 = time.perf_counter_ns()
            found = store.lookup(k)
            hit_ns.append(time.perf_counter_ns() - t0)
            if found is None:
                raise RuntimeError("an enrolled card was not found")
        pin_ns: list[float] = []
        for p in pins:
            t0 = time.perf_counter_ns()
            match = store.match_pin(p)
            pin_ns.append(time.perf_counter_ns() - t0)
            if match is None:
                raise RuntimeError("an enrolled PIN was not found")
        miss_ns: list[float] = []
        for k in unknown:
            t0 = time.perf_counter_ns()
            store.lookup(k)
            miss_ns.append(time.perf_counter_ns() - t0)
        counts = store.counts()
    finally:
        store.close()
    status = _status_mb()
    return {
        "rss_mb": round(status["VmRSS"], 1),
        "rss_hwm_mb": round(status["VmHWM"], 1),
        "rss_baseline_mb": round(baseline, 1),
        "lookup_p50_us": round(percentile(hit_ns, 50) / 1000, 1),
        "lookup_p99_us": round(percentile(hit_ns, 99) / 1000, 1),
        "lookup_max_us": round(max(hit_ns) / 1000, 1),
        "lookup_cold_p99_us": round(percentile(cold_ns, 99) / 1000, 1),
        "lookup_unknown_p99_us": round(percentile(miss_ns, 99) / 1000, 1),
        "pin_lookup_p50_us": round(percentile(pin_ns, 50) / 1000, 1),
        "pin_lookup_p99_us": round(percentile(pin_ns, 99) / 1000, 1),
        "lookups": lookups,
        "stored_credentials": counts["credentials"],
    }


def run(n_rows: int, lookups: int, seed: int) -> dict[str, Any]:
    """Generate, import, measure in a subprocess; return the JSON object."""
    from bench._common import quiet_logs
    from controller.access.csvio import import_csv
    from controller.access.secret import load_or_create_secret
    from controller.access.store import CredentialStore

    quiet_logs("error")
    with temp_dir("wcred-") as work:
        csv_path, db, secret_file = work / "cards.csv", work / "db" / "cred.db", work / "secret"
        t0 = time.perf_counter()
        write_csv(csv_path, n_rows)
        generate_s = time.perf_counter() - t0
        secret = load_or_create_secret(secret_file)
        with CredentialStore.open(db, secret, duress="last-digit-plus-one") as store:
            for name in LEVELS:
                store.add_level(name, [f"door-{name}", "main"], "always")
            t0, c0 = time.perf_counter(), time.process_time()
            report = import_csv(store, csv_path)
            import_s, import_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        import_hwm_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if not report.committed:
            raise RuntimeError(f"import rejected: {report.summary()}: {report.rejected[:3]}")
        db_mb = sum(p.stat().st_size for p in db.parent.iterdir()) / (1 << 20)
        proc = subprocess.run(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "bench.credential_import",
                "--child",
                str(db),
                str(secret_file),
                str(n_rows),
                str(lookups),
                str(seed),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"measuring subprocess failed: {proc.stderr.strip()[-2000:]}")
        measured = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "bench": "credential_import",
        "rows": report.rows,
        "credentials": report.credentials,
        "import_s": round(import_s, 2),
        "rows_per_s": round(report.rows / import_s) if import_s > 0 else 0,
        "import_cpu_s": round(import_cpu_s, 2),
        "import_phases_s": {k: round(v, 2) for k, v in report.phase_s.items()},
        "import_rss_hwm_mb": round(import_hwm_mb, 1),
        "generate_csv_s": round(generate_s, 2),
        "db_mb": round(db_mb, 1),
        **measured,
        "target_import_s": TARGET_IMPORT_S,
        "target_rss_mb": TARGET_RSS_MB,
        "target_met": import_s <= TARGET_IMPORT_S and measured["rss_mb"] <= TARGET_RSS_MB,
    }


def summary_text(r: dict[str, Any]) -> str:
    """A few readable lines of the figures."""
    met = "met" if r["target_met"] else "MISSED"
    return "\n".join(
        [
            f"credential import: {r['rows']} rows in {r['import_s']} s "
            f"({r['rows_per_s']} rows/s, {r['import_cpu_s']} s CPU; target <= "
            f"{r['target_import_s']} s), db {r['db_mb']} MB, importer peak RSS "
            f"{r['import_rss_hwm_mb']} MB",
            f"  daemon RSS with the store open: {r['rss_mb']} MB (peak {r['rss_hwm_mb']} MB, "
            f"before opening {r['rss_baseline_mb']} MB; target <= {r['target_rss_mb']} MB)",
            f"  lookup p50 {r['lookup_p50_us']} us, p99 {r['lookup_p99_us']} us; "
            f"PIN p99 {r['pin_lookup_p99_us']} us; unknown card p99 "
            f"{r['lookup_unknown_p99_us']} us ({r['lookups']} each) - targets {met}",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print JSON (``--json``) or a summary followed by the JSON."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--child"]:
        db, secret_file, n_rows, lookups, seed = args[1:6]
        emit_json(child(Path(db), Path(secret_file), int(n_rows), int(lookups), int(seed)))
        return 0
    p = argparse.ArgumentParser(
        prog="python -m bench.credential_import",
        description="Import N credentials from CSV, then measure the daemon's RSS and lookups.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object only")
    p.add_argument("--rows", type=positive_int, default=1_000_000, help="rows (1000000)")
    p.add_argument("--lookups", type=positive_int, default=10_000, help="timed lookups (10000)")
    p.add_argument("--seed", type=int, default=1, help="seed of the random lookups")
    opts = p.parse_args(args)
    if opts.rows > 10_000_000:
        p.error("--rows must be at most 10000000")
    try:
        result = run(opts.rows, opts.lookups, opts.seed)
    except RuntimeError as exc:
        print(f"credential_import: {exc}", file=sys.stderr)
        return 1
    if not opts.json:
        print(summary_text(result))
    emit_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
