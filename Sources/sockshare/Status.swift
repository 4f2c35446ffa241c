import ArgumentParser
import SocketShare
import SocketShareServer

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what a broker holds, or what a `sockshare serve` runs.",
        discussion: """
            Without --control: each share you deposited at the broker (every share, as root): id, socket, \
            source and target pid, age and time left; then each named share: its name, policy, whether it \
            is kept, and how often it was claimed. Secrets are never shown. --metrics prints the broker's \
            counters in the Prometheus text format.

            With --control PATH: the listeners and workers of the `sockshare serve` whose control socket \
            is PATH: each worker's pid, slot, generation, connections handled and in flight, and restarts.

            Example:
              sockshare status --json
              sockshare status --control /run/sockshare/serve-4120.sock
            """
    )

    @Option(help: ArgumentHelp("The control socket of a `sockshare serve`.", valueName: "PATH"))
    var control: String?

    @Option(name: .customLong("broker"), help: ArgumentHelp("The broker's socket (default: $SOCKSHARE_BROKER or the runtime directory's).", valueName: "PATH"))
    var brokerPath: String?

    @Flag(help: "Print one JSON object.")
    var json = false

    @Flag(help: "Print the broker's metrics (Prometheus text format).")
    var metrics = false

    func run() throws {
        if let control {
            try showSupervisor(control)
            return
        }
        let client = BrokerClient(socketPath: brokerPath)
        if metrics {
            let text = try Terminal.run { () throws(SocketShareError) in try client.metrics() }
            try Terminal.run { () throws(SocketShareError) in try Terminal.line(text.hasSuffix("\n") ? String(text.dropLast()) : text) }
            return
        }
        let shares = try Terminal.run { () throws(SocketShareError) in try client.list() }
        let named = try Terminal.run { () throws(SocketShareError) in try client.namedShares() }
        let output: String
        if json {
            output = Terminal.json(BrokerListing(
                broker: client.socketPath, held: shares.count, shares: shares.map(BrokerListing.Share.init),
                named: named.map(BrokerListing.Named.init)))
        } else {
            var lines = ["broker \(client.socketPath): \(shares.count) share\(shares.count == 1 ? "" : "s") held"]
            if !shares.isEmpty {
                lines.append("ID                SOCKET                                    SOURCE   TARGET   AGE      EXPIRES IN")
                for share in shares {
                    let socket = "\(share.family) \(share.kind)\(share.isListening ? " listening" : "") \(share.localAddress)"
                    lines.append(
                        pad(String(share.id), 17) + " " + pad(socket, 41) + " " + pad(String(share.sourcePID), 8) + " "
                            + pad(String(share.targetPID), 8) + " " + pad("\(share.ageMilliseconds / 1000) s", 8) + " "
                            + "\(share.expiresInMilliseconds / 1000) s")
                }
            }
            if !named.isEmpty {
                lines.append("\(named.count) named share\(named.count == 1 ? "" : "s"):")
                lines.append("ID                NAME             POLICY                    KEPT CLAIMS SOCKET                                    EXPIRES IN")
                for share in named {
                    let socket = "\(share.family) \(share.kind)\(share.isListening ? " listening" : "") \(share.localAddress)"
                    lines.append(
                        pad(String(share.id), 17) + " " + pad(share.name, 16) + " " + pad(share.policy.description, 25) + " "
                            + pad(share.keep ? "yes" : "no", 4) + " " + pad(String(share.claims), 6) + " " + pad(socket, 41) + " "
                            + (share.expiresInMilliseconds.map { "\($0 / 1000) s" } ?? "when revoked"))
                }
            }
            output = lines.joined(separator: "\n")
        }
        try Terminal.run { () throws(SocketShareError) in try Terminal.line(output) }
    }

    private func showSupervisor(_ path: String) throws {
        let status = try Terminal.run { () throws(SocketShareError) in try SupervisorClient(controlPath: path).status() }
        if json {
            try Terminal.run { () throws(SocketShareError) in try Terminal.line(String(decoding: status.json, as: UTF8.self)) }
            return
        }
        var lines = ["sockshare serve pid \(status.pid): mode \(status.mode)\(status.policy.map { ", policy \($0)" } ?? ""), generation \(status.generation)\(status.reloading ? " (reloading)" : "")"]
        if let last = status.lastReload {
            lines.append("last \(last.kind): \(last.succeeded ? "succeeded" : "FAILED") at \(last.finishedAt) in \(last.milliseconds) ms: \(last.reason)")
        }
        for listener in status.listeners { lines.append("listener \(listener.name) \(listener.address)") }
        if let accepted = status.accepted {
            lines.append("accepted \(accepted), redispatched \(status.redispatched ?? 0), waiting \(status.waiting ?? 0)")
        }
        lines.append("PID      SLOT GEN  HANDLED    IN FLIGHT RESTARTS READY UPTIME   STATE")
        for worker in status.workers {
            lines.append(
                pad(String(worker.pid), 8) + " " + pad(String(worker.slot), 4) + " " + pad(String(worker.generation), 4) + " "
                    + pad(worker.handled.map(String.init) ?? "-", 10) + " " + pad(worker.inFlight.map(String.init) ?? "-", 9) + " "
                    + pad(String(worker.restarts), 8) + " " + pad(worker.ready ? "yes" : "no", 5) + " "
                    + pad("\(worker.uptimeSeconds) s", 8) + " " + (worker.draining ? "draining" : (worker.generation == status.generation ? "serving" : "starting")))
        }
        if let external = status.externalWorkers {
            lines.append(
                "\(external.count) external worker\(external.count == 1 ? "" : "s") connected (\(status.externalRefusals ?? 0) refused by uid or gid)")
            if !external.isEmpty {
                lines.append("ID   PID      UID      HANDLED    IN FLIGHT READY CONNECTED")
                for worker in external {
                    lines.append(
                        pad(String(worker.id), 4) + " " + pad(worker.pid == 0 ? "-" : String(worker.pid), 8) + " "
                            + pad(String(worker.uid), 8) + " " + pad(String(worker.handled), 10) + " " + pad(String(worker.inFlight), 9)
                            + " " + pad(worker.ready ? "yes" : "no", 5) + " " + "\(worker.connectedSeconds) s")
                }
            }
        }
        try Terminal.run { () throws(SocketShareError) in try Terminal.line(lines.joined(separator: "\n")) }
    }

    private func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
    }
}

