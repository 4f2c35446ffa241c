import Glibc
import SocketShareCore

/// Who holds a socket: every process with a descriptor of it (from `/proc/*/fd`), and who holds its
/// event registration.
package struct SocketHolders: Sendable, Hashable {
    /// A process holding descriptors of the socket.
    package struct Holder: Sendable, Hashable {
        /// Its pid.
        package var pid: pid_t
        /// Its command name (`/proc/PID/comm`).
        package var command: String
        /// Its descriptor numbers for the socket.
        package var descriptors: [CInt]
    }

    /// A registration of the socket's events.
    package struct Registration: Sendable, Hashable {
        /// The registering process.
        package var pid: pid_t
        /// The events registered.
        package var events: NetworkEvents
        /// Whether it is cooperative.
        package var cooperative: Bool
    }

    /// The socket's inode.
    package var inode: UInt64
    /// The processes holding it, by pid. Processes of other users are missing unless running as root.
    package var holders: [Holder]
    /// Its live event registrations (one, or several cooperative ones).
    package var registrations: [Registration]

    /// Looks up the holders and registrations of the socket with `inode`.
    package init(inode: UInt64) {
        self.inode = inode
        let target = "socket:[\(inode)]"
        var holders: [Holder] = []
        for entry in Kernel.directoryEntries("/proc") {
            guard let pid = pid_t(entry) else { continue }
            let descriptors = Kernel.directoryEntries("/proc/\(pid)/fd").compactMap { name -> CInt? in
                guard let fd = CInt(name), Kernel.readLink("/proc/\(pid)/fd/\(name)") == target else { return nil }
                return fd
            }.sorted()
            guard !descriptors.isEmpty else { continue }
            let command = String(decoding: (try? Kernel.readFile("/proc/\(pid)/comm")) ?? [], as: UTF8.self).trimmingSpaces
            holders.append(Holder(pid: pid, command: command, descriptors: descriptors))
        }
        self.holders = holders.sorted { $0.pid < $1.pid }
        let registry = try? EventRegistry.standard()
        self.registrations = (registry?.live(inode) ?? []).map {
            Registration(pid: $0.process.pid, events: $0.events, cooperative: $0.cooperative)
        }
    }
}
