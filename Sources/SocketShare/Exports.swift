// `import SocketShare` is enough for an app: the core types it uses (`SocketDescriptor`,
// `SocketDescription`, `SocketAddress`, `SocketShareError`, …) come with it.
@_exported import SocketShareCore
