# Sourced by every cookbook example's run.sh: puts the build's binaries first on PATH, makes a
# private work directory that is removed (with every background job) on exit, and gives a few
# helpers. Set SOCKSHARE_BIN to a bin directory to skip `swift build --show-bin-path`.
set -euo pipefail
examples=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
name=$(basename "$here")
if [ -z "${SOCKSHARE_BIN:-}" ]; then
    command -v swift >/dev/null || {
        echo "$name: swift is not on PATH (sudo resets it): pass SOCKSHARE_BIN=\"\$(swift build --show-bin-path)\"" >&2; exit 1; }
    SOCKSHARE_BIN=$(cd "$examples/.." && swift build --show-bin-path)
fi
export PATH="$SOCKSHARE_BIN:$PATH"
[ -x "$SOCKSHARE_BIN/sockshare" ] || { echo "$name: no sockshare in $SOCKSHARE_BIN: run swift build first" >&2; exit 1; }
work=$(mktemp -d)
cleanup() {
    local jobs
    jobs=$(jobs -p)
    [ -z "$jobs" ] || kill $jobs 2>/dev/null || true
    [ -z "$jobs" ] || wait $jobs 2>/dev/null || true
    if declare -F on_exit >/dev/null; then on_exit; fi
    rm -rf "$work"
}
trap cleanup EXIT

say() { printf '%s: %s\n' "$name" "$*"; }
fail() { printf '%s: FAILED: %s\n' "$name" "$*" >&2; exit 1; }
require_root() { [ "$(id -u)" = 0 ] || fail "run as root: this example $1"; }

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_for CONDITION...: runs it every 50 ms until it succeeds, for at most 10 s.
wait_for() {
    local tries=200
    until "$@" 2>/dev/null; do
        tries=$((tries - 1)); [ "$tries" -gt 0 ] || return 1
        sleep 0.05
    done
}

# The effective uid of process $1; runs_as PID UID: whether it is that now.
uid_of() { awk '/^Uid:/ {print $3}' "/proc/$1/status"; }
runs_as() { [ "$(uid_of "$1")" = "$2" ]; }
