"""The unprivileged worker: serves HTTP on the listener it was given (LISTEN_FDS, descriptor 3)
and answers each request with what it is allowed to do, as JSON."""
import json, os, socket, sys

assert os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS") == "1"
listener = socket.socket(fileno=3)

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return line.split()[1:]

def try_to_bind(port):
    """Binds a privileged port itself: refused unless it holds CAP_NET_BIND_SERVICE."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return "bound"
    except PermissionError:
        return "permission denied"
    except OSError as error:
        return error.strerror
    finally:
        s.close()

for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 1):
    connection, _ = listener.accept()
    connection.recv(4096)
    body = json.dumps({
        "pid": os.getpid(),
        "uids": status("Uid"), "gids": status("Gid"), "groups": status("Groups"),
        "CapEff": status("CapEff")[0], "CapPrm": status("CapPrm")[0], "CapBnd": status("CapBnd")[0],
        "NoNewPrivs": status("NoNewPrivs")[0],
        "listening_on": "%s:%d" % listener.getsockname(),
        "binding_port_1_myself": try_to_bind(1),
    }) + "\n"
    connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + body.encode())
    connection.close()
