import Glibc
import SocketShareCore

/// The decoders that read untrusted input, exposed to the fuzzers in `Fuzz/` (SPI: not part of the
/// public API; `@_spi(Fuzzing) import SocketShare`).
///
/// Each entry point decodes arbitrary bytes. A decoding error is the expected answer to garbage; a
/// crash, a hang, or a broken round trip (a message that decodes, re-encodes, and then decodes to
/// something else or not at all) is a bug, and traps so that libFuzzer reports it.
@_spi(Fuzzing)
public enum FuzzingEntryPoints {
    /// The token decoder: `bytes` as a binary token and as the text form.
    public static func decodeToken(_ bytes: [UInt8]) {
        if let token = try? ShareToken(bytes: bytes) {
            roundTrip(token)
        }
        if let text = String(validating: bytes, as: UTF8.self), let token = try? ShareToken(text: text) {
            roundTrip(token)
        }
    }

    /// The broker and sharer protocol (`docs/PROTOCOL.md`): `bytes` as one escrow message.
    public static func decodeEscrowMessage(_ bytes: [UInt8]) {
        guard let message = try? EscrowMessage(bytes: bytes) else { return }
        let encoded = message.bytes
        guard let again = try? EscrowMessage(bytes: encoded), again.bytes == encoded else {
            fatalError("escrow message \(bytes) decoded, but its encoding \(encoded) does not decode to itself")
        }
    }

    /// A supervisor's control request (`docs/SERVE.md`): whatever parses must print and parse back
    /// to itself, and a deadline is always in range.
    public static func decodeControlRequest(_ bytes: [UInt8]) {
        guard let request = try? ControlRequest(bytes: bytes) else { return }
        guard let again = try? ControlRequest(bytes: request.bytes), again == request else {
            fatalError("control request \(bytes) parsed as \(request), which does not survive a round trip")
        }
        switch request {
        case .reload(let deadline?), .upgrade(let deadline?, _):
            guard deadline > .zero, deadline <= ControlRequest.longestDeadline else {
                fatalError("control request \(bytes): deadline \(deadline) out of range")
            }
        default:
            break
        }
    }

    /// A readiness notification (`sd_notify`) as a supervisor's notify socket reads it from any
    /// process: the fields must print and parse back to themselves.
    public static func decodeNotification(_ bytes: [UInt8]) {
        let fields = SystemdNotifier.parse(bytes)
        let text = fields.keys.sorted().map { "\($0)=\(fields[$0]!)" }.joined(separator: "\n")
        guard SystemdNotifier.parse(Array(text.utf8)) == fields else {
            fatalError("notification \(bytes) parsed as \(fields), which does not survive a round trip")
        }
    }

    /// The worker protocol (`docs/WORKERS.md`): `bytes` as one worker message, by the full decoder
    /// and by the worker side's fast one (`WorkerChannel`), which must agree with it.
    public static func decodeWorkerMessage(_ bytes: [UInt8]) {
        // The fast decoder must survive anything, with any descriptor count.
        for descriptors in [0, 1, Int(bytes.count > 3 ? bytes[3] : 0)] {
            _ = try? bytes.withUnsafeBytes { (raw) throws(SocketShareError) in
                try WorkerChannel.decode(raw, descriptors: descriptors, listenerNames: true)
            }
        }
        guard let message = try? WorkerMessage(bytes: bytes) else { return }
        guard let again = try? WorkerMessage(bytes: message.bytes), again == message else {
            fatalError("worker message \(bytes) decoded, but does not survive a round trip")
        }
        var count = 0
        if case .connections(let handed) = message { count = handed.count }
        let fast: WorkerChannel.Delivery?? = try? bytes.withUnsafeBytes { (raw) throws(SocketShareError) in
            try WorkerChannel.decode(raw, descriptors: count, listenerNames: true)
        }
        switch message {
        case .connections(let handed):
            guard case .connections(let ids, let listeners, _)?? = fast else {
                fatalError("worker message \(bytes): connections the full decoder reads, the worker side refuses")
            }
            guard ids == handed.map({ $0.id }), listeners == handed.map({ $0.listenerName }) else {
                fatalError("worker message \(bytes): the worker side read \(ids), \(listeners ?? [])")
            }
        case .stop:
            guard case .stop?? = fast else { fatalError("worker message \(bytes): a stop the worker side does not see") }
        case .takenBack:
            guard case .takenBack?? = fast else { fatalError("worker message \(bytes): a take-back the worker side does not see") }
        default:
            break
        }
    }

