// swift-tools-version: 6.1
// The cookbook's Hummingbird app behind `sockshare serve` (README.md here). A package of its own, so
// that SocketShare itself does not depend on Hummingbird: build it with `swift build` in this
// directory (or `swift build --package-path examples/hummingbird-app`).
import PackageDescription

let package = Package(
    name: "hummingbird-app",
    platforms: [.macOS(.v14)],
    dependencies: [
        .package(name: "SocketShare", path: "../.."),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
    ],
    targets: [
        .executableTarget(
            name: "hummingbird-app",
            dependencies: [
                .product(name: "SocketShareNIO", package: "SocketShare"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            path: "Sources"
        ),
    ],
    swiftLanguageModes: [.v6]
)
