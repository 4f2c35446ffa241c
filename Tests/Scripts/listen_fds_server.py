"""An unmodified socket-activated server: it knows nothing of SocketShare, only LISTEN_FDS."""
import os, socket

assert os.environ.get("LISTEN_PID") == str(os.getpid()), "LISTEN_PID is not ours"
count = int(os.environ["LISTEN_FDS"])
names = os.environ.get("LISTEN_FDNAMES", "").split(":")
listener = socket.socket(fileno=3)
while True:
    connection, _ = listener.accept()
    with connection:
        connection.recv(65536)
        body = f"hello from python {os.getpid()} via {names[0]} ({count} listener)\n".encode()
        connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
