import ArgumentParser
import Glibc
import SocketShare
import SocketShareServer
import UnixSignals

struct Share: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Duplicate one of this process's sockets for another process and print the token.",
        discussion: """
            Shares descriptor N, which sockshare inherited from its parent, with process PID. The token is \
            printed as one line on stdout and flushed at once; pass it to the target over any IPC.

            With the broker (--via broker, or --via auto when a broker answers) the broker holds the share: \
            share prints the token and exits 0 at once, and the source may close or exit. The broker is the \
            one at --broker PATH, else at $SOCKSHARE_BROKER, else broker.sock in the runtime directory \
            ($XDG_RUNTIME_DIR/sockshare, /run/sockshare for root).

            With --via sharer or pidfd (or auto without a broker) this process is the holder: it stays in \
            the foreground until the share is claimed (exit 0), expires (exit 2) or the target exits \
            without claiming (exit 3). SIGINT, SIGTERM or SIGHUP revoke the share (exit 128+signal). \
            Other failures exit 1.

            With --name instead of --to, the broker holds the share under that name for whoever the policy             admits (--for-uid, --for-gid, --for-cgroup: each one given must match, by the kernel's word on             the claimant; with none, only your own uid), in any pid namespace: `sockshare adopt --name NAME`             claims it. It is single use unless --keep, which hands a descriptor to every admitted claimant             until `sockshare revoke --name NAME` (and, without --ttl, never expires). share prints the             share's id and exits 0.

            Examples (bash opens a TCP connection as fd 3 and shares it with a waiting process; a             listener is kept for app containers running as uid 1000):
              sockshare share --fd 3 --to "$TARGET_PID" 3<>/dev/tcp/127.0.0.1/8080 > token.txt
              sockshare bind tcp://127.0.0.1:8080 -- sockshare share --fd 3 --name web --for-uid 1000 --keep
            """
    )

    @Option(name: .customLong("fd"), help: ArgumentHelp("The descriptor of this process to share.", valueName: "N"))
    var descriptor: Int32

    @Option(name: .customLong("to"), help: ArgumentHelp("The pid of the process that will adopt it.", valueName: "PID"))
    var target: Int32?

    @Option(help: ArgumentHelp("Hold it at the broker under this name instead (1-128 of A-Z a-z 0-9 . _ - : @).", valueName: "NAME"))
    var name: String?

    @Option(name: .customLong("for-uid"), help: ArgumentHelp("With --name: only this user (name or number) may claim it.", valueName: "U"))
    var forUID: String?

    @Option(name: .customLong("for-gid"), help: ArgumentHelp("With --name: only this primary group (name or number) may claim it.", valueName: "G"))
    var forGID: String?

    @Option(name: .customLong("for-cgroup"), help: ArgumentHelp("With --name: only a process in this cgroup v2 path may claim it.", valueName: "PATH"))
    var forCgroup: String?

    @Flag(help: "With --name: every admitted claimant gets the socket until it is revoked (not just the first).")
    var keep = false

    @Option(help: ArgumentHelp(
        "Who holds the share until it is claimed: auto (the broker if one answers, else sharer), broker, sharer, pidfd.",
        valueName: "auto|broker|sharer|pidfd"))
    var via: String = "auto"

    @Option(help: ArgumentHelp(
        "Seconds the share stays claimable (fractions allowed; at most 86400; default 60, or until revoked with --keep).",
        valueName: "SECONDS"))
    var ttl: Double?

    @Option(name: .customLong("broker"), help: ArgumentHelp("The broker's socket (default: $SOCKSHARE_BROKER or the runtime directory's).", valueName: "PATH"))
    var brokerPath: String?

    func validate() throws {
        guard descriptor >= 0 else { throw ValidationError("--fd \(descriptor): a descriptor is a number >= 0") }
        switch (target, name) {
        case (nil, nil): throw ValidationError("missing --to PID or --name NAME: say who may adopt the socket")
        case (_?, _?): throw ValidationError("--to and --name: give one (a pid, or a name at the broker)")
        case (let target?, nil):
            guard target > 0 else { throw ValidationError("--to \(target): a pid is a number > 0") }
            for (option, given) in [("--for-uid", forUID != nil), ("--for-gid", forGID != nil), ("--for-cgroup", forCgroup != nil), ("--keep", keep)]
            where given {
                throw ValidationError("\(option): only a share by --name has a policy; a share --to PID is for that process alone")
            }
        case (nil, let name?):
            if let problem = ShareName.problem(name) { throw ValidationError("--name \(name): \(problem)") }
            guard via == "auto" || via == "broker" else {
                throw ValidationError("--via \(via): named shares are held by the broker; use --via broker (or auto)")
            }
            if let forUID, Self.userID(forUID) == nil { throw ValidationError("--for-uid \(forUID): no such user") }
            if let forGID, BrokerCommand.groupID(forGID) == nil { throw ValidationError("--for-gid \(forGID): no such group") }
            if let forCgroup, !forCgroup.hasPrefix("/") || forCgroup.utf8.count > ClaimPolicy.maximumCgroupLength {
                throw ValidationError(
                    "--for-cgroup \(forCgroup): expected an absolute cgroup v2 path (as in /proc/PID/cgroup after 0::), at most 255 bytes")
            }
        }
        guard ShareOptions.Via(rawValue: via) != nil else {
            throw ValidationError("--via \(via): expected auto, broker, sharer or pidfd")
        }
        if let brokerPath, !brokerPath.hasPrefix("/") { throw ValidationError("--broker \(brokerPath): expected an absolute path") }
        if let ttl, !(ttl.isFinite && ttl > 0 && ttl <= 86400) {
            throw ValidationError("--ttl \(ttl): expected a number of seconds greater than 0 and at most 86400")
        }
    }

    static func userID(_ name: String) -> uid_t? {
        if let number = uid_t(name) { return number }
        return getpwnam(name).map { $0.pointee.pw_uid }
    }

    /// Names the argument at fault when the descriptor or the pid is not usable.
    private func checkArguments() throws(SocketShareError) {
        do throws(SocketShareError) {
            _ = try SocketDescription(of: descriptor)
        } catch {
            let why = error.errno?.rawValue == EBADF ? "not an open descriptor of this process" : error.detail
            throw SocketShareError(error.code, operation: "share", detail: "--fd \(descriptor): \(why)")
        }
        guard let target else { return }
        do throws(SocketShareError) {
            _ = try ProcessIdentity(pid: target)
        } catch {
            throw SocketShareError(
                error.code, operation: "share",
                detail: "--to \(target): \(error.detail) (a process in another pid namespace or container has no pid here: "
                    + "share by --name through a broker instead)")
        }
    }

    /// Deposits the socket at the broker under `name` and prints the share's id.
    private func shareByName(_ name: String) throws {
        try Terminal.run { () throws(SocketShareError) in try checkArguments() }
        let policy = ClaimPolicy(uid: forUID.flatMap(Self.userID), gid: forGID.flatMap(BrokerCommand.groupID), cgroup: forCgroup)
        let client = BrokerClient(socketPath: brokerPath)
        let id = try Terminal.run { () throws(SocketShareError) in
            do throws(SocketShareError) {
                return try client.deposit(
                    descriptor, named: name, policy: policy,
                    timeToLive: ttl.map { .milliseconds(Int64($0 * 1000)) } ?? (keep ? nil : .seconds(60)), keep: keep)
            } catch {
                throw error.within("share")
            }
        }
        try Terminal.run { () throws(SocketShareError) in try Terminal.line(String(id)) }
    }

    func run() async throws {
        signal(SIGPIPE, SIG_IGN)
        if let name {
            try shareByName(name)
            return
        }
        let target = target!
        let ttl = ttl ?? 60
        let options = ShareOptions(
            via: ShareOptions.Via(rawValue: via)!, timeToLive: .milliseconds(Int64(ttl * 1000)), brokerSocketPath: brokerPath)
        // Signals are caught before the token is printed, so whoever reads it may signal at once:
        // a signal revokes the share, which ends the wait below with `.revoked`.
        let shared = Locked<(token: ShareToken?, signal: CInt)>((nil, 0))
        let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm, .sighup)
        let watcher = Task {
            for await signal in signals {
                let token = shared.withLock { state -> ShareToken? in
                    state.signal = signal.rawValue
                    return state.token
                }
                if let token { SocketShare.revoke(token) }
            }
        }
        defer { watcher.cancel() }
        // The arguments' own errors already say `share`; the library's are put in its terms.
        try Terminal.run { () throws(SocketShareError) in try checkArguments() }
        let token = try Terminal.run { () throws(SocketShareError) in
            do throws(SocketShareError) {
                return try SocketShare.duplicate(descriptor, for: target, options: options)
            } catch {
                throw error.within("share")
            }
        }
        let early = shared.withLock { state -> CInt in
            state.token = token
            return state.signal
        }
        if early != 0 { SocketShare.revoke(token) }
        do {
            try Terminal.line(token.text)
        } catch {
            SocketShare.revoke(token)
            if token.mechanism == .broker { try? BrokerClient(socketPath: token.endpoint).revoke(shareID: token.shareID) }
            Sharer.default.stop()
            throw Terminal.fail(error.within("share"))
        }
        // The broker holds it now: nothing left to wait for here.
        if token.mechanism == .broker { return }
        let outcome = await SocketShare.outcome(of: token)
        Sharer.default.stop()
        switch outcome {
        case .claimed:
            return
        case .expired:
            throw Terminal.fail(
                SocketShareError(.expired, operation: "share", detail: "pid \(target) did not claim the share within \(ttl) s; it expired"),
                exitCode: 2)
        case .targetExited:
            throw Terminal.fail(
                SocketShareError(.revoked, operation: "share", detail: "pid \(target) exited without claiming the share"),
                exitCode: 3)
        case .revoked:
            let number = shared.withLock { $0.signal }
            throw Terminal.fail(
                SocketShareError(.revoked, operation: "share", detail: "revoked on signal \(number)"),
                exitCode: 128 + number)
        case .holderStopped:
            throw Terminal.fail(SocketShareError(.holderGone, operation: "share", detail: "the holder stopped"))
        }
    }
}
