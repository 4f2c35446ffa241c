// vapor-app: a Vapor 4 application served behind `sockshare serve` (examples/vapor-app/README.md).
//
// An ordinary Vapor app — `Application.make`, routes, `execute()` — plus one line: when the process
// was started by `sockshare serve` (or systemd socket activation), `app.servers.use` swaps Vapor's
// HTTP server for one that serves the connections it is given (HandoffVaporServer.swift):
//   - handoff ($SOCKSHARE_WORKER_FD): every connection `sockshare serve` accepted and handed over;
//   - shared (LISTEN_FDS/LISTEN_PID): connections accepted on the listeners every worker shares.
// Started any other way, it is plain Vapor: `vapor-app serve --hostname 127.0.0.1 --port 8080`.

import SocketShareNIO
import Vapor

@main
enum Entrypoint {
    static func main() async throws {
        var environment = try Environment.detect()
        try LoggingSystem.bootstrap(from: &environment)
        let app = try await Application.make(environment)
        let source = try ConnectionSource.fromEnvironment()
        routes(app, mode: source.map { "\($0)" } ?? "alone")
        if let source {
            // One server: Vapor asks for `app.server` again to shut it down.
            let server = HandoffVaporServer(application: app, source: source)
            app.servers.use { _ in server }
        }
        do {
            try await app.execute()
        } catch {
            app.logger.report(error: error)
            try? await app.asyncShutdown()
            throw error
        }
        try await app.asyncShutdown()
    }

    /// The application's routes: ordinary Vapor.
    static func routes(_ app: Application, mode: String) {
        app.get { _ in "hello from pid \(getpid()) (vapor, \(mode) mode)\n" }
        app.get("healthz") { _ in "ok\n" }
        app.get("hello", ":name") { request -> String in
            let name = try request.parameters.require("name")
            return "hello, \(name), from pid \(getpid())\n"
        }
        app.on(.POST, "echo", body: .collect(maxSize: "1mb")) { request -> Response in
            Response(status: .ok, body: .init(buffer: request.body.data ?? ByteBuffer()))
        }
        app.get("slow") { request async throws -> String in
            guard let ms = request.query[Int.self, at: "ms"], (0...10_000).contains(ms) else {
                throw Abort(.badRequest, reason: "slow?ms=N needs N between 0 and 10000")
            }
            try await Task.sleep(for: .milliseconds(ms))
            return "slept \(ms) ms in pid \(getpid())\n"
        }
    }
}
