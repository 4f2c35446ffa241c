"""A line server on 127.0.0.1 (port in argv[1]): answers each line upper-cased, one connection."""
import socket, sys
with socket.create_server(("127.0.0.1", int(sys.argv[1]))) as listener:
    print("ready", flush=True)
    connection, _ = listener.accept()
    with connection, connection.makefile("rwb") as stream:
        for line in stream:
            stream.write(line.upper())
            stream.flush()
