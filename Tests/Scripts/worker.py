import os, socket, struct

channel = socket.socket(fileno=int(os.environ["SOCKSHARE_WORKER_FD"]))
channel.send(struct.pack("!BB", 1, 0x34))  # ready
while True:
    data, fds, flags, _ = socket.recv_fds(channel, 65536, 64, socket.MSG_CMSG_CLOEXEC)
    if not data or data[1] == 0x22:  # the dispatcher went away, or asks us to stop
        break
    if data[1] != 0x21:
        continue
    count, = struct.unpack_from("!H", data, 2)
    offset, connections = 4, []
    for _ in range(count):
        connection_id, = struct.unpack_from("!Q", data, offset)
        offset += 8
        texts = []
        for _ in range(3):  # listener name, peer address, local address
            length = data[offset]
            texts.append(data[offset + 1:offset + 1 + length].decode())
            offset += 1 + length
        connections.append((connection_id, texts))
    ids = [connection_id for connection_id, _ in connections]
    channel.send(struct.pack("!BBIH", 1, 0x31, 0, len(ids)) + b"".join(struct.pack("!Q", i) for i in ids))
    for fd, (connection_id, (listener, peer, local)) in zip(fds, connections):
        with socket.socket(fileno=fd) as connection:
            connection.recv(65536)
            body = f"hello from python {os.getpid()} on {listener}\n".encode()
            connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
