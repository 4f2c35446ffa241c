import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// Nothing leaks: descriptor counts return to baseline, every descriptor is close-on-exec, and a
/// program exec'd after adoption inherits exactly the socket it was given.
extension SocketShareTests {
    @Suite struct LeakTests {
        init() { TestEnvironment.prepare() }

        @Test(arguments: [ShareOptions.Via.sharer, .pidfd])
        func descriptorCountsReturnToBaselineAfterAThousandCycles(_ via: ShareOptions.Via) async throws {
            let target = try Helper()
            let socket = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            // One cycle first, so that the sharer and its socket exist in the baseline.
            try target.call("close", try target.call("adopt", try SocketShare.duplicate(socket, for: target.pid, options: .init(via: via)).text)[0])
            let ourBaseline = openDescriptors().count
            let theirBaseline = try target.call("fdcount")[0]

            for _ in 0..<1000 {
                let token = try SocketShare.duplicate(socket, for: target.pid, options: .init(via: via))
                let slot = try target.call("adopt", token.text)[0]
                try target.call("close", slot)
            }
            #expect(eventually { openDescriptors().count == ourBaseline && Sharer.default.heldShareCount == 0 },
                    "ours: \(openDescriptors().count) vs \(ourBaseline)")
            #expect(try target.call("fdcount")[0] == theirBaseline)
            _ = try target.finish()
        }

        @Test func failedClaimsLeakNothingOnEitherSide() throws {
            let target = try Helper()
            let intruder = try Helper()
            let socket = try SocketDescriptor.socket(.inet, .stream)
            let token = try SocketShare.duplicate(socket, for: target.pid)
            let intruderBaseline = try intruder.call("fdcount")[0]
            for _ in 0..<200 {
                #expect(throws: HelperError.self) { try intruder.call("adopt", token.text) }
            }
            let links = try intruder.call("fd-links")
            #expect(try intruder.call("fdcount")[0] == intruderBaseline, "\(links)")
            try target.call("adopt", token.text)
            let targetBaseline = try target.call("fdcount")[0]
            for _ in 0..<200 {
                #expect(throws: HelperError.self) { try target.call("adopt", token.text) }
            }
            #expect(try target.call("fdcount")[0] == targetBaseline)
            _ = try target.finish()
            _ = try intruder.finish()
        }

        @Test func everyDescriptorTheLibraryMakesIsCloseOnExec() throws {
            let target = try Helper()
            let before = Set(openDescriptors())
            let socket = try SocketDescriptor.listening(on: .ipv6(host: "::1", port: 0))
            let (first, second) = try DescriptorChannel.pair()
            let token = try SocketShare.duplicate(socket, for: target.pid)
            try first.send([1], descriptors: [socket.rawValue])
            let received = try #require(try second.receive(deadline: .now + .seconds(5)))
            let ours = Set(openDescriptors()).subtracting(before)
            #expect(ours.count >= 5, "socket, channel pair, received copy, held duplicate (and the sharer's own)")
            for fd in ours {
                #expect(Kernel.descriptorFlags(fd)! & FD_CLOEXEC != 0, "descriptor \(fd) -> \(Kernel.readLink("/proc/self/fd/\(fd)") ?? "?")")
            }
            // In the target: what it received is close-on-exec, and nothing it holds would be inherited.
            #expect(try target.call("adopt", token.text)[7] == "cloexec")
            #expect(try target.call("inherit-audit").isEmpty)
            received.closeDescriptors()
            _ = try target.finish()
        }

        @Test func aProgramExecdByAdoptInheritsOnlyTheSharedSocket() throws {
            // `sockshare adopt` runs in a child whose pid we need before sharing: start it first,
            // reading the token from its stdin.
            let (tokenRead, tokenWrite) = try SocketDescriptor.pair()
            let (outputRead, outputWrite) = try SocketDescriptor.pair()
            let adopter = try ProcessSpawner.spawn(
                Paths.sockshare, arguments: ["adopt", "-", "--fd", "3", "--name", "web", "--", Paths.helper, "--probe-fds"],
                descriptors: [0: tokenRead.rawValue, 1: outputWrite.rawValue, 2: 2])
            try tokenRead.close()
            try outputWrite.close()
            let socket = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            let token = try SocketShare.duplicate(socket, for: adopter.pid)
            try tokenWrite.sendAll(Array((token.text + "\n").utf8))
            var output: [UInt8] = []
            while try outputRead.waitUntilReadable(deadline: .now + .seconds(10)) {
                let chunk = try outputRead.receive()
                if chunk.isEmpty { break }
                output += chunk
            }
            #expect(try adopter.wait(deadline: .now + .seconds(10)) == .exited(0))
            let words = String(decoding: output, as: UTF8.self).split(whereSeparator: \.isWhitespace).map(String.init)
            let inode = try socket.socketDescription().identity.inode
            let descriptors = words.filter { $0.first?.isNumber == true }
            #expect(descriptors.map { $0.split(separator: ":")[0] } == ["0", "1", "2", "3"], "\(words)")
            #expect(descriptors.contains("3:socket:[\(inode)]"))
            #expect(words.contains("LISTEN_FDS=1"))
            #expect(words.contains("LISTEN_PID=\(adopter.pid)"), "exec keeps the pid the token names")
            #expect(words.contains("LISTEN_FDNAMES=web"))
            #expect(words.contains("PID=\(adopter.pid)"))
        }

        @Test func theSpawnerPlacesExactlyTheDescriptorsAsked() throws {
            let (outputRead, outputWrite) = try SocketDescriptor.pair()
            let a = try SocketDescriptor.socket(.inet, .stream)
            let b = try SocketDescriptor.socket(.unix, .datagram)
            // Swapped numbers on purpose: b goes to 3 and a to 5, whatever their numbers here.
            let child = try ProcessSpawner.spawn(
                Paths.helper, arguments: ["--probe-fds"],
                descriptors: [1: outputWrite.rawValue, 3: b.rawValue, 5: a.rawValue])
            try outputWrite.close()
            var output: [UInt8] = []
            while try outputRead.waitUntilReadable(deadline: .now + .seconds(10)) {
                let chunk = try outputRead.receive()
                if chunk.isEmpty { break }
                output += chunk
            }
            #expect(try child.wait(deadline: .now + .seconds(10)) == .exited(0))
            let words = String(decoding: output, as: UTF8.self).split(whereSeparator: \.isWhitespace).map(String.init)
            let descriptors = words.filter { $0.first?.isNumber == true }
            #expect(descriptors.map { $0.split(separator: ":")[0] } == ["0", "1", "2", "3", "5"], "\(words)")
            #expect(descriptors.contains("3:socket:[\(try b.socketDescription().identity.inode)]"))
            #expect(descriptors.contains("5:socket:[\(try a.socketDescription().identity.inode)]"))
        }
    }
}
