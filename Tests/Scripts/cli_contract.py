#!/usr/bin/env python3
"""Exercises the sockshare CLI contract from Python, as a new user would.

Usage: cli_contract.py PATH-TO-sockshare
Prints one line per check and exits 0 only when every check passed.
"""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime

SOCKSHARE = sys.argv[1]
failures = []


def check(what, condition, detail=""):
    print(("ok   " if condition else "FAIL ") + what + ("" if condition else f"  [{detail}]"), flush=True)
    if not condition:
        failures.append(what)


SERVER = r"""
import os, socket, sys
assert os.environ["LISTEN_FDS"] == "1" and os.environ["LISTEN_PID"] == str(os.getpid())
s = socket.socket(fileno=3)
c, _ = s.accept()
c.recv(1000)
c.sendall(("%s %s %s" % (os.getpid(), os.environ["LISTEN_FDNAMES"], s.getsockname()[1])).encode())
c.close()
"""


def share_listener_to_adopter(via):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    adopter = subprocess.Popen([SOCKSHARE, "adopt", "-", "--name", "api", "--", sys.executable, "-c", SERVER],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sharer = subprocess.Popen([SOCKSHARE, "share", "--fd", str(listener.fileno()), "--to", str(adopter.pid), "--via", via],
                              pass_fds=[listener.fileno()], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    started = time.monotonic()
    token = sharer.stdout.readline().decode().strip()
    check(f"[{via}] share prints the token as one line at once", token.startswith("sks1.") and time.monotonic() - started < 5, token)
    adopter.stdin.write((token + "\n").encode())
    adopter.stdin.flush()
    check(f"[{via}] share exits 0 once the share is claimed", sharer.wait(timeout=20) == 0, sharer.stderr.read())
    listener.close()  # the adopter's descriptor keeps the socket alive
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    client.sendall(b"hi")
    answer = client.recv(1000).decode().split()
    client.close()
    check(f"[{via}] the adopted socket serves after the source closed it (same pid, name, port)",
          answer == [str(adopter.pid), "api", str(port)], answer)
    check(f"[{via}] adopt execs the command, which exits 0", adopter.wait(timeout=20) == 0, adopter.stderr.read())
    return token, adopter.pid, sharer.pid


token, target_pid, source_pid = share_listener_to_adopter("sharer")
share_listener_to_adopter("pidfd")
share_listener_to_adopter("auto")

# inspect, both forms, never printing a secret
run = subprocess.run([SOCKSHARE, "inspect", "--json", token], capture_output=True, text=True)
fields = json.loads(run.stdout)
for key in ["version", "family", "type", "protocol", "listening", "sourcePid", "targetPid", "mechanism", "expiresAt"]:
    check(f"inspect --json has key {key}", key in fields, fields)
check("inspect --json values", fields["family"] == "inet" and fields["type"] == "stream" and fields["listening"] is True
      and fields["mechanism"] == "sharer" and fields["targetPid"] == target_pid and fields["sourcePid"] == source_pid
      and fields["version"] == 1 and fields["protocol"] == 6, fields)
expires = datetime.fromisoformat(fields["expiresAt"].replace("Z", "+00:00"))
check("inspect expiresAt is ISO 8601, about 60 s after creation",
      55 < (expires - datetime.fromisoformat(fields["createdAt"].replace("Z", "+00:00"))).total_seconds() < 65, fields)
check("inspect never prints a secret", "secret" not in run.stdout.lower())
text = subprocess.run([SOCKSHARE, "inspect", "-"], input=token + "\n", capture_output=True, text=True)
check("inspect - reads the token from stdin", text.returncode == 0 and "family:" in text.stdout and "inet" in text.stdout, text)

# expiry and target exit
sleeper = subprocess.Popen(["sleep", "30"])
sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
run = subprocess.run([SOCKSHARE, "share", "--fd", str(sock.fileno()), "--to", str(sleeper.pid), "--ttl", "0.5"],
                     pass_fds=[sock.fileno()], capture_output=True, text=True, timeout=20)
check("an unclaimed share expires: exit 2, one line on stderr", run.returncode == 2 and run.stderr.count("\n") == 1
      and run.stderr.startswith("sockshare: share failed:") and "expired" in run.stderr, run)
sleeper.kill()
sleeper.wait()
short = subprocess.Popen(["sleep", "0.3"])
run = subprocess.run([SOCKSHARE, "share", "--fd", str(sock.fileno()), "--to", str(short.pid)],
                     pass_fds=[sock.fileno()], capture_output=True, text=True, timeout=20)
short.wait()
check("a target that exits without claiming: exit 3", run.returncode == 3 and "exited without claiming" in run.stderr, run)

# SIGTERM revokes
sleeper = subprocess.Popen(["sleep", "30"])
sharer = subprocess.Popen([SOCKSHARE, "share", "--fd", str(sock.fileno()), "--to", str(sleeper.pid)],
                          pass_fds=[sock.fileno()], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
revoked_token = sharer.stdout.readline().strip()
sharer.send_signal(signal.SIGTERM)
code = sharer.wait(timeout=20)
check("SIGTERM revokes the share: exit 143", code == 143 and "revoked" in sharer.stderr.read())
sleeper.kill()
sleeper.wait()

# errors: one line, sockshare: <operation> failed: <cause>, non-zero, never a signal
cases = [
    [SOCKSHARE, "share", "--fd", "99", "--to", "1"],
    [SOCKSHARE, "share", "--fd", "0", "--to", "999999999"],
    [SOCKSHARE, "share", "--fd", "1", "--to", "1", "--via", "carrier-pigeon"],
    [SOCKSHARE, "share", "--fd", "1", "--to", "1", "--ttl", "-3"],
    [SOCKSHARE, "adopt", "not-a-token", "--", "true"],
    [SOCKSHARE, "adopt", token, "--", "true"],
    [SOCKSHARE, "adopt", token],
    [SOCKSHARE, "inspect", "sks1.AAAA"],
    [SOCKSHARE, "inspect", "sks7.AAAA"],
    [SOCKSHARE, "adopt", revoked_token, "--", "true"],
    [SOCKSHARE, "bind", "tcp://127.0.0.1:99999", "--", "true"],
    [SOCKSHARE, "bind", "sctp://x", "--", "true"],
]
for argv in cases:
    run = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=20)
    lines = run.stderr.splitlines()
    check(f"error for {' '.join(a if len(a) < 20 else a[:17] + '...' for a in argv[1:])}: {lines[0] if lines else ''}",
          run.returncode > 0 and len(lines) == 1 and lines[0].startswith("sockshare: ") and "failed: " in lines[0], run)
run = subprocess.run([SOCKSHARE, "inspect", "-"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
check("inspect - with empty stdin is an error", run.returncode == 1 and "no token" in run.stderr, run)
run = subprocess.run([SOCKSHARE, "adopt", token, "--", "/nonexistent/program"], capture_output=True, text=True)
check("a claim of a used token fails before exec", run.returncode == 1, run)

rng = random.Random(7)
alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.%$ \t"
for i in range(60):
    garbage = "sks1." + "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 200)))
    for command in (["inspect", garbage], ["adopt", garbage, "--", "true"]):
        run = subprocess.run([SOCKSHARE] + command, capture_output=True, text=True, timeout=20)
        if run.returncode <= 0 or not run.stderr.startswith("sockshare: "):
            check(f"garbage token {garbage!r} gets an error", False, run)
check("60 garbage tokens: errors, never a crash or signal", True)

check("help exits 0 with text on stdout", subprocess.run([SOCKSHARE, "share", "--help"], capture_output=True, text=True).stdout.count("--ttl") > 0)
print(f"{len(failures)} failed" if failures else "all checks passed", flush=True)
sys.exit(1 if failures else 0)
