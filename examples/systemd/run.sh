#!/usr/bin/env bash
# Drives `sockshare serve` exactly as systemd would run sockshare-web.socket + sockshare-web.service
# (service_manager.py reads the unit files), and checks what serve tells its service manager:
# READY=1 with STATUS=, RELOADING=1 + MONOTONIC_USEC= then READY=1 on reload, STOPPING=1 on stop.
# Also checks the unit files with `systemd-analyze verify` when it is installed. See README.md here.
. "$(dirname "$0")/../lib.sh"
bin=$(dirname "$(command -v sockshare)")
port=$(free_port)

if command -v systemd-analyze >/dev/null; then
    mkdir "$work/units"
    for unit in "$here"/*.service "$here"/*.socket; do
        sed "s|/usr/local/bin|$bin|g" "$unit" > "$work/units/$(basename "$unit")"
    done
    # Only our units' own diagnostics count (verify also reads the system's units it names).
    if systemd-analyze verify --man=no "$work"/units/* 2>&1 | grep -F "$work/units/" | grep -v "Unknown key name\|Unknown lvalue"; then
        fail "systemd-analyze verify found problems in the unit files"
    fi
    say "systemd-analyze verify: the unit files are clean"
fi

mkfifo "$work/commands" && exec 5<>"$work/commands"
python3 "$here/service_manager.py" "$here" "$bin" $port "$work" <&5 > "$work/events" &
manager=$!
has() { grep -q "$1" "$work/events"; }
has_twice() { [ "$(grep -c "$1" "$work/events")" -ge 2 ]; }

wait_for has "READY=1" || fail "serve never said READY=1: $(cat "$work/events")"
serve=$(sed -n 's/^started \([0-9]*\)$/\1/p' "$work/events")
grep -q "^$serve READY=1;STATUS=serving with 4 workers" "$work/events" || fail "READY=1 without STATUS=, or not from serve: $(cat "$work/events")"
first=$(curl -sS --max-time 5 "http://127.0.0.1:$port/") || fail "nothing answered on the socket-activated listener"
curl -sS --max-time 5 "http://127.0.0.1:$port/info" | grep -q '"listener":"web"' || fail "the listener is not named web (LISTEN_FDNAMES)"
say "serve (pid $serve) is ready; answered: $first"

echo reload >&5
wait_for has_twice "READY=1" || fail "no READY=1 after the reload: $(cat "$work/events")"
grep -q "^$serve RELOADING=1;MONOTONIC_USEC=[0-9]*;STATUS=reloading" "$work/events" || fail "no RELOADING=1 with MONOTONIC_USEC=: $(cat "$work/events")"
say "reload: RELOADING=1, then READY=1; answered: $(curl -sS --max-time 5 "http://127.0.0.1:$port/")"

echo stop >&5
wait_for has "STOPPING=1" || fail "no STOPPING=1: $(cat "$work/events")"
echo wait >&5
wait_for has "^exited" || fail "serve did not exit"
has "^exited 0$" || fail "serve exited with $(grep '^exited' "$work/events")"
wait $manager
exec 5>&-
echo "what serve told its service manager:"; sed 's/^/  /' "$work/events"
say "ok: socket activation, READY=1/STATUS=, RELOADING=1, STOPPING=1 and exit 0 as systemd expects"
