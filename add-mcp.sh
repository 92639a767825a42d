#!/usr/bin/env bash
# Register sentinel-gw with Claude Code as a stdio MCP server (`claude mcp add-json`).
#
#   ./add-mcp.sh [--name sentinel] [--scope local|user|project] [--config ./sentinel.toml]
#                [--zipapp PATH [--python python3]] [--replace] [--dry-run]
#
# Claude Code is told to start `sentinel-gw serve --config <abs config>` (or
# `python3 <abs zipapp> serve --config <abs config>`) with ONE variable in its environment: the
# client token (as auth.token_env, SENTINEL_TOKEN by default), taken from SENTINEL_CLIENT_TOKEN in
# the .env file next to the config. The signing secret is never passed: the gateway reads it itself.
# Run `sentinel-gw init` first; it writes the config and the .env. Docs: docs/CLAUDE-CODE.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
name="sentinel"
scope="local"
config="./sentinel.toml"
zipapp=""
python="python3"
dry_run=0
replace=0

usage() {
  sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  cat <<'EOF'

Options:
  --name NAME      server name in Claude Code (default: sentinel); tools appear as mcp__NAME__<tool>
  --scope SCOPE    local (default: this project, in ~/.claude.json), user (all projects),
                   project (./.mcp.json, shared with the repository: the token would be committed!)
  --config PATH    the gateway's config (default: ./sentinel.toml); its .env holds the token
  --zipapp PATH    run this sentinel-gw.pyz with python3 instead of the installed sentinel-gw
  --python PATH    interpreter for --zipapp (default: python3 on PATH)
  --replace        remove an existing server of the same name and scope first
  --dry-run        print the JSON that would be registered, change nothing
  -h, --help       this help
EOF
}

die() {
  echo "add-mcp.sh: $*" >&2
  exit 1
}

need_value() {
  if [ "$#" -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (see --help)"; fi
}

while [ "$#" -gt 0 ]; do
  case "$1" in
    --name) need_value "$@"; name="$2"; shift 2 ;;
    --name=*) name="${1#*=}"; shift ;;
    --scope | -s) need_value "$@"; scope="$2"; shift 2 ;;
    --scope=*) scope="${1#*=}"; shift ;;
    --config | -c) need_value "$@"; config="$2"; shift 2 ;;
    --config=*) config="${1#*=}"; shift ;;
    --zipapp) need_value "$@"; zipapp="$2"; shift 2 ;;
    --zipapp=*) zipapp="${1#*=}"; shift ;;
    --python) need_value "$@"; python="$2"; shift 2 ;;
    --python=*) python="${1#*=}"; shift ;;
    --replace) replace=1; shift ;;
    --dry-run | -n) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

case "$scope" in
  local | user | project) ;;
  *) die "--scope must be local, user or project (got '$scope')" ;;
esac
[[ "$name" =~ ^[A-Za-z0-9_-]{1,64}$ ]] || die "--name must be 1-64 characters of A-Z a-z 0-9 _ - (got '$name')"

command -v python3 >/dev/null 2>&1 || die "python3 is needed (to read the config and build the JSON)"

# The config and its .env, as absolute paths (Claude Code starts the server from any directory).
[ -f "$config" ] || die "no config at $config: run \`sentinel-gw init\` first (or pass --config PATH)"
config_abs="$(cd "$(dirname "$config")" && pwd -P)/$(basename "$config")"
env_file="$(dirname "$config_abs")/.env"
[ -f "$env_file" ] || die "no $env_file (it holds the token): run \`sentinel-gw init --dir $(dirname "$config_abs")\` first"

# What Claude Code runs.
if [ -n "$zipapp" ]; then
  [ -f "$zipapp" ] || die "no zipapp at $zipapp (build it with scripts/build-zipapp.sh)"
  zipapp_abs="$(cd "$(dirname "$zipapp")" && pwd -P)/$(basename "$zipapp")"
  server_cmd="$(command -v "$python" 2>/dev/null)" || die "$python not found (pass --python PATH)"
  "$server_cmd" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "$server_cmd is older than Python 3.10 (pass --python PATH)"
  server_args=("$zipapp_abs" serve --config "$config_abs")
