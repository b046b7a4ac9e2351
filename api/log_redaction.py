"""Keys never reach a log: uvicorn's access lines (``GET /?key=elk_… 200``) are written with them masked."""

from __future__ import annotations

import logging
import re

from edgelake.api.keys import TOKEN_PREFIX

_QUERY_SECRET = re.compile(r"([?&](?:key|api_key|token)=)[^&\s\"]+")
_TOKEN = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_\-]+")
MASK = "[redacted]"


def redacted(text: str) -> str:
    """``text`` with API keys and ``key=`` / ``token=`` query values replaced by ``[redacted]``."""
    return _TOKEN.sub(MASK, _QUERY_SECRET.sub(rf"\1{MASK}", text))


class RedactKeys(logging.Filter):
    """Masks keys in a record's message and in its string arguments (uvicorn passes the path as one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redacted(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redacted(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


ACCESS_LOG_FILTER = RedactKeys()


def redact_access_log() -> None:
    """Install the filter on uvicorn's access and error loggers (once, however many apps are created)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(ACCESS_LOG_FILTER)
