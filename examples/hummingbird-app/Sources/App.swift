// hummingbird-app: a Hummingbird 2 application served behind `sockshare serve`
// (examples/hummingbird-app/README.md).
//
// An ordinary Hummingbird app — a Router, an Application, `runService()` — except for one line:
// `runService(connectionsFrom:)` (SocketShareApplication.swift) takes the connections from where
// the process was started instead of binding `configuration.address`:
//   - handoff ($SOCKSHARE_WORKER_FD): every connection `sockshare serve` accepted and handed over;
//   - shared (LISTEN_FDS/LISTEN_PID): connections accepted on the listeners every worker shares;
//   - alone: `hummingbird-app --bind HOST:PORT [--reuse-port]`, a listener of its own.

import Glibc
import Hummingbird
import Logging
import SocketShareNIO

@main
struct App {
    static func main() async throws {
        var logger = Logger(label: "hummingbird-app")
        logger.logLevel = .notice
        let source: ConnectionSource
        do {
            source = try ConnectionSource.fromEnvironment() ?? bind(Array(CommandLine.arguments.dropFirst()))
        } catch {
            let message = "hummingbird-app: \(error)\n"
            _ = message.withCString { write(2, $0, strlen($0)) }
            exit(64)
        }
        let app = Application(router: router(mode: mode(of: source)), logger: logger)
        try await app.runService(connectionsFrom: source)
    }

    /// The application's routes: ordinary Hummingbird.
    static func router(mode: String) -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/") { _, _ in "hello from pid \(getpid()) (hummingbird, \(mode) mode)\n" }
        router.get("/healthz") { _, _ in "ok\n" }
        router.get("/hello/:name") { _, context in
            let name = try context.parameters.require("name")
            return "hello, \(name), from pid \(getpid())\n"
        }
        router.post("/echo") { request, _ in
            Response(status: .ok, body: .init(asyncSequence: request.body))
        }
        router.get("/slow") { request, _ in
            guard let ms = request.uri.queryParameters.get("ms", as: Int.self), (0...10_000).contains(ms) else {
                throw HTTPError(.badRequest, message: "slow?ms=N needs N between 0 and 10000")
            }
            try await Task.sleep(for: .milliseconds(ms))
            return "slept \(ms) ms in pid \(getpid())\n"
        }
        return router
    }

    /// `handoff`, `shared` or `alone`, for the answers.
    static func mode(of source: ConnectionSource) -> String {
        "\(source)".hasPrefix("bind") ? "alone" : "\(source)"
    }

    /// `--bind HOST:PORT [--reuse-port]`; a usage error otherwise.
    static func bind(_ arguments: [String]) throws -> ConnectionSource {
        guard (2...3).contains(arguments.count), arguments[0] == "--bind", let colon = arguments[1].lastIndex(of: ":"),
              let port = Int(arguments[1][arguments[1].index(after: colon)...]),
              arguments.count == 2 || arguments[2] == "--reuse-port"
        else {
            throw Usage(text: "usage: hummingbird-app [--bind HOST:PORT [--reuse-port]] (or start me under `sockshare serve`)")
        }
        let host = String(arguments[1][..<colon].filter { $0 != "[" && $0 != "]" })
        return .bind(host: host, port: port, reusePort: arguments.count == 3)
    }

    struct Usage: Error, CustomStringConvertible {
        var text: String
        var description: String { text }
    }
}
