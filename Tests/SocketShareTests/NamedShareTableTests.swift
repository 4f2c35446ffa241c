import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// The broker's named-share decisions, without a socket or a thread: the held value is a number,
/// time is passed in, and the claimant's ids and cgroup are given by the test.
extension SocketShareTests {
    @Suite struct NamedShareTableTests {
        typealias Table = NamedShareTable<Int>

        static let description = SocketDescription(
            family: .inet, kind: .stream, protocolNumber: 6, localAddress: .ipv4(host: "127.0.0.1", port: 8080),
            isListening: true, identity: SocketIdentity(inode: 1234, device: 8))
        let start = ContinuousClock.now

        static func claimant(uid: uid_t = 1000, gid: gid_t = 1000, cgroup: String? = "/app") -> Table.Claimant {
            Table.Claimant(pid: 4120, uid: uid, gid: gid) { cgroup }
        }

        static func record(_ name: String, policy: ClaimPolicy = ClaimPolicy(), keep: Bool = false, by uid: uid_t = 1000) -> NamedShareRecord {
            NamedShareRecord(
                id: 0, name: name, policy: policy, keep: keep, depositor: ProcessIdentity(pid: 300, startTime: 1),
                depositorUID: uid, createdAtMilliseconds: 1_000, expiresAtMilliseconds: keep ? 0 : 61_000)
        }

        func insert(_ table: inout Table, _ record: NamedShareRecord, held: Int, ttl: Duration? = .seconds(60)) throws -> NamedShareRecord {
            try table.insert(record, description: Self.description, held: held, deadline: ttl.map { start + $0 }).get()
        }

        /// A claim as the broker makes it: the claimant's own names, then root's, then those of the
        /// broker's user (uid 7 here), unless it names a depositor.
        func claim(
            _ table: inout Table, _ name: String, from depositor: uid_t? = nil, by claimant: Table.Claimant, connection: UInt64,
            now: ContinuousClock.Instant
        ) -> Table.Claim {
            table.claim(
                name, from: Table.depositors(from: depositor, claimant: claimant.uid, brokerUID: 7), by: claimant,
                connection: connection, now: now)
        }

        /// The refusal's code, or `.policyRefused` for a refusal the claimant hears as `notFound` but
        /// whose log says a policy refused.
        func refusal(_ claim: Table.Claim) -> EscrowFailure? {
            guard case .refuse(let refusal) = claim else { return nil }
            if refusal.failure == .notFound, refusal.logDetail != nil { return .policyRefused }
            return refusal.failure
        }

        @Test func aNameIsHeldOncePerDepositorAndTheEmptyPolicyAdmitsTheDepositorsUidOnly() throws {
            var table = Table(maximumShares: 2, ids: .sequential(from: 10))
            let web = try insert(&table, Self.record("web"), held: 1)
            #expect(web.id == 10)
            #expect(throws: EscrowRefusal.self) { try insert(&table, Self.record("web"), held: 2) }
            #expect(refusal(claim(&table, "web", from: 1000, by: Self.claimant(uid: 1001), connection: 1, now: start)) == .policyRefused)
            #expect(refusal(claim(&table, "nope", by: Self.claimant(), connection: 1, now: start)) == .notFound)
            guard case .handOut(let id, let held) = claim(&table, "web", by: Self.claimant(), connection: 1, now: start) else {
                Issue.record("the depositor's own uid is admitted")
                return
            }
            #expect(id == 10 && held == 1)
            _ = try insert(&table, Self.record("db"), held: 3)
            #expect(throws: EscrowRefusal.self, "the limit") { try insert(&table, Self.record("cache"), held: 4) }
        }

