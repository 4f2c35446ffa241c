import Glibc

/// Who may claim a named share: the kernel's word on the claimant, matched exactly.
///
/// Each condition that is set must hold: the claimant's uid and gid as `SO_PEERCRED` reports them
/// at connect time (the effective ids; the gid is the primary group, supplementary groups do not
/// count), and its cgroup v2 path as `/proc/PID/cgroup` shows it to the broker (so as the broker's
/// cgroup namespace sees it). A policy with no condition admits only the depositor's own uid: a
/// named share is never open to everyone by default.
public struct ClaimPolicy: Hashable, Sendable, CustomStringConvertible {
    /// The uid the claimant must run as; nil for any.
    public var uid: uid_t?
    /// The primary gid the claimant must run as; nil for any.
    public var gid: gid_t?
    /// The cgroup v2 path the claimant must be in, exactly (`/system.slice/app.service`); nil for any.
    public var cgroup: String?

    /// A policy of the given conditions; with none, only the depositor's uid may claim.
    public init(uid: uid_t? = nil, gid: gid_t? = nil, cgroup: String? = nil) {
        self.uid = uid
        self.gid = gid
        self.cgroup = cgroup
    }

    /// Whether no condition is set.
    public var isEmpty: Bool { uid == nil && gid == nil && cgroup == nil }

    /// `uid=1000 gid=1000 cgroup=/app`, the conditions that are set.
    public var description: String {
        var parts: [String] = []
        if let uid { parts.append("uid=\(uid)") }
        if let gid { parts.append("gid=\(gid)") }
        if let cgroup { parts.append("cgroup=\(cgroup)") }
        return parts.isEmpty ? "depositor's uid" : parts.joined(separator: " ")
    }

    /// The longest cgroup path a policy may hold, in UTF-8 bytes.
    public static let maximumCgroupLength = 255

    /// What is wrong with `cgroup` as a policy's cgroup path, or nil: it must be absolute, at most
    /// ``maximumCgroupLength`` bytes, without control characters (it goes into the broker's log).
    package static func problem(cgroup: String) -> String? {
        guard cgroup.hasPrefix("/"), cgroup.utf8.count <= maximumCgroupLength else {
            return "\(cgroup.escapingControlCharacters): expected an absolute cgroup v2 path of at most \(maximumCgroupLength) bytes"
        }
        guard !cgroup.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
            return "\(cgroup.escapingControlCharacters): a cgroup path has no control characters"
        }
        return nil
    }

    /// Why a claimant with these ids is refused, or nil when it is admitted. `cgroup` is asked
    /// only when the policy names one; it returns nil when the claimant's cgroup cannot be read.
    package func refusal(uid claimantUID: uid_t, gid claimantGID: gid_t, cgroup claimantCgroup: () -> String?) -> String? {
        if let uid, claimantUID != uid {
            return "the claimant runs as uid \(claimantUID); the share's policy admits uid \(uid) only"
        }
        if let gid, claimantGID != gid {
            return "the claimant's primary group is gid \(claimantGID); the share's policy admits gid \(gid) only"
        }
        if let cgroup {
            guard let actual = claimantCgroup() else {
                return "the claimant's cgroup cannot be read (its pid is not visible in the broker's pid namespace, "
                    + "or it exited); the share's policy admits cgroup \(cgroup) only"
            }
            if actual != cgroup { return "the claimant is in cgroup \(actual); the share's policy admits cgroup \(cgroup) only" }
        }
        return nil
    }

    package func write(to writer: inout ByteWriter) {
        writer.write(UInt8((uid == nil ? 0 : 1) | (gid == nil ? 0 : 2) | (cgroup == nil ? 0 : 4)))
        writer.write(uid ?? 0)
        writer.write(gid ?? 0)
        writer.writeShortText(cgroup ?? "")
    }

    package init(from reader: inout ByteReader) throws(SocketShareError) {
        let flags: UInt8 = try reader.read(field: "policyFlags")
        guard flags & ~7 == 0 else { throw reader.invalid("policyFlags", "\(flags) has unknown bits") }
        let uid: uid_t = try reader.read(field: "policyUid")
        let gid: gid_t = try reader.read(field: "policyGid")
        let cgroup = try reader.readShortText(field: "policyCgroup")
        if flags & 4 != 0, let problem = Self.problem(cgroup: cgroup) { throw reader.invalid("policyCgroup", problem) }
        self.init(uid: flags & 1 != 0 ? uid : nil, gid: flags & 2 != 0 ? gid : nil, cgroup: flags & 4 != 0 ? cgroup : nil)
    }
}
