#!/usr/bin/env bash
# Privilege separation: root binds 127.0.0.1:80 and hands the listener, through the broker opened to
# one group, to a worker that runs as nobody from its first instruction. See README.md here.
. "$(dirname "$0")/../lib.sh"
require_root "binds port 80 and switches to the user nobody"
port=${PORT:-80}
user=nobody group=nogroup
chmod 0711 "$work"                    # nobody may pass through (not list) to the broker's directory
# The worker's program must be readable by nobody, wherever this checkout lives (a private home or
# temporary directory would not be): it runs from a copy.
install -m 0644 "$here/worker.py" "$work/worker.py"

# 1. The broker, as root, its directory and socket opened to one group (0710 / 0660).
export SOCKSHARE_BROKER="$work/broker/broker.sock"
sockshare broker --group "$group" --log-level warning &
wait_for test -S "$SOCKSHARE_BROKER" || fail "the broker did not start"
say "broker: $(stat -c '%A %U:%G' "$work/broker") $work/broker"

# 2. The worker: setpriv drops to nobody (no groups, no capabilities, no_new_privs) and execs
#    `sockshare adopt`, which waits for one token on stdin, then execs the Python server with the
#    socket at descriptor 3. Its stdin is a fifo this shell keeps open (fd 4) to write the token.
mkfifo "$work/token" && exec 4<>"$work/token"
setpriv --reuid="$user" --regid="$group" --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs \
    -- sockshare adopt - --name web -- python3 "$work/worker.py" 1 <&4 4<&- &
worker=$!
# The share names the target's uid: share only once the worker has become nobody.
wait_for runs_as $worker "$(id -u $user)" || fail "the worker did not drop to $user"
say "worker: pid $worker, uid $(uid_of $worker)"

# 3. Root binds the privileged port and deposits the listener at the broker for the worker's pid;
#    the token goes down the fifo. `share --via broker` returns at once: root keeps nothing.
sockshare bind "tcp://127.0.0.1:$port" --name web -- sockshare share --fd 3 --to $worker --via broker >&4
exec 4>&-

# 4. A client: the unprivileged worker answers on port 80.
answer=$(curl -sS --max-time 10 "http://127.0.0.1:$port/") || fail "nothing answered on 127.0.0.1:$port"
echo "$answer"
wait $worker || fail "the worker failed"

# The checks (the worker reported on itself).
python3 - "$answer" "$port" "$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start)" <<'PY' || fail "the worker is not what it should be"
import json, sys
answer, port, unprivileged_start = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
assert answer["uids"] == ["65534"] * 4, answer["uids"]
assert answer["groups"] == [], answer["groups"]
assert int(answer["CapEff"], 16) == int(answer["CapPrm"], 16) == int(answer["CapBnd"], 16) == 0
assert answer["NoNewPrivs"] == "1"
assert answer["listening_on"] == "127.0.0.1:%d" % port
if unprivileged_start > 1:
    assert answer["binding_port_1_myself"] == "permission denied", answer["binding_port_1_myself"]
PY
say "ok: port $port was bound by root and served by uid $(id -u $user), which holds no capability and could not bind port 1 itself"
