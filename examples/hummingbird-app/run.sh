#!/usr/bin/env bash
# A Hummingbird 2 router behind `sockshare serve`, in handoff mode and in shared mode: requests,
# a route parameter, a 100 KB echo, 404 and 400, a reload while a slow request is in flight, a
# clean stop. Build this package first (README.md here).
. "$(dirname "$0")/../lib.sh"
app="${HUMMINGBIRD_APP:-$(swift build --package-path "$here" --show-bin-path 2>/dev/null)/hummingbird-app}"
[ -x "$app" ] || fail "hummingbird-app is not built: run swift build --package-path examples/hummingbird-app"
head -c 100000 /dev/urandom > "$work/body"

for mode in handoff shared; do
    serve_app $mode "$app"
    workers_answer $mode "(hummingbird, $mode mode)"
    curl -sS --max-time 5 "$url/hello/ada" | grep -q "^hello, ada, from pid " || fail "$mode: the route parameter is wrong"
    curl -sS --max-time 5 --data-binary @"$work/body" "$url/echo" -o "$work/echoed"
    cmp -s "$work/body" "$work/echoed" || fail "$mode: the echoed body differs"
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/nowhere")" = 404 ] || fail "$mode: no 404"
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/slow?ms=soon")" = 400 ] || fail "$mode: /slow?ms=soon is not a 400"
    say "$mode: a route parameter, a 100 KB echo, a 404 and a 400 are right"

    reload_during_slow_request $mode "$pids"
    stop_serve $mode
done
