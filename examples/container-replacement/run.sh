#!/usr/bin/env bash
# Zero-downtime container replacement by name: a "sidecar" binds 127.0.0.1:PORT once and keeps the
# listener at the broker under the name `web`; each generation of the app, in a pid namespace of its
# own, adopts it by name; generation N+1 starts while N still serves, then N drains and exits. No
# container can see another's pids, and none needs to. See README.md here.
. "$(dirname "$0")/../lib.sh"
require_root "makes pid namespaces with unshare(1)"
replacements=${REPLACEMENTS:-20}
port=$(free_port)
# A container: a pid namespace and a /proc of its own (no container sees another's pids).
container=(unshare --pid --fork --mount-proc --kill-child)
# The host pid of the one process a container runs (the child of its unshare).
inside() { cat "/proc/$1/task/$1/children" 2>/dev/null | tr -d ' '; }
has_inside() { [ -n "$(inside "$1")" ]; }
# unshare --fork blocks SIGTERM itself: on exit, stop what each container runs, then clean up.
stop_containers() { for job in $(jobs -p); do kill -TERM $(inside "$job") 2>/dev/null || true; done; }
trap 'stop_containers; cleanup' EXIT

# The broker, in a private directory that every "container" mounts (here: the same filesystem).
export SOCKSHARE_BROKER="$work/run/broker.sock"
"${container[@]}" sockshare broker --log-level warning &
wait_for sockshare status > /dev/null || fail "the broker did not start"

# The sidecar binds the port and keeps the listener under a name, for root's containers only, until
# revoked; then it exits: the broker holds the socket, so it never closes between generations.
"${container[@]}" sockshare bind "tcp://127.0.0.1:$port" -- sockshare share --fd 3 --name web --keep --for-uid 0 > /dev/null
say "sidecar: bound 127.0.0.1:$port, kept at the broker as 'web' for uid 0, and exited"

# start_generation: an app container that adopts `web` by name and serves it; sets $generation_pid.
start_generation() {
    "${container[@]}" sockshare adopt --name web --wait 10 -- hello-worker &
    generation_pid=$!
    wait_for has_inside $generation_pid || fail "generation did not start"
    local app
    app=$(inside $generation_pid)
    wait_for grep -q '^Name:.*hello-worker' "/proc/$app/status" || fail "generation did not adopt the listener"
}
start_generation
current=$generation_pid
wait_for curl -sf --max-time 2 "http://127.0.0.1:$port/" -o /dev/null || fail "generation 1 does not answer"

# Load throughout: a closed-loop client, 4 threads, one request per connection, bounded in time.
sockshare-bench load --address "127.0.0.1:$port" --threads 4 --seconds 300 > "$work/load" &
load=$!
sleep 0.5
for generation in $(seq 2 $((replacements + 1))); do
    start_generation
    sleep 0.3                                   # the new generation accepts alongside the old
    kill -TERM "$(inside $current)"             # the old one stops accepting, finishes, exits
    wait $current || fail "generation $((generation - 1)) did not exit 0 after draining"
    current=$generation_pid
done
sleep 0.5
kill -INT $load && wait $load
read -r _ attempted _ answered _ failed _ reset _ refused _ timed_out < "$work/load"
say "$replacements replacements under load: attempted $attempted, answered $answered, failed $failed, reset $reset, refused $refused, timed out $timed_out"

# The same with keep-alive clients (wrk, when installed): each generation that drains answers what
# its clients sent with `Connection: close` and closes; the clients reconnect to the next one.
keepalive="skipped (no wrk installed)"
if command -v wrk > /dev/null; then
    wrk -t1 -c16 -d"$((replacements / 2 + 4))s" "http://127.0.0.1:$port/" > "$work/wrk" 2>&1 &
    wrk_pid=$!
    sleep 1
    for generation in $(seq 1 "$replacements"); do
        start_generation
        sleep 0.2
        kill -TERM "$(inside $current)"
        wait $current || fail "keep-alive round $generation: the old generation did not exit 0 after draining"
        current=$generation_pid
    done
    wait $wrk_pid
    requests=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$work/wrk")
    socket_errors=$(sed -n 's/^ *Socket errors: connect \([0-9]*\), read \([0-9]*\), write \([0-9]*\), timeout \([0-9]*\)/\1+\2+\3+\4/p' "$work/wrk")
    non2xx=$(sed -n 's/^ *Non-2xx or 3xx responses: \([0-9]*\)/\1/p' "$work/wrk")
    keepalive_failed=$(( ${socket_errors:-0} + ${non2xx:-0} ))
    keepalive="$replacements more replacements under keep-alive load (wrk -c16): $requests requests, $keepalive_failed failed"
    [ "$keepalive_failed" = 0 ] || { cat "$work/wrk"; fail "keep-alive requests failed"; }
fi
say "$keepalive"
claims=$(sockshare status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["named"][0]["claims"])')
say "the broker handed 'web' to $claims generations"
kill -TERM "$(inside $current)"; wait $current || true
sockshare revoke --name web > /dev/null
[ "$answered" -gt 0 ] && [ "$answered" = "$attempted" ] && [ $((failed + reset + refused + timed_out)) = 0 ] \
    || fail "connections were lost"
expected_claims=$((replacements + 1))
command -v wrk > /dev/null && expected_claims=$((2 * replacements + 1))
[ "$claims" = "$expected_claims" ] || fail "expected $expected_claims claims, got $claims"
say "ok: $replacements container replacements, no connection lost, no pid shared"
