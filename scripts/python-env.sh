#!/usr/bin/env bash
# Creates (once) the Python virtualenv the stock-client test uses, with the
# pinned packages of tests/python/requirements.txt, and prints its python.
#
#   scripts/python-env.sh [VENV_DIR]     (default: target/grpclb-venv)
#
# Re-running is cheap: the venv is rebuilt only when the requirements change.
# Needs python3 (3.8+) with the venv module, and access to PyPI.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$root/target/grpclb-venv}"
req="$root/tests/python/requirements.txt"
stamp="$venv/.requirements"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
    echo "$venv/bin/python"
    exit 0
fi
python="${PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "python3 not found: install Python 3.8+ with venv" >&2; exit 1; }
rm -rf "$venv"
"$python" -m venv "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
cp "$req" "$stamp"
echo "$venv/bin/python"
