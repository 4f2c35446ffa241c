import base64, os, socket, struct, sys

def deposit(broker_path, fd, target_pid, ttl_ms=60_000, target_start_time=0):
    directory = os.open(os.path.dirname(broker_path), os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        owner = os.fstat(directory)  # hand a socket only to a broker that owns a directory no one else writes
        s.connect(f"/proc/self/fd/{directory}/{os.path.basename(broker_path)}")
        os.close(directory)
        _, uid, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        assert owner.st_mode & 0o022 == 0 and uid in (owner.st_uid, 0), "an untrusted broker"
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
