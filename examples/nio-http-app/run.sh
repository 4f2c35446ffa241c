#!/usr/bin/env bash
# The SwiftNIO HTTP app behind `sockshare serve`, in handoff mode and in shared mode: requests,
# a 100 KB echo, a reload while a slow request is in flight, a clean stop. See README.md here.
. "$(dirname "$0")/../lib.sh"
head -c 100000 /dev/urandom > "$work/body"

for mode in handoff shared; do
    serve_app $mode http-app
    workers_answer $mode "($mode mode)"
    curl -sS --max-time 5 "$url/info" | grep -q "\"mode\":\"$mode\",\"listener\":\"web\"" || fail "$mode: /info is wrong"
    curl -sS --max-time 5 --data-binary @"$work/body" "$url/echo" -o "$work/echoed"
    cmp -s "$work/body" "$work/echoed" || fail "$mode: the echoed body differs"
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/nowhere")" = 404 ] || fail "$mode: no 404"
    # Bad input: a delay that is not a number, and a body over the 1 MiB limit.
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/slow?ms=soon")" = 400 ] || fail "$mode: /slow?ms=soon is not a 400"
    head -c 2000000 /dev/zero > "$work/big"
    [ "$(curl -s -o /dev/null -w '%{http_code}' --data-binary @"$work/big" "$url/echo")" = 413 ] || fail "$mode: a 2 MB body is not a 413"
    say "$mode: /info, a 100 KB echo, a 404, a 400 and a 413 are right"

    reload_during_slow_request $mode "$pids"
    stop_serve $mode
done
