#!/usr/bin/env bash
# The sidecar pattern with connection handoff: a "sidecar" runs `sockshare serve --workers 0
# --worker-socket`, holds 127.0.0.1:PORT and hands each connection to app "containers" that come
# and go, each in a pid namespace of its own, connecting to the worker socket by themselves. Under
# load, the apps are replaced blue/green again and again; no connection may be lost. See README.md.
. "$(dirname "$0")/../lib.sh"
require_root "makes pid namespaces with unshare(1)"
replacements=${REPLACEMENTS:-10}
port=$(free_port)
container=(unshare --pid --fork --mount-proc --kill-child)
inside() { cat "/proc/$1/task/$1/children" 2>/dev/null | tr -d ' '; }
# unshare --fork blocks SIGTERM itself: on exit, stop what each container runs, then clean up.
stop_containers() { for job in $(jobs -p); do kill -TERM $(inside "$job") 2>/dev/null || true; done; }
trap 'stop_containers; cleanup' EXIT

# The sidecar: accepts on the port and keeps every connection until an app acknowledges it.
control="$work/serve.sock"
export SOCKSHARE_WORKER_SOCKET="$work/run/workers.sock"
"${container[@]}" sockshare serve --listen "web=tcp://127.0.0.1:$port" --mode handoff --workers 0 \
    --worker-socket "$SOCKSHARE_WORKER_SOCKET" --control "$control" --log-level warning &
wait_for sockshare status --control "$control" > /dev/null || fail "the sidecar did not start"
say "serve --workers 0: holding 127.0.0.1:$port; apps connect at $SOCKSHARE_WORKER_SOCKET"

# ready_apps N: whether exactly N apps are connected and ready.
ready_apps() {
    [ "$(sockshare status --control "$control" --json | python3 -c 'import json,sys; w=json.load(sys.stdin).get("externalWorkers") or []; print(sum(1 for x in w if x["ready"]))')" = "$1" ]
}
# start_apps: two app containers (hello-worker finds the worker socket in its environment).
start_apps() {
    "${container[@]}" hello-worker & apps+=($!)
    "${container[@]}" hello-worker & apps+=($!)
}
apps=()
start_apps
wait_for ready_apps 2 || fail "the first apps did not connect"

sockshare-bench load --address "127.0.0.1:$port" --threads 4 --seconds 300 > "$work/load" &
load=$!
sleep 0.5
for round in $(seq 1 "$replacements"); do
    blue=("${apps[@]}")
    apps=()
    start_apps                                          # green connects alongside blue
    wait_for ready_apps 4 || fail "round $round: the new apps did not become ready"
    for app in "${blue[@]}"; do kill -TERM "$(inside "$app")"; done   # blue drains and leaves
    for app in "${blue[@]}"; do wait "$app" || fail "round $round: an old app did not exit 0"; done
    wait_for ready_apps 2 || fail "round $round: the old apps are still listed"
done
sleep 0.5
kill -INT $load && wait $load
read -r _ attempted _ answered _ failed _ reset _ refused _ timed_out < "$work/load"
say "$replacements blue/green app replacements under load: attempted $attempted, answered $answered, failed $failed, reset $reset, refused $refused, timed out $timed_out"
[ "$answered" -gt 0 ] && [ "$answered" = "$attempted" ] && [ $((failed + reset + refused + timed_out)) = 0 ] \
    || fail "connections were lost"
say "ok: $replacements replacements of app containers behind one sidecar, no connection lost"
