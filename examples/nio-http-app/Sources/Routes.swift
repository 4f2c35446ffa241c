import Glibc

/// A request as the routes see it: method, path, query and body, and the connection it came on.
struct Request: Sendable {
    var method: String
    var path: String
    var query: [String: String]
    var body: [UInt8]
    /// The listener's name (`web` in `--listen web=tcp://…`) when the connection was handed off.
    var listenerName: String?
}

/// An answer: status, content type and body.
struct Response: Sendable {
    var status: Int
    var reason: String
    var contentType = "text/plain; charset=utf-8"
    var body: [UInt8]
    /// Milliseconds to wait before answering (`/slow`), on the event loop's timer, not a thread.
    var delayMilliseconds = 0

    init(_ status: Int, _ reason: String, _ text: String, contentType: String = "text/plain; charset=utf-8") {
        self.status = status
        self.reason = reason
        self.body = Array(text.utf8)
        self.contentType = contentType
    }
}

/// The application: a handful of routes that show which process answered and how it got the
/// connection. Everything here is plain Swift; the socket plumbing is in `HTTPApp.swift`.
struct Routes: Sendable {
    /// How this process got its sockets: `handoff`, `shared` or `alone`.
    let mode: String
    let startedAt = ContinuousClock.now

    func answer(_ request: Request) -> Response {
        switch (request.method, request.path) {
        case ("GET", "/"):
            return Response(200, "OK", "hello from pid \(getpid()) (\(mode) mode)\n")
        case ("GET", "/healthz"):
            return Response(200, "OK", "ok\n")
        case ("GET", "/info"):
            let uptime = ContinuousClock.now - startedAt
            let json = """
                {"pid":\(getpid()),"mode":"\(mode)","listener":\(request.listenerName.map { "\"\($0)\"" } ?? "null"),\
                "uptimeSeconds":\(uptime.components.seconds)}\n
                """
            return Response(200, "OK", json, contentType: "application/json")
        case ("POST", "/echo"):
            var response = Response(200, "OK", "")
            response.contentType = "application/octet-stream"
            response.body = request.body
            return response
        case ("GET", "/slow"):
            guard let text = request.query["ms"], let ms = Int(text), (0...10_000).contains(ms) else {
                return Response(400, "Bad Request", "slow?ms=N needs N between 0 and 10000\n")
            }
            var response = Response(200, "OK", "slept \(ms) ms in pid \(getpid())\n")
            response.delayMilliseconds = ms
            return response
        case (_, "/"), (_, "/healthz"), (_, "/info"), (_, "/echo"), (_, "/slow"):
            return Response(405, "Method Not Allowed", "\(request.method) is not allowed on \(request.path)\n")
        default:
            return Response(404, "Not Found", "no route for \(request.path)\n")
        }
    }

    /// Splits `/path?a=1&b=2` into the path and its query items.
    static func split(_ uri: String) -> (path: String, query: [String: String]) {
        guard let mark = uri.firstIndex(of: "?") else { return (uri, [:]) }
        var query: [String: String] = [:]
        for item in uri[uri.index(after: mark)...].split(separator: "&") {
            let pair = item.split(separator: "=", maxSplits: 1)
            query[String(pair[0])] = pair.count > 1 ? String(pair[1]) : ""
        }
        return (String(uri[..<mark]), query)
    }
}
