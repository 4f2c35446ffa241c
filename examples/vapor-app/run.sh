#!/usr/bin/env bash
# A Vapor 4 app behind `sockshare serve`, in handoff mode and in shared mode: requests, a route
# parameter, a 100 KB echo, 404, 400 and 413, a reload while a slow request is in flight, a clean
# stop. Build this package first (README.md here).
. "$(dirname "$0")/../lib.sh"
app="${VAPOR_APP:-$(swift build --package-path "$here" --show-bin-path 2>/dev/null)/vapor-app}"
[ -x "$app" ] || fail "vapor-app is not built: run swift build --package-path examples/vapor-app"
# Vapor reads its own command line: `serve` with its log level; the connections come from sockshare.
printf '#!/bin/sh\nexec "%s" serve --log warning\n' "$app" > "$work/vapor-app"
chmod +x "$work/vapor-app"

for mode in handoff shared; do
    serve_app $mode "$work/vapor-app"
    workers_answer $mode "(vapor, $mode mode)"
    curl -sS --max-time 5 "$url/hello/ada" | grep -q "^hello, ada, from pid " || fail "$mode: the route parameter is wrong"
    echo_and_bad_input $mode 413
    say "$mode: a route parameter, a 100 KB echo, a 404, a 400 and a 413 are right"

    reload_during_slow_request $mode "$pids"
    stop_serve $mode
done
