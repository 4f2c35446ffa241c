import Glibc

/// A process as the kernel knows it for as long as it lives: its pid plus its start time.
///
/// Pids are recycled; a pid together with the start time (`/proc/PID/stat` field 22, clock ticks
/// after boot) names one process only. Shares are bound to a `ProcessIdentity`, so a process that
/// inherits a dead target's pid cannot claim.
public struct ProcessIdentity: Hashable, Sendable, CustomStringConvertible {
    /// The process id.
    public var pid: pid_t
    /// The start time, in clock ticks after boot (`/proc/PID/stat` field 22).
    public var startTime: UInt64

    /// Creates an identity from its parts; ``init(pid:)`` reads the start time for you.
    public init(pid: pid_t, startTime: UInt64) {
        self.pid = pid
        self.startTime = startTime
    }

    /// Reads the identity of the running process `pid`.
    ///
    /// - Throws: ``SocketShareError`` with code `invalidArgument` when no such process exists.
    public init(pid: pid_t) throws(SocketShareError) {
        guard pid > 0 else {
            throw SocketShareError(.invalidArgument, operation: "identify process", detail: "pid \(pid) is not a process id")
        }
        self.init(pid: pid, startTime: try Self.startTime(of: pid))
    }

    /// This process (read once: neither pid nor start time change, and SocketShare never forks).
    public static let current: ProcessIdentity =
        (try? ProcessIdentity(pid: getpid())) ?? ProcessIdentity(pid: getpid(), startTime: 0)

    /// `pid 4120 (started at tick 99231)`.
    public var description: String { "pid \(pid) (started at tick \(startTime))" }

    /// Field 22 of `/proc/PID/stat`. The command name (field 2) may hold spaces and parentheses,
    /// so fields are counted after the last `)`.
    package static func startTime(of pid: pid_t) throws(SocketShareError) -> UInt64 {
        let bytes = try procFile(pid, "stat")
        guard let close = bytes.lastIndex(of: UInt8(ascii: ")")) else {
            throw SocketShareError(.system, operation: "identify process", detail: "/proc/\(pid)/stat has no command field")
        }
        // After ")": " S ppid ..." — each space starts the next field; field 3 (state) is the first,
        // field 22 the 20th. Scanned in place: this runs on every share and claim.
        var spaces = 0
        var value: UInt64 = 0
        var digits = 0
        for byte in bytes[(close + 1)...] {
            if byte == UInt8(ascii: " ") {
                spaces += 1
                if spaces > 20 { break }
            } else if spaces == 20 {
                guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9"), digits < 19 else { digits = 0; break }
                value = value * 10 + UInt64(byte - UInt8(ascii: "0"))
                digits += 1
            }
        }
        guard digits > 0 else {
            throw SocketShareError(.system, operation: "identify process", detail: "/proc/\(pid)/stat field 22 is unreadable")
        }
        return value
    }

    /// The effective uid of process `pid` (`/proc/PID/status`, line `Uid:`, second value).
    package static func effectiveUserID(of pid: pid_t) throws(SocketShareError) -> uid_t {
        let bytes = try procFile(pid, "status")
        // The line reads "Uid:\treal\teffective\tsaved\tfs" and is never the first one.
        let key = Array("\nUid:".utf8)
        var index = 0
        while index + key.count <= bytes.count {
            if bytes[index] == key[0], bytes[index..<(index + key.count)].elementsEqual(key) {
                let line = bytes[(index + key.count)...].prefix { $0 != UInt8(ascii: "\n") }
                let values = line.split(whereSeparator: { $0 == UInt8(ascii: "\t") || $0 == UInt8(ascii: " ") })
                if values.count >= 2, let uid = UInt32(String(decoding: values[1], as: UTF8.self)) { return uid }
                break
            }
            index += 1
        }
        throw SocketShareError(.system, operation: "identify process", detail: "/proc/\(pid)/status has no Uid line")
    }

    /// `/proc/PID/NAME`; a vanished process is `invalidArgument` naming the pid, anything else (such as
    /// running out of descriptors) keeps its own errno.
    private static func procFile(_ pid: pid_t, _ name: String) throws(SocketShareError) -> [UInt8] {
        do throws(SocketShareError) {
            return try Kernel.readFile("/proc/\(pid)/\(name)")
        } catch where error.errno?.rawValue == ENOENT || error.errno?.rawValue == ESRCH {
            throw SocketShareError(.invalidArgument, operation: "identify process", errno: error.errno, detail: "no process with pid \(pid)")
        } catch {
            throw error.within("identify process")
        }
    }
}
