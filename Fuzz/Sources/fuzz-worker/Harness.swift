// libFuzzer harness for the worker protocol decoder. See Fuzz/run.
@_spi(Fuzzing) import SocketShare
import FuzzSupport

/// One input (libFuzzer's runtime also looks this symbol up by name).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FuzzingEntryPoints.decodeWorkerMessage(bytes(data, size))
    return 0
}

@_cdecl("fuzz_worker_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, decoder: "worker") { data, size in fuzzOneInput(data, size) }
}
