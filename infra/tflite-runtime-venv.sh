#!/usr/bin/env bash
# A second virtual environment, .venv-tflite, with only tflite-runtime 2.14 and numpy<2:
# the runtime small devices install, whose wheels are built against numpy 1. The tests
# run the int8 vision model in it to check it gives the same predictions as LiteRT.
# Idempotent: does nothing when the venv already imports both at the pinned versions.
# Usage: bash infra/tflite-runtime-venv.sh [VENV_DIR]   (PYTHON picks the interpreter, 3.8 to 3.11)
set -euo pipefail

venv="${1:-.venv-tflite}"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
check='import numpy, tflite_runtime; assert int(numpy.__version__.split(".")[0]) < 2 and tflite_runtime.__version__ == "2.14.0"'

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" 2>/dev/null; then
    exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
    # tflite-runtime 2.14 has wheels for CPython 3.8 to 3.11 only.
    if ! "$python" -c 'import sys; sys.exit(not (3, 8) <= sys.version_info[:2] <= (3, 11))'; then
        echo "tflite-runtime 2.14 needs Python 3.8 to 3.11, not $("$python" --version 2>&1 | head -n 1) ($python): set PYTHON" >&2
        exit 1
    fi
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "tflite-runtime==2.14.0" "numpy<2"
"$venv/bin/python" -c "$check"
echo "tflite-runtime venv ready at $venv"