else
  server_cmd="$(command -v sentinel-gw 2>/dev/null || true)"
  if [ -z "$server_cmd" ] && [ -x "$here/.venv/bin/sentinel-gw" ]; then
    server_cmd="$here/.venv/bin/sentinel-gw"
  fi
  [ -n "$server_cmd" ] || die "sentinel-gw is not on PATH: install it (pipx install sentinel-gw) or pass --zipapp PATH"
  server_args=(serve --config "$config_abs")
fi

# Build the JSON in Python: the token goes from the .env file into the JSON without ever being
# interpolated by the shell or appearing on a command line.
json="$(
  python3 - "$config_abs" "$env_file" "$server_cmd" "${server_args[@]}" <<'PY'
import json
import re
import sys

config, env_file, command, *args = sys.argv[1:]


def fail(message):
    sys.stderr.write("add-mcp.sh: " + message + "\n")
    raise SystemExit(1)


def token_env_name(path):
    """auth.token_env of the config (default SENTINEL_TOKEN)."""
    try:
        try:
            import tomllib
        except ImportError:
            import tomli as tomllib
        with open(path, "rb") as fh:
            value = tomllib.load(fh).get("auth", {}).get("token_env")
        return value or "SENTINEL_TOKEN"
    except ImportError:  # Python 3.10 without tomli: a plain scan of the [auth] table
        section = ""
        for line in open(path, encoding="utf-8"):
            line = line.strip()
            if line.startswith("["):
                section = line
            m = re.match(r'token_env\s*=\s*"([A-Za-z_][A-Za-z0-9_]*)"', line)
            if section == "[auth]" and m:
                return m.group(1)
        return "SENTINEL_TOKEN"
    except Exception as exc:
        fail(f"cannot read {path}: {exc} (check it with `sentinel-gw check --config {path}`)")


def env_value(path, key):
    value = None
    for raw in open(path, encoding="utf-8-sig"):
        line = raw.strip()
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        if k.strip() != key:
            continue
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
            v = v[1:-1]
        else:
            v = re.split(r"\s#", v, maxsplit=1)[0].strip()
        value = v  # a later line wins, as with `source`
    return value


name = token_env_name(config)
# `sentinel-gw init` stores the client's token as SENTINEL_CLIENT_TOKEN (not under auth.token_env,
# which the gateway would otherwise read from the same .env for a client that forgot its own).
source_name = "SENTINEL_CLIENT_TOKEN" if env_value(env_file, "SENTINEL_CLIENT_TOKEN") is not None else name
token = env_value(env_file, source_name)
init_hint = "run `sentinel-gw init` (or mint one: sentinel-gw token --config ... --sub NAME --role admin)"
if not token:
    fail(f"SENTINEL_CLIENT_TOKEN is missing or empty in {env_file}: {init_hint}")
if re.search(r"change-?me|generate|placeholder|your[-_]?token|^x+$", token, re.I):
    fail(f"{source_name} in {env_file} is a placeholder, not a token: {init_hint}")
if not re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*", token):
    fail(f"{source_name} in {env_file} is not a JWT (header.payload.signature): {init_hint}")
print(json.dumps({"type": "stdio", "command": command, "args": args, "env": {name: token}}))
PY
)"

if [ "$dry_run" = 1 ]; then
  printf '%s\n' "$json"
  exit 0
fi

command -v claude >/dev/null 2>&1 ||
  die "Claude Code's \`claude\` command is not on PATH: install Claude Code, or run with --dry-run and add the JSON by hand (docs/CLAUDE-CODE.md)"

if [ "$replace" = 1 ]; then
  claude mcp remove "$name" -s "$scope" >/dev/null 2>&1 || true
fi
# The JSON goes on stdin (`-`), not on the command line, where other users could read the token.
if ! printf '%s' "$json" | claude mcp add-json -s "$scope" "$name" -; then
  die "claude mcp add-json failed; if '$name' already exists, re-run with --replace (or: claude mcp remove $name -s $scope)"
fi
if [ "$scope" = project ]; then
  echo "add-mcp.sh: note: scope 'project' wrote the token into ./.mcp.json; do not commit that file" >&2
fi
echo "Registered '$name' (scope $scope): $server_cmd ${server_args[*]}"
echo "Check it with: claude mcp get $name    (and \`claude mcp list\` for a health check)"
