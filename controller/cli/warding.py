"""``warding``: run the daemon, check a site file, verify the journal, simulators, the demo.

Exit status: 0 success, 1 failure (e.g. broken journal, another daemon running), 2 usage or
configuration error. No traceback reaches the user for any expected problem.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from controller import __version__
from controller.errors import ConfigError, SocketPathError, WardingError


class _UsageError(Exception):
    """A bad combination of arguments (exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    """The full ``warding`` command line."""
    parser = argparse.ArgumentParser(
        prog="warding", description="warding access control and lockdown daemon"
    )
    parser.add_argument("--version", action="version", version=f"warding {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", type=Path, help="site TOML file (default: embedded demo site)")
    run.add_argument("--socket", type=Path, help="control socket path (overrides the config)")
    run.add_argument("--journal", type=Path, help="journal database path (overrides the config)")
    run.add_argument("--log-level", choices=["trace", "debug", "info", "warning", "error"])

    config = sub.add_parser("config", help="site configuration tools")
    csub = config.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    check = csub.add_parser("check", help="validate a site file")
    check.add_argument("file", type=Path)
    csub.add_parser("show-demo", help="print the embedded demo site")

    journal = sub.add_parser("journal", help="event journal tools")
    jsub = journal.add_subparsers(dest="journal_command", metavar="ACTION")
    jsub.required = True
    verify = jsub.add_parser("verify", help="check the journal's hash chain")
    verify.add_argument(
        "--db",
        type=Path,
        help="journal path (default: the [controller] journal of --config, else of the"
        " embedded demo site, as `warding run` without --config)",
    )
    verify.add_argument("--config", type=Path, help="site file whose journal to verify")

    demo = sub.add_parser("demo", help="run the daemon on the simulated demo site")
    demo.add_argument("--duration", type=float, help="run headless for SECONDS, then exit")
    demo.add_argument("--config", type=Path, help="site file (default: embedded demo site)")
    demo.add_argument(
        "--script",
        action="store_true",
        help="with --duration: act out a scripted scenario (badge, REX, forced door)",
    )

    try:
        from simulators import cli as sim_cli
    except ImportError:  # pragma: no cover - simulators ship with the package
        pass
    else:
        sim_cli.register(sub)
    return parser


def _cmd_config_check(args: argparse.Namespace) -> int:
    from controller.settings import load_settings

    settings = load_settings(args.file)
    print(
        f"{args.file}: OK ({len(settings.boards)} boards, {len(settings.doors)} doors, "
        f"controller {settings.controller.id})"
    )
    return 0


def _cmd_journal_verify(args: argparse.Namespace) -> int:
    """Verify one journal: ``--db``, else ``--config``'s, else the embedded demo site's.

    The last is what ``warding run`` without ``--config`` writes; the OK line names the file.
    """
    from controller.journal import verify_journal
    from controller.settings import load_settings

    if args.db is not None and args.config is not None:
        raise _UsageError("give --db or --config, not both")
    db = args.db if args.db is not None else load_settings(args.config).controller.journal
    report = verify_journal(db)
    if not report.ok:
        print(f"{db}: {report.reason}", file=sys.stderr)
    elif report.head_hash is None:
        print(f"{db}: OK, 0 rows (journal is empty)")
    else:
        print(
            f"{db}: OK, {report.rows} rows, hash chain intact,"
            f" head seq {report.head_seq} hash {report.head_hash}"
        )
    return report.exit_code


def _cmd_run(args: argparse.Namespace) -> int:
    from controller import logging as wlog
    from controller.app import run_daemon
    from controller.settings import load_settings

    settings = load_settings(args.config)
    wlog.configure(args.log_level or settings.controller.log_level)
    return asyncio.run(run_daemon(settings, socket_path=args.socket, journal_path=args.journal))


def _cmd_demo(args: argparse.Namespace) -> int:
    from controller.demo import run_demo

    if args.duration is not None and not 0 < args.duration <= 86_400:
        raise _UsageError("--duration must be between 0 and 86400 seconds")
    if args.script and args.duration is None:
        raise _UsageError("--script needs --duration")
    return run_demo(args.config, duration_s=args.duration, script=args.script)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``warding`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "config":
            if args.config_command == "check":
                return _cmd_config_check(args)
            from controller.settings import demo_site_text

            sys.stdout.write(demo_site_text())
            return 0
        if args.command == "journal":
            return _cmd_journal_verify(args)
        if args.command == "demo":
            return _cmd_demo(args)
        if args.command == "sim":
            from simulators import cli as sim_cli

            return sim_cli.run(args)
    except _UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"warding: error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        for problem in exc.problems:
            print(str(problem), file=sys.stderr)
        return 2
    except SocketPathError as exc:
        print(f"warding: {exc}", file=sys.stderr)
        return 2
    except WardingError as exc:
        print(f"warding: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
