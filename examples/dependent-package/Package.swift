// swift-tools-version: 6.1
// A package that depends on SocketShare exactly as the README says, and compiles every Swift block of
// the README, docs/ and the DocC articles: each page's block appears, as whole lines, between
// `// docs: begin` and `// docs: end` in a file here (lines between `// docs: hide` and
// `// docs: show` are the glue the page leaves out). `swift test` checks that the pages show
// exactly these lines; CI builds this package (`swift build --package-path examples/dependent-package`)
// and runs its `share-demo`.
// docs: begin
import PackageDescription

let package = Package(
    name: "my-server",
    platforms: [.macOS(.v14)],
    dependencies: [
        // The path to your checkout of SocketShare. `name:` because SwiftPM names a path dependency
        // after its directory. From your git server instead: .package(url: "…/SocketShare.git", branch: "main").
        .package(name: "SocketShare", path: "../.."),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
    ],
    targets: [
        // Sharing and adopting sockets: SocketShare alone.
        .executableTarget(name: "share-demo", dependencies: [
            .product(name: "SocketShare", package: "SocketShare"),
        ]),
        // A SwiftNIO worker behind `sockshare serve` (or under systemd, or alone): SocketShareNIO.
        .executableTarget(name: "worker", dependencies: [
            .product(name: "SocketShareNIO", package: "SocketShare"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        // docs: hide
        .executableTarget(name: "library-tour", dependencies: [
            .product(name: "SocketShare", package: "SocketShare"),
            .product(name: "SocketShareServer", package: "SocketShare"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        .executableTarget(name: "named-shares", dependencies: [
            .product(name: "SocketShare", package: "SocketShare"),
        ]),
        // As RELIABILITY.md compiles it: `swiftc -sanitize=thread -O race.swift` (language mode 5).
        .executableTarget(name: "mutex-race", swiftSettings: [.swiftLanguageMode(.v5)]),
        // docs: show
    ]
)
// docs: end
