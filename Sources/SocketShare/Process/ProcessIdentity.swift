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
    static func startTime(of pid: pid_t) throws(SocketShareError) -> UInt64 {
        let bytes: [UInt8]
        do throws(SocketShareError) {
            bytes = try Kernel.readFile("/proc/\(pid)/stat")
        } catch {
            throw SocketShareError(.invalidArgument, operation: "identify process", errno: error.errno, detail: "no process with pid \(pid)")
        }
        guard let close = bytes.lastIndex(of: UInt8(ascii: ")")) else {
            throw SocketShareError(.system, operation: "identify process", detail: "/proc/\(pid)/stat has no command field")
        }
        // After ")": " S ppid ..." — field 3 (state) is the first; field 22 is the 20th.
        let fields = bytes[(close + 1)...].split(separator: UInt8(ascii: " "))
        guard fields.count >= 20, let value = UInt64(String(decoding: fields[fields.startIndex + 19], as: UTF8.self)) else {
            throw SocketShareError(.system, operation: "identify process", detail: "/proc/\(pid)/stat field 22 is unreadable")
        }
        return value
    }

    /// The effective uid of process `pid` (`/proc/PID/status`, line `Uid:`, second value).
    static func effectiveUserID(of pid: pid_t) throws(SocketShareError) -> uid_t {
        let bytes: [UInt8]
        do throws(SocketShareError) {
            bytes = try Kernel.readFile("/proc/\(pid)/status")
        } catch {
            throw SocketShareError(.invalidArgument, operation: "identify process", errno: error.errno, detail: "no process with pid \(pid)")
        }
        for line in bytes.split(separator: UInt8(ascii: "\n")) where line.starts(with: Array("Uid:".utf8)) {
            let values = line.dropFirst(4).split(whereSeparator: { $0 == UInt8(ascii: "\t") || $0 == UInt8(ascii: " ") })
            if values.count >= 2, let uid = UInt32(String(decoding: values[values.startIndex + 1], as: UTF8.self)) {
                return uid
            }
        }
        throw SocketShareError(.system, operation: "identify process", detail: "/proc/\(pid)/status has no Uid line")
    }
}
