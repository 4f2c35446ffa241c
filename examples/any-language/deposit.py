import base64, socket, struct, sys

def deposit(broker_path, fd, target_pid, ttl_ms=60_000, target_start_time=0):
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(broker_path)
        request = struct.pack("!BBIQI", 1, 0x03, target_pid, target_start_time, ttl_ms)
        socket.send_fds(s, [request], [fd])
        reply = s.recv(65536)
    if reply[1] == 0xFF:
        code, = struct.unpack_from("!H", reply, 2)
        raise SystemExit(f"deposit failed: {reply[4:].decode()} (code {code})")
    return "sks1." + base64.urlsafe_b64encode(reply[2:]).rstrip(b"=").decode()

if __name__ == "__main__":
    broker_path, target_pid = sys.argv[1], int(sys.argv[2])
    listener = socket.create_server(("127.0.0.1", 0))
    print(deposit(broker_path, listener.fileno(), target_pid), listener.getsockname()[1], flush=True)
