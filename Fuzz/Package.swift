// swift-tools-version: 6.1
// The fuzzers: libFuzzer harnesses for the decoders that read untrusted input. Built only by
// `Fuzz/run` (with -sanitize=fuzzer,address: libFuzzer supplies `main`), never by `swift build` of
// the main package.
import PackageDescription

let harness = ["token", "escrow", "worker", "control", "notify"]

let package = Package(
    name: "SocketShareFuzz",
    dependencies: [.package(name: "SocketShare", path: "..")],
    targets: [
        .target(name: "FuzzSupport", dependencies: [.product(name: "SocketShare", package: "SocketShare")]),
    ] + harness.map { name in
        .executableTarget(
            name: "fuzz-\(name)",
            dependencies: ["FuzzSupport", .product(name: "SocketShare", package: "SocketShare")],
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        )
    }
)
