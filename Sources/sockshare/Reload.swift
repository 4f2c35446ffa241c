import ArgumentParser
import SocketShare
import SocketShareServer

struct Reload: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start a new generation of a `sockshare serve`'s workers, with zero lost connections.",
        discussion: """
            The new workers get the same listeners (or handed-off connections). Once each says it is ready \
            (READY=1 on $NOTIFY_SOCKET, or the worker protocol's ready), new connections go only to them and \
            the old workers drain. Exits 0 once the new generation serves. If it is not ready by --deadline, \
            or one of its workers exits first, it is stopped, the old generation serves on untouched, and \
            reload exits 1 with the reason.

            Without --control, the one `sockshare serve` with its control socket in the runtime directory.

            Example:
              sockshare reload --control /run/sockshare/serve-4120.sock --deadline 20
            """
    )

    @Option(help: ArgumentHelp("The control socket of the `sockshare serve`.", valueName: "PATH"))
    var control: String?

    @Option(help: ArgumentHelp("Seconds the new generation has to become ready (default: serve's --reload-deadline).", valueName: "SECONDS"))
    var deadline: Double?

    func validate() throws {
        if let deadline, !(deadline.isFinite && deadline > 0 && deadline <= 86_400) {
            throw ValidationError("--deadline \(deadline): expected seconds > 0, at most 86400")
        }
    }

    func run() throws {
        try Terminal.run { () throws(SocketShareError) in
            let path: String
            if let control { path = control } else { path = try SupervisorClient.discover() }
            let client = SupervisorClient(controlPath: path)
            let answer = try client.reload(deadline: deadline.map { .milliseconds(Int64($0 * 1000)) })
            try Terminal.line("reloaded: \(answer.reason)")
        }
    }
}

struct Upgrade: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Hand a running `sockshare serve` over to a new sockshare binary; its workers keep running.",
        discussion: """
            The running supervisor starts BINARY (default: the binary it was started from, as it is on disk \
            now) and hands it the listeners, the worker channels and its state. In handoff mode new \
            connections wait in the kernel's backlog meanwhile; none is refused. Exits 0 once the new \
            supervisor serves (it has a new pid); if it fails or is not ready by --deadline, it is killed, \
            the old one serves on, and upgrade exits 1 with the reason.

            Example:
              sockshare upgrade --control /run/sockshare/serve-4120.sock --binary /usr/local/bin/sockshare
            """
    )

    @Option(help: ArgumentHelp("The control socket of the `sockshare serve`.", valueName: "PATH"))
    var control: String?

    @Option(help: ArgumentHelp("The new sockshare binary.", valueName: "PATH"))
    var binary: String?

    @Option(help: ArgumentHelp("Seconds the new supervisor has to take over (default: serve's --reload-deadline).", valueName: "SECONDS"))
    var deadline: Double?

    func validate() throws {
        if let deadline, !(deadline.isFinite && deadline > 0 && deadline <= 86_400) {
            throw ValidationError("--deadline \(deadline): expected seconds > 0, at most 86400")
        }
        if let binary, binary.contains(" ") { throw ValidationError("--binary \(binary): a path without spaces, please") }
    }

    func run() throws {
        try Terminal.run { () throws(SocketShareError) in
            let path: String
            if let control { path = control } else { path = try SupervisorClient.discover() }
            let client = SupervisorClient(controlPath: path)
            let answer = try client.upgrade(binary: binary, deadline: deadline.map { .milliseconds(Int64($0 * 1000)) })
            try Terminal.line("upgraded: \(answer.reason)")
        }
    }
}