    /// Valid inputs of every kind, for a seed corpus: `token`, `escrow`, `worker`, `control` or `notify`.
    public static func seeds(for decoder: String) -> [[UInt8]] {
        switch decoder {
        case "token":
            return sampleTokens().flatMap { [$0.bytes, Array($0.text.utf8)] }
        case "escrow":
            let share = HeldShare(
                id: 7, family: .inet, kind: .stream, protocolNumber: 6, isListening: true, isConnected: false,
                localAddress: "127.0.0.1:8080", sourcePID: 100, targetPID: 200, depositorUID: 1000,
                ageMilliseconds: 1500, expiresInMilliseconds: 28_500)
            let named = sampleNamedShare()
            let messages: [EscrowMessage] = [
                .claim(shareID: 1, secret: .random()), .acknowledge(shareID: 1),
                .deposit(targetPID: 4242, targetStartTime: 987_654, timeToLiveMilliseconds: 30_000),
                .revoke(shareID: 3), .list(after: 0), .metrics, .takeover, .takeoverDone, .claimed(shareID: 1),
                .deposited(token: sampleTokens().first?.bytes ?? []), .revoked(shareID: 3), .listing(more: true, shares: [share]),
                .metricsText("sockshare_claims_total 1\n"), .takeoverListener(shareCount: 2, namedCount: 1),
                .failure(.expired, "share 3 expired"),
                .depositNamed(name: "web", policy: ClaimPolicy(uid: 1000, gid: 100, cgroup: "/app.slice/web"), timeToLiveMilliseconds: 0, keep: true),
                .depositNamed(name: "db:5432", policy: ClaimPolicy(), timeToLiveMilliseconds: 60_000, keep: false),
                .claimNamed(name: "web", waitMilliseconds: 0, from: nil), .claimNamed(name: "late", waitMilliseconds: 30_000, from: 0),
                .revokeNamed(name: "web", from: nil), .revokeNamed(name: "api", from: 1000), .pull(shareID: 5, secret: .random()),
                .pullable(shareID: 5, descriptor: 9), .listNamed(after: 9), .depositedNamed(shareID: 9),
                .namedListing(more: false, shares: [named.listing]), .takeoverNamed([named.record]),
            ]
            return messages.map(\.bytes)
        case "worker":
            let messages: [WorkerMessage] = [
                .connections([
                    HandedConnection(id: 1, listenerName: "http", peerAddress: "127.0.0.1:50312", localAddress: "127.0.0.1:8080"),
                    HandedConnection(id: 2, listenerName: "", peerAddress: "[::1]:50313", localAddress: "[::1]:8080"),
                ]),
                .stop, .takenBack, .accepted([1, 2], active: 2), .refused([3]), .load(active: 5), .ready, .doorbell, .leaving,
            ]
            return messages.map(\.bytes)
        case "control":
            let requests: [ControlRequest] = [
                .status, .reload(deadline: nil), .reload(deadline: .seconds(20)), .reload(deadline: .milliseconds(1500)),
                .upgrade(deadline: nil, binary: nil), .upgrade(deadline: .seconds(30), binary: nil),
                .upgrade(deadline: nil, binary: "/usr/local/bin/sockshare"),
            ]
            return requests.map(\.bytes) + ["reload 1e300", "reload -1", "reload nan", "upgrade 0 /bin/sh", " status\n"].map { Array($0.utf8) }
        case "notify":
            return ["READY=1", "READY=1\nSTATUS=serving\nMAINPID=4242", "RELOADING=1\nMONOTONIC_USEC=123", "STOPPING=1",
                    "=\n==\nX"].map { Array($0.utf8) }
        default:
            return []
        }
    }

    private static func sampleNamedShare() -> (record: NamedShareRecord, listing: NamedShare) {
        let record = NamedShareRecord(
            id: 9, name: "web", policy: ClaimPolicy(uid: 1000, cgroup: "/app.slice/web"), keep: true,
            depositor: ProcessIdentity(pid: 100, startTime: 5000), depositorUID: 0, createdAtMilliseconds: 1_700_000_000_000,
            expiresAtMilliseconds: 0, claims: 3)
        return (record, NamedShare(
            record, family: .inet, kind: .stream, isListening: true, localAddress: "127.0.0.1:8080",
            nowMilliseconds: 1_700_000_001_500))
    }

    private static func sampleTokens() -> [ShareToken] {
        guard let socket = try? SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0)) else { return [] }
        defer { try? socket.close() }
        guard let description = try? socket.socketDescription() else { return [] }
        return [ShareMechanism.sharer, .pidfd, .broker].map { mechanism in
            ShareToken(
                mechanism: mechanism, description: description, source: ProcessIdentity(pid: 100, startTime: 5),
                target: ProcessIdentity(pid: 4242, startTime: 987_654), createdAtMilliseconds: 1_700_000_000_000,
                expiresAtMilliseconds: 1_700_000_060_000, endpoint: "/run/sockshare/sharer-1-abc.sock", shareID: 77,
                secret: .random())
        }
    }

    private static func roundTrip(_ token: ShareToken) {
        guard (try? ShareToken(bytes: token.bytes)) == token, (try? ShareToken(text: token.text)) == token else {
            fatalError("token \(token.text) decoded, but does not survive a round trip")
        }
    }
}