        @Test func everyConditionOfAPolicyMustHold() throws {
            var table = Table(maximumShares: 10, ids: .sequential(from: 1))
            _ = try insert(&table, Self.record("all", policy: ClaimPolicy(uid: 33, gid: 44, cgroup: "/web")), held: 1)
            #expect(refusal(claim(&table, "all", from: 1000, by: Self.claimant(uid: 33, gid: 44, cgroup: "/web"), connection: 1, now: start)) == nil)
            _ = table.release(connection: 1)
            #expect(refusal(claim(&table, "all", from: 1000, by: Self.claimant(uid: 34, gid: 44, cgroup: "/web"), connection: 2, now: start)) == .policyRefused)
            #expect(refusal(claim(&table, "all", from: 1000, by: Self.claimant(uid: 33, gid: 45, cgroup: "/web"), connection: 2, now: start)) == .policyRefused)
            #expect(refusal(claim(&table, "all", from: 1000, by: Self.claimant(uid: 33, gid: 44, cgroup: "/web/child"), connection: 2, now: start)) == .policyRefused,
                    "cgroups match exactly, not by prefix")
            #expect(refusal(claim(&table, "all", from: 1000, by: Self.claimant(uid: 33, gid: 44, cgroup: nil), connection: 2, now: start)) == .policyRefused,
                    "an unreadable cgroup is refused")
        }

        @Test func singleUseIsHandedToOneConnectionAtATimeAndEndsWhenAcknowledged() throws {
            var table = Table(maximumShares: 10, ids: .sequential(from: 1))
            let share = try insert(&table, Self.record("once"), held: 7)
            guard case .handOut = claim(&table, "once", by: Self.claimant(), connection: 1, now: start) else { Issue.record("not the expected decision"); return }
            #expect(refusal(claim(&table, "once", by: Self.claimant(), connection: 2, now: start)) == .claimInProgress)
            #expect(table.release(connection: 1) == ["once"], "the first claimant left without acknowledging")
            guard case .handOut = claim(&table, "once", by: Self.claimant(), connection: 2, now: start) else { Issue.record("not the expected decision"); return }
            guard case .ended(let ended) = table.acknowledge(share.id, connection: 2, claimant: ProcessIdentity(pid: 4120, startTime: 3)) else {
                Issue.record("a single-use share ends when acknowledged"); return
            }
            #expect(ended.held == 7 && ended.outcome == .claimed(by: ProcessIdentity(pid: 4120, startTime: 3)) && ended.record.claims == 1)
            #expect(refusal(claim(&table, "once", by: Self.claimant(), connection: 3, now: start)) == .notFound)
            #expect(table.count == 0)
        }

        @Test func aKeptShareIsHandedToManyAndCountsItsClaimsUntilRevoked() throws {
            var table = Table(maximumShares: 10, ids: .sequential(from: 1))
            let share = try insert(&table, Self.record("store", keep: true), held: 9, ttl: nil)
            for connection in UInt64(1)...3 {
                guard case .handOut = claim(&table, "store", by: Self.claimant(), connection: connection, now: start + .seconds(86_400 * 30)) else {
                    Issue.record("kept shares without a time to live do not expire"); return
                }
            }
            for connection in UInt64(1)...3 {
                guard case .counted(let record) = table.acknowledge(share.id, connection: connection, claimant: ProcessIdentity(pid: 1, startTime: 1)) else {
                    Issue.record("a kept share counts each acknowledgement"); return
                }
                #expect(record.claims == connection)
            }
            #expect(table.expire(at: start + .seconds(86_400 * 365), acknowledgeTimeout: .seconds(5)).isEmpty)
            if case .failure(let refusal) = table.revoke(named: "store", from: 1000, by: 1001) { #expect(refusal.failure == .notFound) }
            let revoked = try table.revoke(named: "store", from: nil, by: 1000).get()
            #expect(revoked.held == 9 && revoked.outcome == .revoked)
        }

        @Test func expiryWaitsForAClaimInFlight() throws {
            var table = Table(maximumShares: 10, ids: .sequential(from: 1))
            let share = try insert(&table, Self.record("short"), held: 5, ttl: .seconds(1))
            guard case .handOut = claim(&table, "short", by: Self.claimant(), connection: 1, now: start) else { Issue.record("not the expected decision"); return }
            #expect(table.expire(at: start + .seconds(2), acknowledgeTimeout: .seconds(5)).isEmpty, "its claimant may already hold it")
            #expect(refusal(claim(&table, "short", by: Self.claimant(), connection: 2, now: start + .seconds(2))) == .claimInProgress)
            _ = table.release(connection: 1)
            #expect(refusal(claim(&table, "short", by: Self.claimant(), connection: 2, now: start + .seconds(2))) == .expired)
            let ended = table.expire(at: start + .seconds(8), acknowledgeTimeout: .seconds(5))
            #expect(ended.map(\.record.id) == [share.id] && ended.first?.outcome == .expired)
        }

        @Test func namesAreScopedByDepositorSoASquatterIsNeverTakenForAnother() throws {
            var table = Table(maximumShares: 10, ids: .sequential(from: 1))
            // uid 1001 deposits "api" for uid 1000 before root does: root's deposit still succeeds.
            let squat = try insert(&table, Self.record("api", policy: ClaimPolicy(uid: 1000), by: 1001), held: 1)
            let roots = try insert(&table, Self.record("api", policy: ClaimPolicy(uid: 1000), by: 0), held: 2)
            #expect(squat.id != roots.id)
            // uid 1000 asks for "api": its own names first (none), then root's — never 1001's.
            guard case .handOut(let id, let held) = claim(&table, "api", by: Self.claimant(uid: 1000), connection: 1, now: start) else {
                Issue.record("root's share is found"); return
            }
            #expect(id == roots.id && held == 2)
            // Naming the depositor reaches 1001's share, and only it.
            guard case .handOut(let other, _) = claim(&table, "api", from: 1001, by: Self.claimant(uid: 1000), connection: 2, now: start) else {
                Issue.record("a named depositor's share is found"); return
            }
            #expect(other == squat.id)
            #expect(Table.depositors(from: nil, claimant: 1000, brokerUID: 7) == [1000, 0, 7])
            #expect(Table.depositors(from: nil, claimant: 0, brokerUID: 0) == [0])
            #expect(Table.depositors(from: 42, claimant: 1000, brokerUID: 7) == [42])
        }

        @Test func aRefusingPolicyIsHeardAsNotFoundAndTheLogAloneSaysWhy() throws {
            var table = Table(maximumShares: 10, ids: .sequential(from: 1))
            _ = try insert(&table, Self.record("db", policy: ClaimPolicy(uid: 33), by: 0), held: 1)
            guard case .refuse(let refused) = claim(&table, "db", by: Self.claimant(uid: 1000), connection: 1, now: start),
                  case .refuse(let missing) = claim(&table, "nothing", by: Self.claimant(uid: 1000), connection: 1, now: start) else {
                Issue.record("both are refused"); return
            }
            #expect(refused.failure == missing.failure && refused.failure == .notFound)
            #expect(refused.text == missing.text.replacing("nothing", with: "db"), "the same words for both")
            #expect(refused.logDetail?.contains("admits uid 33") == true && missing.logDetail == nil)
        }

        @Test func revokingAnotherUsersShareIsRefusedAsIfItDidNotExist() throws {
            var table = Table(maximumShares: 10, ids: .sequential(from: 1))
            let theirs = try insert(&table, Self.record("web", by: 2000), held: 1)
            guard case .failure(let byID) = table.revoke(theirs.id, by: 1000),
                  case .failure(let none) = table.revoke(theirs.id + 99, by: 1000) else { Issue.record("refused"); return }
            #expect(byID.failure == .notFound && none.failure == .notFound)
            #expect(byID.text == none.text.replacing("\(theirs.id + 99)", with: "\(theirs.id)"))
            if case .success = table.revoke(named: "web", from: 2000, by: 1000) { Issue.record("not the depositor's") }
            #expect((try? table.revoke(named: "web", from: 2000, by: 0).get())?.held == 1, "root may")
        }
    }
}
