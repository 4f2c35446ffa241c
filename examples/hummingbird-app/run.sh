#!/usr/bin/env bash
# A Hummingbird 2 application behind `sockshare serve`, in handoff mode and in shared mode: requests,
# a route parameter, a 100 KB echo, 404 and 400, a reload while a slow request is in flight, a
# clean stop. Build this package first (README.md here).
. "$(dirname "$0")/../lib.sh"
app="${HUMMINGBIRD_APP:-$(swift build --package-path "$here" --show-bin-path 2>/dev/null)/hummingbird-app}"
[ -x "$app" ] || fail "hummingbird-app is not built: run swift build --package-path examples/hummingbird-app"

for mode in handoff shared; do
    serve_app $mode "$app"
    workers_answer $mode "(hummingbird, $mode mode)"
    curl -sS --max-time 5 "$url/hello/ada" | grep -q "^hello, ada, from pid " || fail "$mode: the route parameter is wrong"
    echo_and_bad_input $mode
    say "$mode: a route parameter, a 100 KB echo, a 404 and a 400 are right"

    reload_during_slow_request $mode "$pids"
    stop_serve $mode
done
