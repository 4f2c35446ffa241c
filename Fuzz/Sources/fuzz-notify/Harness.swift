// libFuzzer harness for the readiness notification (sd_notify) parser. See Fuzz/run.
@_spi(Fuzzing) import SocketShare
import FuzzSupport

/// One input (libFuzzer's runtime also looks this symbol up by name).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FuzzingEntryPoints.decodeNotification(bytes(data, size))
    return 0
}

@_cdecl("fuzz_notify_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, decoder: "notify") { data, size in fuzzOneInput(data, size) }
}
