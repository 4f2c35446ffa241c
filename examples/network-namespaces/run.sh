#!/usr/bin/env bash
# A socket created in one network namespace, used by a process living in another. See README.md here.
. "$(dirname "$0")/../lib.sh"
require_root "creates network namespaces (ip netns add)"
a="sockshare-a-$$" b="sockshare-b-$$"
on_exit() { ip netns del "$a" 2>/dev/null || true; ip netns del "$b" 2>/dev/null || true; }
cookie_of() {  # the cookie of the network namespace named $1, read from a socket made there
    ip netns exec "$1" python3 -c 'import socket, struct; print(struct.unpack("Q", socket.socket().getsockopt(socket.SOL_SOCKET, 71, 8))[0])'
}

# 1. Two namespaces, each with nothing but its own loopback.
for ns in "$a" "$b"; do ip netns add "$ns" && ip netns exec "$ns" ip link set lo up; done
say "namespaces $a (cookie $(cookie_of "$a")) and $b (cookie $(cookie_of "$b"))"

# 2. The target lives in B: `ip netns exec` enters B and execs `sockshare adopt` (same pid), which
#    waits for a token on stdin and then runs the server with the socket at descriptor 3.
mkfifo "$work/token" && exec 4<>"$work/token"
ip netns exec "$b" sockshare adopt - --name web -- python3 "$here/server.py" 1 <&4 4<&- > "$work/served" &
target=$!
in_namespace_b() { [ "$(readlink /proc/$target/ns/net)" = "$(ip netns exec "$b" readlink /proc/self/ns/net)" ]; }
wait_for in_namespace_b || fail "the target did not enter $b"

# 3. The source lives in A: binds 127.0.0.1:8080 there and shares the listener with the target.
#    The rendezvous is a socket *path*: paths are reachable across network namespaces
#    (an abstract-namespace name would not be).
ip netns exec "$a" sockshare bind tcp://127.0.0.1:8080 --name web -- sockshare share --fd 3 --to $target --via sharer >&4
exec 4>&-

# 4. A client in A reaches the server living in B, through A's loopback.
answer=$(ip netns exec "$a" curl -sS --max-time 10 http://127.0.0.1:8080/) || fail "nothing answered in $a"
echo "$answer"
wait $target || fail "the server failed"
# 5. In B, nothing listens on 127.0.0.1:8080.
if ip netns exec "$b" curl -sS --max-time 5 http://127.0.0.1:8080/ 2>/dev/null; then fail "something answered in $b"; fi
say "in $b, 127.0.0.1:8080 refuses connections: the listener is not there"

python3 - "$answer" "$(cookie_of "$a")" "$(cookie_of "$b")" <<'PY' || fail "the socket is not where it should be"
import json, sys
answer, a, b = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
assert a != b
assert answer["adopted_socket_netns_cookie"] == a, "the adopted socket left namespace A"
assert answer["my_own_socket_netns_cookie"] == b, "the server does not live in namespace B"
assert answer["binding_127.0.0.1:8080_here"].startswith("bound"), "127.0.0.1:8080 is taken in B"
PY
say "ok: a listener made in $a keeps its namespace when a process in $b adopts and serves it"