/// `sockshare status --json` for a broker.
struct BrokerListing: Encodable {
    struct Share: Encodable {
        var id: UInt64
        var family: String
        var type: String
        var `protocol`: Int32
        var listening: Bool
        var connected: Bool
        var localAddress: String
        var sourcePid: Int32
        var targetPid: Int32
        var depositorUid: UInt32
        var ageSeconds: UInt64
        var expiresInSeconds: UInt64

        init(_ share: HeldShare) {
            id = share.id
            family = "\(share.family)"
            type = "\(share.kind)"
            `protocol` = share.protocolNumber
            listening = share.isListening
            connected = share.isConnected
            localAddress = share.localAddress
            sourcePid = share.sourcePID
            targetPid = share.targetPID
            depositorUid = share.depositorUID
            ageSeconds = share.ageMilliseconds / 1000
            expiresInSeconds = share.expiresInMilliseconds / 1000
        }
    }

    struct Named: Encodable {
        var id: UInt64
        var name: String
        var policyUid: UInt32?
        var policyGid: UInt32?
        var policyCgroup: String?
        var keep: Bool
        var claims: UInt64
        var family: String
        var type: String
        var listening: Bool
        var localAddress: String
        var sourcePid: Int32
        var depositorUid: UInt32
        var ageSeconds: UInt64
        /// Absent for a kept share held until revoked.
        var expiresInSeconds: UInt64?

        init(_ share: NamedShare) {
            id = share.id
            name = share.name
            policyUid = share.policy.uid
            policyGid = share.policy.gid
            policyCgroup = share.policy.cgroup
            keep = share.keep
            claims = share.claims
            family = "\(share.family)"
            type = "\(share.kind)"
            listening = share.isListening
            localAddress = share.localAddress
            sourcePid = share.sourcePID
            depositorUid = share.depositorUID
            ageSeconds = share.ageMilliseconds / 1000
            expiresInSeconds = share.expiresInMilliseconds.map { $0 / 1000 }
        }
    }

    var broker: String
    var held: Int
    var shares: [Share]
    var named: [Named]
}
