"""``python -m edge``: the same commands as ``edgelake edge``."""

from edgelake.cli.edge import main

main()
