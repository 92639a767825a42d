#!/usr/bin/env bash
# Build dist/sentinel-gw.pyz: sentinel-gw and its pure-Python runtime dependencies in one file
# that runs with `python3 sentinel-gw.pyz ...` on Python 3.10+ (any CPU: no compiled code).
#
#   scripts/build-zipapp.sh [OUTPUT]        default OUTPUT: dist/sentinel-gw.pyz
#
# Deterministic: the same sources and pins give the same bytes (set SOURCE_DATE_EPOCH to stamp
# the entries with another fixed date). The pinned wheels (scripts/zipapp-requirements.txt) are
# taken from $SENTINEL_WHEEL_DIR or build/zipapp-wheels, and downloaded there only when missing.
# PYTHON selects the interpreter that builds (default python3; it needs pip only to download).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-python3}"
output="${1:-$root/dist/sentinel-gw.pyz}"

if ! command -v "$python" >/dev/null 2>&1; then
  echo "build-zipapp: $python not found (set PYTHON=/path/to/python3)" >&2
  exit 1
fi
exec "$python" "$here/build_zipapp.py" --output "$output"
