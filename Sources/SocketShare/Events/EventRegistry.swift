import Glibc
import SocketShareCore

/// Who holds the event registration of each socket, across processes, without a daemon.
///
/// For a socket with inode I, `events/I.owner` in the runtime directory lists the live
/// registrations, one per line: `pid startTime events cooperative noticePath`. Changes happen under
/// an exclusive `flock(2)` on `events/I.lock`, which the kernel releases when its holder dies — so a
/// registrant that crashes leaves no stale lock, and its line is ignored (its pid is gone or names
/// another process) and dropped by the next registration. Each registrant listens on its own
/// datagram socket (`noticePath`) for the notice that it was displaced.
package struct EventRegistry: Sendable {
    /// One registration.
    package struct Registrant: Hashable, Sendable {
        package var process: ProcessIdentity
        package var events: NetworkEvents
        package var cooperative: Bool
        package var noticePath: String

        package var line: String { "\(process.pid) \(process.startTime) \(events.rawValue) \(cooperative ? 1 : 0) \(noticePath)" }

        package init(process: ProcessIdentity, events: NetworkEvents, cooperative: Bool, noticePath: String) {
            self.process = process
            self.events = events
            self.cooperative = cooperative
            self.noticePath = noticePath
        }

        package init?(line: Substring) {
            let fields = line.split(separator: " ", maxSplits: 4)
            guard fields.count == 5, let pid = pid_t(fields[0]), let start = UInt64(fields[1]), let bits = Int(fields[2]) else {
                return nil
            }
            self.init(
                process: ProcessIdentity(pid: pid, startTime: start), events: NetworkEvents(rawValue: bits),
                cooperative: fields[3] == "1", noticePath: String(fields[4]))
        }

        /// Whether the registering process still runs (same pid and start time, not a zombie).
        package var isAlive: Bool {
            guard let current = try? ProcessDescriptor(pid: process.pid), !current.hasExited else { return false }
            return current.identity == process
        }
    }

    /// The directory holding the registrations (`events` in the runtime directory, `0700`).
    package let directory: String

    /// The registry in the standard runtime directory, swept of what dead registrants left.
    package static func standard() throws(SocketShareError) -> EventRegistry {
        let runtime = try RuntimeDirectory.standard()
        let directory = try RuntimeDirectory(preparing: runtime.appending("events"))
        let registry = EventRegistry(directory: directory.path)
        registry.sweep()
        return registry
    }

    /// Removes notice sockets of processes that are gone, and the files of sockets whose every
    /// registrant is gone (a registrant killed with `SIGKILL` cannot clean up after itself).
    package func sweep() {
        for name in Kernel.directoryEntries(directory) {
            if name.hasSuffix(".notice") {
                let parts = name.split(separator: "-")
                if parts.count == 3, let pid = pid_t(parts[1]), !Kernel.processExists(pid) { Kernel.unlink("\(directory)/\(name)") }
            } else if name.hasSuffix(".owner"), let inode = UInt64(name.dropLast(6)), live(inode).isEmpty {
                _ = try? locked(inode) { () throws(SocketShareError) in
                    guard live(inode).isEmpty else { return }
                    Kernel.unlink(ownerPath(inode))
                    Kernel.unlink(lockPath(inode))
                }
            }
        }
    }

    /// Registers `registrant` for socket `inode` and returns the registrations it displaces (to be
    /// told). An exclusive registration displaces every other; a cooperative one joins other
    /// cooperative ones whose events are disjoint from its own, and is refused otherwise. An
    /// exclusive registration for no events only cancels the others.
    package func register(_ registrant: Registrant, inode: UInt64) throws(SocketShareError) -> [Registrant] {
        try locked(inode) { () throws(SocketShareError) -> [Registrant] in
            let existing = live(inode).filter { $0.noticePath != registrant.noticePath }
            if registrant.cooperative {
                if let exclusive = existing.first(where: { !$0.cooperative }) {
                    throw SocketShareError(
                        .refused, operation: "select",
                        detail: "pid \(exclusive.process.pid) holds this socket's events exclusively (\(exclusive.events)); "
                            + "cooperative registrations share only with each other")
                }
                if let clash = existing.first(where: { !$0.events.isDisjoint(with: registrant.events) }) {
                    throw SocketShareError(
                        .refused, operation: "select",
                        detail: "\(clash.events.intersection(registrant.events)) already registered by pid \(clash.process.pid); "
                            + "cooperative registrations must not overlap")
                }
                try write(existing + [registrant], inode: inode)
                return []
            }
            try write(registrant.events.isEmpty ? [] : [registrant], inode: inode)
            return existing
        }
    }

    /// Removes the registration whose notice socket is `noticePath`, if it is still there. The
    /// socket's files go when no registration is left.
    package func unregister(noticePath: String, inode: UInt64) {
        _ = try? locked(inode) { () throws(SocketShareError) in
            let remaining = live(inode).filter { $0.noticePath != noticePath }
            try write(remaining, inode: inode)
            if remaining.isEmpty { Kernel.unlink(lockPath(inode)) }
        }
    }

    /// The live registrations of socket `inode`.
    package func live(_ inode: UInt64) -> [Registrant] {
        guard let bytes = try? Kernel.readFile(ownerPath(inode)) else { return [] }
        return String(decoding: bytes, as: UTF8.self).split(separator: "\n").compactMap(Registrant.init(line:))
            .filter { $0.isAlive }
    }

    private func ownerPath(_ inode: UInt64) -> String { "\(directory)/\(inode).owner" }

    private func lockPath(_ inode: UInt64) -> String { "\(directory)/\(inode).lock" }

    private func write(_ registrants: [Registrant], inode: UInt64) throws(SocketShareError) {
        let path = ownerPath(inode)
        guard !registrants.isEmpty else {
            Kernel.unlink(path)
            return
        }
        let temporary = path + ".\(getpid()).tmp"
        let fd = try Kernel.open(temporary, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        do throws(SocketShareError) {
            try Array((registrants.map(\.line).joined(separator: "\n") + "\n").utf8).withBytes { (bytes) throws(SocketShareError) in
                try Kernel.writeAll(fd, bytes)
            }
            try Kernel.close(fd)
        } catch {
            try? Kernel.close(fd)
            Kernel.unlink(temporary)
            throw error
        }
        guard rename(temporary, path) == 0 else {
            Kernel.unlink(temporary)
            throw SocketShareError.system("rename", errno: Glibc.errno, detail: path)
        }
    }

    /// Runs `body` holding the exclusive lock of socket `inode`'s registrations.
    ///
    /// The lock file is removed when the last registration goes, so after taking the lock this
    /// checks that the file is still the one at the path (else someone removed it meanwhile, and
    /// the lock guards nothing) and tries again.
    private func locked<T>(_ inode: UInt64, _ body: () throws(SocketShareError) -> T) throws(SocketShareError) -> T {
        while true {
            let fd = try Kernel.open(lockPath(inode), O_RDWR | O_CREAT, mode: 0o600)
            defer { try? Kernel.close(fd) }
            _ = try Kernel.retrying("flock") { flock(fd, LOCK_EX) }
            defer { _ = flock(fd, LOCK_UN) }
            guard let current = try Kernel.linkStatus(lockPath(inode)), current.st_ino == (try Kernel.status(fd)).st_ino else {
                continue
            }
            return try body()
        }
    }
}
