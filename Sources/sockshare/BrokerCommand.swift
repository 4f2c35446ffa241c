import ArgumentParser
import Glibc
import Logging
import Metrics
import Prometheus
import ServiceLifecycle
import SocketShare
import SocketShareServer

struct BrokerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "broker",
        abstract: "Run the broker: hold shared sockets so that their sources may close them, or exit, at once.",
        discussion: """
            Runs in the foreground, logging to stderr. Sources deposit sockets (`sockshare share --via auto` \
            or `--via broker`) and exit; targets claim them with the token, as from any holder. A share is \
            claimable once, only by its target (pid, start time, uid), until it expires.

            The socket is $SOCKSHARE_BROKER, else broker.sock in $XDG_RUNTIME_DIR/sockshare (root: \
            /run/sockshare). Its directory must be private (0700) to this user; --group opens it (0710) to \
            one group for sharing across users.

            Fairness: one user cannot starve the others. The broker raises its descriptor limit to the hard \
            limit and holds at most what it allows (--max-shares is lowered to fit, with a reserve for itself); \
            each uid other than root and the broker's own may hold at most --per-uid shares and \
            --connections-per-uid connections, and a slice of both is kept for root and the broker's own user. \
            Named shares are scoped by depositor: a claim looks at the claimant's own names, then root's, then \
            the broker user's (adopt --from-uid names another). Metrics are for root and the broker's user.

            SIGTERM or SIGINT stop the broker: every held share is closed and logged as such. To restart \
            without losing shares, start the new broker with --takeover: it receives the listening socket \
            and every share from the running one, which then exits.

            Example:
              sockshare broker --max-shares 10000 --per-uid 1000 --max-ttl 300
            """
    )

    @Option(name: .customLong("socket"), help: ArgumentHelp("The broker's socket path.", valueName: "PATH"))
    var socketPath: String?

    @Option(help: ArgumentHelp("The most shares held at once.", valueName: "N"))
    var maxShares: Int = 100_000

    @Option(help: ArgumentHelp("The longest time to live a deposit may ask for, in seconds.", valueName: "SECONDS"))
    var maxTtl: Double = 86_400

    @Option(help: ArgumentHelp(
        "The most shares one depositor uid may hold at once, root included (default: a quarter of --max-shares, for uids other than root and the broker's own).",
        valueName: "N"))
    var perUid: Int?

    @Option(help: ArgumentHelp(
        "The most connections one uid other than root and the broker's own may have open at once (default: 64, less under a low descriptor limit).",
        valueName: "N"))
    var connectionsPerUid: Int?

    @Option(help: ArgumentHelp("The longest a named claim is held waiting for its name, in seconds; clients ask again for longer waits.", valueName: "SECONDS"))
    var maxClaimWait: Double = 600

    @Option(help: ArgumentHelp("A group (name or number) whose members may use the broker, for sharing across users.", valueName: "GROUP"))
    var group: String?

    @Option(help: ArgumentHelp("Seconds a client connection may stay silent before the broker drops it.", valueName: "SECONDS"))
    var idleTimeout: Double = 10

    @Flag(help: "Take over from the broker running at the socket: receive its listening socket and every share.")
    var takeover = false

    @Option(help: ArgumentHelp("trace, debug, info, notice, warning, error or critical.", valueName: "LEVEL"))
    var logLevel: String = "info"

    func validate() throws {
        guard maxShares > 0 else { throw ValidationError("--max-shares \(maxShares): expected a number > 0") }
        guard maxTtl.isFinite, maxTtl > 0, maxTtl <= 4_294_967 else { throw ValidationError("--max-ttl \(maxTtl): expected seconds > 0, at most 4294967") }
        if let perUid, perUid <= 0 { throw ValidationError("--per-uid \(perUid): expected a number > 0") }
        if let connectionsPerUid, connectionsPerUid <= 0 { throw ValidationError("--connections-per-uid \(connectionsPerUid): expected a number > 0") }
        guard maxClaimWait.isFinite, maxClaimWait > 0, maxClaimWait <= 86_400 else {
            throw ValidationError("--max-claim-wait \(maxClaimWait): expected seconds > 0, at most 86400")
        }
        guard idleTimeout.isFinite, idleTimeout > 0, idleTimeout <= 86_400 else { throw ValidationError("--idle-timeout \(idleTimeout): expected seconds > 0, at most 86400") }
        if let socketPath, !socketPath.hasPrefix("/") { throw ValidationError("--socket \(socketPath): expected an absolute path") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level \(logLevel): unknown level") }
        if let group, Self.groupID(group) == nil { throw ValidationError("--group \(group): no such group") }
    }

    static func groupID(_ name: String) -> gid_t? {
        if let number = gid_t(name) { return number }
        return getgrnam(name).map { $0.pointee.gr_gid }
    }

    func run() async throws {
        signal(SIGPIPE, SIG_IGN)
        let level = Logger.Level(rawValue: logLevel)!
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let logger = Logger(label: "sockshare.broker")
        let configuration = Broker.Configuration(
            socketPath: socketPath ?? BrokerClient.defaultSocketPath, maximumShares: maxShares, maximumSharesPerUser: perUid,
            maximumConnectionsPerUser: connectionsPerUid, maximumClaimWait: .milliseconds(Int64(maxClaimWait * 1000)),
            maximumTimeToLive: .milliseconds(Int64(maxTtl * 1000)), group: group.flatMap(Self.groupID),
            idleTimeout: .milliseconds(Int64(idleTimeout * 1000)), metricsText: { registry.emitToString() })
        let broker = try Terminal.run { () throws(SocketShareError) in
            takeover
                ? try Broker.takingOver(configuration: configuration, logger: logger)
                : try Broker(configuration: configuration, logger: logger)
        }
        logger.notice("broker pid \(getpid()) at \(configuration.socketPath)")
        // The broker returns by itself once a successor has taken everything over: the group ends then too.
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: [.init(service: broker, successTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await group.run()
        } catch {
            throw Terminal.fail(SocketShareError(.system, operation: "broker", detail: "\(error)"))
        }
        logger.notice("broker stopped")
    }
}
