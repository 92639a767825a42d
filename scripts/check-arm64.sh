#!/usr/bin/env bash
# Run the zipapp under an emulated ARM64 CPython and drive real sessions through it.
#
#   scripts/check-arm64.sh
#
# What it does, without changing the host (no package is installed, no binfmt handler is
# registered):
#   1. private apt lists for amd64 + arm64 (an apt config under the cache dir, its own sources,
#      state and cache dirs; the sources are the host's own Debian sources);
#   2. `apt-get download` of Debian's arm64 python3.11 (and the libraries it needs, resolved with
#      apt-cache depends) and of the amd64 qemu-user-static; `dpkg -x` into a sysroot;
#   3. a wrapper, <sysroot>/usr/bin/python3, that runs
#      `qemu-aarch64-static -L <sysroot> -0 <wrapper> <sysroot>/usr/bin/python3.11 ...`, so
#      sys.executable is the wrapper and every child the gateway starts from sys.executable (the
#      demo's backends, `serve`) re-enters qemu: the whole process tree is ARM64. Each start through
#      the wrapper is logged, and the script checks that the children went through it;
#   4. the standard library is compiled once under qemu (cached), which cuts start-up;
#   5. the same measurements under ARM64 and natively (the host's python3), then a table:
#      `--version`, `demo`, `check`, and a `serve` session driven over stdio by a JSON-RPC client
#      (time to initialize, to the first full tools/list, a tools/call round trip through the
#      demo backend, and a call to a probe backend that reports its CPU and that of a grandchild
#      started from its sys.executable).
#
# Environment:
#   SENTINEL_ARM64_CACHE   where downloads, the sysroot and the apt state live (default
#                          ./build/arm64 of the checkout); delete it to start afresh
#   SENTINEL_ARM64_ZIPAPP  the archive to test (default: dist/sentinel-gw.pyz, rebuilt first)
#   SENTINEL_ARM64_CALLS   tools/call round trips to time (default 50)
#   SENTINEL_ARM64_REFRESH set to 1 to refresh the private apt lists
#   PYTHON                 the host interpreter (builds the zipapp, drives the sessions, and
#                          is the native reference; default python3)
#
# Exits non-zero when anything fails; prints what it measured. Slow (about a minute when cached):
# run it by hand, never from the test suite.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
cache="${SENTINEL_ARM64_CACHE:-$root/build/arm64}"
host_python="${PYTHON:-python3}"
calls="${SENTINEL_ARM64_CALLS:-50}"

say() { echo "check-arm64: $*" >&2; }
die() {
  say "FAILED: $*"
  exit 1
}

