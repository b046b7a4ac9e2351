#!/usr/bin/env bash
# The two slim virtual environments an edge device would have, built from this checkout:
# .venv-edge with `pip install 'infra/edge-dist[litert]'` (LiteRT, NumPy 2) and .venv-edge-tflite
# with `pip install 'infra/edge-dist[tflite]'` (tflite-runtime 2.14, NumPy 1): the edgelake-edge
# distribution, the core the agent needs and edgelake.edge. It goes in as a wheel, not editable,
# built from the files git would commit, so each venv proves the packaging: the edge package
# imports with its extra alone, and no cloud stage or library comes along.
# Idempotent: does nothing while infra/edge-dist/pyproject.toml, the package sources and this
# script are unchanged since each venv last passed its checks; a changed pyproject.toml makes
# them anew, so that a dependency dropped from an extra cannot linger in them.
# Usage: bash infra/edge-venv.sh   (PYTHON picks the interpreter, 3.11)
set -euo pipefail

cd "$(dirname "$0")/.."
root="$(pwd)"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
sources_of_the_wheel=(infra/edge-dist edgelake edge)  # infra/edge-dist/edgelake's entries link into edgelake/ and edge/
heavy='tensorflow pyspark apache_beam deltalake pyarrow pandas edgelake.api edgelake.lake edgelake.training edgelake.ingest edgelake.bench edgelake.cli'

# The files a wheel is built from: tracked or new, not ignored, present.
sources() {
    git ls-files --cached --others --exclude-standard -- "${sources_of_the_wheel[@]}" |
        sort -u | while IFS= read -r file; do [ -e "$file" ] && printf '%s\n' "$file"; done
}

# Imports every module of the edge package (its __main__ runs the agent, so only that is
# left out) and the runtime, and fails if any cloud-side package is importable at all.
check() {
    local runtime="$1"
    cat <<EOF
import importlib, importlib.util, pkgutil
import edgelake.edge
for module in pkgutil.walk_packages(edgelake.edge.__path__, "edgelake.edge."):
    if not module.name.endswith(".__main__"):
        importlib.import_module(module.name)
importlib.import_module("$runtime.interpreter")
def importable(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
present = [name for name in "$heavy".split() if importable(name)]
assert not present, f"cloud packages installed beside the edge extra: {present}"
EOF
}

stamp="$({ sources | while IFS= read -r file; do [ -d "$file" ] || sha256sum "$file"; done; sha256sum infra/edge-venv.sh; } | sha256sum | cut -d' ' -f1)"
dependencies="$(sha256sum infra/edge-dist/pyproject.toml | cut -d' ' -f1)"
wheel_src=""
trap '[ -z "$wheel_src" ] || rm -rf "$wheel_src"' EXIT

for spec in "litert .venv-edge ai_edge_litert" "tflite .venv-edge-tflite tflite_runtime"; do
    read -r extra venv runtime <<<"$spec"
    if [ "$(cat "$venv/.edgelake-stamp" 2>/dev/null)" = "$stamp" ]; then
        continue
    fi
    if [ "$(cat "$venv/.edgelake-pyproject" 2>/dev/null)" != "$dependencies" ]; then
        rm -rf "$venv"
    fi
    if [ ! -x "$venv/bin/python" ]; then
        # tflite-runtime 2.14 has wheels for CPython 3.8 to 3.11 only, and the project needs 3.11.
        if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            echo "the edge venvs need Python 3.11, not $("$python" --version 2>&1 | head -n 1) ($python): set PYTHON" >&2
            exit 1
        fi
        "$python" -m venv "$venv"
        echo '*' >"$venv/.gitignore"  # the venv ignores itself, as those of Python 3.13 do
        echo "$dependencies" >"$venv/.edgelake-pyproject"
    fi
    if [ -z "$wheel_src" ]; then
        # A copy, so that setuptools' build/ in the checkout cannot slip stale modules into the wheel.
        wheel_src="$(mktemp -d -t edgelake-edge-wheel.XXXXXX)"
        sources | tar -cf - -T - | tar -xf - -C "$wheel_src"
    fi
    rm -f "$venv/.edgelake-stamp"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$wheel_src/infra/edge-dist[$extra]"
    (cd / && "$root/$venv/bin/python" -I -c "$(check "$runtime")" && "$root/$venv/bin/python" -I -m edgelake.edge run --help >/dev/null)
    "$venv/bin/edgelake-edge" --help >/dev/null
    echo "$stamp" >"$venv/.edgelake-stamp"
    echo "edge venv ready at $venv ($extra extra)"
done
