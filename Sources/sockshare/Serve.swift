import ArgumentParser
import Glibc
import Logging
import SocketShare
import SocketShareServer
import ServiceLifecycle
import UnixSignals

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run worker processes on shared listeners, or hand them each accepted connection.",
        discussion: """
            Binds every --listen address (or takes the listeners systemd passed in with LISTEN_FDS), starts \
            --workers copies of COMMAND and keeps them running: a worker that exits is restarted, with a \
            growing delay if it keeps crashing.

            --mode shared: every worker gets the listeners at descriptors 3… with LISTEN_FDS, LISTEN_PID and \
            LISTEN_FDNAMES, as systemd socket activation does; any server that supports it works unchanged.

            --mode handoff: sockshare accepts and hands each connection to a worker over the channel at \
            descriptor $SOCKSHARE_WORKER_FD (docs/WORKERS.md). It keeps every connection until the worker \
            acknowledges it, so a worker that dies, stalls (it is killed) or refuses loses none. When every \
            worker is full, sockshare stops accepting and connections wait in the kernel's backlog.

            --worker-socket PATH (handoff): workers sockshare did not start (in other containers, say) \
            connect to PATH ($SOCKSHARE_WORKER_SOCKET for ConnectionServer-based workers) and take connections \
            with the same guarantees; only --worker-uid (default: this user) and --worker-gid may, at most \
            --max-external-workers per uid. A new external worker is sent one connection (one at a time per \
            uid) until it acknowledges it; one that leaves a connection unacknowledged gets no more and is \
            disconnected at --stall-timeout, its connections going to proven workers. With --workers 0 sockshare \
            runs none of its own, and COMMAND may be omitted (docs/SERVE.md).

            ADDR: tcp://HOST:PORT, tcp://[IPv6]:PORT, udp://HOST:PORT (shared mode), unix:///PATH. \
            The control socket (--control PATH, else serve-PID.sock in the runtime directory) answers serve's \
            own user and root, checked by SO_PEERCRED whatever the socket's mode; --control-user and \
            --control-group let others ask for status, reload and an upgrade to the running binary (only serve's \
            own user or root may name another binary). An explicit PATH must be in a directory nobody but its \
            owner may write to.

            SIGTERM or SIGINT drain: stop accepting, let workers finish, SIGTERM them at --drain-timeout, \
            SIGKILL 2 s later; exit 0. `sockshare status --control PATH` shows listeners and workers.

            Reload (`sockshare reload`, or SIGHUP): a new generation of workers starts on the same \
            listeners; once each says READY=1 on $NOTIFY_SOCKET (or, in handoff mode, the worker protocol's \
            ready), new connections go only to it and the old generation drains (--drain-timeout, then \
            SIGTERM, then SIGKILL). A new generation not ready by the deadline, or one whose worker exits \
            first, is stopped and the old one serves on. Upgrade (`sockshare upgrade`, or SIGUSR2): a new \
            sockshare binary takes over the listeners, workers and state; the workers keep running.

            Example:
              sockshare serve --listen web=tcp://127.0.0.1:8080 --workers 2 --mode handoff -- .build/release/hello-worker
            """
    )

    @Option(name: .customLong("listen"), help: ArgumentHelp("A listener, [NAME=]ADDR; repeat for more.", valueName: "[NAME=]ADDR"))
    var listen: [String] = []

    @Option(help: ArgumentHelp("How many workers run at once.", valueName: "N"))
    var workers: Int = 2

    @Option(help: ArgumentHelp("shared (workers accept on the listeners) or handoff (sockshare accepts and hands off).", valueName: "shared|handoff"))
    var mode: String = "handoff"

    @Option(help: ArgumentHelp("How handoff picks a worker: rr (round-robin) or least (fewest in flight).", valueName: "rr|least"))
    var policy: String = "rr"

    @Option(help: ArgumentHelp("The control socket for `sockshare status --control` (default: serve-PID.sock in the runtime directory).", valueName: "PATH"))
    var control: String?

    @Option(name: .customLong("control-user"), help: ArgumentHelp(
        "A user (name or number) who may also use the control socket: status, reload, upgrade to the running binary. Repeat for more.",
        valueName: "U"))
    var controlUsers: [String] = []

    @Option(name: .customLong("control-group"), help: ArgumentHelp(
        "A group whose members may also use the control socket, as --control-user. Repeat for more.", valueName: "G"))
    var controlGroups: [String] = []

    @Option(help: ArgumentHelp("Seconds workers get to finish when stopping, before SIGTERM (and SIGKILL 2 s later).", valueName: "SECONDS"))
    var drainTimeout: Double = 10

    @Option(help: ArgumentHelp("Seconds a worker may leave a handed-off connection unacknowledged before it is killed.", valueName: "SECONDS"))
    var stallTimeout: Double = 5

    @Option(help: ArgumentHelp("The most connections in flight to one worker (handoff).", valueName: "N"))
    var maxInFlight: Int = 256

    @Option(help: ArgumentHelp("The listen(2) backlog of the listeners.", valueName: "N"))
    var backlog: Int32 = 4096

    @Option(help: ArgumentHelp("How workers show they are ready: notify (READY=1 on $NOTIFY_SOCKET, or the worker protocol's ready) or none (at once; a reload then cannot tell a broken version).", valueName: "notify|none"))
    var readiness: String = "notify"

    @Option(help: ArgumentHelp("Seconds a reload or upgrade may take before it is rolled back (when the request does not say).", valueName: "SECONDS"))
    var reloadDeadline: Double = 30

    @Option(help: ArgumentHelp("trace, debug, info, notice, warning, error or critical.", valueName: "LEVEL"))
    var logLevel: String = "info"

    @Option(name: .customLong("worker-socket"), help: ArgumentHelp(
        "Handoff: also hand connections to workers sockshare did not start, which connect here (a path; its directory is made private, or 0710 with --worker-gid).",
        valueName: "PATH"))
    var workerSocket: String?

    @Option(name: .customLong("worker-uid"), help: ArgumentHelp("The user (name or number) external workers must run as (default: this one).", valueName: "U"))
    var workerUID: String?

    @Option(name: .customLong("worker-gid"), help: ArgumentHelp("The primary group external workers must run as; the worker socket is opened to it.", valueName: "G"))
    var workerGID: String?

    @Option(name: .customLong("max-external-workers"), help: ArgumentHelp(
        "With --worker-socket: the most external workers one uid may have connected at once.", valueName: "N"))
    var maxExternalWorkers: Int = 64

    @Option(help: .private)
    var successorOf: Int32?

    @Argument(parsing: .postTerminator, help: ArgumentHelp("The worker program and its arguments.", valueName: "COMMAND"))
    var command: [String] = []

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level \(logLevel): unknown level") }
        if successorOf != nil { return }
        guard Supervisor.Readiness(rawValue: readiness) != nil else { throw ValidationError("--readiness \(readiness): expected notify or none") }
        guard reloadDeadline.isFinite, reloadDeadline > 0, reloadDeadline <= 86_400 else { throw ValidationError("--reload-deadline \(reloadDeadline): expected seconds > 0, at most 86400") }
        if let workerSocket {
            guard workerSocket.hasPrefix("/") else { throw ValidationError("--worker-socket \(workerSocket): expected an absolute path") }
            guard mode == "handoff" else { throw ValidationError("--worker-socket: external workers take handed-off connections; use --mode handoff") }
        } else {
            if workerUID != nil { throw ValidationError("--worker-uid: only with --worker-socket") }
            if workerGID != nil { throw ValidationError("--worker-gid: only with --worker-socket") }
            if maxExternalWorkers != 64 { throw ValidationError("--max-external-workers: only with --worker-socket") }
        }
        for user in controlUsers where Share.userID(user) == nil { throw ValidationError("--control-user \(user): no such user") }
        for group in controlGroups where BrokerCommand.groupID(group) == nil { throw ValidationError("--control-group \(group): no such group") }
        if let workerUID, Share.userID(workerUID) == nil { throw ValidationError("--worker-uid \(workerUID): no such user") }
        if let workerGID, BrokerCommand.groupID(workerGID) == nil { throw ValidationError("--worker-gid \(workerGID): no such group") }
        guard maxExternalWorkers > 0, maxExternalWorkers <= 4096 else {
            throw ValidationError("--max-external-workers \(maxExternalWorkers): expected 1 to 4096")
        }
        let fewest = workerSocket == nil ? 1 : 0
        guard workers >= fewest, workers <= 1024 else {
            throw ValidationError("--workers \(workers): expected \(fewest) to 1024\(fewest == 0 ? "" : " (0 only with --worker-socket)")")
        }
        guard Supervisor.Mode(rawValue: mode) != nil else { throw ValidationError("--mode \(mode): expected shared or handoff") }
        guard Supervisor.Policy(rawValue: policy) != nil else { throw ValidationError("--policy \(policy): expected rr or least") }
        guard drainTimeout.isFinite, drainTimeout > 0, drainTimeout <= 86_400 else { throw ValidationError("--drain-timeout \(drainTimeout): expected seconds > 0, at most 86400") }
        guard stallTimeout.isFinite, stallTimeout > 0, stallTimeout <= 86_400 else { throw ValidationError("--stall-timeout \(stallTimeout): expected seconds > 0, at most 86400") }
        guard maxInFlight > 0 else { throw ValidationError("--max-in-flight \(maxInFlight): expected a number > 0") }
        guard backlog > 0 else { throw ValidationError("--backlog \(backlog): expected a number > 0") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level \(logLevel): unknown level") }
        guard !command.isEmpty || workers == 0 else { throw ValidationError("missing COMMAND: write the worker program after --") }
        if listen.isEmpty && getenv("LISTEN_FDS") == nil {
            throw ValidationError("no --listen address, and no LISTEN_FDS from a service manager")
        }
        for (index, text) in listen.enumerated() {
            do {
                _ = try ListenerSpecification(parsing: text, index: index)
            } catch {
                throw ValidationError("--listen \(error.detail)")
            }
        }
    }

    func run() async throws {
        signal(SIGPIPE, SIG_IGN)
        let level = Logger.Level(rawValue: logLevel)!
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "sockshare.serve")
        // What an upgrade starts the new binary with: it finds its predecessor's channel at fd 3.
        let successorArguments = ["serve", "--successor-of", "3", "--log-level", logLevel]
        let supervisor = try Terminal.run { () throws(SocketShareError) -> Supervisor in
            if let successorOf {
                return try Supervisor.succeeding(
                    channelDescriptor: successorOf, successorArguments: successorArguments, logger: logger)
            }
            let specifications = try listen.enumerated().map { (index, text) throws(SocketShareError) in
                try ListenerSpecification(parsing: text, index: index)
            }
            return try Supervisor(
                configuration: Supervisor.Configuration(
                    listeners: specifications, workers: workers, mode: Supervisor.Mode(rawValue: mode)!,
                    policy: Supervisor.Policy(rawValue: policy)!, command: command, controlPath: control,
                    controlAccess: ControlAccess(
                        users: controlUsers.compactMap(Share.userID), groups: controlGroups.compactMap(BrokerCommand.groupID)),
                    drainTimeout: .milliseconds(Int64(drainTimeout * 1000)),
                    stallTimeout: .milliseconds(Int64(stallTimeout * 1000)), maximumInFlightPerWorker: maxInFlight,
                    backlog: backlog, readiness: Supervisor.Readiness(rawValue: readiness)!,
                    reloadDeadline: .milliseconds(Int64(reloadDeadline * 1000)),
                    externalWorkers: workerSocket.map {
                        Supervisor.ExternalWorkers(
                            path: $0, uid: workerUID.flatMap(Share.userID), gid: workerGID.flatMap(BrokerCommand.groupID),
                            maximumPerUser: maxExternalWorkers)
                    }),
                successorArguments: successorArguments, logger: logger)
        }
        // SIGTERM and SIGINT drain (graceful shutdown); SIGHUP reloads; SIGUSR2 upgrades. The
        // supervisor returns by itself after an upgrade: the group ends then too.
        let controls = await UnixSignalsSequence(trapping: .sighup, .sigusr2)
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: [.init(service: supervisor, successTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        let relay = Task {
            for await signal in controls {
                if signal == .sighup {
                    logger.notice("SIGHUP: reloading")
                    supervisor.reload()
                } else {
                    logger.notice("SIGUSR2: upgrading")
                    supervisor.upgrade()
                }
            }
        }
        defer { relay.cancel() }
        do {
            try await group.run()
        } catch {
            throw Terminal.fail(SocketShareError(.system, operation: "serve", detail: "\(error)"))
        }
    }
}
