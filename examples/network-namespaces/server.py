"""Runs in the second network namespace with a listener created in the first (LISTEN_FDS, fd 3).
Answers each connection with the network-namespace cookies of the adopted socket and of a
socket it creates itself, and whether it could bind the listener's address where it lives."""
import json, os, socket, struct, sys

SO_NETNS_COOKIE = 71  # Linux 5.14+: the cookie of the network namespace a socket belongs to

def cookie(s):
    return struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]

listener = socket.socket(fileno=3)
host, port = listener.getsockname()
own = socket.socket()
try:
    own.bind((host, port))
    bind_here = "bound: the port is free in this namespace"
except OSError as error:
    bind_here = error.strerror
answer = json.dumps({
    "pid": os.getpid(),
    "my_netns": os.readlink("/proc/self/ns/net"),
    "adopted_socket_netns_cookie": cookie(listener),
    "my_own_socket_netns_cookie": cookie(own),
    "binding_%s:%d_here" % (host, port): bind_here,
}) + "\n"
own.close()
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 1):
    connection, _ = listener.accept()
    connection.recv(4096)
    connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + answer.encode())
    connection.close()
