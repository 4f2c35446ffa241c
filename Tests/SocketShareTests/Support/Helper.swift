import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// Where the package's built programs are: next to the test bundle, and — for the tests that run
/// them as another user — in a directory every user may enter.
enum Paths {
    static let buildDirectory: String = {
        let executable = Kernel.readLink("/proc/self/exe")!
        return String(executable[..<executable.lastIndex(of: "/")!])
    }()

    /// The programs the tests run, linked (or copied) into a fresh directory of mode 0755 under
    /// `/tmp`: a checkout may live where only root may enter (root's home, a `mktemp -d`), and
    /// programs run as nobody, or as root of a user namespace of its own, must still be reachable.
    /// Removed when the test process exits.
    static let binaries: String = {
        var template = Array("/tmp/sockshare-test-bin-XXXXXX".utf8CString)
        let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        chmod(directory, 0o755)
        for name in programs {
            let source = buildDirectory + "/" + name, target = directory + "/" + name
            guard access(source, F_OK) == 0, link(source, target) != 0 else { continue }
            _ = try? ProgramRun.run("cp", [source, target])
            chmod(target, 0o755)
        }
        binariesToRemove.withLock { $0 = directory }
        atexit {
            guard let directory = Paths.binariesToRemove.withLock({ $0 }) else { return }
            for name in Paths.programs { unlink(directory + "/" + name) }
            rmdir(directory)
        }
        return directory
    }()
    private static let programs = ["sockshare", "sockshare-test-helper", "sockshare-bench", "hello-worker", "http-app", "winsock-port"]
    private static let binariesToRemove = Locked<String?>(nil)

    static let helper = binaries + "/sockshare-test-helper"
    static let sockshare = binaries + "/sockshare"
    static let helloWorker = binaries + "/hello-worker"
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

extension ProgramRun {
    /// A program running in the background: its standard output read line by line, its standard
    /// error collected once it has ended, its standard input a pipe the test may write to.
    final class Background {
        let process: ChildProcess
        private let input: SocketDescriptor?
        private let output: SocketDescriptor
        private let errors: SocketDescriptor
        private var buffered: [UInt8] = []
        private var ended: ChildProcess.Termination??
        private var collected: [UInt8] = []
        /// Whether it had already exited when ``terminate()`` or ``kill()`` was called.
        private(set) var exitedAtOnce = false

        var pid: pid_t { process.pid }

        private init(process: ChildProcess, input: SocketDescriptor?, output: SocketDescriptor, errors: SocketDescriptor) {
            self.process = process
            self.input = input
            self.output = output
            self.errors = errors
        }

        deinit { kill() }

        /// Starts `program`; with `pipeInput`, its standard input is a pipe from ``write(_:)``,
        /// otherwise it is closed.
        static func start(
            _ program: String, _ arguments: [String], environment: [String: String]? = nil, pipeInput: Bool = false
        ) throws -> Background {
            let (outRead, outWrite) = try SocketDescriptor.pair()
            let (errRead, errWrite) = try SocketDescriptor.pair()
            let (inChild, inWrite) = try SocketDescriptor.pair()
            let child = try ProcessSpawner.spawn(
                program, arguments: arguments, environment: environment,
                descriptors: [0: inChild.rawValue, 1: outWrite.rawValue, 2: errWrite.rawValue])
            try outWrite.close()
            try errWrite.close()
            try inChild.close()
            if !pipeInput { try inWrite.close() }
            return Background(process: child, input: pipeInput ? inWrite : nil, output: outRead, errors: errRead)
        }

        /// The next line of its standard output, or nil at its end or after `timeout`.
        func readLine(timeout: Duration) -> String? {
            let deadline = ContinuousClock.now + timeout
            while true {
                if let newline = buffered.firstIndex(of: UInt8(ascii: "\n")) {
                    defer { buffered.removeSubrange(...newline) }
                    return String(decoding: buffered[..<newline], as: UTF8.self)
                }
                guard (try? output.waitUntilReadable(deadline: deadline)) == true, let chunk = try? output.receive(), !chunk.isEmpty else {
                    return nil
                }
                buffered += chunk
            }
        }

        /// Writes `text` to its standard input.
        func write(_ text: String) { try? input?.sendAll(Array(text.utf8)) }

        /// Closes its standard input.
        func closeInput() { try? input?.close() }

        /// Waits for it to end (at most 30 s, then kills it) and collects its standard error.
        @discardableResult
        func wait() -> ChildProcess.Termination? {
            if let ended { return ended }
            var termination = try? process.wait(deadline: .now + .seconds(30))
            if termination == nil {
                try? process.signal(SIGKILL)
                termination = try? process.wait()
            }
            ended = termination
            while let chunk = try? errors.receive(), !chunk.isEmpty { collected += chunk }
            return termination ?? nil
        }

        /// `SIGTERM`, then ``wait()``.
        func terminate() {
            guard ended == nil else { return }
            if let early = (try? process.wait(deadline: .now)) ?? nil {
                exitedAtOnce = true
                ended = early
                while let chunk = try? errors.receive(), !chunk.isEmpty { collected += chunk }
                return
            }
            try? process.signal(SIGTERM)
            wait()
        }

        /// `SIGKILL`, then ``wait()``. Does nothing once it has ended.
        func kill() {
            guard ended == nil else { return }
            try? process.signal(SIGKILL)
            wait()
        }

        /// Its standard error, once it has ended.
        var standardError: String { String(decoding: collected, as: UTF8.self) }
    }
}

