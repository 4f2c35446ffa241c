#!/usr/bin/env bash
# The SwiftNIO HTTP app behind `sockshare serve`, in handoff mode and in shared mode: requests,
# a 100 KB echo, a reload while a slow request is in flight, a clean stop. See README.md here.
. "$(dirname "$0")/../lib.sh"

for mode in handoff shared; do
    serve_app $mode http-app
    workers_answer $mode "($mode mode)"
    curl -sS --max-time 5 "$url/info" | grep -q "\"mode\":\"$mode\",\"listener\":\"web\"" || fail "$mode: /info is wrong"
    # A 100 KB echo, and bad input: no such route, a delay that is not a number, a body over 1 MiB.
    echo_and_bad_input $mode 413
    say "$mode: /info, a 100 KB echo, a 404, a 400 and a 413 are right"

    reload_during_slow_request $mode "$pids"
    stop_serve $mode
done
