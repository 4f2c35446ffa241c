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

        func refusal(_ claim: Table.Claim) -> EscrowFailure? {
            if case .refuse(let refusal) = claim { return refusal.failure }
            return nil
        }

        @Test func aNameIsHeldOnceAndTheEmptyPolicyAdmitsTheDepositorsUidOnly() throws {
            var table = Table(maximumShares: 2, firstID: 10)
            let web = try insert(&table, Self.record("web"), held: 1)
            #expect(web.id == 10)
            #expect(throws: EscrowRefusal.self) { try insert(&table, Self.record("web"), held: 2) }
            #expect(refusal(table.claim("web", by: Self.claimant(uid: 1001), connection: 1, now: start)) == .policyRefused)
            #expect(refusal(table.claim("nope", by: Self.claimant(), connection: 1, now: start)) == .notFound)
            guard case .handOut(let id, let held) = table.claim("web", by: Self.claimant(), connection: 1, now: start) else {
                Issue.record("the depositor's own uid is admitted")
                return
            }
            #expect(id == 10 && held == 1)
            _ = try insert(&table, Self.record("db"), held: 3)
            #expect(throws: EscrowRefusal.self, "the limit") { try insert(&table, Self.record("cache"), held: 4) }
        }

        @Test func everyConditionOfAPolicyMustHold() throws {
            var table = Table(maximumShares: 10, firstID: 1)
            _ = try insert(&table, Self.record("all", policy: ClaimPolicy(uid: 33, gid: 44, cgroup: "/web")), held: 1)
            #expect(refusal(table.claim("all", by: Self.claimant(uid: 33, gid: 44, cgroup: "/web"), connection: 1, now: start)) == nil)
            _ = table.release(connection: 1)
            #expect(refusal(table.claim("all", by: Self.claimant(uid: 34, gid: 44, cgroup: "/web"), connection: 2, now: start)) == .policyRefused)
            #expect(refusal(table.claim("all", by: Self.claimant(uid: 33, gid: 45, cgroup: "/web"), connection: 2, now: start)) == .policyRefused)
            #expect(refusal(table.claim("all", by: Self.claimant(uid: 33, gid: 44, cgroup: "/web/child"), connection: 2, now: start)) == .policyRefused,
                    "cgroups match exactly, not by prefix")
            #expect(refusal(table.claim("all", by: Self.claimant(uid: 33, gid: 44, cgroup: nil), connection: 2, now: start)) == .policyRefused,
                    "an unreadable cgroup is refused")
        }

        @Test func singleUseIsHandedToOneConnectionAtATimeAndEndsWhenAcknowledged() throws {
            var table = Table(maximumShares: 10, firstID: 1)
            let share = try insert(&table, Self.record("once"), held: 7)
            guard case .handOut = table.claim("once", by: Self.claimant(), connection: 1, now: start) else { Issue.record("not the expected decision"); return }
            #expect(refusal(table.claim("once", by: Self.claimant(), connection: 2, now: start)) == .claimInProgress)
            #expect(table.release(connection: 1) == ["once"], "the first claimant left without acknowledging")
            guard case .handOut = table.claim("once", by: Self.claimant(), connection: 2, now: start) else { Issue.record("not the expected decision"); return }
            guard case .ended(let ended) = table.acknowledge(share.id, connection: 2, claimant: ProcessIdentity(pid: 4120, startTime: 3)) else {
                Issue.record("a single-use share ends when acknowledged"); return
            }
            #expect(ended.held == 7 && ended.outcome == .claimed(by: ProcessIdentity(pid: 4120, startTime: 3)) && ended.record.claims == 1)
            #expect(refusal(table.claim("once", by: Self.claimant(), connection: 3, now: start)) == .notFound)
            #expect(table.count == 0)
        }

        @Test func aKeptShareIsHandedToManyAndCountsItsClaimsUntilRevoked() throws {
            var table = Table(maximumShares: 10, firstID: 1)
            let share = try insert(&table, Self.record("store", keep: true), held: 9, ttl: nil)
            for connection in UInt64(1)...3 {
                guard case .handOut = table.claim("store", by: Self.claimant(), connection: connection, now: start + .seconds(86_400 * 30)) else {
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
            if case .failure(let refusal) = table.revoke(named: "store", by: 1001) { #expect(refusal.failure == .permissionDenied) }
            let revoked = try table.revoke(named: "store", by: 1000).get()
            #expect(revoked.held == 9 && revoked.outcome == .revoked)
        }

        @Test func expiryWaitsForAClaimInFlight() throws {
            var table = Table(maximumShares: 10, firstID: 1)
            let share = try insert(&table, Self.record("short"), held: 5, ttl: .seconds(1))
            guard case .handOut = table.claim("short", by: Self.claimant(), connection: 1, now: start) else { Issue.record("not the expected decision"); return }
            #expect(table.expire(at: start + .seconds(2), acknowledgeTimeout: .seconds(5)).isEmpty, "its claimant may already hold it")
            #expect(refusal(table.claim("short", by: Self.claimant(), connection: 2, now: start + .seconds(2))) == .claimInProgress)
            _ = table.release(connection: 1)
            #expect(refusal(table.claim("short", by: Self.claimant(), connection: 2, now: start + .seconds(2))) == .expired)
            let ended = table.expire(at: start + .seconds(8), acknowledgeTimeout: .seconds(5))
            #expect(ended.map(\.record.id) == [share.id] && ended.first?.outcome == .expired)
        }
    }
}
