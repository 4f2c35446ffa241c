"""Plays systemd for sockshare-web.socket + sockshare-web.service, from the unit files themselves:
binds the socket unit's ListenStream=, starts the service's ExecStart= the way systemd does
(listener at fd 3, LISTEN_FDS=1, LISTEN_PID=<its pid>, LISTEN_FDNAMES=<FileDescriptorName=>,
NOTIFY_SOCKET=<a datagram socket here>), and prints every notification it receives, one per line,
as `pid KEY=VALUE;KEY=VALUE`. Commands on stdin: `reload` (SIGHUP, as notify-reload does), `stop`
(SIGTERM), `wait` (prints `exited STATUS`). Usage: service_manager.py UNIT-DIR BIN-DIR PORT WORK-DIR"""
import configparser, os, select, shlex, signal, socket, sys, threading

unit_dir, bin_dir, port, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def unit(name):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(os.path.join(unit_dir, name))
    return parser

socket_unit, service_unit = unit("sockshare-web.socket"), unit("sockshare-web.service")
host, _ = socket_unit["Socket"]["ListenStream"].rsplit(":", 1)
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((host, port))   # the test's free port in place of 8080
listener.listen(int(socket_unit["Socket"].get("Backlog", "128")))

notify_path = os.path.join(work, "notify.sock")
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.bind(notify_path)
notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

command = shlex.split(service_unit["Service"]["ExecStart"].replace("/usr/local/bin", bin_dir))
pid = os.fork()
if pid == 0:
    if listener.fileno() != 3:
        os.dup2(listener.fileno(), 3)
    os.set_inheritable(3, True)     # fd 3 only: every other descriptor here is close-on-exec
    os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()),
                      LISTEN_FDNAMES=socket_unit["Socket"]["FileDescriptorName"], NOTIFY_SOCKET=notify_path)
    os.execv(command[0], command)
listener.close()
print("started", pid, flush=True)

def receive():
    while True:
        data, ancillary, _, _ = notify.recvmsg(4096, socket.CMSG_SPACE(12))
        sender = next((int.from_bytes(d[:4], "little") for level, kind, d in ancillary
                       if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), 0)
        print(sender, ";".join(data.decode().strip().split("\n")), flush=True)

threading.Thread(target=receive, daemon=True).start()
main_pid = pid
for line in sys.stdin:
    if line.strip() == "reload":
        os.kill(main_pid, signal.SIGHUP)
    elif line.strip() == "stop":
        os.kill(main_pid, signal.SIGTERM)
    elif line.strip() == "wait":
        _, status = os.waitpid(pid, 0)
        print("exited", os.waitstatus_to_exitcode(status), flush=True)
        break