for tool in apt-get apt-cache dpkg "$host_python"; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (this script needs Debian's apt and dpkg)"
done
host_python="$(command -v "$host_python")"

mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"
case "$cache" in
*[[:space:]\"\'\\]*) die "the cache path must not contain spaces or quotes: $cache" ;;
esac

if [[ -n "${SENTINEL_ARM64_ZIPAPP:-}" ]]; then
  [[ -f "$SENTINEL_ARM64_ZIPAPP" ]] || die "no zipapp at $SENTINEL_ARM64_ZIPAPP"
  zipapp="$(cd "$(dirname "$SENTINEL_ARM64_ZIPAPP")" && pwd)/$(basename "$SENTINEL_ARM64_ZIPAPP")"
else
  zipapp="$root/dist/sentinel-gw.pyz"
  PYTHON="$host_python" "$root/scripts/build-zipapp.sh" "$zipapp" >&2
fi

# -- 1. private apt lists ----------------------------------------------------------------------
apt="$cache/apt"
mkdir -p "$apt/etc/apt.conf.d" "$apt/etc/preferences.d" "$apt/etc/sources.list.d" \
  "$apt/lists/partial" "$apt/archives/partial"
touch "$apt/status"
# The host's Debian sources, as they are (only files apt itself would read).
rm -f "$apt/etc/sources.list.d/"*
: >"$apt/etc/sources.list"
[[ -f /etc/apt/sources.list ]] && cp /etc/apt/sources.list "$apt/etc/sources.list"
shopt -s nullglob
for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  cp "$f" "$apt/etc/sources.list.d/"
done
shopt -u nullglob
cat >"$apt/apt.conf" <<EOF
APT::Architecture "$(dpkg --print-architecture)";
APT::Architectures { "$(dpkg --print-architecture)"; "arm64"; };
APT::Sandbox::User "$(id -un)";
Dir::Etc::Parts "$apt/etc/apt.conf.d";
Dir::Etc::SourceList "$apt/etc/sources.list";
Dir::Etc::SourceParts "$apt/etc/sources.list.d";
Dir::Etc::Preferences "$apt/etc/preferences";
Dir::Etc::PreferencesParts "$apt/etc/preferences.d";
Dir::State "$apt";
Dir::State::Lists "$apt/lists";
Dir::State::status "$apt/status";
Dir::Cache "$apt";
Dir::Cache::Archives "$apt/archives";
Dir::Cache::pkgcache "$apt/pkgcache.bin";
Dir::Cache::srcpkgcache "$apt/srcpkgcache.bin";
Acquire::Languages "none";
Acquire::Check-Valid-Until "false";
EOF
export APT_CONFIG="$apt/apt.conf"
if [[ "${SENTINEL_ARM64_REFRESH:-0}" == 1 ]] || ! compgen -G "$apt/lists/*arm64_Packages*" >/dev/null; then
  say "updating the private apt lists in $apt"
  apt-get -q update >&2 || die "apt-get update (private lists) failed"
fi

# -- 2. download -------------------------------------------------------------------------------
debs="$cache/debs"
if [[ ! -f "$debs/.complete" ]]; then
  rm -rf "$debs"
  mkdir -p "$debs"
  # Everything python3.11 and its standard library need at run time, for arm64 only (dpkg, tar
  # and install-info are only there for maintainer scripts, which dpkg -x never runs).
  mapfile -t packages < <(
    apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
      --no-replaces --no-enhances python3.11-minimal:arm64 libpython3.11-stdlib:arm64 |
      grep -v '^ ' | grep ':arm64$' | grep -vE '^(dpkg|tar|install-info):' | sort -u
  )
  [[ ${#packages[@]} -gt 5 ]] || die "could not resolve the arm64 python3.11 packages"
  say "downloading ${#packages[@]} arm64 packages and qemu-user-static into $debs"
  (cd "$debs" && apt-get -q download "${packages[@]}" "qemu-user-static:$(dpkg --print-architecture)" >&2) ||
    die "apt-get download failed"
  touch "$debs/.complete"
fi

# -- 3. unpack ---------------------------------------------------------------------------------
sysroot="$cache/sysroot"
qemu_root="$cache/qemu"
if [[ ! -f "$sysroot/.complete" || ! -f "$qemu_root/.complete" ]]; then
  rm -rf "$sysroot" "$qemu_root"
  mkdir -p "$sysroot" "$qemu_root"
  for deb in "$debs"/*_arm64.deb; do
    dpkg -x "$deb" "$sysroot"
  done
  for deb in "$debs"/qemu-user-static_*.deb; do
    dpkg -x "$deb" "$qemu_root"
  done
  touch "$sysroot/.complete" "$qemu_root/.complete"
fi
qemu="$qemu_root/usr/bin/qemu-aarch64-static"
[[ -x "$qemu" ]] || die "no $qemu after unpacking"
[[ -x "$sysroot/usr/bin/python3.11" ]] || die "no python3.11 in $sysroot"

# -- 4. the wrapper ----------------------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/check-arm64.XXXXXX")"
trap 'rm -rf "$work"' EXIT
wrapper="$sysroot/usr/bin/python3"
starts="$cache/wrapper-starts.log"  # each start through the wrapper, for the checks below
cat >"$wrapper" <<EOF
#!/bin/sh
# ARM64 python3 for check-arm64.sh: argv[0] (hence sys.executable) is this file, so children
# started from sys.executable come back here and run under qemu too. Usable by hand as well.
{ printf '%s\n' "\$*" >>'$starts'; } 2>/dev/null || :
exec '$qemu' -L '$sysroot' -0 '$wrapper' '$sysroot/usr/bin/python3.11' "\$@"
EOF
chmod 0755 "$wrapper"

machine="$("$wrapper" -c 'import platform; print(platform.machine())')"
[[ "$machine" == aarch64 ]] || die "the wrapper runs a $machine interpreter, not aarch64"

# -- 5. pre-compile the standard library (once) ------------------------------------------------
if [[ ! -f "$sysroot/.compiled" ]]; then
  say "compiling the ARM64 standard library under qemu (once)"
  start=$(date +%s.%N)
  "$wrapper" -c 'import compileall, sys, sysconfig
sys.exit(0 if compileall.compile_dir(sysconfig.get_path("stdlib"), quiet=1, workers=0) else 1)' ||
    die "compileall failed"
  say "compiled in $("$host_python" -c "print(round($(date +%s.%N) - $start, 1))") s"
  touch "$sysroot/.compiled"
fi

# -- 6. measure ----------------------------------------------------------------------------------
cat >"$work/probe_server.py" <<'EOF'
"""A minimal MCP stdio server with one tool, `machine`: its CPU, and that of a grandchild started
from its own sys.executable."""
import json
import platform
import subprocess
import sys

TOOL = {"name": "machine", "description": "report the CPU", "inputSchema": {"type": "object"}}


def answer(msg):
    method = msg.get("method")
    if method == "initialize":
        return {"protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}},
                "serverInfo": {"name": "probe", "version": "1"}}
    if method == "tools/list":
        return {"tools": [TOOL]}
    if method == "tools/call":
        child = subprocess.run([sys.executable, "-c", "import platform; print(platform.machine())"],
                               capture_output=True, text=True, check=True).stdout.strip()
        text = json.dumps({"machine": platform.machine(), "executable": sys.executable,
                           "grandchild_machine": child})
        return {"content": [{"type": "text", "text": text}]}
    return {}


for line in sys.stdin:
    msg = json.loads(line)
    if "id" in msg and "method" in msg:
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": answer(msg)}) + "\n")
        sys.stdout.flush()
EOF

cat >"$work/drive.py" <<'EOF'
"""Time the zipapp under one interpreter: --version, demo, init + check, and a serve session."""
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

label, python, zipapp, work, calls = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5])
home = work / f"home-{label}"
home.mkdir()
env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8", "TMPDIR": str(work)}
result = {"label": label}


def run(*args, flags=(), timeout=600):
    start = time.perf_counter()
    out = subprocess.run([python, *flags, zipapp, *args], env=env, capture_output=True, text=True, timeout=timeout)
    took = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"{label}: sentinel-gw {' '.join(args)} exited {out.returncode}\n{out.stdout}\n{out.stderr}")
    return took, out.stdout


result["version_s"] = statistics.median(run("--version")[0] for _ in range(3))
# The same with an empty bytecode cache: what start-up costs without pre-compiled .pyc files.
result["version_cold_s"] = run("--version", flags=("-X", f"pycache_prefix={work / ('pyc-' + label)}"))[0]
result["demo_s"], demo_out = run("demo")
if "every step behaved as expected" not in demo_out:
    sys.exit(f"{label}: the demo did not finish as expected:\n{demo_out}")

config_dir = work / f"config-{label}"
result["init_s"], _ = run("init", "--dir", str(config_dir))
config = config_dir / "sentinel.toml"
with config.open("a", encoding="utf-8") as fh:
    fh.write(f'\n[[backends]]\nname = "probe"\ntype = "stdio"\ncommand = {json.dumps(python)}\n'
             f'args = [{json.dumps(str(work / "probe_server.py"))}]\n')
result["check_s"], _ = run("check", "--config", str(config))
token = next(line.split("=", 1)[1] for line in (config_dir / ".env").read_text().splitlines()
             if line.startswith("SENTINEL_CLIENT_TOKEN="))

start = time.perf_counter()
proc = subprocess.Popen([python, zipapp, "serve", "--config", str(config)], env=dict(env, SENTINEL_TOKEN=token),
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
lines = queue.Queue()
threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
stderr = []
threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True).start()
counter = 0


def rpc(method, params):
    global counter
    counter += 1
    proc.stdin.write(json.dumps({"jsonrpc": "2.0", "id": counter, "method": method, "params": params}) + "\n")
    proc.stdin.flush()
    while True:
        line = lines.get(timeout=120)
        if line is None:
            sys.exit(f"{label}: the gateway closed its stdout\n{''.join(stderr)}")
        msg = json.loads(line)
        if msg.get("id") == counter and "method" not in msg:
            if "error" in msg:
                sys.exit(f"{label}: {method} failed: {msg['error']}")
            return msg["result"]


try:
    rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "check-arm64", "version": "1"}})
    result["initialize_s"] = time.perf_counter() - start
    proc.stdin.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n")
    proc.stdin.flush()
    names = {t["name"] for t in rpc("tools/list", {})["tools"]}
    result["tools_list_s"] = time.perf_counter() - start
    if not {"echo", "machine"} <= names:
        sys.exit(f"{label}: tools/list lacks echo or machine: {sorted(names)}")
    probe = json.loads(rpc("tools/call", {"name": "machine", "arguments": {}})["content"][0]["text"])
    result["probe"] = probe
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        res = rpc("tools/call", {"name": "echo", "arguments": {"message": f"call {i}"}})
        times.append(time.perf_counter() - t0)
        if res.get("isError") or f"call {i}" not in json.dumps(res):
            sys.exit(f"{label}: echo call {i} returned {res}")
    times.sort()
    result["call_p50_ms"] = 1000 * statistics.median(times)
    result["call_p90_ms"] = 1000 * times[int(0.9 * (len(times) - 1))]
    result["calls"] = calls
finally:
    proc.stdin.close()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        sys.exit(f"{label}: the gateway did not exit after stdin closed")
if proc.returncode != 0:
    sys.exit(f"{label}: the gateway exited {proc.returncode}\n{''.join(stderr)}")
print(json.dumps(result))
EOF

say "native run ($("$host_python" -c 'import platform, sys; print(platform.machine(), sys.version.split()[0])'))"
native="$("$host_python" "$work/drive.py" native "$host_python" "$zipapp" "$work" "$calls")" || die "the native run failed"

say "ARM64 run (qemu-aarch64-static $("$qemu" --version | head -1 | awk '{print $3}'), $("$wrapper" -c 'import platform, sys; print(platform.machine(), sys.version.split()[0])'))"
: >"$starts"
arm64="$("$host_python" "$work/drive.py" arm64 "$wrapper" "$zipapp" "$work" "$calls")" || die "the ARM64 run failed"

# -- 7. check the process tree stayed ARM64 and report -----------------------------------------
"$host_python" - "$native" "$arm64" "$starts" "$zipapp" <<'EOF'
import json
import sys

native, arm64 = json.loads(sys.argv[1]), json.loads(sys.argv[2])
starts = open(sys.argv[3], encoding="utf-8").read().splitlines()
zipapp = sys.argv[4]
problems = []
probe = arm64["probe"]
if probe["machine"] != "aarch64" or probe["grandchild_machine"] != "aarch64":
    problems.append(f"the probe backend reports {probe}")
demo_backends = sum(1 for s in starts if s.startswith(zipapp) and " demo-server " in f"{s} ")
gateways = sum(1 for s in starts if s.startswith(zipapp) and " serve " in f"{s} ")
if demo_backends < 2 or gateways < 2:
    problems.append(f"expected the demo's gateways and backends to start through the wrapper: {starts}")
rows = [
    ("`sentinel-gw --version` (median of 3)", "version_s", "s"),
    ("`sentinel-gw --version`, no .pyc cached (cold)", "version_cold_s", "s"),
    ("`sentinel-gw demo` (whole scripted session)", "demo_s", "s"),
    ("`sentinel-gw init`", "init_s", "s"),
    ("`sentinel-gw check` (2 backends)", "check_s", "s"),
    ("`serve`: start to `initialize` answered", "initialize_s", "s"),
    ("`serve`: start to first full `tools/list` (2 backends)", "tools_list_s", "s"),
    (f"`tools/call` round trip, p50 ({arm64['calls']} calls)", "call_p50_ms", "ms"),
    ("`tools/call` round trip, p90", "call_p90_ms", "ms"),
]
print("| measurement | ARM64 (qemu-user) | native | ratio |")
print("| --- | ---: | ---: | ---: |")
for name, key, unit in rows:
    a, n = arm64[key], native[key]
    digits = 2 if unit == "s" else 1
    print(f"| {name} | {a:.{digits}f} {unit} | {n:.{digits}f} {unit} | {a / n:.1f}x |")
print()
print(f"probe backend (started by the ARM64 gateway): machine={probe['machine']}, "
      f"its child from sys.executable: {probe['grandchild_machine']}, sys.executable={probe['executable']}")
print(f"processes started through the ARM64 wrapper: {len(starts)} "
      f"({gateways} gateways, {demo_backends} demo backends, the rest CLI runs and the probe)")
if problems:
    for p in problems:
        print(f"check-arm64: FAILED: {p}", file=sys.stderr)
    sys.exit(1)
print("check-arm64: OK: the zipapp ran the demo and served stdio sessions on ARM64, children included")
EOF
