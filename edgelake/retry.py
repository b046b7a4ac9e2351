"""The one retry policy: a call tried again with exponential backoff and jitter while an outage lasts.

Every loop that waits out a broker, the lake's storage or the API being away goes through
``retrying``; what differs between them (which errors are retried, where the backoff starts and
its cap, how long a stall may last, the event that ends a thread's wait) is its parameters.
Each wait is drawn at random between ``first_s`` and a bound that doubles with each retry up to
``max_s`` (tenacity's full jitter with a floor), so that a fleet of clients cut off together does
not come back in step. Each retry logs one line, its fields also given as ``extra`` for the JSON
logs: ``doing``, ``attempt``, ``wait_s``, ``stalled_s`` and ``error``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, stop_never, stop_when_event_set, wait_random_exponential

T = TypeVar("T")
Errors = type[BaseException] | tuple[type[BaseException], ...]


class _Stopped(Exception):
    """The stop event was set during a wait: no further try is made."""


def retrying(
    call: Callable[[], T],
    what: str,
    *,
    retry_on: Errors,
    logger: logging.Logger,
    first_s: float = 0.5,
    max_s: float = 30.0,
    max_stall_s: float | None = None,
    stop: threading.Event | None = None,
    quiet_repeats: bool = False,
) -> T:
    """``call()``, tried again while it raises one of ``retry_on``, waiting ``first_s`` up to ``max_s`` between tries.

    The last error is raised once ``max_stall_s`` (None: no limit) has passed since the first try, or as
    soon as ``stop`` is set (a wait ends early then, and no further try is made); any other error at
    once. Each retry is logged as a warning, ``what`` saying what was being done; with ``quiet_repeats``
    a retry whose error reads as the one before is logged at debug level.
    """
    failures: list[BaseException] = []  # each retry's error, the last one raised when stopped

    def log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        if error is None:
            return  # tenacity sleeps only after a failed try
        text = _described(error)
        repeated = bool(failures) and text == _described(failures[-1])
        failures.append(error)
        wait_s, stalled_s = round(state.upcoming_sleep, 1), round(state.seconds_since_start or 0.0)
        fields = {"doing": what, "attempt": state.attempt_number, "wait_s": wait_s, "stalled_s": stalled_s, "error": text}
        level = logging.DEBUG if quiet_repeats and repeated else logging.WARNING
        logger.log(level, "%s failed (%s); trying again in %.1fs", what, text, wait_s, extra=fields)

    give_up = stop_never if max_stall_s is None else stop_after_delay(max_stall_s)
    retryer = Retrying(
        retry=retry_if_exception_type(retry_on),
        wait=wait_random_exponential(multiplier=first_s, min=first_s, max=max_s),
        stop=give_up if stop is None else give_up | stop_when_event_set(stop),
        before_sleep=log_retry,
        sleep=time.sleep if stop is None else _waiting_on(stop),
        reraise=True,
    )
    try:
        return retryer(call)
    except _Stopped:
        raise failures[-1] from None


def _described(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:500]


def _waiting_on(stop: threading.Event) -> Callable[[float], None]:
    """A sleep that ends early, raising ``_Stopped``, when ``stop`` is set."""

    def sleep(seconds: float) -> None:
        if stop.wait(seconds):
            raise _Stopped

    return sleep
