# A hostile member of a broker's group, for SecurityTests: floods the broker with connections that
# park named claims for the longest wait, with silent connections, and with kept named shares, then
# holds all of it until its stdin closes. Prints what it got: "flooding CLAIMS SILENT DEPOSITS".
#   python3 flood_broker.py BROKER_PATH CONNECTIONS DEPOSITS
import os, resource, socket, struct, sys, time

path, connections, deposits = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(2)
    s.connect(path)
    return s

def name_field(text):
    return struct.pack("!B", len(text)) + text.encode()

held, deposited = [], 0
# Kept named shares, never expiring, as many as asked (first: the connections below would take
# every slot this uid has).
listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for index in range(deposits):
    try:
        with connect() as s:
            request = struct.pack("!BB", 1, 0x09) + name_field(f"squat-{index}") + struct.pack("!BIIB", 0, 0, 0, 0)
            request += struct.pack("!IB", 0, 1)
            socket.send_fds(s, [request], [listener.fileno()])
            reply = s.recv(4096)
            if reply[1] == 0x89:
                deposited += 1
    except OSError:
        pass
# Claims of a name nobody holds, parked for the longest wait a client may ask (0xFFFFFFFF ms), and
# silent connections, half and half.
claim = struct.pack("!BB", 1, 0x0A) + name_field("nothing-here") + struct.pack("!IBI", 0xFFFFFFFF, 0, 0)
for index in range(connections):
    try:
        s = connect()
        if index % 2 == 0:
            s.send(claim)
        held.append(s)
    except OSError:
        continue
# The broker turns away at once what it refuses: keep only the connections it kept.
time.sleep(1)
for s in list(held):
    s.setblocking(False)
    try:
        s.recv(4096)
        held.remove(s)
        s.close()
    except BlockingIOError:
        pass
    except OSError:
        held.remove(s)
        s.close()
print("flooding", len(held), deposited, flush=True)
sys.stdin.read()
