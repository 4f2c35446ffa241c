import ArgumentParser
import Glibc
import SocketShare
import SocketShareServer

/// Output and failure conventions shared by every command.
enum Terminal {
    /// Writes `text` and a newline to stdout and flushes at once.
    ///
    /// - Throws: ``SocketShareError`` when stdout is closed (`EPIPE`, reported rather than fatal:
    ///   `SIGPIPE` is ignored by the commands that print tokens).
    static func line(_ text: String) throws(SocketShareError) {
        let bytes = Array((text + "\n").utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.write(1, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                throw SocketShareError(.system, operation: "write to stdout", errno: .init(rawValue: errno), detail: "")
            }
            offset += written
        }
    }

    /// Writes a message line to stderr.
    static func note(_ text: String) {
        let bytes = Array((text + "\n").utf8)
        _ = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }

    /// Reports `error` as `sockshare: <operation> failed: <cause>` and returns the exit code to use.
    static func fail(_ error: SocketShareError, exitCode: Int32 = 1) -> ExitCode {
        note("sockshare: \(error)")
        return ExitCode(exitCode)
    }

    /// Runs `body`, turning a ``SocketShareError`` into the error line and exit status 1.
    static func run<T>(_ body: () throws(SocketShareError) -> T) throws(ExitCode) -> T {
        do {
            return try body()
        } catch {
            throw fail(error)
        }
    }

    /// Reads one line from stdin without reading past its newline, so a program exec'd afterwards
    /// still finds the rest of stdin.
    static func readLine(limit: Int = 65536) throws(SocketShareError) -> String? {
        var bytes: [UInt8] = []
        var byte: UInt8 = 0
        while bytes.count < limit {
            let count = Glibc.read(0, &byte, 1)
            if count < 0 {
                if errno == EINTR { continue }
                throw SocketShareError(.system, operation: "read stdin", errno: .init(rawValue: errno), detail: "")
            }
            if count == 0 || byte == UInt8(ascii: "\n") { break }
            bytes.append(byte)
        }
        if bytes.isEmpty && byte != UInt8(ascii: "\n") { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Reads the TOKEN argument: the token itself, or one line of stdin when it is `-`.
    static func token(from argument: String) throws(SocketShareError) -> ShareToken {
        if argument == "-" {
            guard let line = try readLine(), !line.trimmingCharacters(in: " \t\r").isEmpty else {
                throw SocketShareError(.invalidArgument, operation: "read token", detail: "stdin held no token line")
            }
            return try ShareToken(text: line)
        }
        return try ShareToken(text: argument)
    }
}

extension String {
    func trimmingCharacters(in set: String) -> String {
        var scalars = Substring(self)
        while let first = scalars.first, set.contains(first) { scalars.removeFirst() }
        while let last = scalars.last, set.contains(last) { scalars.removeLast() }
        return String(scalars)
    }
}

import FoundationEssentials

extension Terminal {
    /// `value` as one line of JSON, keys sorted (the same output for the same value).
    static func json(_ value: some Encodable) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(value) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }
}
