"""Container health checks with nothing but the standard library (every edgelake image has Python).

    healthcheck.py http URL          healthy when URL answers 2xx within 3 s
    healthcheck.py process WORDS...  healthy when a process runs whose argv contains WORDS in order

Docker's HEALTHCHECK and Kubernetes' exec probes both run it; curl is in none of the images.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path


def http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 200 <= response.status < 300
    except OSError:
        return False


def process(words: list[str]) -> bool:
    wanted = b"\0".join(word.encode() for word in words)
    me = str(os.getpid())  # whose own argv holds WORDS too
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        if cmdline.parent.name == me:
            continue
        try:
            if wanted in cmdline.read_bytes():
                return True
        except OSError:  # the process ended while we looked
            continue
    return False


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "http":
        return 0 if http(argv[1]) else 1
    if len(argv) >= 2 and argv[0] == "process":
        return 0 if process(argv[1:]) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
