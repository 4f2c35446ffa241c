# A hostile external worker, for SecurityTests: connects to serve's worker socket, says `ready`,
# and for every connection it is sent reads the client's request and answers `refused` instead of
# acknowledging it (or, with --silent, never answers anything). Prints "refused N" when its channel
# closes.  python3 hostile_worker.py WORKER_SOCKET [--silent]
import socket, struct, sys

channel = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
channel.connect(sys.argv[1])
channel.send(bytes([1, 0x34]))  # ready
silent, refused, held = "--silent" in sys.argv, 0, []
while True:
    try:
        data, fds, _, _ = socket.recv_fds(channel, 65536, 64)
    except OSError:
        break
    if not data:
        break
    if data[1] != 0x21:
        continue
    count, = struct.unpack_from("!H", data, 2)
    offset, ids = 4, []
    for _ in range(count):
        ids.append(struct.unpack_from("!Q", data, offset)[0])
        offset += 8
        for _ in range(3):
            offset += 1 + data[offset]
    for fd in fds:
        connection = socket.socket(fileno=fd)
        connection.settimeout(1)
        try:
            connection.recv(65536)  # the client's request, taken
        except OSError:
            pass
        held.append(connection)
    if not silent:
        channel.send(struct.pack("!BBH", 1, 0x32, len(ids)) + b"".join(struct.pack("!Q", i) for i in ids))
        refused += len(ids)
print("refused", refused, flush=True)
