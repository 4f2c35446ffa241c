// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "SocketShare",
    products: [
        .library(name: "SocketShare", targets: ["SocketShare"]),
        .library(name: "SocketShareServer", targets: ["SocketShareServer"]),
        .library(name: "SocketShareNIO", targets: ["SocketShareNIO"]),
        .executable(name: "sockshare", targets: ["sockshare"]),
        .executable(name: "hello-worker", targets: ["hello-worker"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.1.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        // `swift package generate-documentation --target SocketShare` (the DocC catalog).
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.4.0"),
    ],
    targets: [
        // Only what Swift cannot express: CMSG_* macros, variadic syscall(2), GNU-only calls.
        .target(
            name: "CSocketShare",
            cSettings: [.define("_GNU_SOURCE")]
        ),
        // The layers, bottom up; each target imports only those below it (docs/ARCHITECTURE.md).
        // Kernel wrappers, descriptors, process identity, the descriptor channel, the wire formats.
        // No threads, no logging.
        .target(
            name: "SocketShareCore",
            dependencies: [
                "CSocketShare",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // Sharing sockets: share, adopt, outcome, revoke, tokens, the sharer, the broker client, events.
        .target(
            name: "SocketShare",
            dependencies: [
                "SocketShareCore",
                "CSocketShare",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The long-running servers: the broker daemon, the dispatcher, the supervisor.
        .target(
            name: "SocketShareServer",
            dependencies: [
                "SocketShare",
                "SocketShareCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The worker side on SwiftNIO: ConnectionServer.
        .target(
            name: "SocketShareNIO",
            dependencies: [
                "SocketShare",
                "SocketShareCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The example worker: HTTP/1.1 on NIO, in handoff or shared mode.
        .executableTarget(
            name: "hello-worker",
            dependencies: [
                "SocketShareNIO",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The cookbook's SwiftNIO HTTP app, run behind `sockshare serve` (examples/nio-http-app).
        .executableTarget(
            name: "http-app",
            dependencies: [
                "SocketShareNIO",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "examples/nio-http-app/Sources"
        ),
        // The cookbook's Winsock port: Microsoft's WSADuplicateSocket sample, in Swift (examples/winsock-porting).
        .executableTarget(
            name: "winsock-port",
            dependencies: ["SocketShare"],
            path: "examples/winsock-porting/Sources"
        ),
        .executableTarget(
            name: "sockshare",
            dependencies: [
                "SocketShare",
                "SocketShareCore",
                "SocketShareServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        // A small program the multi-process tests drive over its stdin/stdout.
        .executableTarget(
            name: "sockshare-test-helper",
            dependencies: ["SocketShare", "SocketShareCore"],
            path: "Tests/TestHelper"
        ),
        // Whole-process benchmarks against same-run references (Benchmarks/README.md).
        .executableTarget(
            name: "sockshare-bench",
            dependencies: ["SocketShare", "SocketShareCore", "SocketShareServer", "CSocketShare"],
            path: "Benchmarks/Sources/sockshare-bench"
        ),
        .testTarget(
            name: "SocketShareTests",
            dependencies: [
                "SocketShare",
                "SocketShareCore",
                "SocketShareServer",
                "SocketShareNIO",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
