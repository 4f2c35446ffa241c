import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore

/// The escrow table's decisions, without a socket or a thread: the held value is a number, time is
/// passed in, and whether a claimant is the target process is answered by the test.
extension SocketShareTests {
    @Suite struct EscrowTableTests {
        typealias Table = EscrowTable<Int>

        static let target = ShareTarget(identity: ProcessIdentity(pid: 4120, startTime: 99), uid: 1000, uniqueInode: 7)
        static let other = ShareTarget(identity: ProcessIdentity(pid: 4188, startTime: 5), uid: 1000, uniqueInode: 8)
        static let description = SocketDescription(
            family: .inet, kind: .stream, protocolNumber: 6, localAddress: .ipv4(host: "127.0.0.1", port: 8080),
            isListening: true, identity: SocketIdentity(inode: 1234, device: 8))
        let start = ContinuousClock.now

        /// The target itself: right pid, right process, right uid.
        static let theTarget = Table.Claimant(pid: 4120, uid: 1000) { $0 == target }
        /// A later process with the target's pid.
        static let recycled = Table.Claimant(pid: 4120, uid: 1000) { _ in false }
        static let stranger = Table.Claimant(pid: 4188, uid: 1000) { $0 == other }
        static let wrongUser = Table.Claimant(pid: 4120, uid: 1001) { $0 == target }

        func record(for target: ShareTarget = target, by uid: uid_t = 1000, mechanism: ShareMechanism = .sharer) -> ShareRecord {
            ShareRecord(
                id: 0, secret: .random(), mechanism: mechanism, target: target,
                depositor: ProcessIdentity(pid: 300, startTime: 1), depositorUID: uid,
                createdAtMilliseconds: 1_000, expiresAtMilliseconds: 61_000)
        }

        func table(_ limits: EscrowLimits = EscrowLimits()) -> Table {
            Table(limits: limits, ids: .sequential(from: 10))
        }

        func insert(_ table: inout Table, _ record: ShareRecord, held: Int, ttl: Duration = .seconds(60)) throws -> ShareRecord {
            try table.insert(record, description: Self.description, held: held, deadline: start + ttl)
        }

        func refusal(_ claim: Table.Claim) -> EscrowFailure? {
            if case .refuse(let refusal) = claim { return refusal.failure }
            return nil
        }

        func handedOut(_ claim: Table.Claim) -> Int? {
            if case .handOut(let held) = claim { return held }
            return nil
        }

        @Test func sharesGetConsecutiveIdsAndTheTargetClaimsOnce() throws {
            var table = table()
            let first = try insert(&table, record(), held: 1)
            let second = try insert(&table, record(), held: 2)
            #expect(first.id == 10 && second.id == 11)
            #expect(handedOut(table.claim(first.id, secret: first.secret, by: Self.theTarget, connection: 1, now: start)) == 1)
            #expect(table.hasHandedOut)
            let ended = table.acknowledge(first.id, connection: 1)
            #expect(ended?.held == 1 && ended?.outcome == .claimed(by: Self.target.identity))
            #expect(table.count == 1 && !table.hasHandedOut)
            // A replay learns why, from the history.
            #expect(refusal(table.claim(first.id, secret: first.secret, by: Self.theTarget, connection: 2, now: start)) == .alreadyClaimed)
        }

        @Test func nothingIsRevealedToWhoCannotProveTheSecret() throws {
            var table = table()
            let share = try insert(&table, record(), held: 1)
            // A stranger with a wrong secret hears notFound, not wrongProcess.
            #expect(refusal(table.claim(share.id, secret: .random(), by: Self.stranger, connection: 1, now: start)) == .notFound)
            #expect(refusal(table.claim(share.id + 100, secret: share.secret, by: Self.theTarget, connection: 1, now: start)) == .notFound)
            // With the secret, the claimant is checked: pid, then process, then uid.
            #expect(refusal(table.claim(share.id, secret: share.secret, by: Self.stranger, connection: 1, now: start)) == .wrongProcess)
            #expect(refusal(table.claim(share.id, secret: share.secret, by: Self.recycled, connection: 1, now: start)) == .wrongStartTime)
            #expect(refusal(table.claim(share.id, secret: share.secret, by: Self.wrongUser, connection: 1, now: start)) == .wrongUser)
            #expect(!table.hasHandedOut)
        }

