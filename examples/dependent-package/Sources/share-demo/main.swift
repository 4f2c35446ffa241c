// The DocC article "Share a socket in five minutes", whole: one program that plays both parts.
// docs: begin
import Foundation
import SocketShare

// docs: hide
if CommandLine.arguments.dropFirst().first == "--target" {
    try runTarget()
    exit(0)
}
// docs: show
let listener = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
let address = try listener.socketDescription().localAddress
let (targetEnd, ourEnd) = try SocketDescriptor.pair()
let target = Process()
target.executableURL = URL(fileURLWithPath: "/proc/self/exe")
target.arguments = ["--target"]
target.standardInput = FileHandle(fileDescriptor: targetEnd.rawValue)
try target.run()
try targetEnd.close()
// docs: end

// docs: begin
let token = try SocketShare.duplicate(listener, for: target.processIdentifier)
try ourEnd.sendAll(Array((token.text + "\n").utf8))
try listener.close()        // the share keeps the socket for the target
// docs: end

// docs: begin
print(await SocketShare.outcome(of: token))         // claimed by pid …
let client = try SocketDescriptor.connected(to: address)
print(String(decoding: try client.receive(), as: UTF8.self))
// docs: end
target.waitUntilExit()

func runTarget() throws {
    // docs: begin
    guard let line = readLine() else { exit(64) }   // no token on stdin
    let adopted = try SocketShare.adopt(try ShareToken(text: line))
    if let connection = try adopted.accept() {
        try connection.sendAll(Array("hello from the target\n".utf8))
        try connection.close()
    }
    // docs: end
}
