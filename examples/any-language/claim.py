import base64, socket, struct, sys, zlib

def decode(text):
    raw = base64.urlsafe_b64decode(text.strip().removeprefix("sks1.") + "==")
    body, (crc,) = raw[:-4], struct.unpack("!I", raw[-4:])
    assert raw[0] == 1 and zlib.crc32(body) == crc, "not a version-1 token"
    inode = struct.unpack_from("!Q", raw, 9)[0]
    share_id, length = struct.unpack_from("!QB", raw, 57)
    endpoint = raw[66:66 + length].decode()
    secret = raw[66 + length:66 + length + 16]
    return raw[1], inode, share_id, endpoint, secret

def claim(text):
    mechanism, inode, share_id, endpoint, secret = decode(text)
    assert mechanism in (1, 3), "sharer and broker tokens are claimed; pidfd tokens are pulled"
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(endpoint)
        s.send(struct.pack("!BBQ", 1, 0x01, share_id) + secret)
        data, fds, flags, _ = socket.recv_fds(s, 4096, 1, socket.MSG_CMSG_CLOEXEC)
        if data[1] == 0xFF:
            for fd in fds: socket.close(fd)
            code, = struct.unpack_from("!H", data, 2)
            raise SystemExit(f"claim failed: {data[4:].decode()} (code {code})")
        sock = socket.socket(fileno=fds[0])
        assert os_inode(sock) == inode, "not the socket the token names"
        s.send(struct.pack("!BBQ", 1, 0x02, share_id))  # acknowledge
        return sock

def os_inode(sock):
    import os
    return os.fstat(sock.fileno()).st_ino

if __name__ == "__main__":
    sock = claim(sys.stdin.readline())
    print("claimed", sock.family.name, sock.type.name, sock.getsockname(), flush=True)
