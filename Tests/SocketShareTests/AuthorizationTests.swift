import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// A share is claimable once, only by its target (pid, start time and uid), before it expires.
extension SocketShareTests {
    @Suite struct AuthorizationTests {
        init() { TestEnvironment.prepare() }

        /// How many descriptors of this process refer to the socket with `inode`.
        static func holders(of inode: UInt64) -> Int {
            openDescriptors().filter { Kernel.readLink("/proc/self/fd/\($0)") == "socket:[\(inode)]" }.count
        }

        @Test func anotherProcessIsRefusedAndTheTargetStillClaims() throws {
            let target = try Helper()
            let intruder = try Helper()
            let socket = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            let token = try SocketShare.duplicate(socket, for: target.pid)

            #expect {
                try intruder.call("adopt", token.text)
            } throws: { error in
                let error = error as! HelperError
                return error.code == "refused" && error.text.contains("this share is for pid \(target.pid); pid \(intruder.pid) may not claim it")
            }
            let adopted = try target.call("adopt", token.text)
            #expect(adopted[1] == "\(try socket.socketDescription().identity.inode)")
            _ = try target.finish()
            _ = try intruder.finish()
        }

        @Test func aSecondClaimIsRefused() async throws {
            let target = try Helper()
            let socket = try SocketDescriptor.socket(.inet, .datagram)
            let token = try SocketShare.duplicate(socket, for: target.pid)
            try target.call("adopt", token.text)
            #expect(await SocketShare.outcome(of: token) == .claimed(by: try ProcessIdentity(pid: target.pid)))
            #expect {
                try target.call("adopt", token.text)
            } throws: { error in
                let error = error as! HelperError
                return error.code == "alreadyClaimed" && error.text.contains("single use")
            }
            _ = try target.finish()
        }

        @Test func anExpiredShareIsRefusedAndItsDuplicateClosed() async throws {
            let target = try Helper()
            let socket = try SocketDescriptor.socket(.inet, .stream)
            let inode = try socket.socketDescription().identity.inode
            let token = try SocketShare.duplicate(socket, for: target.pid, options: ShareOptions(timeToLive: .milliseconds(300)))
            #expect(Self.holders(of: inode) == 2, "ours and the sharer's duplicate")
            #expect(await SocketShare.outcome(of: token) == .expired)
            #expect(Self.holders(of: inode) == 1, "the held duplicate is closed at expiry")

            // The target's own check refuses an expired token…
            #expect {
                try target.call("adopt", token.text)
            } throws: { ($0 as! HelperError).code == "expired" }
            // …and the holder refuses it too, even when the token is edited to look valid: it judges
            // by its own records.
            var extended = token
            extended.expiresAtMilliseconds += 3_600_000
            #expect {
                try target.call("adopt", extended.text)
            } throws: { error in
                let error = error as! HelperError
                return error.code == "expired" && error.text.contains("expired before it was claimed")
            }
            _ = try target.finish()
        }

        /// The holder's decision, fed real kernel facts: our own end of a socketpair is a peer whose
        /// pid, uid and pidfd are ours; targets differ from us in one respect each.
        @Test func theHolderChecksPidThenProcessThenUser() throws {
            let (mine, _) = try SocketDescriptor.pair()
            let peer = try PeerProcess(of: mine.rawValue)
            let me = ProcessIdentity.current
            let inode = try ProcessDescriptor(pid: me.pid).uniqueInode
            func target(_ identity: ProcessIdentity, uid: uid_t = getuid(), inode: UInt64? = inode) -> ShareTarget {
                ShareTarget(identity: identity, uid: uid, uniqueInode: inode)
            }
            func code(_ target: ShareTarget, byStartTimeOnly: Bool = false) -> EscrowFailure? {
                let claimant = EscrowTable<Int>.Claimant(pid: peer.pid, uid: peer.uid) {
                    peer.isProcess($0, byStartTimeOnly: byStartTimeOnly)
                }
                return EscrowTable<Int>.authorize(claimant, for: target)?.failure
            }
            #expect(code(target(me)) == nil)
            #expect(code(target(me), byStartTimeOnly: true) == nil)
            let otherPid = ProcessIdentity(pid: me.pid + 1, startTime: me.startTime)
            #expect(code(target(otherPid)) == .wrongProcess)
            // Same pid, another start time: a recycled pid, as a kernel before 6.9 can tell.
            let recycled = ProcessIdentity(pid: me.pid, startTime: me.startTime + 1)
            #expect(code(target(recycled), byStartTimeOnly: true) == .wrongStartTime)
            // Same pid and start tick, another process: only pidfs can tell (6.9+).
            if let inode {
                #expect(code(target(me, inode: inode + 1)) == .wrongStartTime)
            }
            #expect(code(target(me, uid: getuid() + 1)) == .wrongUser)
        }

        @Test func aShareForAProcessThatIsGoneIsRefused() throws {
            let target = try Helper()
            let socket = try SocketDescriptor.socket(.inet, .stream)
            let real = try ProcessIdentity(pid: target.pid)
            let before = openDescriptors().count
            let error = #expect(throws: SocketShareError.self) {
                try SocketShare.duplicate(socket.rawValue, for: ProcessIdentity(pid: target.pid, startTime: real.startTime - 1))
            }
            #expect(error?.code == .invalidArgument)
            #expect(error?.detail.contains("has exited") == true)
            #expect(openDescriptors().count == before)
            #expect(try SocketShare.duplicate(socket.rawValue, for: real).target == real)
            _ = try target.finish()
        }

        @Test func aShareEndsWhenItsTargetExits() async throws {
            let target = try Helper()
            let socket = try SocketDescriptor.socket(.inet6, .stream)
            let inode = try socket.socketDescription().identity.inode
            let token = try SocketShare.duplicate(socket, for: target.pid)
            try target.process.signal(SIGKILL)
            _ = try target.process.wait()
            #expect(await SocketShare.outcome(of: token) == .targetExited)
            #expect(Self.holders(of: inode) == 1)
        }

        /// A process that really inherits a dead target's pid (forced with ns_last_pid, root only).
        @Test(.enabled(if: geteuid() == 0, "needs root to choose the next pid"))
        func aRecycledPidCannotClaim() async throws {
            let first = try Helper()
            let pid = first.pid
            let socket = try SocketDescriptor.socket(.inet, .stream)
            let token = try SocketShare.duplicate(socket, for: pid)
            try first.process.signal(SIGKILL)
            _ = try first.process.wait()
            #expect(await SocketShare.outcome(of: token) == .targetExited)

            var impostor: Helper? = nil
            for _ in 0..<20 where impostor == nil {
                let file = try Kernel.open("/proc/sys/kernel/ns_last_pid", O_WRONLY)
                try Array("\(pid - 1)".utf8).withBytes { (bytes) throws(SocketShareError) in try Kernel.writeAll(file, bytes) }
                try Kernel.close(file)
                let candidate = try Helper()
                if candidate.pid == pid { impostor = candidate } else { _ = try candidate.finish() }
            }
            let recycled = try #require(impostor, "could not start a process with pid \(pid)")
            #expect(throws: HelperError.self) { try recycled.call("adopt", token.text) }
            _ = try recycled.finish()
        }

        /// Start times tick every 10 ms, so a quickly reused pid can show the same one; pidfs inodes
        /// (Linux 6.9+) tell the two processes apart exactly.
        @Test(.enabled(if: geteuid() == 0, "needs root to choose the next pid"))
        func pidfdsTellAReusedPidApartEvenWithinOneTick() throws {
            let first = try Helper()
            let pid = first.pid
            let original = try ProcessDescriptor(pid: pid)
            #expect(try ProcessDescriptor(pid: pid).uniqueInode == original.uniqueInode)
            try first.process.signal(SIGKILL)
            _ = try first.process.wait()
            var impostor: Helper? = nil
            for _ in 0..<20 where impostor == nil {
                let file = try Kernel.open("/proc/sys/kernel/ns_last_pid", O_WRONLY)
                try Array("\(pid - 1)".utf8).withBytes { (bytes) throws(SocketShareError) in try Kernel.writeAll(file, bytes) }
                try Kernel.close(file)
                let candidate = try Helper()
                if candidate.pid == pid { impostor = candidate } else { _ = try candidate.finish() }
            }
            let recycled = try #require(impostor)
            let successor = try ProcessDescriptor(pid: pid)
            if original.uniqueInode != nil {
                #expect(successor.uniqueInode != original.uniqueInode)
            } else {
                #expect(successor.identity.startTime != original.identity.startTime, "pre-6.9 kernel: only start times")
            }
            _ = try recycled.finish()
        }

        @Test(.enabled(if: geteuid() == 0, "needs root to start a process as nobody"))
        func anotherUserCannotReachTheSharer() throws {
            let helper = try Helper(wrapper: ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
            #expect(try helper.call("pid")[2] == "65534")
            let socket = try SocketDescriptor.socket(.inet, .stream)
            let token = try SocketShare.duplicate(socket, for: helper.pid)
            #expect {
                try helper.call("adopt", token.text)
            } throws: { error in
                let error = error as! HelperError
                return error.code == "permissionDenied" && error.text.contains("not reachable by this user")
            }
            SocketShare.revoke(token)
            _ = try helper.finish()
        }

        @Test func revokedSharesAreRefused() async throws {
            let target = try Helper()
            let socket = try SocketDescriptor.socket(.unix, .stream)
            let token = try SocketShare.duplicate(socket, for: target.pid)
            #expect(Sharer.default.revoke(token))
            #expect(!Sharer.default.revoke(token))
            #expect(await SocketShare.outcome(of: token) == .revoked)
            #expect {
                try target.call("adopt", token.text)
            } throws: { ($0 as! HelperError).code == "revoked" }
            _ = try target.finish()
        }

        @Test func aForgedSecretIsNotFound() throws {
            let target = try Helper()
            let socket = try SocketDescriptor.socket(.unix, .datagram)
            var token = try SocketShare.duplicate(socket, for: target.pid)
            let real = token
            token.secret = .random()
            #expect {
                try target.call("adopt", token.text)
            } throws: { ($0 as! HelperError).code == "notFound" }
            try target.call("adopt", real.text)
            _ = try target.finish()
        }
    }
}
