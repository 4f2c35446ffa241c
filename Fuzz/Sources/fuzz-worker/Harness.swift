// libFuzzer harness for the worker protocol decoder. See Fuzz/run.
@_spi(Fuzzing) import SocketShare
import Glibc

/// Called by libFuzzer once per input.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    FuzzingEntryPoints.decodeWorkerMessage(bytes)
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
func runDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

/// The program's entry point: SwiftPM links an executable's `main` to `<module>_main`, so this hands
/// control to libFuzzer's driver, as libFuzzer's own `main` would.
@_cdecl("fuzz_worker_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return runDriver(&argc, &argv) { data, size in fuzzOneInput(data, size) }
}

/// With SOCKSHARE_FUZZ_SEEDS=DIR, writes the seed corpus (valid inputs of every kind) there and exits.
@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<CInt>?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> CInt {
    guard let directory = getenv("SOCKSHARE_FUZZ_SEEDS").map({ String(cString: $0) }) else { return 0 }
    for (index, seed) in FuzzingEntryPoints.seeds(for: "worker").enumerated() {
        let fd = open("\(directory)/seed-\(index)", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { perror(directory); exit(1) }
        _ = seed.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }
    exit(0)
}
