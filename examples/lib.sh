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

# The two HTTP examples (nio-http-app, hummingbird-app) run the same scenario around their own checks.
#
# serve_app MODE APP: `sockshare serve` with 2 workers of APP on a free port, in MODE; sets $serve
# (its pid), $url and $control, and waits until /healthz answers.
serve_app() {
    local port
    port=$(free_port)
    control="$work/serve-$1.sock"
    url="http://127.0.0.1:$port"
    sockshare serve --listen "web=tcp://127.0.0.1:$port" --workers 2 --mode "$1" --control "$control" \
        --log-level warning -- "$2" &
    serve=$!
    wait_for curl -sf --max-time 2 "$url/healthz" -o /dev/null || fail "$1: the app did not come up"
}

# workers_answer MODE PATTERN: six GET / answers, each `hello from pid N PATTERN`; sets $pids (one
# per line). In handoff mode round-robin must have reached both workers.
workers_answer() {
    pids=$(for _ in 1 2 3 4 5 6; do curl -sS --max-time 5 "$url/"; done | sed -n "s/^hello from pid \([0-9]*\) $2\$/\1/p" | sort -u)
    [ -n "$pids" ] || fail "$1: no answer from the app"
    [ "$1" = shared ] || [ "$(wc -l <<<"$pids")" = 2 ] || fail "$1: expected both workers, got: $pids"
    say "$1: answered by pid(s) $(echo $pids)"
}

# echo_and_bad_input MODE [413]: a 100 KB body on POST /echo comes back byte for byte; /nowhere is
# a 404 and /slow?ms=soon a 400; with 413, a 2 MB body is refused with 413.
echo_and_bad_input() {
    [ -f "$work/body" ] || head -c 100000 /dev/urandom > "$work/body"
    curl -sS --max-time 5 --data-binary @"$work/body" "$url/echo" -o "$work/echoed"
    cmp -s "$work/body" "$work/echoed" || fail "$1: the echoed body differs"
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/nowhere")" = 404 ] || fail "$1: no 404"
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/slow?ms=soon")" = 400 ] || fail "$1: /slow?ms=soon is not a 400"
    if [ "${2:-}" = 413 ]; then
        [ -f "$work/big" ] || head -c 2000000 /dev/zero > "$work/big"
        [ "$(curl -s -o /dev/null -w '%{http_code}' --data-binary @"$work/big" "$url/echo")" = 413 ] || fail "$1: a 2 MB body is not a 413"
    fi
}

# reload_during_slow_request MODE OLD-PIDS: a reload while a 1.5 s request is in flight — the
# request finishes on its old worker, and new connections soon go only to the new generation (in
# shared mode the old workers stop accepting when their SIGTERM arrives, a moment after).
reload_during_slow_request() {
    local mode=$1 old=$2 slow after
    curl -sS --max-time 10 "$url/slow?ms=1500" > "$work/slow" &
    slow=$!
    sleep 0.3
    sockshare reload --control "$control" > /dev/null || fail "$mode: the reload failed"
    new_generation_answers() {
        after=$(curl -sS --max-time 5 "$url/" | sed -n 's/^hello from pid \([0-9]*\) .*/\1/p')
        [ -n "$after" ] && ! grep -qx "$after" <<<"$old"
    }
    wait_for new_generation_answers || fail "$mode: old workers still answer after the reload"
    wait $slow || fail "$mode: the slow request failed across the reload"
    grep -q "^slept 1500 ms in pid" "$work/slow" || fail "$mode: the slow request got: $(cat "$work/slow")"
    say "$mode: reloaded while a slow request was in flight: it finished ($(cat "$work/slow")), new pid $after answers"
}

# stop_serve MODE: SIGTERM, and serve must drain and exit 0.
stop_serve() {
    kill -TERM $serve
    wait $serve || fail "$1: serve did not exit 0 on SIGTERM"
    say "ok: $1 mode"
}
