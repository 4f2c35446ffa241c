import base64, os, socket, struct, sys, zlib

FAMILIES = {1: socket.AF_INET, 2: socket.AF_INET6, 3: socket.AF_UNIX}
TYPES = {1: socket.SOCK_STREAM, 2: socket.SOCK_DGRAM, 3: socket.SOCK_SEQPACKET}

def decode(text):
    raw = base64.urlsafe_b64decode(text.strip().removeprefix("sks1.") + "==")
    body, (crc,) = raw[:-4], struct.unpack("!I", raw[-4:])
    assert raw[0] == 1 and zlib.crc32(body) == crc, "not a version-1 token"
    mechanism, family, kind = raw[1], FAMILIES[raw[2]], TYPES[raw[3]]
    inode = struct.unpack_from("!Q", raw, 9)[0]
    share_id, length = struct.unpack_from("!QB", raw, 57)
    endpoint = raw[66:66 + length].decode()
    secret = raw[66 + length:66 + length + 16]
    return mechanism, family, kind, inode, share_id, endpoint, secret

def claim(text):
    mechanism, family, kind, inode, share_id, endpoint, secret = decode(text)
    assert mechanism in (1, 3), "sharer and broker tokens are claimed; pidfd tokens are pulled"
    directory = os.open(os.path.dirname(endpoint), os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        owner = os.fstat(directory)  # trust the holder only if it owns a directory no one else writes
        s.connect(f"/proc/self/fd/{directory}/{os.path.basename(endpoint)}")
        os.close(directory)
        _, uid, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        assert owner.st_mode & 0o022 == 0 and uid in (owner.st_uid, 0), "an untrusted holder"
        s.send(struct.pack("!BBQ", 1, 0x01, share_id) + secret)
        data, fds, flags, _ = socket.recv_fds(s, 65536, 1, socket.MSG_CMSG_CLOEXEC)
        if data[1] == 0xFF:
            for fd in fds: os.close(fd)
            code, = struct.unpack_from("!H", data, 2)
            raise SystemExit(f"claim failed: {data[4:].decode()} (code {code})")
        sock = socket.socket(fileno=fds[0])
        if (os.fstat(sock.fileno()).st_ino, sock.family, sock.type) != (inode, family, kind):
            sock.close()  # not the socket the token names: close it and do not acknowledge
            raise SystemExit("claim failed: the holder sent another socket than the token names")
        s.send(struct.pack("!BBQ", 1, 0x02, share_id))  # acknowledge; no reply comes
        return sock

if __name__ == "__main__":
    sock = claim(sys.stdin.readline())
    print("claimed", sock.family.name, sock.type.name, sock.getsockname(), flush=True)
