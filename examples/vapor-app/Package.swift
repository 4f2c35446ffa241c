// swift-tools-version: 6.1
// The cookbook's Vapor 4 app behind `sockshare serve` (README.md here). A package of its own, so that
// SocketShare itself does not depend on Vapor: build it with `swift build` in this directory (or
// `swift build --package-path examples/vapor-app`).
import PackageDescription

let package = Package(
    name: "vapor-app",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(name: "SocketShare", path: "../.."),
        .package(url: "https://github.com/vapor/vapor", from: "4.122.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
    ],
    targets: [
        .executableTarget(
            name: "vapor-app",
            dependencies: [
                .product(name: "SocketShareNIO", package: "SocketShare"),
                .product(name: "Vapor", package: "vapor"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Sources"
        ),
    ],
    swiftLanguageModes: [.v6]
)
