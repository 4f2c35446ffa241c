import Glibc

/// The identity of an underlying socket: its inode in the kernel's socket file system.
///
/// Two descriptors, in one process or in two, refer to the same socket exactly when their
/// identities are equal. `/proc/PID/fd/N` links read `socket:[INODE]` with the same number.
public struct SocketIdentity: Hashable, Sendable, CustomStringConvertible {
    /// The inode number (`st_ino` of `fstat`).
    public var inode: UInt64
    /// The device number of the socket file system (`st_dev`); the same for every socket.
    public var device: UInt64

    /// Creates an identity from its parts.
    public init(inode: UInt64, device: UInt64) {
        self.inode = inode
        self.device = device
    }

    /// Reads the identity of the socket behind `fd`.
    ///
    /// - Throws: ``SocketShareError`` with code `invalidArgument` when `fd` is open but not a socket.
    public init(of fd: CInt) throws(SocketShareError) {
        let info = try Kernel.status(fd)
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            throw SocketShareError(
                .invalidArgument, operation: "identify socket",
                detail: "descriptor \(fd) is not a socket (it is \(Self.kind(of: info.st_mode)))")
        }
        self.init(inode: UInt64(info.st_ino), device: UInt64(info.st_dev))
    }

    /// `socket:[12345]`, as `/proc/PID/fd` shows it.
    public var description: String { "socket:[\(inode)]" }

    package static func kind(of mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFREG: "a regular file"
        case S_IFDIR: "a directory"
        case S_IFIFO: "a pipe"
        case S_IFCHR: "a character device"
        case S_IFBLK: "a block device"
        case S_IFLNK: "a symbolic link"
        default: "an anonymous or special file"
        }
    }
}
