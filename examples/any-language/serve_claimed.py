"""A Python target: claims a share made by a Swift program (the token on stdin), checks it is the
socket the token names, and serves one HTTP request on it."""
import os, sys
from claim import claim

listener = claim(sys.stdin.readline())
print("python pid %d claimed %s %s" % (os.getpid(), listener.type.name, listener.getsockname()), flush=True)
connection, _ = listener.accept()
connection.recv(4096)
connection.sendall(b"HTTP/1.0 200 OK\r\n\r\nhello from python pid %d\n" % os.getpid())
connection.close()
