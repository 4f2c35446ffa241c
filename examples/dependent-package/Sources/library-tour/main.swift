// The README's tour of the library, and the DocC landing page's first example.
// docs: begin
import SocketShare
// docs: hide
import Glibc
import Logging
import ServiceLifecycle
import SocketShareServer

let workerPID = getpid()
let (pipe, peer) = try SocketDescriptor.pair()
// docs: show

// Source
let listener = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 8080))
let token = try SocketShare.duplicate(listener, for: workerPID)            // ShareOptions(via:timeToLive:)
try pipe.sendAll(Array((token.text + "\n").utf8))                         // any IPC
try listener.close()                                                       // the share stays claimable
// docs: hide
let line = String(decoding: try peer.receive(), as: UTF8.self)
// docs: show
let outcome = await SocketShare.outcome(of: token)                         // .claimed(by:), .expired, …

// Target (the process whose pid is workerPID)
let socket = try SocketShare.adopt(try ShareToken(text: line))             // verified: same inode, family, type
// docs: end

func ownedSharer(listener: SocketDescriptor, workerPID: pid_t, logger: Logger) throws {
    let broker = try Broker(configuration: .init(), logger: logger)
    // docs: begin
    let sharer = Sharer(configuration: .init(directory: "/run/myserver", lingerWhenIdle: nil), logger: logger)
    let token = try sharer.duplicate(listener, for: workerPID)
    let group = ServiceGroup(services: [sharer, broker], gracefulShutdownSignals: [.sigterm], logger: logger)
    // docs: end
    _ = (token, group)
}

func landingPage(listener: SocketDescriptor, workerPid: pid_t, pipe: SocketDescriptor, line: String) throws {
    // docs: begin
    // The source
    let token = try SocketShare.duplicate(listener, for: workerPid)
    try pipe.sendAll(Array((token.text + "\n").utf8))   // any IPC: one line of text

    // The target
    let adopted = try SocketShare.adopt(try ShareToken(text: line))
    // docs: end
    _ = adopted
}
