// What every harness shares: handing control to libFuzzer, and writing the seed corpus.
@_spi(Fuzzing) import SocketShare
import Glibc

/// One fuzzing input: libFuzzer's data pointer and size.
public typealias FuzzInput = @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt

@_silgen_name("LLVMFuzzerRunDriver")
func runDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: FuzzInput
) -> CInt

/// The bytes of one input.
public func bytes(_ data: UnsafePointer<UInt8>?, _ size: Int) -> [UInt8] {
    data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
}

/// Runs libFuzzer on `test` with the program's arguments (SwiftPM links an executable's `main` to
/// `<module>_main`, so each harness calls this from there, as libFuzzer's own `main` would).
///
/// With SOCKSHARE_FUZZ_SEEDS=DIR it instead writes the seed corpus of `decoder` (valid inputs of
/// every kind, ``FuzzingEntryPoints/seeds(for:)``) to DIR and returns.
public func runFuzzer(
    _ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?, decoder: String, test: FuzzInput
) -> CInt {
    if let directory = getenv("SOCKSHARE_FUZZ_SEEDS").map({ String(cString: $0) }) {
        for (index, seed) in FuzzingEntryPoints.seeds(for: decoder).enumerated() {
            let fd = open("\(directory)/seed-\(index)", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard fd >= 0 else {
                perror(directory)
                return 1
            }
            _ = seed.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
        }
        return 0
    }
    var argc = argc
    var argv = argv
    return runDriver(&argc, &argv, test)
}
