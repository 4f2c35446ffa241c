#!/usr/bin/env bash
# The SwiftNIO HTTP app behind `sockshare serve`, in handoff mode and in shared mode: requests,
# a 100 KB echo, a reload while a slow request is in flight, a clean stop. See README.md here.
. "$(dirname "$0")/../lib.sh"
head -c 100000 /dev/urandom > "$work/body"

for mode in handoff shared; do
    port=$(free_port)
    control="$work/serve-$mode.sock"
    sockshare serve --listen "web=tcp://127.0.0.1:$port" --workers 2 --mode $mode --control "$control" \
        --log-level warning -- http-app &
    serve=$!
    url="http://127.0.0.1:$port"
    wait_for curl -sf --max-time 2 "$url/healthz" -o /dev/null || fail "$mode: the app did not come up"

    # Plain requests; in handoff mode round-robin spreads them over both workers.
    pids=$(for _ in 1 2 3 4 5 6; do curl -sS --max-time 5 "$url/"; done | sed -n 's/^hello from pid \([0-9]*\) ('$mode' mode)$/\1/p' | sort -u)
    [ -n "$pids" ] || fail "$mode: no answer from the app"
    [ $mode = shared ] || [ "$(wc -l <<<"$pids")" = 2 ] || fail "$mode: expected both workers, got: $pids"
    say "$mode: answered by pid(s) $(echo $pids)"
    curl -sS --max-time 5 "$url/info" | grep -q "\"mode\":\"$mode\",\"listener\":\"web\"" || fail "$mode: /info is wrong"
    curl -sS --max-time 5 --data-binary @"$work/body" "$url/echo" -o "$work/echoed"
    cmp -s "$work/body" "$work/echoed" || fail "$mode: the echoed body differs"
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/nowhere")" = 404 ] || fail "$mode: no 404"
    # Bad input: a delay that is not a number, and a body over the 1 MiB limit.
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/slow?ms=soon")" = 400 ] || fail "$mode: /slow?ms=soon is not a 400"
    head -c 2000000 /dev/zero > "$work/big"
    [ "$(curl -s -o /dev/null -w '%{http_code}' --data-binary @"$work/big" "$url/echo")" = 413 ] || fail "$mode: a 2 MB body is not a 413"
    say "$mode: /info, a 100 KB echo, a 404, a 400 and a 413 are right"

    # A reload while a 1.5 s request is in flight: the request finishes on the old worker, the new
    # generation takes the new connections, nothing fails.
    curl -sS --max-time 10 "$url/slow?ms=1500" > "$work/slow" &
    slow=$!
    sleep 0.3
    sockshare reload --control "$control" > /dev/null || fail "$mode: the reload failed"
    # (In shared mode the old workers stop accepting when their SIGTERM arrives, a moment after.)
    new_generation_answers() {
        after=$(curl -sS --max-time 5 "$url/" | sed -n 's/^hello from pid \([0-9]*\) .*/\1/p')
        [ -n "$after" ] && ! grep -qx "$after" <<<"$pids"
    }
    wait_for new_generation_answers || fail "$mode: old workers still answer after the reload"
    wait $slow || fail "$mode: the slow request failed across the reload"
    grep -q "^slept 1500 ms in pid" "$work/slow" || fail "$mode: the slow request got: $(cat "$work/slow")"
    say "$mode: reloaded while a slow request was in flight: it finished ($(cat "$work/slow")), new pid $after answers"

    kill -TERM $serve
    wait $serve || fail "$mode: serve did not exit 0 on SIGTERM"
    say "ok: $mode mode"
done
