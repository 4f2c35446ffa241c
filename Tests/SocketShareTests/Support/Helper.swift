import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// Where the package's built programs are: next to the test bundle.
enum Paths {
    static let buildDirectory: String = {
        let executable = Kernel.readLink("/proc/self/exe")!
        return String(executable[..<executable.lastIndex(of: "/")!])
    }()
    static let helper = buildDirectory + "/sockshare-test-helper"
    static let sockshare = buildDirectory + "/sockshare"
    /// The package's source directory: this file's path without its last four components.
    static let sourceRoot: String = {
        var path = Substring(#filePath)
        for _ in 0..<4 { path = path[..<path.lastIndex(of: "/")!] }
        return String(path)
    }()
}

/// What the helper said when a command failed.
struct HelperError: Error, CustomStringConvertible {
    let code: String
    let text: String
    var description: String { "helper error \(code): \(text)" }
}

/// A sockshare-test-helper process, driven one command line at a time.
final class Helper {
    let process: ChildProcess
    private let commands: SocketDescriptor
    private let replies: SocketDescriptor
    private var buffer: [UInt8] = []
    private var finished = false

    /// Starts the helper. `descriptors` are placed in it at the given numbers (see its `take` command);
    /// `wrapper` runs it under another program (e.g. `setpriv`).
    init(descriptors: [CInt: CInt] = [:], wrapper: [String] = [], environment: [String: String]? = nil) throws {
        let (commandsChild, commands) = try SocketDescriptor.pair()
        let (replies, repliesChild) = try SocketDescriptor.pair()
        var placed = descriptors
        placed[0] = commandsChild.rawValue
        placed[1] = repliesChild.rawValue
        placed[2] = 2
        let program = wrapper.isEmpty ? Paths.helper : wrapper[0]
        let arguments = wrapper.isEmpty ? [] : Array(wrapper.dropFirst()) + [Paths.helper]
        process = try ProcessSpawner.spawn(program, arguments: arguments, environment: environment, descriptors: placed)
        try commandsChild.close()
        try repliesChild.close()
        self.commands = commands
        self.replies = replies
    }

    deinit {
        if !finished {
            try? process.signal(SIGKILL)
            _ = try? process.wait()
        }
    }

    var pid: pid_t { process.pid }

    /// Sends a command and returns the words after `ok`; throws ``HelperError`` for `error`.
    @discardableResult
    func call(_ words: String..., timeout: Duration = .seconds(30)) throws -> [String] {
        try call(words, timeout: timeout)
    }

    @discardableResult
    func call(_ words: [String], timeout: Duration = .seconds(30)) throws -> [String] {
        try begin(words)
        return try reply(timeout: timeout)
    }

    /// Sends a command without waiting for its answer (for commands that need us to act meanwhile).
    func begin(_ words: [String]) throws {
        try commands.sendAll(Array((words.joined(separator: " ") + "\n").utf8))
    }

    /// The answer to a command sent with ``begin(_:)``.
    @discardableResult
    func reply(timeout: Duration = .seconds(30)) throws -> [String] {
        let line = try readLine(deadline: .now + timeout)
        let reply = line.split(separator: " ", maxSplits: 2).map(String.init)
        if reply.first == "ok" { return line.split(separator: " ").dropFirst().map(String.init) }
        throw HelperError(code: reply.count > 1 ? reply[1] : "?", text: reply.count > 2 ? reply[2] : line)
    }

    /// Asks the helper to exit and reaps it.
    func finish() throws -> ChildProcess.Termination? {
        finished = true
        try? commands.sendAll(Array("exit 0\n".utf8))
        return try process.wait(deadline: .now + .seconds(10))
    }

    private func readLine(deadline: ContinuousClock.Instant) throws -> String {
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                defer { buffer.removeSubrange(...newline) }
                return String(decoding: buffer[..<newline], as: UTF8.self)
            }
            guard try replies.waitUntilReadable(deadline: deadline) else {
                throw HelperError(code: "timeout", text: "the helper did not answer in time")
            }
            let chunk = try replies.receive()
            if chunk.isEmpty { throw HelperError(code: "exited", text: "the helper exited") }
            buffer += chunk
        }
    }
}

/// Runs a program to completion, capturing stdout and stderr.
struct ProgramRun {
    var status: ChildProcess.Termination
    var standardOutput: String
    var standardError: String

    static func run(
        _ program: String, _ arguments: [String], input: String? = nil, descriptors: [CInt: CInt] = [:],
        environment: [String: String]? = nil, timeout: Duration = .seconds(60)
    ) throws -> ProgramRun {
        let (outRead, outWrite) = try SocketDescriptor.pair()
        let (errRead, errWrite) = try SocketDescriptor.pair()
        let (inChild, inWrite) = try SocketDescriptor.pair()
        var placed = descriptors
        placed[0] = inChild.rawValue
        placed[1] = outWrite.rawValue
        placed[2] = errWrite.rawValue
        let child = try ProcessSpawner.spawn(program, arguments: arguments, environment: environment, descriptors: placed)
        try outWrite.close()
        try errWrite.close()
        try inChild.close()
        if let input { try inWrite.sendAll(Array(input.utf8)) }
        try inWrite.close()
        let deadline = ContinuousClock.now + timeout
        var out: [UInt8] = []
        var err: [UInt8] = []
        var open = [outRead, errRead]
        while !open.isEmpty {
            var fds = open.map { pollfd(fd: $0.rawValue, events: Int16(POLLIN), revents: 0) }
            guard try Kernel.poll(&fds, deadline: deadline) > 0 else {
                try? child.signal(SIGKILL)
                _ = try child.wait()
                throw HelperError(code: "timeout", text: "\(program) \(arguments) did not finish in time")
            }
            for (index, pfd) in fds.enumerated().reversed() where pfd.revents != 0 {
                let chunk = try open[index].receive()
                if chunk.isEmpty {
                    open.remove(at: index)
                } else if open[index] === outRead {
                    out += chunk
                } else {
                    err += chunk
                }
            }
        }
        let status = try child.wait(deadline: deadline) ?? .signaled(-1)
        return ProgramRun(
            status: status, standardOutput: String(decoding: out, as: UTF8.self),
            standardError: String(decoding: err, as: UTF8.self))
    }
}
