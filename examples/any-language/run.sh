#!/usr/bin/env bash
# Any language: Python claims what Swift shared, Swift adopts what Python deposited, and a shell
# script continues a TCP connection another shell opened. See README.md here.
. "$(dirname "$0")/../lib.sh"
mkfifo "$work/token"

# 1. Swift shares, Python claims (docs/PROTOCOL.md's claim, examples/any-language/claim.py).
port=$(free_port)
python3 "$here/serve_claimed.py" < "$work/token" > "$work/python.out" &
python=$!
sockshare bind "tcp://127.0.0.1:$port" -- sockshare share --fd 3 --to $python --via sharer > "$work/token"
answer=$(curl -sS --max-time 10 "http://127.0.0.1:$port/") || fail "the Python target did not answer"
wait $python || fail "the Python target failed"
cat "$work/python.out"
[ "$answer" = "hello from python pid $python" ] || fail "unexpected answer: $answer"
say "ok: Swift (sockshare share) -> Python (claim.py): $answer"

# 2. Python deposits at the broker, Swift adopts: deposit.py binds a listener, deposits it for the
#    pid of `sockshare adopt` and exits at once; the broker holds it; sockshare adopt claims it and
#    execs http-app, the cookbook's SwiftNIO server, which serves on it.
export SOCKSHARE_BROKER="$work/broker/broker.sock"
sockshare broker --log-level warning &
broker=$!
wait_for test -S "$SOCKSHARE_BROKER" || fail "the broker did not start"
exec 4<>"$work/token"
sockshare adopt - --name web -- http-app <&4 4<&- &
swift_target=$!
read -r token port < <(python3 "$here/deposit.py" "$SOCKSHARE_BROKER" $swift_target)
say "python deposited a listener on port $port and exited; token ${token:0:24}…"
echo "$token" >&4
exec 4>&-
wait_for curl -sf --max-time 2 "http://127.0.0.1:$port/healthz" -o /dev/null || fail "the Swift target did not serve"
answer=$(curl -sS --max-time 10 "http://127.0.0.1:$port/")
[ "$answer" = "hello from pid $swift_target (shared mode)" ] || fail "unexpected answer: $answer"
say "ok: Python (deposit.py) -> broker -> Swift (sockshare adopt + http-app): $answer"
kill -TERM $swift_target && wait $swift_target || fail "http-app did not stop cleanly"

# 3. Shell to shell: bash opens a TCP connection as fd 3 and shares it; another shell, started by
#    `sockshare adopt`, continues the conversation on that same connection.
port=$(free_port)
python3 "$here/upper_server.py" $port > "$work/upper.out" &
wait_for grep -q ready "$work/upper.out" || fail "the line server did not start"
sockshare adopt - -- bash -c 'echo "ping from shell pid $$" >&3; read -r reply <&3; echo "$reply"' \
    < "$work/token" > "$work/shell.out" &
shell=$!
exec 3<>"/dev/tcp/127.0.0.1/$port"
echo "first line, from the shell that connected" >&3 && read -r reply <&3 && say "connecting shell got: $reply"
sockshare share --fd 3 --to $shell --via sharer > "$work/token"
exec 3>&-                                   # the connection lives on in the other shell
wait $shell || fail "the adopting shell failed"
reply=$(cat "$work/shell.out")
[ "$reply" = "PING FROM SHELL PID $shell" ] || fail "unexpected reply: $reply"
say "ok: shell -> shell (sockshare share / sockshare adopt) on one TCP connection: $reply"
