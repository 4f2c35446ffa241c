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
    ],
    targets: [
        .executableTarget(
            name: "hummingbird-app",
            dependencies: [
                .product(name: "SocketShare", package: "SocketShare"),
                .product(name: "SocketShareNIO", package: "SocketShare"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources"
        ),
    ],
    swiftLanguageModes: [.v6]
)
