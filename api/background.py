"""Work an API process does beside its requests, in a daemon thread of its own."""

from __future__ import annotations

import threading


class BackgroundThread:
    """A daemon thread that runs ``_run`` from ``start()``; ``_run`` returns once ``_stop`` is set, which ``close()`` does."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop; waits at most ``timeout_s`` for the thread (a daemon, it never holds the process)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        raise NotImplementedError
