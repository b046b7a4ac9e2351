"""``python -m edgelake.edge``: the same commands as ``edgelake-edge``."""

from edgelake.edge.cli import main

main()
