"""Logging flags shared by every node command line: where the lines go, how big a file may grow,
and whether they are text for people or JSON for a log shipper.

Without --log-file, lines go to stderr (a terminal, or the journal under systemd). With it, to a
file rotated by size by the standard library (PATH, PATH.1 ... PATH.N): one process per file,
since RotatingFileHandler does not coordinate writers across processes.
"""
from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import sys
from datetime import datetime, timezone

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5
# Loggers of libraries that report, as warnings, conditions the node handles itself.
QUIET_LOGGERS = {"waitress.queue": logging.ERROR}


class LogSetupError(Exception):
    """A logging flag that cannot be honoured; its text is the one-line reason."""


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, msg, and exc when there is one."""

    def __init__(self, label: str | None = None):
        super().__init__()
        self.label = label

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
                 .replace("+00:00", "Z"),
                 "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        if self.label:
            entry["node"] = self.label
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def int_at_least(minimum: int):
    """An argparse type: an integer no smaller than `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is not at least {minimum}")
        return value
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("logging")
    group.add_argument("--log-file", metavar="PATH", default=None,
                       help="write log lines to PATH, rotated by size (default: stderr)")
    group.add_argument("--log-max-bytes", metavar="N", type=int_at_least(1), default=DEFAULT_MAX_BYTES,
                       help=f"rotate --log-file when it reaches N bytes (default {DEFAULT_MAX_BYTES})")
    group.add_argument("--log-backups", metavar="N", type=int_at_least(0), default=DEFAULT_BACKUPS,
                       help=f"rotated files to keep, PATH.1 ... PATH.N; 0 truncates instead "
                            f"(default {DEFAULT_BACKUPS})")
    group.add_argument("--log-format", choices=("text", "json"), default="text",
                       help="text lines, or one JSON object per line with ts, level, logger, msg (default text)")


def configure(args: argparse.Namespace, label: str | None = None) -> None:
    """Install the root handler the flags ask for; `label` (the node's port or id) tags each line.
    Raises LogSetupError when the file cannot be opened."""
    if args.log_file:
        try:
            handler: logging.Handler = logging.handlers.RotatingFileHandler(
                args.log_file, maxBytes=args.log_max_bytes, backupCount=args.log_backups, encoding="utf-8")
        except OSError as exc:
            raise LogSetupError(f"cannot open log file {args.log_file}: {exc.strerror or exc}")
    else:
        handler = logging.StreamHandler(sys.stderr)
    if args.log_format == "json":
        handler.setFormatter(JSONFormatter(label))
    else:
        tag = f" [{label}]" if label else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s{tag} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
