"""Structured logging: one JSON object per line, or Rich console lines for people; and where the libraries' own output goes."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, UTC
from pathlib import Path

from edgelake.settings import Settings

_STANDARD = set(vars(logging.makeLogRecord({})))

# The file that file descriptor 2 was diverted to in this process, once ``divert_native_output`` ran.
_native_log: Path | None = None

# Spark's log4j2 configuration while diverted: the JVM's loggers append to the native log.
_LOG4J2 = """\
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log_file}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{{yy/MM/dd HH:mm:ss}} %p %c{{1}}: %m%n%ex
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
"""


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
    """Log to ``sys.stderr`` in the settings' format and level.

    Once :func:`divert_native_output` ran, only edgelake's own records reach the terminal; the libraries' (TensorFlow,
    absl, Beam, py4j, Python's warnings) go to the native log beside what their native code writes.
    """
    if settings.log_format == "json":
        handler: logging.Handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
    else:
        from rich.console import Console
        from rich.logging import RichHandler

        # stderr, so that a command's stdout (JSON, CSV) stays machine-readable
        handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=True)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handlers = [handler]
    if _native_log is not None:
        handler.addFilter(_own_record)
        library = logging.StreamHandler(sys.__stderr__)  # file descriptor 2: the native log
        library.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        library.addFilter(lambda record: not _own_record(record))
        handlers.append(library)
        logging.captureWarnings(True)  # a library's warnings.warn() as a py.warnings record, to the native log
    logging.basicConfig(level=settings.log_level.upper(), handlers=handlers, force=True)
    logging.getLogger("kafka").setLevel(logging.ERROR)  # its warnings are internal timing noise
    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # several INFO lines per micro-batch pipeline
    logging.getLogger("py4j").setLevel(logging.WARNING)  # a line per Spark gateway connection
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per HTTP request
    logging.getLogger("alembic").setLevel(logging.WARNING)  # a line per schema check, on every first use of the control plane


def _own_record(record: logging.LogRecord) -> bool:
    """Whether edgelake logged the record (its modules log on ``edgelake.*`` loggers), not a library."""
    return record.name == "edgelake" or record.name.startswith("edgelake.")


def divert_native_output(log_file: Path) -> None:
    """Send what native code, child processes and libraries write to file descriptor 2 (TensorFlow's absl lines and CUDA
    probing, the JVM's start-up lines, Spark's log4j, Beam's import-time warnings) to ``log_file``; Python's
    ``sys.stderr``, where edgelake's logs, progress and errors go, keeps the terminal.

    Call before TensorFlow, Spark or Beam is loaded and before ``configure_logging``. TensorFlow's C++ INFO lines (oneDNN,
    CPU instructions, SavedModel loading) are not written at all unless ``TF_CPP_MIN_LOG_LEVEL`` says otherwise; its
    warnings and errors (a failed ``cuInit``) land in the file.
    """
    global _native_log
    log_file.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # read when TensorFlow loads
    terminal = os.dup(2)
    sys.stderr = open(terminal, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=True)  # noqa: SIM115
    target = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(target, 2)
    os.close(target)
    _native_log = log_file


def spark_log4j2_config() -> Path | None:
    """A log4j2 configuration that sends Spark's JVM logs to the native log (written beside it), or None where the
    native output is not diverted (Spark then logs to the terminal with its own defaults)."""
    if _native_log is None:
        return None
    config = _native_log.with_name("log4j2.properties")
    config.write_text(_LOG4J2.format(log_file=_native_log))
    return config
