import ArgumentParser
import SocketShare

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the shares a broker holds, or print its metrics.",
        discussion: """
            Shows each share you deposited (every share, as root): id, socket, source and target pid, age \
            and time left. Secrets are never shown. --metrics prints the broker's counters in the \
            Prometheus text format.

            Example:
              sockshare status --json
            """
    )

    @Option(name: .customLong("broker"), help: ArgumentHelp("The broker's socket (default: $SOCKSHARE_BROKER or the runtime directory's).", valueName: "PATH"))
    var brokerPath: String?

    @Flag(help: "Print one JSON object.")
    var json = false

    @Flag(help: "Print the broker's metrics (Prometheus text format).")
    var metrics = false

    func run() throws {
        let client = BrokerClient(socketPath: brokerPath ?? Broker.defaultSocketPath)
        if metrics {
            let text = try Terminal.run { () throws(SocketShareError) in try client.metrics() }
            try Terminal.run { () throws(SocketShareError) in try Terminal.line(text.hasSuffix("\n") ? String(text.dropLast()) : text) }
            return
        }
        let shares = try Terminal.run { () throws(SocketShareError) in try client.list() }
        let output: String
        if json {
            let entries = shares.map { share in
                JSONValue.object(JSONObject([
                    ("id", .number(Int(truncatingIfNeeded: share.id))),
                    ("family", .string("\(share.family)")), ("type", .string("\(share.kind)")),
                    ("protocol", .number(Int(share.protocolNumber))), ("listening", .bool(share.isListening)),
                    ("connected", .bool(share.isConnected)), ("localAddress", .string(share.localAddress)),
                    ("sourcePid", .number(Int(share.sourcePID))), ("targetPid", .number(Int(share.targetPID))),
                    ("depositorUid", .number(Int(share.depositorUID))),
                    ("ageSeconds", .number(Int(share.ageMilliseconds / 1000))),
                    ("expiresInSeconds", .number(Int(share.expiresInMilliseconds / 1000))),
                ]))
            }
            output = JSONObject([
                ("broker", .string(client.socketPath)), ("held", .number(shares.count)), ("shares", .array(entries)),
            ]).json
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
            output = lines.joined(separator: "\n")
        }
        try Terminal.run { () throws(SocketShareError) in try Terminal.line(output) }
    }

    private func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
    }
}
