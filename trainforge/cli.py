"""`trainforge` command line. Each subcommand imports what it needs lazily, so `--help` stays fast."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from shared.settings import Settings, SettingsError


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from migrations import upgrade

    if not settings.database_url:
        print("trainforge migrate: set TRAINFORGE_DATABASE_URL (postgresql+asyncpg://...)", file=sys.stderr)
        return 2
    upgrade(settings.database_url, args.revision)
    print(f"database schema at {args.revision}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainforge",
        description="Trainforge: an event-driven job server for YOLO training and LLM fine-tuning runs.",
        epilog="Settings come from TRAINFORGE_* environment variables; see README.md (Settings).",
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("migrate", help="apply database migrations (TRAINFORGE_DATABASE_URL)")
    p.add_argument("--revision", default="head", help="target revision (default: head)")
    p.set_defaults(func=_cmd_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"trainforge: {exc}", file=sys.stderr)
        return 2
    _configure_logging(args.log_level or settings.log_level)
    return int(args.func(args, settings) or 0)


if __name__ == "__main__":
    sys.exit(main())
