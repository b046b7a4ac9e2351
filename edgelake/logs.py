"""Structured logging: one JSON object per line, or Rich console lines for people."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from edgelake.settings import Settings

_STANDARD = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    """Formats a record and its ``extra`` fields as one JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
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
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)
    logging.getLogger("kafka").setLevel(logging.ERROR)  # its warnings are internal timing noise
    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # several INFO lines per micro-batch pipeline
    logging.getLogger("py4j").setLevel(logging.WARNING)  # a line per Spark gateway connection
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per HTTP request
