"""Structured logging: one JSON object per line, or Rich console lines for people."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, UTC
from pathlib import Path

from edgelake.settings import Settings

_STANDARD = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    """Formats a record and its ``extra`` fields as one JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update({key: value for key, value in vars(record).items() if key not in _STANDARD})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(settings: Settings) -> None:
    if settings.log_format == "json":
        handler: logging.Handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
    else:
        from rich.console import Console
        from rich.logging import RichHandler

        # stderr, so that a command's stdout (JSON, CSV) stays machine-readable
        handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=True)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler.addFilter(_own_loggers)
    native = logging.StreamHandler(sys.__stderr__)  # file descriptor 2: the native log once diverted, else the terminal
    native.addFilter(lambda record: not _own_loggers(record))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler, native], force=True)
    logging.getLogger("kafka").setLevel(logging.ERROR)  # its warnings are internal timing noise
    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # several INFO lines per micro-batch pipeline
    logging.getLogger("py4j").setLevel(logging.WARNING)  # a line per Spark gateway connection
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per HTTP request


def _own_loggers(record: logging.LogRecord) -> bool:
    """Whether a record comes from a named logger: edgelake and the libraries it configures log through one; a record
    on the root logger is a library's import-time chatter (Beam's "apitools not found"), kept out of the terminal."""
    return record.name != "root"


def divert_native_output(log_file: Path) -> None:
    """Send what native code and child processes write to file descriptor 2 (TensorFlow's absl lines, the JVM's start-up
    banner, Spark's log4j) to ``log_file``; Python's ``sys.stderr``, where logs, progress and errors go, keeps the terminal.

    Call before ``configure_logging``, which then sends root-logger chatter to the file too.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    terminal = os.dup(2)
    sys.stderr = open(terminal, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=True)  # noqa: SIM115
    target = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(target, 2)
    os.close(target)
