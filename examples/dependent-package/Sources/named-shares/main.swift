// The DocC landing page's named shares.
import SocketShare

let listener = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
// docs: begin
// The source (say, a sidecar holding 127.0.0.1:80), in its own container
let broker = BrokerClient(socketPath: "/run/sockshare/broker.sock")
try broker.deposit(listener.rawValue, named: "web", policy: ClaimPolicy(uid: 1000), timeToLive: nil, keep: true)

// Each generation of the app, in another container
let socket = try await broker.claim(named: "web", waitingUpTo: .seconds(30))
// docs: end
_ = socket