        @Test func aShareHandedOutWaitsForItsAcknowledgementAndIsOfferedAgainIfTheClaimantGoes() throws {
            var table = table()
            let share = try insert(&table, record(), held: 1)
            #expect(handedOut(table.claim(share.id, secret: share.secret, by: Self.theTarget, connection: 1, now: start)) == 1)
            #expect(refusal(table.claim(share.id, secret: share.secret, by: Self.theTarget, connection: 2, now: start)) == .claimInProgress)
            // Only the connection it went to may acknowledge, or release it.
            #expect(table.acknowledge(share.id, connection: 2) == nil)
            let releasedByAnother = table.release(share.id, connection: 2)
            let released = table.release(share.id, connection: 1)
            #expect(!releasedByAnother && released)
            #expect(handedOut(table.claim(share.id, secret: share.secret, by: Self.theTarget, connection: 2, now: start)) == 1)
            #expect(table.acknowledge(share.id, connection: 2) != nil)
        }

        @Test func expiryClosesWhatNobodyClaimedButWaitsForAHandOut() throws {
            var limits = EscrowLimits()
            limits.acknowledgeTimeout = .seconds(5)
            var table = table(limits)
            let idle = try insert(&table, record(), held: 1, ttl: .seconds(1))
            let offered = try insert(&table, record(), held: 2, ttl: .seconds(1))
            let later = try insert(&table, record(), held: 3, ttl: .seconds(30))
            #expect(table.nextDeadline == start + .seconds(1))
            _ = table.claim(offered.id, secret: offered.secret, by: Self.theTarget, connection: 1, now: start)
            #expect(table.expire(at: start + .milliseconds(500)).isEmpty)
            let expired = table.expire(at: start + .seconds(1))
            #expect(expired.map(\.held) == [1] && expired.first?.outcome == .expired)
            // The handed-out one gets the acknowledge timeout; its claimant then vanishes.
            #expect(table.expire(at: start + .seconds(4)).isEmpty)
            table.release(offered.id, connection: 1)
            #expect(table.expire(at: start + .seconds(6)).map(\.held) == [2])
            // A claim past the deadline (before the timer ran) is refused as expired.
            #expect(refusal(table.claim(later.id, secret: later.secret, by: Self.theTarget, connection: 3, now: start + .seconds(31))) == .expired)
            #expect(refusal(table.claim(idle.id, secret: idle.secret, by: Self.theTarget, connection: 3, now: start)) == .expired)
        }

        @Test func quotasBoundTheTableAndEachDepositor() throws {
            var limits = EscrowLimits()
            limits.maximumShares = 3
            limits.maximumSharesPerUser = 2
            var table = table(limits)
            let first = try insert(&table, record(by: 1000), held: 1)
            _ = try insert(&table, record(by: 1000), held: 2)
            let perUser = #expect(throws: SocketShareError.self) { try insert(&table, record(by: 1000), held: 3) }
            #expect(perUser?.code == .limitReached && perUser?.detail.contains("uid 1000") == true)
            _ = try insert(&table, record(by: 2000), held: 4)
            let global = #expect(throws: SocketShareError.self) { try insert(&table, record(by: 3000), held: 5) }
            #expect(global?.code == .limitReached)
            // Ending a share gives its depositor room again.
            _ = table.end(first.id, .revoked)
            _ = try insert(&table, record(by: 1000), held: 6)
            #expect(table.count == 3)
        }

