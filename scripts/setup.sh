#!/usr/bin/env bash
# First-time set-up, for people who expect a script: runs `sentinel-gw init` with the arguments
# given (default: sentinel.toml and .env in the current directory; see `sentinel-gw init --help`),
# then `sentinel-gw doctor` on the result.
#
#   scripts/setup.sh [--dir D] [--force]
#
# sentinel-gw is taken from PATH, else the zipapp dist/sentinel-gw.pyz of this checkout, else
# `python3 -m sentinel_gw` (a source checkout with its dependencies installed).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-python3}"

if command -v sentinel-gw >/dev/null 2>&1; then
  gw=(sentinel-gw)
elif [ -f "$root/dist/sentinel-gw.pyz" ]; then
  gw=("$python" "$root/dist/sentinel-gw.pyz")
elif "$python" -c 'import sentinel_gw' >/dev/null 2>&1; then
  gw=("$python" -m sentinel_gw)
else
  echo "setup.sh: sentinel-gw not found: install it (pipx install sentinel-gw, or pip install .)" >&2
  echo "          or build the zipapp first: scripts/build-zipapp.sh" >&2
  exit 1
fi
if [ "${gw[0]}" = "$python" ]; then
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    { echo "setup.sh: sentinel-gw needs Python 3.10 or newer ($python is older; set PYTHON=...)" >&2; exit 1; }
fi

"${gw[@]}" init "$@"

# Check what init wrote (the directory is the one given with --dir, else the current one).
dir="."
while [ "$#" -gt 0 ]; do
  case "$1" in
    --dir) dir="${2:-.}"; shift 2 || shift ;;
    --dir=*) dir="${1#*=}"; shift ;;
    *) shift ;;
  esac
done
echo
"${gw[@]}" doctor --config "$dir/sentinel.toml"