        @Test func onlyTheDepositorOrRootRevokesAndListsAShare() throws {
            var table = table()
            let mine = try insert(&table, record(by: 1000), held: 1)
            let theirs = try insert(&table, record(by: 2000), held: 2)
            #expect(throws: EscrowRefusal.self) { try table.revoke(theirs.id, by: 1000).get() }
            #expect((try? table.revoke(theirs.id, by: 1000).get()) == nil)
            #expect(table.listing(for: 1000, after: 0, pageSize: 10, nowMilliseconds: 2_000).shares.map(\.id) == [mine.id])
            #expect(table.listing(for: 0, after: 0, pageSize: 10, nowMilliseconds: 2_000).shares.map(\.id) == [mine.id, theirs.id])
            let page = table.listing(for: 0, after: 0, pageSize: 1, nowMilliseconds: 2_000)
            #expect(page.more && page.shares.first?.ageMilliseconds == 1_000 && page.shares.first?.expiresInMilliseconds == 59_000)
            #expect(table.listing(for: 0, after: mine.id, pageSize: 1, nowMilliseconds: 2_000).shares.map(\.id) == [theirs.id])
            #expect((try? table.revoke(theirs.id, by: 0).get())?.outcome == .revoked)
            #expect((try? table.revoke(mine.id, by: 1000).get())?.held == 1)
            #expect(table.isEmpty)
            #expect(throws: EscrowRefusal(.notFound, "no share \(mine.id) of yours is held here")) { try table.revoke(mine.id, by: 1000).get() }
        }

        @Test func sharesForTargetsThatExitedEndAndSayWhy() throws {
            var table = table()
            let gone = try insert(&table, record(for: Self.other), held: 1)
            _ = try insert(&table, record(for: Self.target), held: 2)
            #expect(table.targets == [Self.other, Self.target])
            let ended = table.endShares(for: [Self.other])
            #expect(ended.map(\.held) == [1] && ended.first?.outcome == .targetExited)
            #expect(refusal(table.claim(gone.id, secret: gone.secret, by: Self.stranger, connection: 1, now: start)) == .revoked)
            #expect(table.endAll(.holderStopped).map(\.held) == [2])
        }

        @Test func aPidfdShareIsConfirmedOnlyWithItsSecretAndOnlyToItsTarget() throws {
            var table = table()
            let share = try insert(&table, record(mechanism: .pidfd), held: 9)
            // A made-up token (right id, no secret) learns nothing and gets nothing to pull.
            #expect(refusal(table.claim(share.id, secret: .random(), by: Self.theTarget, connection: 1, now: start)) == .notFound)
            #expect(refusal(table.claim(share.id, secret: share.secret, by: Self.stranger, connection: 1, now: start)) == .wrongProcess)
            #expect(handedOut(table.claim(share.id, secret: share.secret, by: Self.theTarget, connection: 1, now: start)) == 9)
            #expect(table.acknowledge(share.id, connection: 1)?.outcome == .claimed(by: Self.target.identity))
        }

        @Test func randomIdsAreUnguessableAndNeverReused() throws {
            var table = Table(limits: EscrowLimits())
            var ids: Set<UInt64> = []
            for held in 0..<200 {
                let share = try insert(&table, record(), held: held)
                #expect(share.id != 0 && share.id < 1 << 63)
                ids.insert(share.id)
                _ = table.end(share.id, .revoked)
            }
            #expect(ids.count == 200)
            let sorted = ids.sorted()
            #expect(zip(sorted, sorted.dropFirst()).contains { $1 - $0 > 1_000_000 }, "not consecutive")
        }

        @Test func theHistoryIsBounded() throws {
            var limits = EscrowLimits()
            limits.historyLimit = 2
            var table = table(limits)
            var ended: [ShareRecord] = []
            for held in 0..<3 {
                let share = try insert(&table, record(), held: held)
                _ = table.end(share.id, .revoked)
                ended.append(share)
            }
            #expect(table.outcome(of: ended[0].id) == nil)
            #expect(table.outcome(of: ended[2].id) == .revoked)
            #expect(refusal(table.claim(ended[0].id, secret: ended[0].secret, by: Self.theTarget, connection: 1, now: start)) == .notFound)
        }

        @Test func sharesInstalledFromAPredecessorKeepTheirIds() throws {
            var table = table()
            var inherited = record()
            inherited.id = 500
            table.install(inherited, description: Self.description, held: 9, deadline: start + .seconds(5))
            #expect(handedOut(table.claim(500, secret: inherited.secret, by: Self.theTarget, connection: 1, now: start)) == 9)
            #expect(try insert(&table, record(), held: 1).id == 501)
        }
    }
}
